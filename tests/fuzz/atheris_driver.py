"""The coverage-guided pass of ``make fuzz``: libFuzzer (atheris) drives the hypothesis fuzzers.

Each fixture-free fuzzer of ``tests/fuzz`` is run through hypothesis' ``fuzz_one_input``: the
libFuzzer bytes become hypothesis choices, so the same structured strategies and the same
properties apply, but the inputs are now mutated towards new coverage of ``gateway`` (the only
instrumented package). A failure is an ordinary hypothesis failure (saved in the example
database, so the next ``pytest tests/fuzz`` replays it) and a non-zero exit.

    python -m tests.fuzz.atheris_driver                 # every target, ATHERIS_SECONDS each
    python -m tests.fuzz.atheris_driver jose.signed     # one target (libFuzzer flags follow)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".pytest_cache" / "atheris"

# target name -> (module, test function); tests that need no pytest fixture.
TARGETS = {
    "jose.b64url": ("test_jose", "test_b64url_decode_is_strict_and_canonical"),
    "jose.json": ("test_jose", "test_strict_json_object_is_a_strict_subset_of_json"),
    "jose.header": ("test_jose", "test_check_header_and_numeric_date"),
    "jose.compact": ("test_jose", "test_parse_compact_with_and_without_cache"),
    "jose.signed": ("test_jose", "test_signed_then_mutated_tokens"),
    "jose.jwk": ("test_jose", "test_public_key_from_jwk_and_thumbprint"),
    "txn.signed": ("test_txn", "test_signed_then_mutated_txn_tokens"),
    "txn.jwks": ("test_txn", "test_parse_jwks_and_public_key_from_jwk"),
    "dpop.htu": ("test_dpop", "test_normalize_htu_is_idempotent"),
    "dpop.paths": ("test_dpop", "test_raw_and_normalised_paths_give_one_htu"),
    "hmac.dictionary": ("test_hmac_signature", "test_parse_dictionary_fixed_point"),
    "hmac.fields": ("test_hmac_signature", "test_parse_signature_fields"),
    "headers.request": ("test_headers", "test_sanitize_request_headers"),
    "headers.xff": ("test_headers", "test_forwarded_for"),
    "paths.normalize": ("test_paths", "test_normalize_path"),
    "settings.structures": ("test_settings", "test_parse_settings_from_structures"),
}


def _load(target: str) -> Callable[[bytes], Any]:
    import importlib

    import atheris

    module_name, function = TARGETS[target]
    with atheris.instrument_imports(include=["gateway"]):
        module = importlib.import_module(f"tests.fuzz.{module_name}")
    test = getattr(module, function)
    fuzz_one_input: Callable[[bytes], Any] = test.hypothesis.fuzz_one_input
    return fuzz_one_input


def run_one(target: str, flags: list[str]) -> None:
    import atheris

    atheris.Setup([sys.argv[0], *flags], _load(target))
    atheris.Fuzz()


def run_all(seconds: int) -> int:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failed = []
    for target in TARGETS:
        started = time.monotonic()
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_driver",
            target,
            f"-max_total_time={seconds}",
            "-rss_limit_mb=2048",
            "-timeout=5",  # seconds for one input: the deadline of a hung parser
            f"-artifact_prefix={ARTIFACTS}/{target}-",
            "-print_final_stats=1",
        ]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        runs = [
            line for line in result.stderr.splitlines() if "stat::number_of_executed_units" in line
        ]
        count = runs[-1].split(":")[-1].strip() if runs else "?"
        took = time.monotonic() - started
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"atheris {target:22} {count:>8} inputs {took:6.1f} s  {status}", flush=True)
        if result.returncode != 0:
            failed.append(target)
            sys.stderr.write(result.stderr[-6000:])
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        run_one(sys.argv[1], sys.argv[2:])
        return 0  # not reached: atheris.Fuzz() exits the process
    return run_all(int(os.environ.get("ATHERIS_SECONDS", "15")))


if __name__ == "__main__":
    sys.exit(main())
