"""Views: matplotlib figures of results. They import results and numpy, never the analysis
that made them (no backend, no registry, no estimator), and matplotlib only when drawing.
"""

from rfest._plots._fields import (
    GRID_COLORS,
    plot_gradient_map,
    plot_rf_grid,
    plot_rf_grids,
)
from rfest._plots._growth import plot_rf_growth

__all__ = ["GRID_COLORS", "plot_gradient_map", "plot_rf_grid", "plot_rf_grids", "plot_rf_growth"]
