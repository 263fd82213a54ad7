"""A home for code written for the ``receptivefield`` package: rename the import.

``from receptivefield.pytorch import PytorchReceptiveField`` becomes
``from rfest.compat.pytorch import PytorchReceptiveField``; likewise ``.keras``,
``.image`` and ``.types``. Constructors, ``compute`` and the plotting methods keep their
signatures and results; rfest measures the fields (exactly, on a linearized view of the
model) and draws them. See the migration guide in the documentation.

Submodules are imported on demand: ``rfest.compat.pytorch`` needs PyTorch,
``rfest.compat.keras`` Keras, the plots and images matplotlib.
"""

__all__: list[str] = []
