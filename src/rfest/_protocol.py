"""The contract between the framework-blind estimator and a framework backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from rfest.kit._tokens import TokenGrid

__all__ = [
    "GradientProvider",
    "InputGradientProvider",
    "LayerListingProvider",
    "TokenGridProvider",
]


@runtime_checkable
class GradientProvider(Protocol):
    """What a backend gives the estimator. Only plain tuples and numpy arrays cross it.

    A backend's entry point loads a factory ``factory(model, **options)`` returning an
    object with these members; nothing has to be inherited. Shapes are *spatial* only
    (no batch or channel axis), in the order of the input's spatial axes.

    ``spatial_shape``
        The spatial input size the user asked for; ``None`` where any size will do.
    ``output_names``
        The outputs requested, in the order results are returned.
    ``output_shapes(spatial_shape)``
        The spatial shape of every requested output when the input has ``spatial_shape``
        (``()`` for an output with no spatial axes). Raises
        :class:`rfest.ModelCallError` when the model cannot take that size.
    ``gradient_maps(spatial_shape, output_name, units)``
        An array of shape ``(len(units), *spatial_shape)``: for each unit (a spatial index
        into the output), the magnitude of the gradient of that unit (summed over
        channels) with respect to a strictly positive input, summed over input
        channels. Probes must not influence each other (use the batch axis).

    Optional: ``float32_scout`` (default True). When float64 is asked for, ``compute``
    also makes a float32 provider for the cheap thin probes and confirms its answers in
    float64; a backend for which a second provider costs more than it saves sets it False.
    Optional: ``thin_probes`` (default True). Each axis is first measured on an input thin
    in the other axes; a backend for which each new probe shape costs more than its size
    (a compilation per shape) sets it False, and each axis is measured at the user's size.
    Optional: ``border_free(spatial_shape, output_name)`` (default False). True where
    the backend proves that every unit's field at that input size meets no border or
    padding anywhere in the network (the same field at every size, shifted by the
    stride); the estimator then skips its check of a fit at a second, larger size.
    Optional: ``axes_alike(output_name)`` (default False). True where the backend proves
    that swapping two spatial axes of any input swaps them in every gradient map (every
    layer the same along every axis: kernels, strides, dilations, paddings, crops); the
    estimator then measures one of two axes of the same input size and gives the other
    its answer.
    ``gradient_maps_many(spatial_shape, [(output_name, units), ...])``, one array per
    request as ``gradient_maps`` gives it, lets `rfest.report` serve many layers' requests
    in one pass (see ``rfest._batch``); ``execution_order()`` and ``inferred_input_shape``
    are described in docs/plugins.md.

    Example:
        >>> import numpy as np
        >>> class Identity1D:
        ...     spatial_shape = (8,)
        ...     output_names = ("output",)
        ...     def output_shapes(self, spatial_shape):
        ...         return {"output": tuple(spatial_shape)}
        ...     def gradient_maps(self, spatial_shape, output_name, units):
        ...         maps = np.zeros((len(units), *spatial_shape))
        ...         for k, (i,) in enumerate(units):
        ...             maps[k, i] = 1.0
        ...         return maps
        >>> isinstance(Identity1D(), GradientProvider)
        True
    """

    @property
    def spatial_shape(self) -> tuple[int | None, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]: ...

    def gradient_maps(
        self,
        spatial_shape: tuple[int, ...],
        output_name: str,
        units: Sequence[tuple[int, ...]],
    ) -> np.ndarray: ...


@runtime_checkable
class InputGradientProvider(GradientProvider, Protocol):
    """A provider that can also differentiate at inputs the caller supplies.

    Used by analyses on the real model (effective receptive field). Build the provider
    with ``linearize=False`` to get the real weights and activations.

    ``input_gradients(inputs, output_name, unit)``
        ``inputs``: a batch ``(N, *sample_shape)`` in the framework's own layout (PyTorch
        ``(N, C, *spatial)``, Keras/JAX ``(N, *spatial, C)``). Returns the signed gradient
        of ``output[unit]`` (``unit`` indexes the output's spatial axes as reported by
        ``output_shapes``; the unit's channels are summed) with respect to each sample,
        as float64 ``(N, C, *spatial)``: channels first whatever the framework.
    """

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray: ...


@runtime_checkable
class LayerListingProvider(GradientProvider, Protocol):
    """A provider that can list the model's layers (for per-layer reports).

    ``layer_names()``
        Every name the backend accepts as ``output=``, in the order the layers are
        defined or run (PyTorch ``named_modules()`` names without the root; Keras layer
        names without input layers; Flax module paths).
    """

    def layer_names(self) -> tuple[str, ...]: ...


@runtime_checkable
class TokenGridProvider(InputGradientProvider, Protocol):
    """A provider whose outputs are feature maps only, able to lay token outputs out.

    `rfest.effective` with ``token_grid=`` maps a token output ``(N, tokens, C)`` (vision
    transformers) onto its patch grid. A provider that reports such an output as
    ``(tokens,)`` needs nothing more. One that cannot (PyTorch reports only
    ``(N, C, *spatial)`` and ``(N, features)``) offers:

    ``token_grid_model(layout)``
        A model of the same framework, built without modifying the user's, whose output
        is this provider's (single) requested output's patch tokens laid out as
        ``(N, C, *layout.grid)`` (the ``layout.prefix`` leading tokens dropped). rfest
        then measures that model like any other.
    """

    def token_grid_model(self, layout: TokenGrid) -> Any: ...
