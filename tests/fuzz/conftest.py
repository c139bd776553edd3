"""Hypothesis profiles for the fuzzers in ``tests/fuzz/`` (README "Fuzzing").

``ci`` (the default, part of ``make test``): every fuzzer runs its base example count; the
whole folder stays well under 60 s on a loaded two-core machine. ``fuzz`` (``make fuzz``,
``HYPOTHESIS_PROFILE=fuzz``): the same fuzzers with ``FUZZ_SCALE`` (default 8) times as many
examples. Both bound the time of one input with a deadline (500 ms; the socket-level pipeline
fuzzer allows 2 s) and print a reproduction blob on failure.

The profiles are applied per test (:func:`tests.fuzz.strategies.fuzz`), never loaded
globally, so the other hypothesis tests of the suite keep their own settings. The example
database lives under ``.pytest_cache/`` (ignored by git, removed by ``make clean``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_DATABASE = DirectoryBasedExampleDatabase(
    Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis"
)
_COMMON = {
    "deadline": timedelta(milliseconds=500),
    "print_blob": True,
    "database": _DATABASE,
    # Structured strategies build big inputs on purpose (signed tokens, whole configs).
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

settings.register_profile("ci", **_COMMON)
settings.register_profile("fuzz", **_COMMON)
