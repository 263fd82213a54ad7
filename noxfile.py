"""Developer sessions: ``nox -s lint``, ``nox -s tests_core``, ``nox -s tests_torch`` ...

Each ``tests_*`` session installs one subset of the frameworks and sets
``RFEST_REQUIRE_FRAMEWORKS`` to it, so a test of an installed framework that skips fails
(conftest.py); tests of frameworks the session does not install skip. ``tests_core`` runs
the core with no framework at all: estimator, registry, kit, options, the sample plugin and
its conformance suite. .ci/run runs the four sessions after the README's commands.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests_core", "tests_torch", "docs"]
nox.options.default_venv_backend = "venv"

CONSTRAINTS = ("-c", "constraints.txt")


def _install(session: nox.Session, *args: str) -> None:
    """pip >= 25.1 first: the venv's bundled pip does not know --group."""
    session.install("-U", "pip>=25.1")
    session.install(*CONSTRAINTS, *args)


def _pytest(session: nox.Session, required: str, *args: str) -> None:
    env = {"RFEST_REQUIRE_FRAMEWORKS": required}
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", *args, *session.posargs, env=env
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict on the sources."""
    _install(session, "-e", ".[torch]", "--group", "lint")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")
    session.run("mypy")


@nox.session
def tests_core(session: nox.Session) -> None:
    """The core alone, with no framework installed (matplotlib only, for the plots)."""
    _install(session, "-e", ".", "--group", "test")
    _pytest(session, "matplotlib")


@nox.session
def tests_torch(session: nox.Session) -> None:
    """Everything but Keras and JAX, with the PyTorch backend."""
    _install(session, "-e", ".[torch,plot]", "--group", "test")
    _pytest(session, "torch,matplotlib", "-m", "not keras and not jax")


@nox.session
def tests_keras(session: nox.Session) -> None:
    """The Keras tests, on TensorFlow here and on JAX and PyTorch in subprocesses."""
    _install(session, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    _pytest(session, "keras,tensorflow,jax,torch", "-m", "keras")


@nox.session
def keras_applications(session: nox.Session) -> None:
    """Every keras.applications model against layer recurrences (the full sweep; a step
    of .ci/run: 19 minutes on the shared 2-core machine under load, 5.4 minutes of CPU)."""
    _install(session, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.env["RFEST_KERAS_APPLICATIONS"] = "all"
    session.run("python", "-m", "pytest", "tests/test_keras_applications.py", *session.posargs)


@nox.session
def keras_applications_backends(session: nox.Session) -> None:
    """The keras.applications checks and the Keras decoders (against their brute-force
    oracle) on Keras' JAX and PyTorch backends (a step of .ci/run): the representative
    subset of applications; RFEST_KERAS_APPLICATIONS=all sweeps all 40."""
    _install(session, "-e", ".[all]", "--group", "test")
    for backend in ("jax", "torch"):
        session.run(
            "python", "-m", "pytest", "-p", "no:cacheprovider",
            "tests/test_keras_applications.py", "tests/test_decoders_keras.py",
            *session.posargs,
            env={"KERAS_BACKEND": backend},
        )  # fmt: skip


@nox.session
def tests_jax(session: nox.Session) -> None:
    """The JAX / Flax backend and the cross-framework parity suite (which needs torch)."""
    _install(session, "-e", ".[torch,jax]", "--group", "test")
    _pytest(session, "jax,flax,torch", "-m", "jax")


@nox.session
def props(session: nox.Session) -> None:
    """The property-based tests, long profile: thousands of random networks per framework."""
    _install(session, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.env["RFEST_HYPOTHESIS"] = "long"
    _pytest(session, "torch,keras,tensorflow,jax,flax", "tests/test_properties.py", "--timeout=0")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory against one forward+backward pass (benchmarks/bench.py)."""
    _install(session, "-e", ".[all]", "--group", "test", "--group", "tensorflow")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors; regenerate the gallery with posargs 'gallery'."""
    _install(session, "-e", ".[torch,plot]", "--group", "docs")
    if "gallery" in session.posargs:
        session.run("python", "docs/gallery/make_gallery.py")
    session.run("mkdocs", "build", "--strict")
