"""Data selection: streaming selectors (Titan and baselines) and one-shot pruners."""

from fedtitan.selection.base import Selection, StreamingSelector
from fedtitan.selection.cis import allocate, cis_draw, class_importance, is_draw
from fedtitan.selection.coarse import CoarseFilter
from fedtitan.selection.lastlayer import HeadStats, head_stats
from fedtitan.selection.pruning import PRUNERS, prune, top_m
from fedtitan.selection.selectors import SELECTORS, build_selector

__all__ = [
    "PRUNERS", "SELECTORS", "CoarseFilter", "HeadStats", "Selection", "StreamingSelector", "allocate",
    "build_selector", "cis_draw", "class_importance", "head_stats", "is_draw", "prune", "top_m",
]
