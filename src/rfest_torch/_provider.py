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
    UnrecognizedModelError,
    kit,
)
from rfest.kit import MODEL_OUTPUT, TokenGrid
from rfest_torch._collapse import ChannelCollapseMode
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
        input_shape: ``(C, *spatial)`` of one sample; spatial sizes may be None.
        output: None (the model's output), a ``named_modules()`` name, or a list of names.
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
        self._dtype = _DTYPES[dtype]
        self._linearize = linearize
        if not isinstance(narrow, bool):
            raise OptionError(f"narrow={narrow!r} must be True or False")
        # Linearized passes run channel-collapsed until the model does something a
        # collapsed tensor cannot (an in-place write, a view across channels).
        self._collapse = linearize and narrow
        self._channels, self._spatial = kit.split_input_shape(
            input_shape, "channels_first", framework="PyTorch"
        )
        self._modules = self._resolve_outputs(output)
        self._device = _device_of(self._model)
        self._shapes = kit.ShapeCache()
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

    def layer_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._model.named_modules() if name)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        spatial_shape = tuple(spatial_shape)

        def shapes() -> dict[str, tuple[int, ...]]:
            shape = (1, self._channels, *spatial_shape)
            if math.prod(shape) <= _REAL_SHAPE_PASS_LIMIT:
                outputs = self._shape_pass(shape, self._device)
            else:
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

        ((name, module),) = self._modules.items()
        spatial = tuple(int(s) for s in self._spatial if s is not None)
        return token_grid_model(self._model, name, module, layout, spatial)

    def _shape_pass(
        self, shape: tuple[int, ...], device: torch.device | str
    ) -> dict[str, torch.Tensor]:
        """A float32 forward without gradient (on 'meta': shapes only, no compute)."""
        with torch.no_grad():
            return self._run(
                lambda x: self._forward(x, device, dtype=torch.float32),
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
        only: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = {only: self._modules[only]} if only is not None else self._modules
        captured: dict[str, torch.Tensor] = {}
        with (
            _forward_lock,
            ExitStack() as stack,
            kit.model_errors(tuple(x.shape), "(batch, channels, *spatial)", _CALL_HINT),
        ):
            stack.enter_context(self._capturing(wanted, captured))
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
        self, wanted: Mapping[str, nn.Module | None], captured: dict[str, torch.Tensor]
    ) -> Iterator[None]:
        local = self._local
        stop_early = all(module is not None for module in wanted.values())

        def hook_for(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if getattr(local, "captured", None) is not captured:
                    return
                if not isinstance(output, torch.Tensor):
                    raise OutputNotFoundError(
                        f"module {name!r} returns a {type(output).__name__}, not a tensor; "
                        f"choose one of its submodules as output"
                    )
                captured.setdefault(name, output)
                if stop_early and len(captured) == len(wanted):
                    raise _AllCaptured

            return hook

        handles = [
            module.register_forward_hook(hook_for(name))
            for name, module in wanted.items()
            if module is not None
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

    def _resolve_outputs(self, output: str | Sequence[str] | None) -> dict[str, nn.Module | None]:
        modules = dict(self._model.named_modules())
        listed = [name for name in modules if name]
        resolved = kit.resolve_outputs(
            output,
            listed,
            kind="module",
            naming=f" Names are those of model.named_modules(), e.g. "
            f"{', '.join(repr(n) for n in listed[:3])}",
        )
        return {name: None if layer is None else modules[layer] for name, layer in resolved.items()}


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
