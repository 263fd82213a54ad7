"""The PyTorch :class:`rfest.GradientProvider`: autograd on any ``nn.Module``.

The user's module is never modified: parameters and buffers are substituted for the
duration of a pass, as ``torch.func.functional_call`` does it, and put back in
``finally`` (positive constants when linearizing, copies otherwise); capture hooks are
removed in ``finally``; training flags are not touched (the linearization mode
neutralises batch statistics and dropout); the grad mode is restored by its context
manager. Linearized passes run channel-collapsed (:mod:`rfest_torch._collapse`).
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from rfest import (
    InputShapeError,
    ModelCallError,
    OptionError,
    OutputNotFoundError,
    RFEstError,
    UnrecognizedModelError,
    kit,
)
from rfest.kit import MODEL_OUTPUT, TokenGrid
from rfest_torch._calls import CALL_SEPARATOR, Target, call_names, check_calls, counting_calls
from rfest_torch._calls import parse as parse_call
from rfest_torch._collapse import ChannelCollapseMode, is_collapsed, narrow_channel
from rfest_torch._input_shape import check_first_layer, resolve_input_shape
from rfest_torch._linearize import EvalMode, LinearizedMode

__all__ = ["TorchGradientProvider", "provider"]

_T = TypeVar("_T")

_CALL_HINT = (
    " Check that input_shape=(C, *spatial) matches what the model takes: the channel "
    "count, the number of spatial axes, and a size large enough for it"
)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Below this many input elements a real float32 forward finds output shapes faster than
# the meta device, whose first use costs about a second of one-time set-up.
_REAL_SHAPE_PASS_LIMIT = 2**21

# Hooks live on the user's modules while a forward runs; one forward at a time keeps two
# threads from seeing each other's hooks.
_forward_lock = threading.RLock()


class _AllCaptured(Exception):
    """Raised from a hook to stop a forward pass once every requested output is seen."""


def provider(model: Any, **options: Any) -> TorchGradientProvider:
    """Entry-point factory of the ``torch`` backend (see :class:`TorchGradientProvider`)."""
    return TorchGradientProvider(model, **options)


class TorchGradientProvider:
    """Gradient maps of a PyTorch module's outputs, by autograd on a linearized pass.

    Args:
        model: any ``torch.nn.Module`` (a ``torch.compile`` wrapper is unwrapped).
        input_shape: ``(C, *spatial)`` of one sample; spatial sizes may be None. None:
            read from the first convolution (see :mod:`rfest_torch._input_shape`).
        output: None (the model's output), a ``named_modules()`` name, or a list of names;
            ``"name:k"`` is call k of a module called several times
            (see :mod:`rfest_torch._calls`).
        dtype: ``"float64"`` or ``"float32"``.
        linearize: see :func:`rfest.compute`.
        narrow: run the linearized pass on one channel wherever all channels agree (same
            values, far less work; see :mod:`rfest_torch._collapse`); False keeps widths.
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
        **unknown: Any,
    ) -> None:
        if unknown:
            raise OptionError(
                f"unknown option(s) {', '.join(sorted(unknown))} for the torch backend; it "
                f"takes input_shape, output, dtype, linearize, narrow, max_input_size"
            )
        if not isinstance(model, nn.Module):
            raise UnrecognizedModelError(
                f"the torch backend takes a torch.nn.Module, not a {type(model).__name__}"
            )
        self._model: nn.Module = getattr(model, "_orig_mod", model)
        _check_single_input(self._model)
        self._dtype = _DTYPES[kit.check_dtype(dtype)]
        self._linearize = linearize
        if not isinstance(narrow, bool):
            raise OptionError(f"narrow={narrow!r} must be True or False")
        # Linearized passes run channel-collapsed until the model does something a
        # collapsed tensor cannot (an in-place write, a view across channels).
        self._collapse = linearize and narrow
        self._input = resolve_input_shape(input_shape, self._model)
        self._channels, self._spatial = self._input.channels, self._input.spatial
        self._modules = self._resolve_outputs(output)
        self._device = _device_of(self._model)
        self._shapes = kit.ShapeCache()
        # Calls of every named module in one forward pass, counted in the first shape pass,
        # and every call in the order it returned.
        self._call_counts: dict[str, int] | None = None
        self._call_order: list[tuple[str, int]] = []
        self._substitute_cache: dict[tuple[str, torch.dtype], dict[str, torch.Tensor]] = {}
        self._slot_cache: dict[str, list[tuple[nn.Module, str, str]]] = {}
        self._buffer_cache: dict[tuple[str, str, torch.dtype], tuple[torch.Tensor, int]] = {}
        self._local = threading.local()

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._spatial

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._modules)

    @property
    def inferred_input_shape(self) -> tuple[int | None, ...] | None:
        """``(C, *spatial)`` read from the model's first convolution when no
        ``input_shape`` was given (spatial sizes None); None when the user gave one."""
        return self._input.full if self._input.inferred_from is not None else None

    def layer_names(self) -> tuple[str, ...]:
        """``named_modules()`` names; a module called k times gives ``name:1`` .. ``name:k``."""
        counts = self._counted_calls()
        return tuple(
            call
            for name, _ in self._model.named_modules()
            if name
            for call in call_names(name, counts.get(name, 1))
        )

    def execution_order(self) -> tuple[tuple[str, bool], ...]:
        """``(layer name, is a leaf)`` of every call, in the order the calls return in one
        forward pass (names as `layer_names` gives them; modules never run are absent)."""
        counts = self._counted_calls()
        modules = dict(self._model.named_modules())
        return tuple(
            (
                call_names(name, counts[name])[k - 1],
                next(iter(modules[name].children()), None) is None,
            )
            for name, k in self._call_order
        )

    def _counted_calls(self) -> dict[str, int]:
        """Call counts of the modules, from one pass at the base size ({} if it fails)."""
        if self._call_counts is None:
            # Any size the model runs at counts the same calls; 32 is rfest's free size.
            base = tuple(32 if n is None else int(n) for n in self._spatial)
            try:
                self.output_shapes(base)
            except RFEstError:
                return {}
        return self._call_counts or {}

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        spatial_shape = tuple(spatial_shape)

        def shapes() -> dict[str, tuple[int, ...]]:
            shape = (1, self._channels, *spatial_shape)
            outputs = self._census(shape) if self._call_counts is None else None
            if outputs is None and math.prod(shape) <= _REAL_SHAPE_PASS_LIMIT:
                outputs = self._shape_pass(shape, self._device)
            elif outputs is None:
                try:
                    outputs = self._shape_pass(shape, "meta")
                except ModelCallError:
                    outputs = self._shape_pass(shape, self._device)
            return {
                name: kit.output_spatial_shape(
                    name, tuple(tensor.shape), len(spatial_shape), "channels_first"
                )
                for name, tensor in outputs.items()
            }

        return self._shapes.get(spatial_shape, shapes)

    def token_grid_model(self, layout: TokenGrid) -> nn.Module:
        """A module whose output is this provider's token output laid out as
        ``(N, C, *grid)`` (see `rfest.TokenGridProvider`); the model is not modified."""
        from rfest_torch._tokens import token_grid_model

        ((name, target),) = self._modules.items()
        module = None if target is None else target.module
        spatial = tuple(int(s) for s in self._spatial if s is not None)
        return token_grid_model(self._model, name, module, layout, spatial)

    def _census(self, shape: tuple[int, ...]) -> dict[str, torch.Tensor] | None:
        """Count every module's calls in one whole pass, and refuse names they make
        ambiguous; the outputs of that pass, or None if the model raised on the way (the
        calls counted until then are kept: the layers before a fixed-size head)."""
        counts: dict[str, int] = {}
        order: list[tuple[str, int]] = []
        devices: list[torch.device | str] = [self._device]
        if math.prod(shape) > _REAL_SHAPE_PASS_LIMIT:
            devices.insert(0, "meta")
        outputs: dict[str, torch.Tensor] | None = None
        for device in devices:
            try:
                outputs = self._shape_pass(shape, device, counts, order)
                break
            except ModelCallError as exc:
                if device == devices[-1] and self._input.inferred_from is not None:
                    raise InputShapeError(
                        f"input_shape was not given: rfest read {self._input.full} from "
                        f"{self._input.inferred_from!r} and probed an input of shape "
                        f"{shape[1:]}, on which the model fails ({exc}); pass "
                        f"input_shape=(C, *spatial) with sizes the model takes"
                    ) from exc
        self._call_counts, self._call_order = counts, order
        modules = dict(self._model.named_modules())
        first_run = next(
            (n for n in counts if any(True for _ in modules[n].parameters(recurse=False))),
            None,
        )
        check_first_layer(self._input, first_run)
        for name, target in self._modules.items():
            if target is not None:
                check_calls(name, target, counts.get(target.module_name, 0))
        return outputs

    def _shape_pass(
        self,
        shape: tuple[int, ...],
        device: torch.device | str,
        counts: dict[str, int] | None = None,
        order: list[tuple[str, int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """A float32 forward without gradient (on 'meta': shapes only, no compute); with
        ``counts``, runs the whole model and counts every module's calls into it."""

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            if counts is not None:
                counts.clear()  # a collapsed attempt that failed is retried plainly
            if order is not None:
                order.clear()
            return self._forward(x, device, dtype=torch.float32, counts=counts, order=order)

        with torch.no_grad():
            return self._run(
                forward,
                shape,
                torch.float32,
                device,
                collapse=device != "meta",
            )

    def gradient_maps(
        self,
        spatial_shape: tuple[int, ...],
        output_name: str,
        units: Sequence[tuple[int, ...]],
    ) -> np.ndarray:
        shape = (len(units), self._channels, *spatial_shape)
        if self._call_counts is None:
            self.output_shapes(spatial_shape)  # counts calls: no ambiguous name is used

        def maps(x: torch.Tensor) -> np.ndarray:
            with torch.enable_grad():
                y = self._forward(x, self._device, only=output_name)[output_name]
                if not y.requires_grad:
                    return np.zeros(shape[:1] + shape[2:])
                cotangent = torch.zeros(y.shape, dtype=y.dtype, device=y.device)
                for k, unit in enumerate(units):
                    index: tuple[Any, ...] = (k, slice(None), *unit)
                    cotangent[index] = 1
                # A scalar, not grad_outputs: those make autograd import sympy (0.3 s).
                grads = torch.autograd.grad((y * cotangent).sum(), x, allow_unused=True)
            grad: torch.Tensor | None = grads[0]
            if grad is None:  # the output requires grad through parameters only
                return np.zeros(shape[:1] + shape[2:])
            return grad.detach().abs().sum(dim=1).to("cpu", torch.float64).numpy()

        return self._run(maps, shape, self._dtype, self._device, collapse=True, grad=True)

    def gradient_maps_many(
        self,
        spatial_shape: tuple[int, ...],
        requests: Sequence[tuple[str, Sequence[tuple[int, ...]]]],
    ) -> list[np.ndarray]:
        """``gradient_maps`` of several outputs in one forward and one backward pass.

        Each request's units get their own rows of the batch, and each output its own
        cotangent on its rows only, so no map mixes two outputs' gradients.
        """
        if self._call_counts is None:
            self.output_shapes(spatial_shape)
        counts = [len(units) for _, units in requests]
        shape = (sum(counts), self._channels, *spatial_shape)
        names = list(dict.fromkeys(name for name, _ in requests))

        def maps(x: torch.Tensor) -> list[np.ndarray]:
            with torch.enable_grad():
                outputs = self._forward(x, self._device, only=names, shield=True)
                total: torch.Tensor | None = None
                row = 0
                for name, units in requests:
                    y = outputs[name]
                    if y.requires_grad and units:
                        term = _units_sum(y, range(row, row + len(units)), units)
                        total = term if total is None else total + term
                    row += len(units)
                grads = (
                    (None,) if total is None else torch.autograd.grad(total, x, allow_unused=True)
                )
            grad: torch.Tensor | None = grads[0]
            if grad is None:
                every = np.zeros(shape[:1] + shape[2:])
            else:
                every = grad.detach().abs().sum(dim=1).to("cpu", torch.float64).numpy()
            return np.split(every, np.cumsum(counts)[:-1])

        return self._run(maps, shape, self._dtype, self._device, collapse=True, grad=True)

    def _run(
        self,
        function: Callable[[torch.Tensor], _T],
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        collapse: bool,
        grad: bool = False,
    ) -> _T:
        """``function(probe input)``, channel-collapsed while the model allows it.

        The probe input itself keeps its channels: their gradients may differ in sign
        (a model may subtract one input channel from another), and the maps sum their
        magnitudes. A failed collapsed pass is retried plainly, and the plain pass has the
        last word; only when the plain pass succeeds is collapsing given up for good (an
        input too small for the model fails both ways).
        """

        def plain() -> _T:
            return function(self._probe_input(shape, dtype, device).requires_grad_(grad))

        if not (collapse and self._collapse):
            return plain()
        try:
            with ChannelCollapseMode(), _native_convolutions():
                return function(self._probe_input(shape, dtype, device).requires_grad_(grad))
        except ModelCallError:
            result = plain()
            self._collapse = False
            return result

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=self._dtype, device=self._device)
        if x.dim() != len(self._spatial) + 2 or x.shape[1] != self._channels:
            raise InputShapeError(
                f"inputs of shape {tuple(x.shape)} do not match input_shape "
                f"{(self._channels, *self._spatial)}; pass a batch (N, C, *spatial)"
            )
        if self._call_counts is None:
            self.output_shapes(tuple(int(n) for n in x.shape[2:]))
        x.requires_grad_(True)
        with torch.enable_grad():
            y = self._forward(x, self._device, only=output_name)[output_name]
            if not y.requires_grad:
                return np.zeros(tuple(x.shape))
            index: tuple[Any, ...] = (slice(None), slice(None), *unit)
            grads = torch.autograd.grad(y[index].sum(), x, allow_unused=True)
        grad: torch.Tensor | None = grads[0]
        if grad is None:
            return np.zeros(tuple(x.shape))
        return grad.detach().to("cpu", torch.float64).numpy()

    def _probe_input(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        if self._linearize:  # made in place: no host copy of a large probe
            return torch.ones(shape, dtype=dtype, device=device)
        values = kit.probe_input(shape, linearize=False, dtype=str(dtype).rpartition(".")[2])
        return torch.from_numpy(values).to(device)

    def _forward(
        self,
        x: torch.Tensor,
        device: torch.device | str,
        only: str | Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        counts: dict[str, int] | None = None,
        shield: bool = False,
        order: list[tuple[str, int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        if only is None:
            wanted = self._modules
        else:
            wanted = {n: self._modules[n] for n in ([only] if isinstance(only, str) else only)}
        captured: dict[str, torch.Tensor] = {}
        with (
            _forward_lock,
            ExitStack() as stack,
            kit.model_errors(tuple(x.shape), "(batch, channels, *spatial)", _CALL_HINT),
        ):
            stack.enter_context(
                self._capturing(wanted, captured, stop_early=counts is None, shield=shield)
            )
            if counts is not None:
                local = self._local
                stack.enter_context(
                    counting_calls(
                        self._model,
                        counts,
                        lambda: getattr(local, "captured", None) is captured,
                        [] if order is None else order,
                    )
                )
            try:
                stack.enter_context(self._substituted(device, dtype or self._dtype))
                stack.enter_context(LinearizedMode() if self._linearize else EvalMode())
                result = self._model(x + 0)
            except _AllCaptured:
                return captured
        if MODEL_OUTPUT in wanted and wanted[MODEL_OUTPUT] is None:
            if not isinstance(result, torch.Tensor):
                raise OutputNotFoundError(
                    f"the model returns a {type(result).__name__}, not a tensor; name the "
                    f"module whose output you want with output='...'"
                )
            captured[MODEL_OUTPUT] = result
        return captured

    @contextmanager
    def _capturing(
        self,
        wanted: Mapping[str, Target | None],
        captured: dict[str, torch.Tensor],
        *,
        stop_early: bool = True,
        shield: bool = False,
    ) -> Iterator[None]:
        """Hooks that capture each wanted call's output. With ``shield`` the model goes on
        with a copy, so that a later in-place op (``out += identity``) cannot change what
        was captured while the forward runs past it."""
        local = self._local
        stop_early = stop_early and all(target is not None for target in wanted.values())

        def hook_for(name: str, target: Target) -> Any:
            calls = 0

            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                nonlocal calls
                if getattr(local, "captured", None) is not captured:
                    return None
                calls += 1
                if calls != target.index:
                    return None
                if not isinstance(output, torch.Tensor):
                    raise OutputNotFoundError(
                        f"module {name!r} returns a {type(output).__name__}, not a tensor; "
                        f"choose one of its submodules as output"
                    )
                captured.setdefault(name, output)
                if stop_early and len(captured) == len(wanted):
                    raise _AllCaptured
                return output + 0 if shield else None

            return hook

        handles = [
            target.module.register_forward_hook(hook_for(name, target))
            for name, target in wanted.items()
            if target is not None
        ]
        local.captured = captured
        try:
            yield
        finally:
            local.captured = None
            for handle in handles:
                handle.remove()

    @contextmanager
    def _substituted(self, device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
        """Parameters and buffers replaced in their modules' tables, restored on exit.

        Parameter substitutes are cached (constants or detached copies). Buffers are
        copies too, since a forward pass may update them in place (batch norm counts its
        batches); a copy that was written to is replaced before the next pass.
        """
        key = (str(device), dtype)
        if key not in self._substitute_cache:
            self._substitute_cache[key] = self._parameter_substitutes(device, dtype)
        substitutes = self._substitute_cache[key]
        originals: list[tuple[dict[str, Any], str, Any]] = []
        try:
            for owner, attribute, name in self._slots("_parameters"):
                originals.append((owner._parameters, attribute, owner._parameters[attribute]))
                owner._parameters[attribute] = substitutes[name]  # type: ignore[assignment]
            for owner, attribute, name in self._slots("_buffers"):
                buffer = owner._buffers[attribute]
                originals.append((owner._buffers, attribute, buffer))
                if buffer is not None:
                    owner._buffers[attribute] = self._buffer_copy(name, buffer, device, dtype)
            yield
        finally:
            for table, attribute, original in reversed(originals):
                table[attribute] = original

    def _buffer_copy(
        self, name: str, buffer: torch.Tensor, device: torch.device | str, dtype: torch.dtype
    ) -> torch.Tensor:
        key = (name, str(device), dtype)
        cached = self._buffer_cache.get(key)
        if cached is not None and cached[0]._version == cached[1]:
            return cached[0]
        where = device if device == "meta" else buffer.device
        copy = buffer.detach().to(where, dtype if buffer.is_floating_point() else buffer.dtype)
        copy = copy.clone() if copy.data_ptr() == buffer.data_ptr() else copy
        self._buffer_cache[key] = (copy, copy._version)
        return copy

    def _slots(self, table: str) -> list[tuple[nn.Module, str, str]]:
        """(owning module, attribute, full name) of every parameter or buffer, tied ones too."""
        if table not in self._slot_cache:
            named = (
                self._model.named_parameters(remove_duplicate=False)
                if table == "_parameters"
                else self._model.named_buffers(remove_duplicate=False)
            )
            slots = []
            for name, _ in named:
                prefix, _, attribute = name.rpartition(".")
                slots.append((self._model.get_submodule(prefix), attribute, name))
            self._slot_cache[table] = slots
        return self._slot_cache[table]

    def _parameter_substitutes(
        self, device: torch.device | str, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        substitutes: dict[str, torch.Tensor] = {}
        for name, parameter in self._model.named_parameters(remove_duplicate=False):
            where = device if device == "meta" else parameter.device
            if self._linearize and name.rpartition(".")[2] == "bias":
                value = torch.zeros((), dtype=dtype, device=where).expand(parameter.shape)
            elif self._linearize:
                fan_in = parameter[0].numel() if parameter.dim() >= 2 else 1
                value = torch.full((), 1.0 / fan_in, dtype=dtype, device=where)
                value = value.expand(parameter.shape)
            else:
                value = parameter.detach().to(where, dtype)
            substitutes[name] = value
        return substitutes

    def _resolve_outputs(self, output: str | Sequence[str] | None) -> dict[str, Target | None]:
        modules = dict(self._model.named_modules())
        listed = [name for name in modules if name]
        asked = (
            [output]
            if isinstance(output, str)
            else output
            if isinstance(output, list | tuple)
            else []
        )
        calls = [n for n in asked if isinstance(n, str) and parse_call(n, modules) is not None]
        resolved = kit.resolve_outputs(
            output,
            [*listed, *(n for n in calls if n not in modules)],
            kind="module",
            naming=f" Names are those of model.named_modules(), e.g. "
            f"{', '.join(repr(n) for n in listed[:3])}; call k of a module called several "
            f"times is 'name{CALL_SEPARATOR}k'",
        )
        return {
            name: None if layer is None else parse_call(layer, modules)
            for name, layer in resolved.items()
        }


def _units_sum(
    y: torch.Tensor, rows: Sequence[int], units: Sequence[tuple[int, ...]]
) -> torch.Tensor:
    """The sum over channels of ``y[row, :, *unit]`` for each row and its unit.

    Gathered rather than multiplied by a dense cotangent: a full-width cotangent per
    output would cost a full-width backward pass for each of them. A collapsed output
    is summed on its stored channel, times the width: the gradient is then exactly the
    one of the sum over all its (equal) channels.
    """
    scale = 1
    if is_collapsed(y):
        scale, y = y.shape[1], narrow_channel(y)
    index: tuple[Any, ...] = (
        torch.tensor(list(rows), device=y.device),
        slice(None),
        *(torch.tensor([u[a] for u in units], device=y.device) for a in range(len(units[0]))),
    )
    return y[index].sum() * scale


@contextmanager
def _native_convolutions() -> Iterator[None]:
    """oneDNN off: it is many times slower than PyTorch's own kernels on one channel."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def _check_single_input(model: nn.Module) -> None:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > 1:
        raise InputShapeError(
            f"{type(model).__name__}.forward takes {len(required)} inputs "
            f"({', '.join(required)}); rfest feeds one. Wrap the model in a module whose "
            f"forward(x) passes x as the input you want measured and fixed tensors for the rest"
        )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
