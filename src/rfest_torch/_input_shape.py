"""``input_shape`` of a PyTorch model: checked as the user wrote it, or read from the model.

A PyTorch module does not declare its input, but its first convolution does say the
channel count (``in_channels``) and the number of spatial axes (Conv1d/2d/3d); a fully
convolutional net takes any spatial size, so those are left free (``None``). Other first
layers (``Linear`` on a flattened input, embeddings, recurrent layers) do not say how the
input is laid out: rfest asks for ``input_shape`` then. The provider checks, in its first
pass, that the layer inferred from really is the first layer with weights the forward
pass runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from rfest import InputShapeError, kit

__all__ = ["InputShape", "check_first_layer", "resolve_input_shape"]

_CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass(frozen=True)
class InputShape:
    """``(C, *spatial)`` split; ``inferred_from`` names the layer it was read from, if any."""

    channels: int
    spatial: tuple[int | None, ...]
    inferred_from: str | None = None

    @property
    def full(self) -> tuple[int | None, ...]:
        return (self.channels, *self.spatial)


def resolve_input_shape(input_shape: Sequence[int | None] | None, model: nn.Module) -> InputShape:
    """The user's ``input_shape``, checked, or the one ``model``'s first layer declares."""
    if input_shape is None:
        return _inferred(model)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise InputShapeError(
            f"input_shape={input_shape!r} must be a tuple (C, *spatial) without the batch "
            f"axis, e.g. (3, 224, 224)"
        )
    channels, spatial = kit.split_input_shape(input_shape, "channels_first", framework="PyTorch")
    return InputShape(channels, spatial)


def check_first_layer(shape: InputShape, first_run: str | None) -> None:
    """The layer ``shape`` was inferred from must be the first layer with weights to run."""
    if shape.inferred_from is None or first_run is None or first_run == shape.inferred_from:
        return
    raise InputShapeError(
        f"input_shape was not given, and rfest read {shape.full} from {shape.inferred_from!r} "
        f"(the first convolution the model defines), but the forward pass first runs "
        f"{first_run!r}; pass input_shape=(C, *spatial) for the input the model takes"
    )


def _inferred(model: nn.Module) -> InputShape:
    for name, module in model.named_modules():
        if isinstance(module, _CONVOLUTIONS):
            if isinstance(module, nn.modules.lazy.LazyModuleMixin) or module.in_channels < 1:
                break
            rank = len(module.kernel_size)
            return InputShape(module.in_channels, (None,) * rank, inferred_from=name)
        if _owns_weights(module):
            kind = type(module).__name__
            flat = " on a flattened input" if isinstance(module, nn.Linear) else ""
            raise InputShapeError(
                f"cannot infer input_shape: the first layer with weights, {name!r} "
                f"({kind}{flat}), does not say how the input is laid out in space; pass "
                f"input_shape=(C, *spatial), e.g. (3, 224, 224)"
            )
    raise InputShapeError(
        f"cannot infer input_shape: a PyTorch module does not declare its input and "
        f"{type(model).__name__} has no first convolution with a known channel count to read "
        f"it from; pass input_shape=(C, *spatial), e.g. (3, 224, 224); spatial sizes may be "
        f"None to let rfest choose"
    )


def _owns_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))
