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

# Each group runs in its own process, inside its own time limit: the Applications of
# test_keras_networks.py (the costliest checks on JAX, which compiles one program per
# probe shape) run apart from its small networks.
APPLICATION_TESTS = (
    "test_vgg16_every_pool_in_one_call",
    "test_resnet50_keras_layout",
    "test_mobilenet",
    "test_inception_v3",
)
GROUPS = {
    "networks": (
        "test_keras_networks.py",
        "test_keras_safety.py",
        "-k",
        f"not ({' or '.join(APPLICATION_TESTS)})",
    ),
    "applications": tuple(f"test_keras_networks.py::{t}" for t in APPLICATION_TESTS),
    "models": ("test_keras_models.py", "test_keras_compat.py"),
    "backbones": ("test_keras_backbones.py",),
    "users": ("test_keras_users.py",),
}
HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras 3")
@pytest.mark.skipif("RFEST_KERAS_CHILD" in os.environ, reason="already a backend run")
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_tests_pass_on_backend(backend: str, group: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "RFEST_KERAS_CHILD": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(
        [*command, *(str(HERE / a) if a.startswith("test_") else a for a in GROUPS[group])],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
