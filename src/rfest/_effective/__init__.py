"""The effective receptive field, one way down: analysis (`_analysis`, `_stats`) makes a
result (`_result.EffectiveField`), whose ``plot`` hands numbers to a view in `rfest._plots`.
"""

from rfest._effective._analysis import DEFAULT_RANDOM_IMAGES, TheoreticalFieldWarning, effective
from rfest._effective._result import EffectiveField
from rfest._effective._stats import DEFAULT_FRACTIONS, HeatmapStatistics, heatmap_statistics

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_RANDOM_IMAGES",
    "EffectiveField",
    "HeatmapStatistics",
    "TheoreticalFieldWarning",
    "effective",
    "heatmap_statistics",
]
