"""The Keras tests again with KERAS_BACKEND=jax and =torch, each in its own process.

Keras fixes its framework at import, so one pytest process runs one backend; this
process runs the Keras modules on its own backend (tensorflow by default).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.keras

# Each group runs in its own process, inside its own time limit (eager JAX compiles
# every operation at every probe size, so a JAX run is slow).
GROUPS = {
    "networks": ("test_keras_networks.py", "test_keras_safety.py"),
    "models": ("test_keras_models.py", "test_keras_compat.py"),
}
# Run only with RFEST_KERAS_SLOW_BACKENDS=1 (``nox -s keras_backends_slow``): too slow for CI.
SLOW = {("jax", "networks")}
HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras 3")
@pytest.mark.skipif("RFEST_KERAS_CHILD" in os.environ, reason="already a backend run")
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_tests_pass_on_backend(backend: str, group: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    if (backend, group) in SLOW and not os.environ.get("RFEST_KERAS_SLOW_BACKENDS"):
        pytest.skip(
            f"the {group} group on Keras-on-{backend} runs past 9 minutes on 2 cores (eager "
            f"JAX compiles every operation at every probe size): nox -s keras_backends_slow"
        )
    env = {**os.environ, "KERAS_BACKEND": backend, "RFEST_KERAS_CHILD": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(
        [*command, *(a if a.startswith("-") else str(HERE / a) for a in GROUPS[group])],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
