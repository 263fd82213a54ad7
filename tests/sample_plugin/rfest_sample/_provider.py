"""The rfest backend of the toy framework: only what the framework decides is written here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rfest import UnrecognizedModelError, kit
from rfest_sample._framework import AvgPool, Conv, Layer, MaxPool, Net, backward, forward, out_size


def provider(model: Any, **options: Any) -> SampleProvider:
    """Entry-point factory: ``rfest_sample = rfest_sample:provider`` in ``rfest.backends``."""
    return SampleProvider(model, **options)


class SampleProvider:
    """Gradient maps of a `Net` by its adjoint; a `rfest.LayerListingProvider`."""

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int | None] | None = None,
        output: str | Sequence[str] | None = None,
        dtype: str = "float64",
        linearize: bool = True,
    ) -> None:
        if not isinstance(model, Net):
            raise UnrecognizedModelError(f"rfest_sample takes a Net, not {type(model).__name__}")
        self._net = model
        self._dtype = dtype
        self._linearize = linearize
        self._channels, self._spatial = kit.split_input_shape(
            input_shape, "channels_first", framework="rfest_sample"
        )
        self._outputs = kit.resolve_outputs(output, list(model.layers))
        self._shapes = kit.ShapeCache()

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._spatial

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def layer_names(self) -> tuple[str, ...]:
        return tuple(self._net.layers)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        def shapes() -> dict[str, tuple[int, ...]]:
            return {name: self._shape_at(name, spatial_shape) for name in self._outputs}

        return self._shapes.get(spatial_shape, shapes)

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        shape = (self._channels, *spatial_shape)
        x = kit.probe_input(shape, linearize=self._linearize, dtype=self._dtype)
        layers = self._layers_up_to(output_name)
        with kit.model_errors(shape, "(channels, *spatial)"):
            inputs = []
            for layer in layers:
                inputs.append(x)
                x = forward(layer, x)
            maps = []
            for unit in units:
                grad = np.zeros_like(x)
                grad[(slice(None), *unit)] = 1.0
                for layer, seen in zip(reversed(layers), reversed(inputs), strict=True):
                    grad = backward(layer, seen, grad)
                maps.append(np.abs(grad).sum(axis=0))
        return np.asarray(maps, dtype=np.float64)

    def _shape_at(self, name: str, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(spatial_shape)
        with kit.model_errors((self._channels, *shape), "(channels, *spatial)"):
            for layer in self._layers_up_to(name):
                shape = tuple(out_size(layer, n) for n in shape)
        return shape

    def _layers_up_to(self, name: str) -> list[Layer]:
        """The layers that compute output ``name``, linearized when asked."""
        target = self._outputs.get(name, name)
        layers = []
        for layer_name, layer in self._net.layers.items():
            layers.append(self._linearized(layer) if self._linearize else layer)
            if layer_name == target:
                break
        return layers

    @staticmethod
    def _linearized(layer: Layer) -> Layer:
        if isinstance(layer, MaxPool):
            return AvgPool(layer.kernel, layer.stride)
        if isinstance(layer, Conv):
            k = layer.kernel
            return Conv(np.full((k, k), 1.0 / (k * k)), layer.stride, layer.padding, layer.dilation)
        return layer
