"""The checks of the conformance suite; each raises ``AssertionError`` saying what is wrong."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import rfest
from rfest._registry import make_provider
from rfest.testing._geometry import (
    REFERENCE_NETWORKS,
    BackendUnderTest,
    Conv,
    expected_field,
    same_state,
)

__all__ = ["Check", "check_backend", "checks"]

CHANNELS = 2
SPATIAL = (32, 32)


@dataclass(frozen=True)
class Check:
    """One check bound to one backend; call it to run it. ``str`` is its name."""

    name: str
    run: Callable[[BackendUnderTest], None]
    backend: BackendUnderTest

    def __call__(self) -> None:
        self.run(self.backend)

    def __str__(self) -> str:
        return self.name


def _fail(backend: BackendUnderTest, what: str) -> AssertionError:
    return AssertionError(f"backend {backend.name!r}: {what}")


def check_registered(backend: BackendUnderTest) -> None:
    """The backend is installed through its entry point (or registered at run time)."""
    if backend.name not in rfest.available_backends():
        raise _fail(
            backend,
            f"not among rfest.available_backends() = {rfest.available_backends()}; declare "
            f"it under the entry-point group 'rfest.backends'",
        )


def check_reference_fields(backend: BackendUnderTest) -> None:
    """The model's output of every reference network has the worked field."""
    for title, layers in REFERENCE_NETWORKS.items():
        model = backend.build(layers, CHANNELS)
        rf = rfest.compute(model, backend.input_shape(SPATIAL, CHANNELS), backend=backend.name)
        _expect(backend, title, rf, expected_field(layers))


def check_named_layers(backend: BackendUnderTest) -> None:
    """Every layer of a reference network, by name, alone and all at once, has the field
    of the layers up to it."""
    layers = REFERENCE_NETWORKS["convolution, max pooling, convolution"]
    model = backend.build(layers, CHANNELS)
    shape = backend.input_shape(SPATIAL, CHANNELS)
    names = [f"layer{k}" for k in range(len(layers))]
    together = rfest.compute(model, shape, backend=backend.name, output=names)
    if list(together) != names:
        raise _fail(backend, f"output={names} gave the outputs {list(together)}")
    for k, name in enumerate(names):
        alone = rfest.compute(model, shape, backend=backend.name, output=name)
        _expect(backend, f"layer {name!r}", alone, expected_field(layers[: k + 1]))
        _expect(
            backend,
            f"layer {name!r} (with the others)",
            together[name],
            expected_field(layers[: k + 1]),
        )


def check_errors(backend: BackendUnderTest) -> None:
    """An unknown output, a malformed shape and an unknown option raise rfest's classes."""
    model = backend.build((Conv(3),), CHANNELS)
    shape = backend.input_shape(SPATIAL, CHANNELS)
    cases: list[tuple[str, type[rfest.RFEstError], Callable[[], object]]] = [
        (
            "output='no_such_layer'",
            rfest.OutputNotFoundError,
            lambda: rfest.compute(model, shape, backend=backend.name, output="no_such_layer"),
        ),
        (
            "input_shape with 6 axes",
            rfest.InputShapeError,
            lambda: rfest.compute(model, (*shape, 1, 1, 1), backend=backend.name),
        ),
        (
            "an unknown backend option",
            rfest.OptionError,
            lambda: rfest.compute(model, shape, backend=backend.name, no_such_option=1),
        ),
    ]
    for what, error, call in cases:
        try:
            call()
        except error:
            continue
        except Exception as exc:
            raise _fail(
                backend, f"{what} raised {type(exc).__name__}, expected {error.__name__}: {exc}"
            ) from exc
        raise _fail(backend, f"{what} raised nothing, expected {error.__name__}")


def check_protocol(backend: BackendUnderTest) -> None:
    """The provider keeps `rfest.GradientProvider`: spatial shapes, and maps of shape
    ``(units, *spatial)``, finite, non-negative, zero outside the unit's field."""
    layers = (Conv(3),)
    model = backend.build(layers, CHANNELS)
    provider = make_provider(
        backend.name,
        model,
        input_shape=backend.input_shape(SPATIAL, CHANNELS),
        output=None,
        dtype="float64",
        linearize=True,
    )
    if not isinstance(provider, rfest.GradientProvider):
        raise _fail(backend, "the factory's result is not a GradientProvider")
    if len(provider.output_names) != 1:
        raise _fail(backend, f"output=None gave {len(provider.output_names)} outputs, not 1")
    name = provider.output_names[0]
    shapes = provider.output_shapes((10, 12))
    if tuple(shapes[name]) != (8, 10):
        raise _fail(backend, f"a 3x3 convolution of a 10x12 input reports {shapes[name]}")
    maps = np.asarray(provider.gradient_maps((10, 12), name, [(0, 0), (7, 9)]))
    if maps.shape != (2, 10, 12):
        raise _fail(backend, f"gradient_maps for 2 units gave shape {maps.shape}, not (2, 10, 12)")
    if not np.all(np.isfinite(maps)) or np.any(maps < 0):
        raise _fail(backend, "gradient maps must be finite magnitudes (>= 0)")
    support = [maps[0] > 0, maps[1] > 0]
    expected = [np.zeros((10, 12), bool), np.zeros((10, 12), bool)]
    expected[0][0:3, 0:3] = True
    expected[1][7:10, 9:12] = True
    for k in range(2):
        if not np.array_equal(support[k], expected[k]):
            raise _fail(backend, f"the map of unit {[(0, 0), (7, 9)][k]} is not its 3x3 window")


def check_model_untouched(backend: BackendUnderTest) -> None:
    """The model's state is the same after measuring it, linearized and real."""
    model = backend.build(REFERENCE_NETWORKS["convolution, max pooling, convolution"], CHANNELS)
    shape = backend.input_shape(SPATIAL, CHANNELS)
    before = backend.state(model)
    rfest.compute(model, shape, backend=backend.name, output=["layer0", "layer2"])
    with warnings.catch_warnings():  # the real model's max pooling routes: non-uniform
        warnings.simplefilter("ignore", rfest.NonUniformWarning)
        rfest.compute(model, shape, backend=backend.name, linearize=False)
    rfest.gradient_map(model, shape, backend=backend.name, output="layer1")
    changed = same_state(before, backend.state(model))
    if changed:
        raise _fail(backend, f"measuring changed the model: {changed}")


def check_deterministic(backend: BackendUnderTest) -> None:
    """The same call twice gives the same field and bit-identical gradient maps."""
    model = backend.build(REFERENCE_NETWORKS["two strided, padded convolutions"], CHANNELS)
    shape = backend.input_shape(SPATIAL, CHANNELS)
    for linearize in (True, False):
        first = rfest.gradient_map(model, shape, backend=backend.name, linearize=linearize)
        second = rfest.gradient_map(model, shape, backend=backend.name, linearize=linearize)
        if not np.array_equal(first, second):
            raise _fail(backend, f"two equal calls (linearize={linearize}) gave different maps")
    if rfest.compute(model, shape, backend=backend.name) != rfest.compute(
        model, shape, backend=backend.name
    ):
        raise _fail(backend, "two equal calls gave different fields")


def check_thread_safe(backend: BackendUnderTest) -> None:
    """Threads measuring one model at once each get the serial answer."""
    layers = REFERENCE_NETWORKS["convolution, max pooling, convolution"]
    model = backend.build(layers, CHANNELS)
    shape = backend.input_shape(SPATIAL, CHANNELS)
    serial = rfest.compute(model, shape, backend=backend.name, output=["layer0", "layer2"])
    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def measure() -> None:
        try:
            start.wait()
            results.append(
                rfest.compute(model, shape, backend=backend.name, output=["layer0", "layer2"])
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=measure) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise _fail(backend, f"a thread raised {type(errors[0]).__name__}: {errors[0]}")
    if any(result != serial for result in results):
        raise _fail(backend, "threads measuring at once got other fields than one alone")


_CHECKS: tuple[Callable[[BackendUnderTest], None], ...] = (
    check_registered,
    check_protocol,
    check_reference_fields,
    check_named_layers,
    check_errors,
    check_model_untouched,
    check_deterministic,
    check_thread_safe,
)


def checks(backend: BackendUnderTest) -> list[Check]:
    """Every check bound to ``backend``, for ``pytest.mark.parametrize`` (``ids=str``)."""
    return [Check(c.__name__, c, backend) for c in _CHECKS]


def check_backend(backend: BackendUnderTest) -> None:
    """Run every check against ``backend``; the first failure raises ``AssertionError``."""
    for check in checks(backend):
        check()


def _expect(
    backend: BackendUnderTest,
    what: str,
    rf: rfest.ReceptiveField,
    expected: tuple[int, int, int, float],
) -> None:
    size, stride, padding, offset = expected
    got = (rf.size, rf.stride, rf.padding, rf.offset)
    want = ((size, size), (stride, stride), (padding, padding), (offset, offset))
    if got != want:
        raise _fail(
            backend,
            f"{what}: (size, stride, padding, offset) is {got}, the recurrence gives {want}",
        )
