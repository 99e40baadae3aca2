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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

__all__ = ["Table", "History", "SPREAD", "layer_key"]

SPREAD = ("min:", "max:")
"""The prefixes of the columns a merged key reads as beside its mean, in a history read from the store
(``min:loss``, ``max:loss``: NaN in the rows that hold one step); never stored as keys of their own."""


def layer_key(name: str) -> list[tuple[int, Any]]:
    """Sort key putting layer names (module paths such as ``"2"``, ``"10"``, ``"encoder.fc"``) first to last:
    numbers as numbers, part by part. A run read back from the store has its columns, not the module order."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


class Table:
    """Equal-length columns of floats (NaN where a row had no value).

    Writing is cheap, so that a training loop can record every step: a row touches only its own keys, and the
    columns it left out are filled with NaN when the table is next read. A writer may also hand in work to be done
    at that point (:meth:`defer`), batching per-step bookkeeping into one pass over many rows."""

    def __init__(self, columns: dict[str, list[float]] | None = None) -> None:
        self._columns: dict[str, list[float]] = {k: list(v) for k, v in (columns or {}).items()}
        self._length = len(next(iter(self._columns.values()))) if self._columns else 0
        self._settled = True
        self._settling = False
        self._fillers: list[Callable[[Table], None]] = []

    def append(self, row: dict[str, float]) -> None:
        """Add one row; a new key gets a column backfilled with NaN."""
        columns, length = self._columns, self._length
        for key, value in row.items():
            column = columns.get(key)
            if column is None or len(column) != length:  # new, or short of rows: made or padded
                column = self._column(key)
            column.append(float(value))
        self._length += 1
        self._settled = False

    def extend(self, columns: dict[str, Sequence[float]]) -> None:
        """Add several rows at once, given by column (each of the same length; keys left out read NaN there), as
        that many :meth:`append` calls would: a loop filing a block of steps in one pass.

        Example:
            >>> t = Table(); t.append({"step": 1, "loss": 2.0})
            >>> t.extend({"step": [2, 3], "lr": [0.1, 0.1]})
            >>> t["loss"], t["lr"]
            ([2.0, nan, nan], [nan, 0.1, 0.1])
        """
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        if not n:
            return
        for key, values in columns.items():
            column = self._columns.get(key)
            if column is None or len(column) != self._length:
                column = self._column(key)
            column.extend([float(v) for v in values])
        self._length += n
        self._settled = False

    def extend_last(self, values: dict[str, float]) -> None:
        """Add ``values`` to the latest row (an instrument adding its measurements to the step just recorded)."""
        if not self._length:
            raise IndexError("no row to extend")
        for key, value in values.items():
            self._column(key)[-1] = float(value)

    def put(self, key: str, index: int, value: float) -> None:
        """Set ``key`` in row ``index`` (a new key gets a column of NaN)."""
        self.write(key, [index], [value])

    def write(self, key: str, indices: Sequence[int], values: Iterable[float]) -> None:
        """Set ``key`` in the rows ``indices``, one value each (a new key gets a column of NaN)."""
        if indices and not (0 <= min(indices) and max(indices) < self._length):
            raise IndexError(f"rows {min(indices)}..{max(indices)} are not all in a table of {self._length} rows")
        column = self._column(key)
        if len(indices) > 1 and isinstance(values, Sequence) and len(values) == len(indices) and \
                _consecutive(indices):
            column[indices[0] : indices[0] + len(indices)] = [float(v) for v in values]  # one slice
            return
        for i, value in zip(indices, values):
            column[i] = float(value)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` rows (a rollback undoing the steps after them); fillers run first."""
        columns = self._settle()
        for column in columns.values():
            del column[length:]
        self._length = min(self._length, length)

    def _column(self, key: str) -> list[float]:
        """The column ``key``, made (all NaN) or padded with NaN to the table's length."""
        column = self._columns.get(key)
        if column is None:
            column = self._columns[key] = [math.nan] * self._length
        elif len(column) < self._length:
            column.extend([math.nan] * (self._length - len(column)))
        return column

    def defer(self, fill: Callable[[Table], None]) -> None:
        """Have ``fill(table)`` called before the table is next read, each time rows were added since; it writes
        with :meth:`put` or :meth:`write` and must not read the table. :meth:`undefer` stops it. An instrument
        batches its per-step columns this way."""
        self._fillers.append(fill)
        self._settled = False

    def undefer(self, fill: Callable[[Table], None]) -> None:
        """Stop calling ``fill`` (after one last call, so that nothing it held back is lost)."""
        if fill in self._fillers:
            self._run([fill])
            self._fillers.remove(fill)

    def _run(self, fillers: list[Callable[[Table], None]]) -> None:
        """Call the fillers, then pad the short columns (a read inside a filler sees the columns as they are)."""
        self._settling = True
        try:
            for fill in fillers:
                fill(self)
            for key in self._columns:
                self._column(key)  # pads it
        finally:
            self._settling = False

    def _settle(self) -> dict[str, list[float]]:
        if not self._settled and not self._settling:
            self._run(list(self._fillers))
            self._settled = True
        return self._columns

    @property
    def columns(self) -> dict[str, list[float]]:
        """The columns by key, all of the table's length."""
        return self._settle()

    def __getitem__(self, key: str) -> list[float]:
        return self._settle()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._settle()

    def __len__(self) -> int:
        return self._length

    def peek(self, key: str, start: int, stop: int) -> list[float]:
        """Rows ``start`` to ``stop`` (excluded) of ``key`` as written so far, without running the fillers (NaN
        where nothing is written): for a hook that reads only rows it knows are filled, such as those whose values
        a loop has read already (:class:`gdlab.loop.StepLog`), at no host read of its own.

        Example:
            >>> t = Table(); t.append({"loss": 2.0}); t.append({"loss": 1.0})
            >>> t.peek("loss", 1, 2), t.peek("acc", 0, 1)
            ([1.0], [nan])
        """
        column = self._columns.get(key, [])
        return [column[i] if i < len(column) else math.nan for i in range(start, min(stop, self._length))]

    def rows(self, start: int = 0) -> Iterator[dict[str, float]]:
        """Rows from index ``start`` on, as dicts."""
        columns = self._settle()
        for i in range(start, self._length):
            yield {k: v[i] for k, v in columns.items()}

    def last(self, key: str, default: float = math.nan) -> float:
        """The latest value of ``key``, or ``default`` when there is none."""
        column = self._settle().get(key)
        return column[-1] if column else default


class History:
    """Per-step records (``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``, ...) and per-epoch records
    (``epoch``, ``step``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds``, ...)."""

    def __init__(self) -> None:
        self.steps = Table()
        self.epochs = Table()
        self.meta: dict[str, Any] = {}  # what the doctor needs besides the numbers: lr, batch, task, data scales


def _consecutive(indices: Sequence[int]) -> bool:
    """Whether ``indices`` are consecutive rows, first to last (a table's newest rows, as a loop writes them)."""
    if isinstance(indices, range):
        return indices.step == 1
    return isinstance(indices, list) and indices == list(range(indices[0], indices[0] + len(indices)))
