"""rfest: exact receptive fields of convolutional networks, from gradients, in any framework."""

from rfest._api import compute
from rfest._effective import (
    EffectiveField,
    HeatmapStatistics,
    TheoreticalFieldWarning,
    effective,
    heatmap_statistics,
)
from rfest._errors import (
    BackendError,
    BackendLoadError,
    BackendNotInstalledError,
    EstimationError,
    InputShapeError,
    ModelCallError,
    NoDependenceError,
    NonFiniteGradientError,
    NonUniformWarning,
    OptionError,
    OutputNotFoundError,
    OutputShapeError,
    ProbeSizeError,
    RFEstError,
    SizeDependentGeometryError,
    UnknownBackendError,
    UnrecognizedModelError,
)
from rfest._gradient import gradient_map
from rfest._image import sample_image
from rfest._plots import (
    plot_gradient_map,
    plot_rf_grid,
    plot_rf_grids,
    plot_rf_growth,
)
from rfest._protocol import (
    GradientProvider,
    InputGradientProvider,
    LayerListingProvider,
    TokenGridProvider,
)
from rfest._registry import available_backends, register_backend
from rfest._report import LayerRecord, LayerReport, report
from rfest._result import ReceptiveField

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendLoadError",
    "BackendNotInstalledError",
    "EffectiveField",
    "EstimationError",
    "GradientProvider",
    "HeatmapStatistics",
    "InputGradientProvider",
    "InputShapeError",
    "LayerListingProvider",
    "LayerRecord",
    "LayerReport",
    "ModelCallError",
    "NoDependenceError",
    "NonFiniteGradientError",
    "NonUniformWarning",
    "OptionError",
    "OutputNotFoundError",
    "OutputShapeError",
    "ProbeSizeError",
    "RFEstError",
    "ReceptiveField",
    "SizeDependentGeometryError",
    "TheoreticalFieldWarning",
    "TokenGridProvider",
    "UnknownBackendError",
    "UnrecognizedModelError",
    "available_backends",
    "compute",
    "effective",
    "gradient_map",
    "heatmap_statistics",
    "plot_gradient_map",
    "plot_rf_grid",
    "plot_rf_grids",
    "plot_rf_growth",
    "register_backend",
    "report",
    "sample_image",
]
