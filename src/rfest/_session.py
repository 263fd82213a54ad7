"""One model on one backend, with checked options: what every entry point shares.

`rfest.compute`, `rfest.report`, `rfest.effective` and `rfest.gradient_map` open a
`Session` after the front door (`rfest._options`) has checked their options. The session
resolves the backend once, builds each provider once (keyed by outputs, dtype and
linearization) and its float32 scout view, and holds the size policy for spatial axes
left free. Nothing here knows a framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rfest._estimate import DEFAULT_FREE_SIZE, estimate
from rfest._options import Dtype, ProbeOptions
from rfest._protocol import GradientProvider
from rfest._registry import detect_backend, make_provider
from rfest._result import ReceptiveField
from rfest._units import resolve_unit

__all__ = ["Session"]

Outputs = str | tuple[str, ...] | None
_Key = tuple[Outputs, Dtype, bool]


class Session:
    """Providers for ``model`` on one backend, built on first use and reused.

    Example:
        >>> import numpy as np, rfest
        >>> class Shift:  # output unit i sees inputs i .. i+2
        ...     spatial_shape, output_names = (None,), ("output",)
        ...     def output_shapes(self, s):
        ...         return {"output": (s[0] - 2,)}
        ...     def gradient_maps(self, s, name, units):
        ...         maps = np.zeros((len(units), *s))
        ...         for k, (i,) in enumerate(units):
        ...             maps[k, i : i + 3] = 1.0
        ...         return maps
        >>> rfest.register_backend("doc-shift", lambda model, **o: Shift(), replace=True)
        >>> session = Session(object(), None, backend="doc-shift", options=ProbeOptions())
        >>> session.measure(None)["output"].size
        (3,)
        >>> session.provider() is session.provider()
        True
    """

    def __init__(
        self,
        model: Any,
        input_shape: Sequence[int | None] | None,
        *,
        backend: str | None,
        options: ProbeOptions,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.backend = backend if backend is not None else detect_backend(model)
        self.input_shape = input_shape
        self.options = options
        self.backend_options = dict(backend_options or {})
        self._providers: dict[_Key, GradientProvider] = {}

    def provider(
        self,
        output: Outputs = None,
        *,
        dtype: Dtype | None = None,
        linearize: bool | None = None,
    ) -> GradientProvider:
        """The provider of ``output`` (None, a name or a tuple of names), built once."""
        key = (
            output,
            self.options.dtype if dtype is None else dtype,
            self.options.linearize if linearize is None else linearize,
        )
        if key not in self._providers:
            self._providers[key] = make_provider(
                self.backend,
                self.model,
                input_shape=self.input_shape,
                output=list(output) if isinstance(output, tuple) else output,
                dtype=key[1],
                linearize=key[2],
                **self.backend_options,
            )
        return self._providers[key]

    def scout(self, output: Outputs = None) -> GradientProvider | None:
        """The float32 view of ``output``'s provider for the cheap thin probes; None when
        the session already runs in float32 or the backend opts out (``float32_scout``)."""
        if self.options.dtype == "float32":
            return None
        if not getattr(self.provider(output), "float32_scout", True):
            return None
        return self.provider(output, dtype="float32")

    def free_spatial(self, provider: GradientProvider) -> tuple[int, ...]:
        """The provider's spatial size with each free axis (None) set to the default size."""
        return tuple(DEFAULT_FREE_SIZE if n is None else int(n) for n in provider.spatial_shape)

    def measure(self, output: Outputs) -> dict[str, ReceptiveField]:
        """The receptive field of every output of ``output``'s provider, by name."""
        provider = self.provider(output)
        scout = self.scout(output)
        results = {
            name: estimate(provider, name, max_input_size=self.options.max_input_size, scout=scout)
            for name in provider.output_names
        }
        inferred = getattr(provider, "inferred_input_shape", None)
        if inferred is None:
            return results
        return {
            name: dataclasses.replace(rf, inferred_input_shape=tuple(inferred))
            for name, rf in results.items()
        }

    def gradient_map(self, output: str | None, unit: tuple[int, ...] | None) -> np.ndarray:
        """``|d output[unit] / d input|`` at the provider's spatial size (free axes at the
        default size), from a provider already built for ``output`` when there is one."""
        provider, name = self._provider_of(output)
        spatial = self.free_spatial(provider)
        out_shape = tuple(int(m) for m in provider.output_shapes(spatial)[name])
        index = resolve_unit(unit, out_shape)
        maps = np.asarray(provider.gradient_maps(spatial, name, [index]), dtype=np.float64)
        result: np.ndarray = maps[0]
        return result

    def _provider_of(self, output: str | None) -> tuple[GradientProvider, str]:
        if output is not None:
            for (outputs, dtype, linearize), provider in self._providers.items():
                if (
                    dtype == self.options.dtype
                    and linearize == self.options.linearize
                    and isinstance(outputs, tuple | str)
                    and output in provider.output_names
                ):
                    return provider, output
        provider = self.provider(output)
        return provider, provider.output_names[0]
