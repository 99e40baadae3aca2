"""``History``: what a run recorded, per step and per epoch, in columns.

The single source the doctor, plots and the store read. Each table is a dict of equal-length columns; a row may
bring a new column (earlier rows read NaN there) or leave one out (NaN in that row).

Example:
    >>> h = History()
    >>> h.steps.append({"step": 1, "loss": 2.5})
    >>> h.steps.append({"step": 2, "loss": 2.1, "grad_norm": 0.7})
    >>> h.steps["loss"], h.steps["grad_norm"][1], len(h.steps)
    ([2.5, 2.1], 0.7, 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

__all__ = ["Table", "History", "layer_key"]


def layer_key(name: str) -> list[tuple[int, Any]]:
    """Sort key putting layer names (module paths such as ``"2"``, ``"10"``, ``"encoder.fc"``) first to last:
    numbers as numbers, part by part. A run read back from the store has its columns, not the module order."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


class Table:
    """Equal-length columns of floats (NaN where a row had no value)."""

    def __init__(self, columns: dict[str, list[float]] | None = None) -> None:
        self.columns: dict[str, list[float]] = {k: list(v) for k, v in (columns or {}).items()}
        self._length = len(next(iter(self.columns.values()))) if self.columns else 0

    def append(self, row: dict[str, float]) -> None:
        """Add one row; a new key gets a column backfilled with NaN."""
        for key in row.keys() - self.columns.keys():
            self.columns[key] = [math.nan] * self._length
        for key, column in self.columns.items():
            column.append(float(row.get(key, math.nan)))
        self._length += 1

    def extend_last(self, values: dict[str, float]) -> None:
        """Add ``values`` to the latest row (an instrument adding its measurements to the step just recorded)."""
        if not self._length:
            raise IndexError("no row to extend")
        for key, value in values.items():
            column = self.columns.get(key)
            if column is None:
                column = self.columns[key] = [math.nan] * self._length
            column[-1] = float(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.columns[key]

    def __contains__(self, key: object) -> bool:
        return key in self.columns

    def __len__(self) -> int:
        return self._length

    def rows(self, start: int = 0) -> Iterator[dict[str, float]]:
        """Rows from index ``start`` on, as dicts."""
        for i in range(start, self._length):
            yield {k: v[i] for k, v in self.columns.items()}

    def last(self, key: str, default: float = math.nan) -> float:
        """The latest value of ``key``, or ``default`` when there is none."""
        column = self.columns.get(key)
        return column[-1] if column else default


class History:
    """Per-step records (``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``, ...) and per-epoch records
    (``epoch``, ``step``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds``, ...)."""

    def __init__(self) -> None:
        self.steps = Table()
        self.epochs = Table()
        self.meta: dict[str, Any] = {}  # what the doctor needs besides the numbers: lr, batch, task, data scales
