"""A pytest plugin: each test's wall time and the core-seconds the whole machine spent busy meanwhile (every
process counted: Ray's workers, the test's subprocesses), most expensive first, written when the session ends.
Where `make test`'s time goes, test by test (`docs/benchmarks.md`, "The test suite under 12 minutes").

    PYTHONPATH=bench .venv/bin/python -m pytest tests/integration -m ray -q -p pytest_cpu
    PYTEST_CPU_OUT=/tmp/unit.txt PYTHONPATH=bench .venv/bin/python -m pytest tests -m "not ray" -q -p pytest_cpu

The figures are the machine's, not the test's alone: run it with nothing else busy. A test's figure includes its
fixtures' setup (the shared Ray's start lands on the first test that uses it). Output: $PYTEST_CPU_OUT, by
default pytest-cpu.txt in the working directory.
"""
from __future__ import annotations

import os
import time

import pytest

from process_cpu import busy_core_seconds

_ROWS: list[tuple[str, float, float]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    busy, start = busy_core_seconds(), time.perf_counter()
    yield
    _ROWS.append((item.nodeid, time.perf_counter() - start, busy_core_seconds() - busy))


def pytest_sessionfinish(session):
    out = os.environ.get("PYTEST_CPU_OUT", "pytest-cpu.txt")
    with open(out, "w") as f:
        f.write("core-s   wall s  cores  test\n")
        for nodeid, wall, cpu in sorted(_ROWS, key=lambda r: -r[2]):
            f.write(f"{cpu:6.1f}  {wall:7.1f}  {cpu / max(wall, 1e-9):5.2f}  {nodeid}\n")
        f.write(f"{sum(r[2] for r in _ROWS):6.1f}  {sum(r[1] for r in _ROWS):7.1f}         all {len(_ROWS)} tests\n")
