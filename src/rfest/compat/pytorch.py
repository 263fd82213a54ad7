"""``receptivefield.pytorch`` on rfest: `PytorchReceptiveField`.

As in ``receptivefield``, ``model_func()`` returns a fresh ``nn.Module`` whose
``forward`` stores the tensors to measure in a list ``self.feature_maps``. rfest finds
the submodule that returns each of them and measures that output, exactly, on a
linearized view of the model (the module is not modified).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rfest._api import fields_of
from rfest._errors import OutputNotFoundError
from rfest._result import ReceptiveField
from rfest._session import Session
from rfest.compat._base import CompatReceptiveField, open_session
from rfest.compat.types import FeatureMapDescription, GridShape, ImageShape

__all__ = ["PytorchReceptiveField"]


class PytorchReceptiveField(CompatReceptiveField):
    """Receptive fields of the feature maps a PyTorch module stores in ``feature_maps``.

    Args:
        model_func: called with no arguments; returns the ``nn.Module``.

    Example:
        >>> import torch.nn as nn
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(3, 4, 5)
        ...         self.pool = nn.AvgPool2d(2)
        ...     def forward(self, x):
        ...         x = self.pool(self.conv(x))
        ...         self.feature_maps = [x]
        ...         return x
        >>> (fm,) = PytorchReceptiveField(Net).compute(input_shape=(32, 32, 3))
        >>> fm.rf
        ReceptiveFieldDescription(offset=(3.0, 3.0), stride=(2.0, 2.0), size=Size(w=6, h=6))
    """

    def __init__(self, model_func: Callable[[], Any]) -> None:
        super().__init__(model_func)
        self._session: Session | None = None
        self._names: list[str | None] = []

    def compute(self, input_shape: Sequence[int], **options: Any) -> list[FeatureMapDescription]:
        """Measure every feature map for an input of ``input_shape = (width, height,
        channels)``; ``options`` go to `rfest.compute` (``dtype``, ``linearize``...).
        """
        shape = ImageShape(*input_shape)
        model = self._model_func()
        names, channels = _feature_map_sources(model, shape)
        session = open_session(model, (shape.c, shape.h, shape.w), "torch", options)
        measured: dict[str | None, ReceptiveField] = {}
        named = tuple(n for n in dict.fromkeys(names) if n is not None)
        if named:
            measured.update(fields_of(session, named))
        if None in names:
            measured[None] = fields_of(session, None)
        fields = [measured[n] for n in names]
        self._session, self._names = session, names
        outputs = [
            GridShape(n=1, w=rf.output_shape[1], h=rf.output_shape[0], c=c)
            for rf, c in zip(fields, channels, strict=True)
        ]
        return self._store(fields, GridShape(n=1, w=shape.w, h=shape.h, c=shape.c), outputs)

    def _gradient(self, fm_id: int, unit: tuple[int, int]) -> np.ndarray:
        assert self._session is not None
        return self._session.gradient_map(self._names[fm_id], unit)


def _feature_map_sources(model: Any, shape: ImageShape) -> tuple[list[str | None], list[int]]:
    """Name of the submodule that returns each tensor in ``model.feature_maps`` (None for
    the model's own output), and each feature map's channel count."""
    import torch

    sources: dict[int, tuple[str, Any]] = {}  # the tensors are kept: ids stay unique

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                sources[id(output)] = (name, output)  # the outermost module returning it wins

        return hook

    handles = [
        module.register_forward_hook(hook_for(name))
        for name, module in model.named_modules()
        if name
    ]
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else "cpu"
    try:
        with torch.no_grad():
            result = model(torch.zeros(1, shape.c, shape.h, shape.w, device=device))
    finally:
        for handle in handles:
            handle.remove()
    feature_maps = model.__dict__.get("feature_maps")
    if not isinstance(feature_maps, list):
        raise OutputNotFoundError(
            "the module's forward() must store the tensors to measure in a list "
            "self.feature_maps (as receptivefield required); or call rfest.compute(model, "
            "input_shape, output=[module names]) directly"
        )
    names: list[str | None] = []
    for k, tensor in enumerate(feature_maps):
        if id(tensor) in sources:
            names.append(sources[id(tensor)][0])
        elif tensor is result:
            names.append(None)
        else:
            raise OutputNotFoundError(
                f"feature_maps[{k}] is not returned by any submodule, so rfest cannot name "
                f"it; compute it inside a submodule, or pass it through one (an "
                f"nn.Identity() returns its input as is)"
            )
    return names, [int(t.shape[1]) for t in feature_maps]
