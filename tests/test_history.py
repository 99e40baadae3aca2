"""History's tables: rows of any keys read as equal-length columns; deferred writers run before each read."""

from __future__ import annotations

import math

import pytest

from gdlab.records import History, Table, layer_key


def _nan_equal(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))


def test_rows_with_different_keys_read_as_padded_columns() -> None:
    t = Table()
    t.append({"step": 1, "loss": 2.0})
    t.append({"step": 2})
    t.append({"step": 3, "grad": 0.5})
    t.extend_last({"extra": 7})
    assert len(t) == 3
    assert _nan_equal(t["loss"], [2.0, math.nan, math.nan])
    assert _nan_equal(t["grad"], [math.nan, math.nan, 0.5])
    assert _nan_equal(t["extra"], [math.nan, math.nan, 7.0])
    assert all(len(c) == 3 for c in t.columns.values())
    assert list(t.rows(2))[0]["grad"] == 0.5 and math.isnan(t.last("loss")) and t.last("missing", -1.0) == -1.0
    assert "grad" in t and "nothing" not in t


def test_write_and_put_set_rows_and_refuse_rows_not_there() -> None:
    t = Table({"a": [1.0, 2.0, 3.0]})
    t.write("b", [0, 2], [5, 6])
    t.put("a", 1, 9)
    assert t["a"] == [1.0, 9.0, 3.0] and _nan_equal(t["b"], [5.0, math.nan, 6.0])
    with pytest.raises(IndexError):
        t.put("a", 3, 1.0)
    with pytest.raises(IndexError):
        Table().extend_last({"a": 1.0})


def test_deferred_writer_runs_before_reads_only_when_rows_came() -> None:
    t = Table()
    calls: list[int] = []
    pending: list[int] = []

    def fill(table: Table) -> None:
        calls.append(len(pending))
        table.write("double", pending, [2.0 * table._columns["x"][i] for i in pending])
        table.write("reentrant", pending, [float("x" in table) for _ in pending])  # a read inside is no recursion
        pending.clear()

    t.defer(fill)
    for i in range(5):
        t.append({"x": float(i)})
        pending.append(i)
    assert calls == []  # nothing runs while writing
    assert t["double"] == [0.0, 2.0, 4.0, 6.0, 8.0] and calls == [5]
    assert t["x"][0] == 0.0 and list(t.rows()) and calls == [5]  # no new rows: not called again
    t.append({"x": 10.0})
    pending.append(5)
    t.undefer(fill)  # one last call, then no more
    assert calls == [5, 1] and t["double"][-1] == 20.0
    t.append({"x": 1.0})
    assert len(t["double"]) == 7 and math.isnan(t["double"][-1]) and calls == [5, 1]


def test_history_and_layer_order() -> None:
    h = History()
    h.steps.append({"step": 1, "loss": 1.0})
    h.epochs.append({"epoch": 1})
    assert len(h.steps) == len(h.epochs) == 1 and h.meta == {}
    assert sorted(["10", "2", "encoder.fc", "1.0"], key=layer_key) == ["1.0", "2", "10", "encoder.fc"]
