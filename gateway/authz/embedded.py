"""The embedded PDP: in-process Rego with regopy (rego-cpp), the default engine for development.

Contract (the :class:`gateway.authz.engine.PDP` interface):

- :meth:`EmbeddedPDP.start` loads every ``*.rego`` file under ``policies`` except
  ``*_test.rego`` (sorted, module name = path relative to ``policies``) and the one ``data``
  JSON file, and compiles them *once* into a regopy bundle with the decision document as its
  only entrypoint. A compile or load problem raises :class:`PolicyLoadError` (a startup error).
  Note that ``opa run policies/`` would also load every other ``data.json``/``.yaml`` below
  ``policies/`` at its folder's path; keep all data in the one configured file.
- :meth:`EmbeddedPDP.evaluate` queries the bundle and returns ``(result, decision_id)`` with a
  fresh UUID4 as ``decision_id``; an undefined document gives ``UNDEFINED``. An evaluation
  error (e.g. a complete rule with conflicting values, which OPA also reports as an error)
  raises :class:`gateway.authz.engine.PDPError`.
- :meth:`EmbeddedPDP.reload` compiles the current files into a new bundle and swaps it in
  atomically (in-flight evaluations finish on the old one), then bumps ``generation`` so that
  :class:`~gateway.authz.engine.PolicyDecisionPoint` drops its cache. A bundle that fails to
  compile is not swapped in: the old policy keeps serving and the error is raised.

Input projection: rego-cpp's cost grows with the size of the input document (converting it
into the interpreter, and again while evaluating), so at compile time the policy sources are
scanned for every ``input.<a>.<b>`` reference (:func:`input_paths`) and each evaluation passes
only those parts (:func:`project`). The scan is conservative: a reference that stops at
``input.<a>`` keeps all of ``<a>``, and any other use of ``input`` (``input[x]``, ``walk(input)``,
``with input``) turns projection off. The policy therefore sees exactly the values it could
read in the full document; this halves an uncached evaluation of the demo policy. The decision
log still records the full input. ``project_input=False`` disables it.

On or off the event loop: ``bench/bench_pdp.py`` measured one uncached evaluation of the demo
policy (input conversion ~60 us + rego-cpp evaluation) at 0.7-0.9 ms p50 on a 2-vCPU machine
under heavy load (load average ~9; a 1.7 kB ``json.dumps`` took 13.7 us there, about twice its
idle time), so roughly 0.4 ms on an idle one; almost all of it is rego-cpp. That is below the
~1 ms bar at which blocking the loop starts to hurt other requests more than a thread hop
costs, and the hop is not cheap: the offloaded variant measured 2.4 ms p50 on the same machine
(executor hand-off, GIL hand-back, and a second runnable thread competing for few CPUs). So by
default evaluation runs inline on the loop. ``offload=True`` moves it onto one dedicated thread,
which is the choice for large or slow policies, because only off-loop can the ``pdp_s`` timeout
interrupt the *wait* (the thread itself still runs to completion). Either way a regopy
interpreter is only ever used by one thread at a time: the loop thread, or the single executor
thread. Compiling always runs on that executor thread, into a new interpreter (a stress test of
compiling in one thread while querying another interpreter in a second showed no interference).

regopy limitations found while writing ``policies/`` (rego-cpp 1.5.2 vs OPA 1.20): see
``policies/README.md``.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy

from gateway.authz.pdp import UNDEFINED, PDPError, PolicyLoadError, decision_ref
from gateway.authz.rego_errors import locate

# `input` as a whole word that is not itself a field (`x.input`) or part of a longer name.
_INPUT_REF = re.compile(r"(?<![\w.])input\b")
_FIELD = re.compile(r"\.([A-Za-z_]\w*)")
_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')

InputPaths = dict[str, frozenset[str] | None]


def input_paths(sources: list[str]) -> InputPaths | None:
    """The parts of ``input`` the policies can read: top-level key -> second-level keys.

    ``None`` for a key means its whole subtree is read (the reference stops there, indexes it
    dynamically, or iterates it); ``None`` overall means the policies use ``input`` in a way
    this conservative scan does not follow (``input[x]``, ``walk(input)``...): keep everything.
    """
    paths: dict[str, set[str] | None] = {}
    for source in sources:
        text = _STRING.sub('""', _COMMENT.sub("", source))
        for match in _INPUT_REF.finditer(text):
            first = _FIELD.match(text, match.end())
            if first is None:
                return None
            key = first.group(1)
            second = _FIELD.match(text, first.end())
            known = paths.setdefault(key, set())
            if second is None:
                paths[key] = None  # the whole subtree
            elif known is not None:
                known.add(second.group(1))
    return {k: (frozenset(v) if v is not None else None) for k, v in paths.items()}


def project(document: dict[str, Any], paths: InputPaths | None) -> dict[str, Any]:
    """The part of ``document`` the policies can read (see :func:`input_paths`)."""
    if paths is None:
        return document
    out: dict[str, Any] = {}
    for key, fields in paths.items():
        if key not in document:
            continue
        value = document[key]
        if fields is None or not isinstance(value, dict):
            out[key] = value
        else:
            out[key] = {k: value[k] for k in fields if k in value}
    return out


class _InputBuilder:
    """Build a ``regopy.Input`` straight through rego-cpp's C input API (``regoInput*``).

    ``regopy.Input`` walks the value with ABC ``isinstance`` checks and copies every string into
    a fresh ctypes buffer; this does the same C calls with exact type dispatch and no copies,
    about twice as fast (``bench/bench_pdp.py``). It also refuses what rego-cpp would get wrong:

    SECURITY: rego-cpp takes C strings, so a string holding NUL is silently cut there
    (``"alice\\x00admin"`` would reach the policy as ``"alice"``), and ctypes wraps integers
    outside the signed 64-bit range (``2**64`` would arrive as ``0``). Such an input raises
    ``ValueError`` (the engine fails closed) instead of being decided as something else.
    """

    def __init__(self) -> None:
        from regopy import rego_shared  # regopy's ctypes binding of the rego-cpp C API

        lib = rego_shared.rego
        self._new = rego_shared.rego_new_input
        self._free = rego_shared.rego_free_input
        self._str, self._int = lib.regoInputString, lib.regoInputInt
        self._float, self._bool, self._null = (
            lib.regoInputFloat,
            lib.regoInputBoolean,
            lib.regoInputNull,
        )
        self._item, self._object, self._array = (
            lib.regoInputObjectItem,
            lib.regoInputObject,
            lib.regoInputArray,
        )

    def __call__(self, value: Any) -> Any:
        handle = self._new()
        try:
            if self._add(handle, value) != 0:
                raise ValueError("rego-cpp refused the input")
        except BaseException:
            self._free(handle)
            raise
        built = regopy.Input.__new__(regopy.Input)  # adopts the handle; frees it when collected
        built._impl = handle
        return built

    def _add(self, h: Any, value: Any) -> int:
        kind = type(value)
        if kind is str:
            return int(self._str(h, _c_string(value)))
        if kind is dict:
            rc = 0
            for key, item in value.items():
                if type(key) is not str:
                    raise ValueError("policy input object keys must be strings")
                rc |= self._str(h, _c_string(key)) | self._add(h, item) | self._item(h)
            return rc | int(self._object(h, len(value)))
        if kind is list or kind is tuple:
            rc = 0
            for item in value:
                rc |= self._add(h, item)
            return rc | int(self._array(h, len(value)))
        if kind is bool:
            return int(self._bool(h, value))
        if kind is int:
            # SECURITY: ctypes wraps out-of-range ints silently (2**64 would arrive as 0).
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError("policy input integer outside the 64-bit range")
            return int(self._int(h, value))
        if kind is float:
            return int(self._float(h, value))
        if value is None:
            return int(self._null(h))
        raise ValueError(f"policy input cannot hold a {kind.__name__}")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _c_string(text: str) -> bytes:
    if "\x00" in text:
        raise ValueError("policy input string contains NUL")
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Compiled:
    builder: Any  # regopy.Interpreter that compiled the bundle (kept alive with it)
    bundle: Any  # regopy.Bundle
    runner: Any  # regopy.Interpreter that evaluates the bundle
    modules: tuple[str, ...]
    paths: InputPaths | None  # what the policies read of the input


class EmbeddedPDP:
    name = "embedded"

    def __init__(
        self,
        policies: Path,
        data: Path | None,
        decision: str,
        *,
        offload: bool = False,
        project_input: bool = True,
    ) -> None:
        self.policies = Path(policies)
        self.project_input = project_input
        self.data = Path(data) if data is not None else None
        self.entrypoint = "/".join(decision_ref(decision))
        self.offload = offload
        self.generation = 0
        self._compiled: _Compiled | None = None
        self._input = _InputBuilder()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regopy")

    @property
    def modules(self) -> tuple[str, ...]:
        return self._compiled.modules if self._compiled is not None else ()

    async def start(self) -> None:
        if self._compiled is None:
            self._compiled = await self._compile_off_loop()

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        return self._compiled is not None

    async def reload(self) -> None:
        compiled = await self._compile_off_loop()
        self._compiled = compiled  # SECURITY: atomic swap; never a half-loaded policy
        self.generation += 1

    def load(self) -> None:
        """Compile synchronously (for tools and benchmarks that have no event loop)."""
        self._compiled = self.compile()

    async def evaluate(self, input: dict[str, Any]) -> tuple[object, str]:
        compiled = self._compiled
        if compiled is None:
            raise PDPError("embedded PDP not started")
        if self.offload:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, self.query, compiled, input)
        else:
            result = self.query(compiled, input)
        return result, str(uuid.uuid4())

    def evaluate_sync(self, input: dict[str, Any]) -> object:
        """One evaluation on the calling thread (benchmarks, conformance tooling)."""
        if self._compiled is None:
            raise PDPError("embedded PDP not loaded")
        return self.query(self._compiled, input)

    def query(self, compiled: _Compiled, input: dict[str, Any]) -> object:
        try:
            compiled.runner.set_input(self._input(project(input, compiled.paths)))
            output = compiled.runner.query_bundle_entrypoint(compiled.bundle, self.entrypoint)
        except (
            regopy.RegoError,
            TypeError,
            ValueError,
            OverflowError,
            ctypes.ArgumentError,
        ) as exc:
            raise PDPError(f"embedded evaluation failed: {type(exc).__name__}") from None
        if not output.ok():
            raise PDPError("embedded evaluation failed: " + _output_error(output))
        results = output.results
        if not results or not results[0].expressions:
            return UNDEFINED
        return results[0].expressions[0]

    async def _compile_off_loop(self) -> _Compiled:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.compile)

    def compile(self) -> _Compiled:
        """Load and compile policies and data into a new bundle (no state is changed)."""
        files = sorted(
            p for p in self.policies.rglob("*.rego") if not p.name.endswith("_test.rego")
        )
        if not files:
            raise PolicyLoadError(f"no .rego files under {self.policies}")
        builder = regopy.Interpreter()
        # rego-cpp prints its errors to stdout (where the decision log may go); they are
        # reported through PolicyLoadError instead, with file and line.
        builder.log_level = regopy.LogLevel.NONE
        names, sources = [], []
        for path in files:
            name = path.relative_to(self.policies).as_posix()
            try:
                source = path.read_text(encoding="utf-8")
                builder.add_module(name, source)
            except OSError as exc:
                raise PolicyLoadError([(str(path), exc.strerror or str(exc))]) from None
            except regopy.RegoError as exc:
                raise self._located(exc, {name: source}) from None
            names.append(name)
            sources.append(source)
        if self.data is not None:
            builder.add_data_json(_data_json(self.data))
        try:
            bundle = builder.build(None, [self.entrypoint])
        except regopy.RegoError as exc:
            raise self._located(exc, dict(zip(names, sources, strict=True))) from None
        # SECURITY: a failed build yields a bundle that crashes the process when queried.
        if not bundle.ok():
            raise PolicyLoadError("policy compilation failed (details on stderr)")
        paths = input_paths(sources) if self.project_input else None
        return _Compiled(builder, bundle, regopy.Interpreter(), tuple(names), paths)

    def _located(self, exc: regopy.RegoError, sources: dict[str, str]) -> PolicyLoadError:
        problems = []
        for problem in locate(str(exc), sources):
            where = str(self.policies / problem.module) if problem.module else ""
            if where and problem.line is not None:
                where = f"{where}:{problem.line}"
            message = problem.message if where else f"policy compilation failed: {problem.message}"
            problems.append((where, message))
        return PolicyLoadError(problems)


def _data_json(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text)
    except (OSError, ValueError) as exc:
        raise PolicyLoadError(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyLoadError(f"{path}: the data document must be a JSON object")
    return text


def _output_error(output: Any) -> str:
    """``code: message`` of each error in a failed output, as OPA reports evaluation errors.

    regopy's ``Node`` cannot name error nodes (``kind_name`` raises), so the tree is read
    with rego-cpp's node accessors: ``error`` nodes hold an ``errormsg`` and a
    ``rego-errorcode`` whose values are the message and OPA's error code (e.g.
    ``eval_conflict_error``). rego-cpp gives evaluation errors no source location.
    """
    from regopy.rego_shared import rego_node_get, rego_node_size, rego_node_value

    try:
        root = output.node()._impl
        found = []
        for i in range(min(rego_node_size(root), 8)):
            error = rego_node_get(root, i)
            parts = [rego_node_value(rego_node_get(error, j)) for j in range(rego_node_size(error))]
            message, code = (parts[0] if parts else ""), (parts[-1] if len(parts) > 2 else "")
            found.append(f"{code}: {message}" if code else message)
        text = "; ".join(part for part in found if part)
    except (regopy.RegoError, AttributeError, TypeError, ValueError):
        text = ""
    return (text or str(output))[:300]
