"""Blocks: a table's rows (:class:`~gdlab.records.Table`) packed as a few arrays, the form the run store keeps them in.

A :class:`Block` holds consecutive rows of one table (steps, or epochs): their index (``step`` or ``epoch``),
the keys they hold, and a value per key and row (NaN where a row has none). A block of ``width`` 1 holds rows as
recorded; a block of ``width`` w > 1 holds *buckets*: the rows whose index ``i`` has the same ``i // w`` merged
into one, at the last index among them, with each key's count, mean, min and max.

:func:`encode` turns a block into bytes and :func:`decode` reads them back, checked: the index as little-endian
int64, then for each key a bit per row (is a value there?), then the values that are there, as little-endian
float64, key by key (a bucket block: the counts, then the means, mins and maxes). Nothing but numbers is ever
decoded (``numpy.frombuffer`` of a declared dtype); bytes that do not add up are a :class:`ValueError`.

Example:
    >>> b = Block.rows({"step": [1, 2, 3], "loss": [0.5, float("nan"), 0.25]}, "step")
    >>> keys, index, data, present = encode(b)
    >>> again = decode(1, keys, index, data)
    >>> again.keys, again.index.tolist(), again.planes[0][0].tolist()
    (['loss'], [1, 2, 3], [0.5, nan, 0.25])
    >>> merge([], [again], width=2).planes[:, 0].tolist()  # count, mean, min, max of steps (1) and (2, 3)
    [[1.0, 1.0], [0.5, 0.25], [0.5, 0.25], [0.5, 0.25]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gdlab.records.history import SPREAD

__all__ = ["Block", "SPREAD", "concat", "decode", "encode", "merge", "to_columns"]

_INDEX = np.dtype("<i8")
_VALUE = np.dtype("<f8")
_BUCKET = ("count", "mean", "min", "max")


@dataclass
class Block:
    """Consecutive rows of a table: ``index`` (int64, increasing), ``keys``, and ``planes`` of shape
    ``(P, len(keys), len(index))``: P = 1 for rows as recorded (the value, NaN where none), P = 4 for buckets
    (count, mean, min, max; a key with count 0 has none)."""

    width: int
    index: np.ndarray
    keys: list[str]
    planes: np.ndarray

    @classmethod
    def rows(cls, columns: Mapping[str, Sequence[float]], index: str) -> Block:
        """Rows as recorded from equal-length ``columns`` holding ``index`` (keys with no value in any of the rows,
        and :data:`SPREAD` columns, are left out)."""
        at = np.asarray(columns[index], dtype=np.float64)
        keys, values = [], []
        for key, column in columns.items():
            if key == index or key.startswith(SPREAD):
                continue
            array = np.asarray(column, dtype=np.float64)
            if array.shape != at.shape:
                raise ValueError(f"column {key!r} has {array.size} rows, {index!r} has {at.size}")
            if not np.isnan(array).all():
                keys.append(key)
                values.append(array)
        planes = np.stack(values)[None] if values else np.empty((1, 0, at.size))
        return cls(1, at.astype(np.int64), keys, planes)

    @classmethod
    def empty(cls) -> Block:
        """No rows."""
        return cls(1, np.empty(0, np.int64), [], np.empty((1, 0, 0)))

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def present(self) -> np.ndarray:
        """Where a key has a value: ``(len(keys), len(index))`` booleans."""
        return ~np.isnan(self.planes[0]) if self.width == 1 else self.planes[0] > 0

    def take(self, rows: slice | np.ndarray) -> Block:
        """The rows selected by ``rows`` (a slice or a boolean mask), in a block of the same width."""
        return Block(self.width, self.index[rows], list(self.keys), self.planes[:, :, rows])


def concat(blocks: Sequence[Block]) -> Block:
    """Consecutive blocks of rows as recorded (width 1), in index order, as one (the union of their keys)."""
    keys = list(dict.fromkeys(k for b in blocks for k in b.keys))
    where = {k: i for i, k in enumerate(keys)}
    planes = np.full((1, len(keys), sum(len(b) for b in blocks)), np.nan)
    at = 0
    for b in blocks:
        planes[0, [where[k] for k in b.keys], at:at + len(b)] = b.planes[0]
        at += len(b)
    index = np.concatenate([b.index for b in blocks]) if blocks else np.empty(0, np.int64)
    return Block(1, index, keys, planes)


def encode(block: Block) -> tuple[str, bytes, bytes, int]:
    """A block as ``(keys as JSON, index bytes, data bytes, values present)``; see the module's docstring."""
    present = block.present
    bits = np.packbits(present, axis=1) if block.keys else np.empty((0, 0), np.uint8)
    data = bits.tobytes() + b"".join(plane[present].astype(_VALUE).tobytes() for plane in block.planes)
    return json.dumps(block.keys), block.index.astype(_INDEX).tobytes(), data, int(present.sum())


def decode(width: int, keys: str, index: bytes, data: bytes) -> Block:
    """The block :func:`encode` wrote, checked: a :class:`ValueError` says what does not add up."""
    names = json.loads(keys)
    if not isinstance(names, list) or not all(isinstance(k, str) for k in names) or len(set(names)) != len(names):
        raise ValueError("its keys are not a list of distinct names")
    if not isinstance(width, int) or width < 1 or not isinstance(index, bytes) or not isinstance(data, bytes):
        raise ValueError("its width or its data are not of the expected types")
    if len(index) % _INDEX.itemsize:
        raise ValueError(f"its index of {len(index)} bytes is not a whole number of int64")
    at = np.frombuffer(index, dtype=_INDEX).astype(np.int64)
    if at.size and (np.diff(at) <= 0).any():
        raise ValueError("its index does not increase")
    n, k, count = at.size, len(names), 1 if width == 1 else len(_BUCKET)
    stride = math.ceil(n / 8)
    if len(data) < k * stride:
        raise ValueError(f"its data ({len(data)} bytes) is shorter than its presence bits")
    bits = np.frombuffer(data, dtype=np.uint8, count=k * stride).reshape(k, stride)
    present = np.unpackbits(bits, axis=1, count=n).astype(bool) if k else np.zeros((0, n), bool)
    values = data[k * stride:]
    have = int(present.sum())
    if len(values) != count * have * _VALUE.itemsize:
        raise ValueError(f"its data holds {len(values)} bytes of values for {have} present in {count} plane(s)")
    planes = np.full((count, k, n), np.nan)
    flat = np.frombuffer(values, dtype=_VALUE).reshape(count, have) if have else np.empty((count, 0))
    for plane, part in zip(planes, flat):
        plane[present] = part
    if width > 1:
        planes[0][~present] = 0.0  # the counts
    return Block(width, at, names, planes)


def merge(buckets: Sequence[Block], rows: Sequence[Block], width: int) -> Block:
    """Buckets of ``width`` from stored ``buckets`` (older) and ``rows`` as recorded: the rows whose index has the
    same ``index // width`` become one bucket at their last index, each key's count, mean (weighted by the counts),
    min and max combined. A mean that cannot be formed (an inf - inf sum) is NaN; a key with no value in a bucket
    has count 0."""
    keys = list(dict.fromkeys(k for b in (*buckets, *rows) for k in b.keys))
    parts = [_as_sums(b, keys) for b in (*buckets, *rows) if len(b)]
    if not parts:
        return Block(width, np.empty(0, np.int64), keys, np.zeros((len(_BUCKET), len(keys), 0)))
    index = np.concatenate([p[0] for p in parts])
    count, total, low, high = (np.concatenate([p[1][i] for p in parts], axis=1) for i in range(4))
    ids = index // width
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], index.size] - 1
    count = np.add.reduceat(count, starts, axis=1)
    with np.errstate(invalid="ignore"):
        total = np.add.reduceat(total, starts, axis=1)
        mean = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
    low = np.minimum.reduceat(low, starts, axis=1)
    high = np.maximum.reduceat(high, starts, axis=1)
    none = count == 0
    for plane in (low, high):
        plane[none] = np.nan
    return Block(width, index[ends], keys, np.stack([count, mean, low, high]))


def _as_sums(block: Block, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A block's rows as (index, [count, sum, min, max] over ``keys``), absent values neutral (0, 0, inf, -inf)."""
    where = {k: i for i, k in enumerate(block.keys)}
    n = len(block)
    out = np.stack([np.zeros((len(keys), n)), np.zeros((len(keys), n)), np.full((len(keys), n), np.inf),
                    np.full((len(keys), n), -np.inf)])
    rows = [where[k] for k in keys if k in where]
    to = [i for i, k in enumerate(keys) if k in where]
    present = block.present[rows]
    if block.width == 1:
        values = block.planes[0][rows]
        out[0][to] = present
        out[1][to] = np.where(present, values, 0.0)
        out[2][to] = np.where(present, values, np.inf)
        out[3][to] = np.where(present, values, -np.inf)
    else:
        count, mean, low, high = block.planes[:, rows]
        out[0][to] = count
        with np.errstate(invalid="ignore"):
            out[1][to] = np.where(present, mean * count, 0.0)  # a NaN mean stays NaN in the sum
        out[2][to] = np.where(present, low, np.inf)
        out[3][to] = np.where(present, high, -np.inf)
    return block.index, out


def to_columns(blocks: Sequence[Block], index: str) -> dict[str, list[float]]:
    """Blocks, in index order, as a table's columns: ``index``, each key's value (a bucket's mean), and for a
    merged key its :data:`SPREAD` columns (``min:key``, ``max:key``: NaN in the rows as recorded)."""
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return {}
    total = sum(len(b) for b in blocks)
    columns: dict[str, np.ndarray] = {index: np.concatenate([b.index for b in blocks]).astype(np.float64)}
    at = 0
    for b in blocks:
        n = len(b)
        for i, key in enumerate(b.keys):
            names = (key,) if b.width == 1 else (key, SPREAD[0] + key, SPREAD[1] + key)
            values = (b.planes[0][i],) if b.width == 1 else (b.planes[1][i], b.planes[2][i], b.planes[3][i])
            for name, value in zip(names, values):
                column = columns.get(name)
                if column is None:
                    column = columns[name] = np.full(total, np.nan)
                column[at:at + n] = value
        at += n
    return {key: _listed(column) for key, column in columns.items()}


def _listed(column: np.ndarray) -> list[float]:
    """A column as a list of floats, each NaN the one ``math.nan`` (as a :class:`~gdlab.records.Table` pads), so that
    columns compare equal where their values do."""
    listed = column.tolist()
    for i in np.flatnonzero(np.isnan(column)).tolist():
        listed[i] = math.nan
    return listed
