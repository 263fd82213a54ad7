"""Developer sessions: ``nox -s lint``, ``nox -s tests_core``, ``nox -s tests_torch``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests_core", "tests_torch", "docs"]
nox.options.default_venv_backend = "venv"

CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict on the sources."""
    session.install(*CONSTRAINTS, "-e", ".[torch]", "--group", "lint")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")
    session.run("mypy")


@nox.session
def tests_core(session: nox.Session) -> None:
    """The core alone, with no framework installed: estimator, registry, result."""
    session.install(*CONSTRAINTS, "-e", ".", "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests_torch(session: nox.Session) -> None:
    """Everything, with the PyTorch backend."""
    session.install(*CONSTRAINTS, "-e", ".[torch,plot]", "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests_keras(session: nox.Session) -> None:
    """The Keras tests, on TensorFlow here and on JAX and PyTorch in subprocesses."""
    session.install(*CONSTRAINTS, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.run("python", "-m", "pytest", "-m", "keras", *session.posargs)


@nox.session
def keras_applications(session: nox.Session) -> None:
    """Every keras.applications model against layer recurrences (the full sweep)."""
    session.install(*CONSTRAINTS, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.env["RFEST_KERAS_APPLICATIONS"] = "all"
    session.run("python", "-m", "pytest", "tests/test_keras_applications.py", *session.posargs)


@nox.session
def tests_jax(session: nox.Session) -> None:
    """The JAX / Flax backend and the cross-framework parity suite."""
    session.install(*CONSTRAINTS, "-e", ".[torch,jax]", "--group", "test")
    session.run("python", "-m", "pytest", "-m", "jax", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory against one forward+backward pass (benchmarks/bench.py)."""
    session.install(*CONSTRAINTS, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors; regenerate the gallery with posargs 'gallery'."""
    session.install(*CONSTRAINTS, "-e", ".[torch,plot]", "--group", "docs")
    if "gallery" in session.posargs:
        session.run("python", "docs/gallery/make_gallery.py")
    session.run("mkdocs", "build", "--strict")
