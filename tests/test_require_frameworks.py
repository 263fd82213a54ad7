"""RFEST_REQUIRE_FRAMEWORKS turns a skip for a missing required framework into a failure
(conftest.py), so CI cannot pass by skipping; other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

TESTS = """
import pytest

def test_needs_a_missing_framework():
    pytest.importorskip("no_such_framework_rfest")

@pytest.mark.skipif(True, reason="framework missing: other_framework_rfest")
def test_needs_another():
    pass

def test_skips_for_another_reason():
    pytest.skip("no GPU here")
"""


def _run(tmp_path: Path, required: str) -> str:
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {**os.environ, "RFEST_REQUIRE_FRAMEWORKS": required}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("required", "summary"),
    [
        ("", "3 skipped"),
        ("no_such_framework_rfest", "1 failed, 2 skipped"),
        ("no_such_framework_rfest,other_framework_rfest", "1 failed, 1 skipped, 1 error"),
    ],
)
def test_required_frameworks_cannot_be_skipped(tmp_path: Path, required: str, summary: str) -> None:
    output = _run(tmp_path, required)
    assert output.splitlines()[-1].startswith(summary), output
