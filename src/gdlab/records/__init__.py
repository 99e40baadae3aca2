"""What a run records: per-step and per-epoch columns (:class:`History`), and the numerics read from them.

Example:
    >>> h = History()
    >>> h.steps.append({"step": 1, "loss": 2.5})
    >>> h.steps["loss"]
    [2.5]
"""

from gdlab.records.history import History, Table, layer_key

__all__ = [
    "History",
    "Table",
    "layer_key",
]
