"""agentgate: the master-agent gateway, a policy enforcement point for AI-agent domains."""

import contextlib

# regopy's rego-cpp library ships its own global operator new/delete. Loaded after another
# extension has already brought in libstdc++ (frozenlist does, through aiohttp), every embedded
# policy evaluation leaks ~20 KB of native memory; loaded first, none. So load it first, before
# anything else of ours can import aiohttp (bench/scenarios/findings.md, finding 1).
with contextlib.suppress(ImportError):
    import regopy  # noqa: F401

__version__ = "0.1.0"
