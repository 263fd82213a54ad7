"""``rfest.effective``: the effective receptive field of a unit, on any backend.

The heatmap is the mean over images of how much each input pixel contributes to one
output unit of the *real* model (its weights and activations, no linearization): the
gradient of the unit (summed over its channels) with respect to the input, turned into a
contribution (absolute value, or positive part) and summed over input channels. It needs
a provider with ``input_gradients`` (:class:`rfest.InputGradientProvider`) built with
``linearize=False``. Inputs stream batch by batch: memory holds one batch and one
accumulator, whatever the number of images.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from types import MappingProxyType
from typing import Any, TextIO

import numpy as np

from rfest._api import fields_of
from rfest._effective._result import EffectiveField
from rfest._effective._stats import DEFAULT_FRACTIONS, heatmap_statistics
from rfest._errors import (
    BackendError,
    EstimationError,
    InputShapeError,
    ModelCallError,
    NonFiniteGradientError,
    NonUniformWarning,
    OutputShapeError,
    RFEstError,
)
from rfest._options import (
    DEFAULT_MAX_INPUT_SIZE,
    Contribution,
    Dtype,
    ProbeOptions,
    check_choice,
    check_count,
    check_flag,
    check_single_output,
)
from rfest._protocol import InputGradientProvider, TokenGridProvider
from rfest._result import ReceptiveField
from rfest._session import Session
from rfest.kit._tokens import TokenGrid

__all__ = ["DEFAULT_RANDOM_IMAGES", "TheoreticalFieldWarning", "effective"]

DEFAULT_RANDOM_IMAGES = 64
"""Random images averaged when no inputs are given (ERF studies average 50 or more)."""

_CONTRIBUTIONS: tuple[Contribution, ...] = ("abs", "positive")


class TheoreticalFieldWarning(UserWarning):
    """``rfest.compute`` failed on the model, so the effective field has no area ratio."""


def effective(
    model: Any,
    input_shape: Sequence[int] | None = None,
    *,
    backend: str | None = None,
    output: str | None = None,
    inputs: Any = None,
    num_images: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    contribution: Contribution = "abs",
    units: Sequence[int] | Sequence[Sequence[int]] | None = None,
    token_grid: Sequence[int] | None = None,
    prefix_tokens: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    theoretical: bool = True,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    dtype: Dtype = "float64",
    progress: bool | TextIO = False,
    **backend_options: Any,
) -> EffectiveField:
    """Measure the effective receptive field (ERF) of an output unit of the real model.

    The heatmap is the mean over images of ``contribution(d unit / d input)`` summed over
    input channels, where the unit is summed over its channels. The model is used as it
    is: pass trained weights to study a trained network, or a freshly initialised copy to
    study the initialisation (rfest never re-initialises or modifies it). It runs in
    inference mode (batch norm uses its running statistics, dropout is off).

    Args:
        model: as for :func:`rfest.compute`.
        input_shape: ONE sample's shape in the framework's layout, every size given
            (PyTorch ``(C, *spatial)``; Keras/JAX ``(*spatial, C)``). The ERF depends on
            it; it is recorded in the result. May be omitted when ``inputs`` are given.
        backend: entry-point name; None detects it from the model's type.
        output: None (the model's output) or one intermediate's name.
        inputs: the images: an array ``(N, *sample)`` (cut into ``batch_size`` batches),
            or an iterable of such batches (read lazily, one at a time). None draws
            ``num_images`` standard-normal images with ``seed``.
        num_images: how many images to average; None: all of ``inputs``, or
            :data:`DEFAULT_RANDOM_IMAGES` random ones. Fewer available is an error only
            for random inputs (never); given inputs simply end.
        batch_size: batch size for random inputs and for cutting an array of inputs.
        seed: seed of the random inputs.
        contribution: ``"abs"`` (default): ``|gradient|``; ``"positive"``: its positive
            part only (pixels that increase the unit).
        units: the output unit(s): None for the centre unit (``(size - 1) // 2`` per
            output axis), one index tuple, or a list of them, whose heatmaps are averaged
            (not shifted: the heatmap covers what the units see together).
        token_grid: for outputs that are token sequences ``(N, tokens, C)`` (vision
            transformers): the patch grid's shape, e.g. ``(14, 14)``; tokens are mapped
            back onto it and ``units`` index the grid.
        prefix_tokens: tokens before the patch tokens (1 for a class token).
        fractions: mass fractions for extents, areas and area ratios.
        theoretical: also compute the theoretical field (:func:`rfest.compute`, on the
            same model, output and input size) for ``area_ratio`` and the plot's box.
            When it fails (e.g. a model that only takes one input size) a
            :class:`TheoreticalFieldWarning` says so and those are None.
        max_input_size: passed to :func:`rfest.compute` for the theoretical field.
        dtype: ``"float64"`` (default) or ``"float32"`` (faster).
        progress: True writes progress to stderr; or a text stream to write it to.
        **backend_options: passed to the backend's factory.

    Returns:
        An :class:`rfest.EffectiveField`.

    Example:
        >>> import torch.nn as nn
        >>> from rfest import effective
        >>> net = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        >>> _ = nn.init.constant_(net.weight, 1.0)
        >>> erf = effective(net, (1, 9, 9), num_images=2)
        >>> erf.center_of_mass, erf.area[0.9], erf.receptive_field.size
        ((4.0, 4.0), 9, (3, 3))
    """
    probe = ProbeOptions.check(dtype=dtype, linearize=True, max_input_size=max_input_size)
    _check_options(contribution, batch_size, num_images, seed, theoretical)
    output = check_single_output(output, "rfest.effective")
    batches = _batches(inputs, batch_size) if inputs is not None else None
    if input_shape is None:
        if batches is None:
            raise InputShapeError(
                "random inputs need input_shape=(one sample's shape, every size given), or "
                "pass inputs=..."
            )
        first = next(batches, None)
        if first is None:
            raise InputShapeError("inputs=... holds no images")
        input_shape = first.shape[1:]
        batches = itertools.chain([first], batches)
    sample = _check_sample_shape(input_shape)
    session = Session(
        model, sample, backend=backend, options=probe, backend_options=backend_options
    )
    name = session.backend
    layout = TokenGrid.of(token_grid, prefix_tokens) if token_grid is not None else None
    provider = session.provider(output, linearize=False)
    provider_output = output
    wrapped = layout is not None and isinstance(provider, TokenGridProvider)
    if wrapped:
        assert layout is not None
        assert isinstance(provider, TokenGridProvider)
        session = Session(
            provider.token_grid_model(layout),
            sample,
            backend=name,
            options=probe,
            backend_options=backend_options,
        )
        provider_output = None
        provider = session.provider(None, linearize=False)
    if not isinstance(provider, InputGradientProvider):
        raise BackendError(
            f"the rfest backend {name!r} cannot differentiate at given inputs (its provider "
            f"has no input_gradients); the effective receptive field needs it"
        )
    output_name = provider.output_names[0]
    reported = tuple(provider.spatial_shape)
    if not 1 <= len(reported) <= 3 or any(s is None for s in reported):
        raise InputShapeError(
            f"the backend reports spatial input size {reported} for input_shape={sample}; "
            f"give every spatial size"
        )
    spatial = tuple(int(s) for s in reported if s is not None)
    try:
        output_shape = tuple(provider.output_shapes(spatial)[output_name])
    except OutputShapeError as exc:
        if layout is not None:
            raise
        raise OutputShapeError(
            f"{exc}. If the output is a token sequence (batch, tokens, channels), pass "
            f"token_grid=(patch grid shape) and prefix_tokens=(tokens before the patches)"
        ) from exc
    grid_shape, native_tokens = _grid_of(output_shape, spatial, layout, wrapped)
    chosen = _units(units, grid_shape)
    gradient_units = (
        [(layout.unit_to_token(u),) for u in chosen] if native_tokens and layout else chosen
    )
    total = (
        num_images
        if num_images is not None
        else (DEFAULT_RANDOM_IMAGES if batches is None else None)
    )
    if batches is None:
        batches = _random_batches(sample, total or DEFAULT_RANDOM_IMAGES, batch_size, seed)
    heatmap, count = _accumulate(
        provider,
        output_name,
        gradient_units,
        batches,
        sample,
        spatial,
        contribution,
        total,
        _progress_stream(progress),
    )
    rf = None
    if theoretical and not native_tokens:
        rf = _theoretical(session, provider_output)
    options = {
        "backend": name,
        "contribution": contribution,
        "inputs": "random normal" if inputs is None else "given",
        "seed": seed if inputs is None else None,
        "batch_size": batch_size,
        "dtype": dtype,
        "token_grid": None if layout is None else layout.grid,
        "prefix_tokens": None if layout is None else layout.prefix,
        "weights": "as passed (real weights, no linearization)",
    }
    return EffectiveField(
        heatmap=heatmap,
        statistics=heatmap_statistics(heatmap, fractions),
        input_shape=sample,
        spatial_shape=spatial,
        output=output,
        output_shape=grid_shape,
        units=tuple(chosen),
        num_images=count,
        receptive_field=rf,
        options=MappingProxyType(options),
    )


def _check_options(
    contribution: Any, batch_size: Any, num_images: Any, seed: Any, theoretical: Any
) -> None:
    check_choice(
        "contribution",
        contribution,
        _CONTRIBUTIONS,
        " ('abs': |gradient|; 'positive': its positive part)",
    )
    check_count("batch_size", batch_size)
    if num_images is not None:
        check_count("num_images", num_images)
    check_count("seed", seed, " (the seed of the random inputs)", minimum=0)
    check_flag("theoretical", theoretical)


def _check_sample_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise InputShapeError(
            f"input_shape={shape}: the effective field depends on the input size, so every "
            f"size must be a positive int (one sample, no batch axis), e.g. (3, 224, 224)"
        )
    return tuple(int(s) for s in shape)


def _grid_of(
    output_shape: tuple[int, ...],
    spatial: tuple[int, ...],
    layout: TokenGrid | None,
    wrapped: bool,
) -> tuple[tuple[int, ...], bool]:
    """The grid units live on, and whether the provider reports tokens itself."""
    if layout is None or wrapped:
        if output_shape and len(output_shape) != len(spatial):
            raise InputShapeError(
                f"the output has spatial shape {output_shape} but the input {spatial}; for "
                f"token sequences pass token_grid=..."
            )
        return output_shape, False
    if output_shape != (layout.tokens,):
        raise InputShapeError(
            f"the backend reports the output's shape as {output_shape}; with "
            f"token_grid={layout.grid} and prefix_tokens={layout.prefix} a token "
            f"sequence of {layout.tokens} tokens was expected"
        )
    return layout.grid, True


def _units(
    units: Sequence[int] | Sequence[Sequence[int]] | None, grid: tuple[int, ...]
) -> list[tuple[int, ...]]:
    if units is None:
        return [tuple((s - 1) // 2 for s in grid)]
    items: list[Any] = list(units)
    listed = items if items and not isinstance(items[0], int | np.integer) else [items]
    chosen: list[tuple[int, ...]] = []
    for unit in listed:
        index = tuple(unit)
        if len(index) != len(grid) or not all(
            isinstance(i, int | np.integer) and 0 <= i < s
            for i, s in zip(index, grid, strict=False)
        ):
            raise InputShapeError(f"unit {index} is not an index into the output's grid {grid}")
        chosen.append(tuple(int(i) for i in index))
    return chosen


def _batches(inputs: Any, batch_size: int) -> Iterator[np.ndarray]:
    if hasattr(inputs, "shape") and hasattr(inputs, "__array__"):
        array = inputs
        for start in range(0, int(array.shape[0]), batch_size):
            yield np.asarray(array[start : start + batch_size])
        return
    if not isinstance(inputs, Iterable):
        raise InputShapeError(
            f"inputs must be an array (N, *sample) or an iterable of such batches, not a "
            f"{type(inputs).__name__}"
        )
    for batch in inputs:
        yield np.asarray(batch)


def _random_batches(
    sample: tuple[int, ...], total: int, batch_size: int, seed: int
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, total, batch_size):
        yield rng.standard_normal((min(batch_size, total - start), *sample))


def _progress_stream(progress: bool | TextIO) -> TextIO | None:
    if progress is True:
        return sys.stderr
    if progress is False or progress is None:
        return None
    return progress


def _accumulate(
    provider: InputGradientProvider,
    output_name: str,
    units: Sequence[tuple[int, ...]],
    batches: Iterator[np.ndarray],
    sample: tuple[int, ...],
    spatial: tuple[int, ...],
    contribution: str,
    total: int | None,
    stream: TextIO | None,
) -> tuple[np.ndarray, int]:
    accumulator = np.zeros(spatial, dtype=np.float64)
    count = 0
    for batch in batches:
        if batch.ndim != len(sample) + 1 or tuple(batch.shape[1:]) != sample:
            raise InputShapeError(
                f"a batch of inputs has shape {tuple(batch.shape)}; expected (N, *{sample}) "
                f"(one sample's shape {sample}, in the framework's layout)"
            )
        if total is not None:
            batch = batch[: total - count]
        for unit in units:
            grads = np.asarray(provider.input_gradients(batch, output_name, unit))
            expected = (batch.shape[0], *grads.shape[1:2], *spatial)
            if grads.shape != expected:
                raise RFEstError(
                    f"the backend's input_gradients returned shape {grads.shape}; expected "
                    f"{expected} (batch, channels, *spatial)"
                )
            if not np.all(np.isfinite(grads)):
                raise NonFiniteGradientError(
                    f"gradients of unit {unit} hold NaN or infinity at some inputs; the "
                    f"model overflows or is undefined there (try dtype='float64')"
                )
            part = np.abs(grads) if contribution == "abs" else np.maximum(grads, 0.0)
            accumulator += part.sum(axis=(0, 1))
        count += int(batch.shape[0])
        if stream is not None:
            done = f"{count}/{total}" if total is not None else f"{count}"
            stream.write(f"\rrfest.effective: {done} images")
            stream.flush()
        if total is not None and count >= total:
            break  # read no further batch from the user's stream
    if stream is not None:
        stream.write("\n")
        stream.flush()
    if count == 0:
        raise InputShapeError("inputs=... holds no images")
    return accumulator / (count * len(units)), count


def _theoretical(session: Session, output: str | None) -> ReceptiveField | None:
    try:
        with warnings.catch_warnings():
            # A non-uniform field is still a box to compare with; its flag is in the result.
            warnings.simplefilter("ignore", NonUniformWarning)
            return fields_of(session, output)
    except EstimationError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    except ModelCallError as exc:  # e.g. a fixed-size position embedding
        reason = f"the model does not take the probe sizes rfest.compute needs ({exc})"
    warnings.warn(
        f"the theoretical receptive field could not be computed, so area_ratio and the "
        f"plot's box are missing: {reason}. Pass theoretical=False to skip it",
        TheoreticalFieldWarning,
        stacklevel=3,
    )
    return None
