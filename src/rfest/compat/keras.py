"""``receptivefield.keras`` on rfest: `KerasReceptiveField`.

``model_func(input_shape)`` builds the Keras model, as in ``receptivefield``; rfest
measures the named layers through its ``keras`` backend, on a linearized view of the
model (the model's weights are never overwritten, whatever ``init_weights`` says).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rfest._api import fields_of
from rfest._errors import OutputNotFoundError
from rfest._session import Session
from rfest.compat._base import CompatReceptiveField, open_session
from rfest.compat.types import FeatureMapDescription, GridShape, ImageShape

__all__ = ["KerasReceptiveField"]


class KerasReceptiveField(CompatReceptiveField):
    """Receptive fields of named layers of a Keras model.

    Args:
        model_func: builds the model from the input shape it is given.
        init_weights: accepted for compatibility. rfest always measures a linearized
            view with positive constant weights (what ``init_weights=True`` approximated)
            and never writes into the model.
    """

    def __init__(self, model_func: Callable[[Any], Any], init_weights: bool = False) -> None:
        super().__init__(model_func)
        self.init_weights = init_weights
        self._session: Session | None = None
        self._layers: list[str] = []

    def compute(
        self,
        input_shape: Sequence[int],
        input_layer: str,
        output_layers: Sequence[str],
        **options: Any,
    ) -> list[FeatureMapDescription]:
        """Measure ``output_layers`` for an input of ``input_shape``, the Keras shape
        ``(rows, columns, channels)`` given to ``model_func``. ``input_layer`` must name
        the model's input layer. ``options`` go to `rfest.compute`.
        """
        shape = ImageShape(*input_shape)
        model = self._model_func(shape)
        try:
            model.get_layer(input_layer)
        except ValueError as exc:
            raise OutputNotFoundError(
                f"the model has no layer named {input_layer!r} (input_layer); {exc}"
            ) from exc
        layers = [str(name) for name in output_layers]
        sample = tuple(int(n) for n in input_shape)
        session = open_session(model, sample, "keras", options)
        results = fields_of(session, tuple(layers))
        fields = [results[name] for name in layers]
        self._session, self._layers = session, layers
        rows, cols, channels = sample
        outputs = [GridShape(n=1, w=rf.output_shape[1], h=rf.output_shape[0], c=1) for rf in fields]
        return self._store(fields, GridShape(n=1, w=cols, h=rows, c=channels), outputs)

    def _gradient(self, fm_id: int, unit: tuple[int, int]) -> np.ndarray:
        assert self._session is not None
        return self._session.gradient_map(self._layers[fm_id], unit)
