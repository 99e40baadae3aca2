"""What a run records: per-step and per-epoch columns (:class:`History`), and the numerics read from them
(:mod:`gdlab.records.stats`: the moving average, finite filtering, input scales).

Example:
    >>> h = History()
    >>> h.steps.append({"step": 1, "loss": 2.5})
    >>> h.steps["loss"]
    [2.5]
"""

from gdlab.records.history import History, Table, layer_key
from gdlab.records.stats import EMA, ILL_CONDITIONED, ema, finite, input_scales, scale_ratio

__all__ = [
    "History",
    "Table",
    "layer_key",
    "EMA",
    "ema",
    "finite",
    "input_scales",
    "scale_ratio",
    "ILL_CONDITIONED",
]
