"""The ``agentgate`` command line (DESIGN.md §3). Argument parsing only.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. Errors go
to stderr, one per line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.errors import ConfigError

DEFAULT_CONFIG = Path("config/gateway.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentgate", description="the master-agent gateway")
    parser.add_argument("--version", action="version", version=f"agentgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT, then drain")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,  # --log-level debug works as well as DEBUG
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="N worker processes sharing the port (SO_REUSEPORT); needs state.backend: redis",
    )

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    check.add_argument(
        "--strict", action="store_true", help="also connect to OPA, Redis and JWKS endpoints"
    )

    sub.add_parser("config-schema", help="print the JSON Schema of the configuration")

    demo = sub.add_parser("demo", help="a self-contained tour on loopback")
    demo.add_argument("--dir", type=Path, default=Path(".demo"), help="working folder")

    certs = sub.add_parser("certs", help="development CA and SPIFFE certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create a dev CA and a server certificate")
    init.add_argument("--dir", type=Path, default=Path("certs"))
    init.add_argument("--trust-domain", default="example.org")
    init.add_argument("--server-name", action="append", default=None)
    init.add_argument("--agent", action="append", default=[], help="also issue an agent cert")
    issue = certs_sub.add_parser("issue", help="issue a leaf certificate from the dev CA")
    issue.add_argument("--dir", type=Path, default=Path("certs"))
    issue.add_argument("--name", required=True, help="file name stem and common name")
    issue.add_argument("--spiffe-id", required=True)
    issue.add_argument("--dns", action="append", default=[])
    issue.add_argument("--ip", action="append", default=[])
    issue.add_argument("--days", type=int, default=30)
    policy = sub.add_parser("policy", help="work with the policies (explain a decision)")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    explain = policy_sub.add_parser("explain", help="which rules fired for one input")
    explain.add_argument("-i", "--input", required=True, help="input JSON file, or - for stdin")
    explain.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    explain.add_argument("--policies", type=Path, default=None, help="default: pdp.policies")
    explain.add_argument("--data", type=Path, default=None, help="default: pdp.data")
    explain.add_argument(
        "--opa", action="store_true", help="run `opa eval --explain=full` instead (needs opa)"
    )
    from gateway.tokens.cli import add_subcommands

    add_subcommands(sub)  # keys generate; token inspect | verify | mint
    from gateway import agent_cli

    agent_cli.add_parser(sub)  # agent derive | inspect | headers
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config, strict=args.strict)
        if args.command == "config-schema":
            from gateway.settings.loading import json_schema

            sys.stdout.write(json_schema())
            return 0
        if args.command == "run":
            return _run(args.config, args.log_level, args.workers)
        if args.command == "certs":
            return _certs(args)
        if args.command in ("keys", "token"):
            from gateway.tokens.cli import dispatch

            return dispatch(args)
        if args.command == "policy":
            return _policy_explain(args)
        if args.command == "agent":
            from gateway import agent_cli

            return agent_cli.run(args)
        if args.command == "demo":
            from gateway.devtools.demo import run_demo

            return asyncio.run(run_demo(args.dir))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    return 2


def _check_config(path: Path, *, strict: bool = False) -> int:
    from gateway.app import Gateway
    from gateway.checks import reachability, static_problems, warnings
    from gateway.settings.loading import load_settings

    settings = load_settings(path)
    # What the schema cannot see: policies that do not compile, certificates that are
    # expired, not yet valid or not their key's.
    problems = static_problems(settings)
    if problems:
        raise ConfigError(problems)
    # Build every part (credential files, keys) without binding or connecting: what would
    # fail at startup fails here, with the same messages.
    try:
        Gateway(settings)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:
        raise ConfigError([("", f"cannot start with this configuration: {exc}")]) from None
    for key, message in warnings(settings):
        print(f"warning: {key}: {message}", file=sys.stderr)
    if strict:
        problems = asyncio.run(reachability(settings))
        if problems:
            raise ConfigError(problems)
    checked = " and its dependencies reachable" if strict else ""
    print(f"{path}: ok ({len(settings.routes)} route(s)){checked}")
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    import json
    import shutil
    import subprocess

    from gateway.authz.explain import explain
    from gateway.authz.pdp import PDPError, PolicyLoadError
    from gateway.settings.loading import load_settings

    policies, data, decision = args.policies, args.data, "agentgate/authz/decision"
    if policies is None:
        pdp = load_settings(args.config).pdp
        if pdp is None or pdp.policies is None:
            raise ConfigError([("pdp.policies", "not set: pass --policies")])
        policies, data, decision = pdp.policies, data or pdp.data, pdp.decision
    raw = sys.stdin.read() if args.input == "-" else Path(args.input).read_text("utf-8")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        print(f"agentgate policy explain: {args.input}: not JSON ({exc})", file=sys.stderr)
        return 2
    if args.opa:
        opa = shutil.which("opa")
        if opa is None:
            print("agentgate policy explain: --opa needs the opa binary on PATH", file=sys.stderr)
            return 2
        command = [opa, "eval", "--explain=full", "--format=pretty", "-d", str(policies)]
        # opa loads every data.json under a -d folder itself; naming it twice is a merge error.
        if data is not None and not data.resolve().is_relative_to(policies.resolve()):
            command += ["-d", str(data)]
        command += ["--stdin-input", "data." + decision.strip("/").replace("/", ".")]
        stdin = json.dumps(document)
        done = subprocess.run(command, input=stdin, text=True, check=False)  # noqa: S603 -- fixed argv
        return done.returncode
    try:
        result = explain(policies, data, document, decision)
    except PolicyLoadError as exc:
        for line in exc.lines():
            print(f"agentgate policy explain: {line}", file=sys.stderr)
        return 2
    except PDPError as exc:
        print(f"agentgate policy explain: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.render())
    return 0


def _run(path: Path, level: str, workers: int | None = None) -> int:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if workers is not None:
        from gateway.net.workers import run_workers  # a small supervisor: no gateway.app import

        return run_workers(path, workers, log_level=level)
    from gateway.app import run
    from gateway.authz.pdp import PolicyLoadError
    from gateway.settings.loading import load_settings

    settings = load_settings(path)
    try:
        asyncio.run(run(settings, config_path=path))
    except PolicyLoadError as exc:
        for line in exc.lines():
            print(f"agentgate: cannot start: {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"agentgate: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _certs(args: argparse.Namespace) -> int:
    from gateway.devtools import devpki

    try:
        if args.certs_command == "init":
            pki = devpki.init_dev_pki(
                args.dir,
                trust_domain=args.trust_domain,
                server_names=tuple(args.server_name or ("localhost",)),
                agents=tuple(args.agent),
            )
            print(f"CA:     {pki.ca.cert}{' (new)' if pki.created_ca else ' (kept)'}")
            print(f"server: {pki.server.cert} ({pki.server.spiffe_id})")
            for name, files in pki.agents.items():
                print(f"agent {name}: {files.cert} ({files.spiffe_id})")
            return 0
        files = devpki.issue_to_files(
            args.dir,
            args.dir / "ca.pem",
            args.dir / "ca.key",
            name=args.name,
            spiffe_id=args.spiffe_id,
            dns_names=tuple(args.dns),
            ip_addresses=tuple(args.ip),
            valid_days=args.days,
        )
    except (devpki.DevPKIError, OSError) as exc:
        print(f"agentgate certs: {exc}", file=sys.stderr)
        return 2
    print(f"{files.cert} ({files.spiffe_id})")
    return 0
