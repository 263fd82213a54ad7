"""The JAX :class:`rfest.GradientProvider`: ``jax.vjp`` through a rewritten jaxpr.

Per input shape the model is traced once (``jax.make_jaxpr``) into a program that returns
every named value; output shapes come from the trace without computing anything. A
gradient map evaluates only the equations its output needs, linearized (see
:mod:`rfest_jax._interpret`), on ONE positive sample, and pulls the probed units back in
one ``vmap`` over cotangents, so probes cannot mix through batch statistics. Narrowed,
that pullback is traced and run in numpy (:mod:`rfest_jax._numpy_eval`); otherwise it is
compiled by XLA, once per shape, output and probe count. float64 runs inside
``jax.enable_x64(True)``, which restores the user's setting on exit. The user's arrays are
never written: params enter as arguments, and linearized params are new arrays.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfest import InputShapeError, OptionError, OutputNotFoundError, kit
from rfest_jax._borders import border_free
from rfest_jax._interpret import Value, evaluate, needed_equations
from rfest_jax._models import MODEL_KEY, Model, as_model
from rfest_jax._numpy_eval import NumpyProgram, Unsupported, numpy_program
from rfest_jax._shared import Shared, shared_for

__all__ = ["JaxGradientProvider", "provider"]

_LISTING_SIZE = 32  # spatial size used to list names when the user left sizes free


def provider(model: Any, **options: Any) -> JaxGradientProvider:
    """Entry-point factory of the ``jax`` backend (see :class:`JaxGradientProvider`)."""
    return JaxGradientProvider(model, **options)


@dataclass
class _Trace:
    """One traced program: every named value of the model at one input shape."""

    jaxpr: Any
    consts: list[Any]
    names: tuple[str, ...]
    leaves: dict[str, int | None]  # leaf index of each name; None when not one array
    shapes: dict[str, tuple[int, ...]]
    plans: dict[int, list[int]] = field(default_factory=dict)
    compiled: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    borders: dict[int, bool] = field(default_factory=dict)

    def plan(self, leaf: int) -> list[int]:
        if leaf not in self.plans:
            self.plans[leaf] = needed_equations(self.jaxpr, [leaf])
        return self.plans[leaf]


class JaxGradientProvider:
    """Gradient maps of a JAX function or Flax module, by ``jax.vjp`` on a linearized jaxpr.

    Args:
        model: a function ``f(x)`` of a channels-last batch ``(N, *spatial, C)``; a Flax
            NNX module; or a Flax Linen ``(module, variables)`` pair.
        input_shape: ``(*spatial, C)`` of one sample (channels last); spatial sizes may
            be None.
        output: None (the model's output), a name (module path such as
            ``"backbone/conv3"``, a sown name, or a key/index path of a pytree output),
            or a list of names.
        dtype: ``"float64"`` (default) or ``"float32"``.
        linearize: see :func:`rfest.compute`.
        narrow: evaluate the linearized program on one channel wherever all channels
            agree (same answer, the work of a one-channel network; see
            :mod:`rfest_jax._interpret`). ``False`` computes every channel.
        call_kwargs: keyword arguments passed on every call of the model
            (e.g. ``{"train": False}``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> kernel = jnp.ones((3, 3, 1, 4))
        >>> def net(x):
        ...     y = jax.lax.conv_general_dilated(
        ...         x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ...     return jax.nn.relu(y)
        >>> p = JaxGradientProvider(net, input_shape=(9, 9, 1))
        >>> p.output_shapes((9, 9))
        {'output': (4, 4)}
        >>> maps = p.gradient_maps((9, 9), "output", [(0, 0)])
        >>> (maps[0, :4, :4] > 0).astype(int)  # unit (0, 0) sees a 3x3 window
        array([[1, 1, 1, 0],
               [1, 1, 1, 0],
               [1, 1, 1, 0],
               [0, 0, 0, 0]])
    """

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int | None] | None = None,
        output: str | Sequence[str] | None = None,
        dtype: str = "float64",
        linearize: bool = True,
        narrow: bool = True,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        kit.check_dtype(dtype)
        if not isinstance(narrow, bool):
            raise OptionError(f"narrow={narrow!r} must be True or False")
        self._narrow = narrow
        self._dtype_name = dtype
        self._linearize = linearize
        self._channels, self._spatial = kit.split_input_shape(
            input_shape, "channels_last", framework="JAX function or Flax"
        )
        self._model: Model = as_model(model, dict(call_kwargs or {}))
        owner = self._model.owner
        self._shared = (
            Shared()
            if owner is None
            else shared_for(owner, self._model.params, self._model.structure, call_kwargs or {})
        )
        self._traces: dict[tuple[int, ...], _Trace] = self._shared.traces
        self._lock = threading.RLock()
        self._params: list[Any] | None = None
        self._outputs = kit.resolve_outputs(
            output,
            lambda: [n for n in self._listing().names if n != MODEL_KEY],
            kind="output",
            naming=" Names are module paths joined with '/' (Flax), sown names, or key/index "
            "paths of a pytree output",
        )
        self._requested = tuple(self._outputs)

    @property
    def float32_scout(self) -> bool:
        """Narrowed, a float64 pass costs what a float32 one does: no second provider."""
        return not self._narrowing

    @property
    def thin_probes(self) -> bool:
        """Thin probes pay narrowed too: a probe's numpy pullback costs its size, and the
        second-size check at 1024 along an axis costs 1024 x the other axes (the 3-D net:
        2.8 s at 1024x64x64, 0.04 s thin); the few more shapes cost a trace each."""
        return True

    @property
    def _narrowing(self) -> bool:
        return self._narrow and self._linearize

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._spatial

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._requested

    def layer_names(self) -> tuple[str, ...]:
        """Every name ``output=`` accepts, modules first in definition or call order."""
        names = self._listing().names
        ordered = [p for p in self._model.module_paths if p in names]
        rest = [n for n in names if n != MODEL_KEY and n not in ordered]
        return (*ordered, *rest)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        trace = self._trace((1, *spatial_shape))
        return {name: self._spatial_of(trace, name, len(spatial_shape)) for name in self._requested}

    def gradient_maps(
        self,
        spatial_shape: tuple[int, ...],
        output_name: str,
        units: Sequence[tuple[int, ...]],
    ) -> np.ndarray:
        spatial_shape = tuple(spatial_shape)
        trace = self._trace((1, *spatial_shape))
        n_spatial = len(self._spatial_of(trace, output_name, len(spatial_shape)))
        shape = trace.shapes[self._key(output_name)]
        cotangents = np.zeros((len(units), *shape), dtype=self._dtype_name)
        for k, unit in enumerate(units):
            cotangents[(k, 0, *unit[:n_spatial])] = 1
        with self._precision():
            x = self._probe_input((1, *spatial_shape, self._channels))
            maps = self._compiled(trace, output_name, x, cotangents)
            result = maps(self._param_leaves(), x, cotangents)
            return np.asarray(result, dtype=np.float64)

    def border_free(self, spatial_shape: tuple[int, ...], output_name: str) -> bool:
        """Whether every unit of ``output_name`` provably reads no border at this size.

        True only for linearized programs made of unpadded convolutions and windows,
        elementwise layers and the like (the argument is :mod:`rfest_jax._borders`):
        every unit's field is then the same at every input size, shifted by the stride,
        and the estimator needs no check at a second size.
        """
        if not self._linearize:
            return False  # supports at a real input depend on where activations are zero
        spatial_shape = tuple(spatial_shape)
        trace = self._trace((1, *spatial_shape))
        leaf = trace.leaves.get(self._key(output_name))
        if leaf is None:
            return False
        with self._lock:
            if leaf not in trace.borders:
                trace.borders[leaf] = border_free(
                    trace.jaxpr, trace.plan(leaf), leaf, len(spatial_shape)
                )
            return trace.borders[leaf]

    def _compiled(self, trace: _Trace, name: str, x: Any, cotangents: np.ndarray) -> Any:
        """``maps(params, x, cotangents)``, built once per input shape, output and batch.

        Narrowed, the program runs in numpy where it can (see :mod:`rfest_jax._numpy_eval`):
        compiling it would cost a hundred times what running it does, at every new shape.
        """
        key = (
            self._key(name),  # a layer named "output" is not the model's output
            tuple(x.shape),
            cotangents.shape[0],
            self._dtype_name,
            self._linearize,
            self._narrow,
        )
        with self._lock:
            if key in trace.compiled:
                return trace.compiled[key]

            def maps(params: list[Any], x: Any, cotangents: Any) -> Any:
                _, pullback = jax.vjp(lambda x: self._forward(trace, name, x, params), x)
                (grads,) = jax.vmap(pullback)(cotangents)
                return jnp.abs(grads).sum(axis=-1)[:, 0]

            params = self._param_leaves()
            program: Any = None
            if self._narrowing:
                closed = jax.make_jaxpr(maps)(params, x, cotangents)
                program = numpy_program(closed)
            if program is None:
                program = _compiled_for_cpu(maps, params, x, cotangents)
            else:
                program = _NumpyMaps(program, lambda *args: _compiled_for_cpu(maps, *args))
            trace.compiled[key] = program
            return program

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray:
        """Signed gradient of ``output[unit]`` (channels summed) per sample, ``(N, C, *spatial)``.

        ``inputs`` is a channels-last batch ``(N, *spatial, C)``.
        """
        inputs = np.asarray(inputs)
        if inputs.ndim != len(self._spatial) + 2 or inputs.shape[-1] != self._channels:
            raise InputShapeError(
                f"inputs of shape {inputs.shape} do not match input_shape "
                f"{(*self._spatial, self._channels)}; pass a channels-last batch (N, *spatial, C)"
            )
        trace = self._trace(tuple(int(s) for s in inputs.shape[:-1]))
        n_spatial = len(self._spatial_of(trace, output_name, inputs.ndim - 2))
        with self._precision():
            x = jnp.asarray(inputs, dtype=self._dtype_name)
            y, pullback = jax.vjp(lambda x: self._forward(trace, output_name, x), x)
            cotangent = np.zeros(y.shape, dtype=self._dtype_name)
            index: tuple[Any, ...] = (slice(None), *unit[:n_spatial])
            cotangent[index] = 1
            (grad,) = pullback(jnp.asarray(cotangent))
            grad = np.asarray(grad, dtype=np.float64)
        return np.moveaxis(grad, -1, 1)

    def _forward(self, trace: _Trace, name: str, x: Any, params: list[Any] | None = None) -> Any:
        leaf = trace.leaves[self._key(name)]
        assert leaf is not None
        params = self._param_leaves() if params is None else params
        args = [Value(p) for p in params] + [Value(x, live=True)]
        (y,) = evaluate(
            trace.jaxpr,
            trace.consts,
            args,
            linearize=self._linearize,
            dtype=self._dtype_name,
            outputs=[leaf],
            equations=trace.plan(leaf),
            narrow=self._narrow,
        )
        return y.array

    def _param_leaves(self) -> list[Any]:
        with self._lock:
            if self._params is None and self._linearize:  # constants: shared per model
                self._params = self._shared.params.get(self._dtype_name)
            if self._params is None:
                model = self._model
                params = model.linearized_params if self._linearize else model.params
                self._params = [self._cast(p) for p in jax.tree.leaves(params)]
                if self._linearize:
                    self._shared.params[self._dtype_name] = self._params
            return self._params

    def _cast(self, leaf: Any) -> Any:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype != self._dtype_name:
            # Through numpy: a JAX cast compiles one XLA program per distinct shape.
            return jax.device_put(np.asarray(leaf).astype(self._dtype_name))
        return leaf

    def _probe_input(self, shape: tuple[int, ...]) -> Any:
        if self._linearize:  # numpy: jnp.ones compiles a program per shape
            return jax.device_put(np.ones(shape, dtype=self._dtype_name))
        values = 0.5 + np.random.default_rng(0).random(shape)
        return jax.device_put(values.astype(self._dtype_name))

    def _precision(self) -> Any:
        return jax.enable_x64(True) if self._dtype_name == "float64" else nullcontext()

    def _trace(self, shape: tuple[int, ...]) -> _Trace:
        with self._lock:
            if shape not in self._traces:
                self._traces[shape] = self._make_trace(shape)
            return self._traces[shape]

    def _make_trace(self, shape: tuple[int, ...]) -> _Trace:
        names: list[str] = []
        counts: list[int] = []

        def flat(params: Any, x: Any) -> list[Any]:
            named = self._model.run(params, x)
            names[:] = list(named)
            values = list(named.values())
            counts[:] = [len(jax.tree.leaves(v)) for v in values]
            return values

        # Traced in the user's own configuration (lax needs matching dtypes, and the
        # user's weights are float32 unless x64 is on); evaluation promotes to the dtype.
        with _model_errors(shape, self._channels):
            spec = jax.ShapeDtypeStruct(  # type: ignore[no-untyped-call]
                (*shape, self._channels), _default_float()
            )
            closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(self._model.params, spec)
        leaves: dict[str, int | None] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        start = 0
        for name, count, value in zip(names, counts, out_shapes, strict=True):
            single = count == 1 and hasattr(value, "shape")
            leaves[name] = start if single else None
            if single:
                shapes[name] = tuple(int(s) for s in value.shape)
            start += count
        return _Trace(closed.jaxpr, list(closed.consts), tuple(names), leaves, shapes)

    def _listing(self) -> _Trace:
        spatial = tuple(_LISTING_SIZE if s is None else s for s in self._spatial)
        return self._trace((1, *spatial))

    def _key(self, name: str) -> str:
        """The trace's key of reported output ``name``."""
        return MODEL_KEY if self._outputs.get(name, name) is None else name

    def _spatial_of(self, trace: _Trace, name: str, spatial_axes: int) -> tuple[int, ...]:
        if trace.leaves.get(self._key(name)) is None:
            if self._key(name) == MODEL_KEY:
                raise OutputNotFoundError(
                    "the model returns a pytree, not an array; name the value you want "
                    "with output=..., e.g. one of "
                    f"{', '.join(repr(n) for n in trace.names[1:5])}"
                )
            raise OutputNotFoundError(
                f"output {name!r} is not a single array (a module returning a tuple?); "
                f"choose one of its submodules or leaves"
            )
        return kit.output_spatial_shape(
            name, trace.shapes[self._key(name)], spatial_axes, "channels_last"
        )


_CPU_OPTIONS: dict[str, str | bool] = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""XLA's CPU compiler hands some fused float64 operations to YNNPACK (jaxlib 0.10.2),
which returned overflowing garbage inside linearized programs: Keras' MobileNetV3Small at
full width (``narrow=False``) came out NaN compiled and exact run op by op, and exact
compiled with this fusion off (``test_narrowed_maps_have_the_full_width_support`` in
``tests/test_keras_applications.py``, on JAX in ``nox -s keras_applications_backends``).
It is off for rfest's programs only (a per-program option; the user's own ``jax.jit`` is
not affected). Other compiler options are left alone: ``xla_backend_optimization_level=1``
halves compile time but aborted the whole suite (TensorFlow in the same process)."""


def _compiled_for_cpu(function: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(function)`` compiled for ``args``, with :data:`_CPU_OPTIONS` on CPU."""
    lowered = jax.jit(function).lower(*args)
    on_cpu = all(device.platform == "cpu" for device in jax.devices())
    return lowered.compile(compiler_options=_CPU_OPTIONS if on_cpu else None)


class _NumpyMaps:
    """A gradient-map program run in numpy; compiled (once) if numpy cannot run it."""

    def __init__(self, program: NumpyProgram, compile: Callable[..., Any]) -> None:
        self._program: NumpyProgram | None = program
        self._compile = compile
        self._compiled: Any = None

    def __call__(self, params: list[Any], x: Any, cotangents: np.ndarray) -> Any:
        if self._program is not None:
            try:
                (maps,) = self._program(*jax.tree.leaves([params, x, cotangents]))
                return maps
            except Unsupported:
                self._program = None
        if self._compiled is None:
            self._compiled = self._compile(params, x, cotangents)
        return self._compiled(params, x, cotangents)


def _default_float() -> Any:
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _model_errors(shape: tuple[int, ...], channels: int) -> Any:
    return kit.model_errors(
        (*shape, channels),
        "(batch, *spatial, channels)",
        " Check that input_shape=(*spatial, C) matches what the model takes (channels last)",
    )
