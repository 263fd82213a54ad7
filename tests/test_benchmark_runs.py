"""The documented benchmark command runs and checks its own answers (timings are not
asserted here: they belong to benchmarks/, not to the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_the_benchmark_script_runs_a_case_and_prints_its_row() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "conv3d", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED" not in out.stdout, out.stdout
    assert "3-D conv net (torch) 1x64x64x64 -> 45/8/22" in out.stdout
