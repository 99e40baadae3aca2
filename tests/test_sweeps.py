"""Sweeps and restarts: the grid, the table, the best member, the store, the end-point count."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gdlab
from gdlab import sweeps
from gdlab.data import TensorData
from gdlab.errors import InvalidParameter
from gdlab.store import Store


def _linear() -> nn.Module:
    return nn.Linear(4, 3)


def test_parse_values_forms_and_errors() -> None:
    assert sweeps.parse_values("1e-4:1:5") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert sweeps.parse_values("0, 0.5,0.9") == [0.0, 0.5, 0.9]
    assert sweeps.parse_values("0.3") == [0.3]
    for bad in ("0:1:4", "1e-3:x:3", "1:2", "", "nan"):
        with pytest.raises(InvalidParameter, match="expected a:b:n"):
            sweeps.parse_values(bad, "--lr")


def test_grid_table_best_and_members(classes: TensorData, tmp_path: Path) -> None:
    train = TensorData(classes.X[:40], classes.y[:40], num_classes=3)
    val = TensorData(classes.X[40:], classes.y[40:], num_classes=3)
    result = sweeps.sweep(_linear, train, val=val, optimizer="momentum", lr=[0.01, 0.1, 1.0], momentum=[0.0, 0.9],
                          seeds=2, steps=30, batch_size=8, progress=False, store=tmp_path, name="grid")
    assert len(result.table) == 12 and set(result.axes) == {"lr", "momentum", "seed"}
    assert [(r["lr"], r["momentum"], r["seed"]) for r in result.table[:3]] == [(0.01, 0.0, 0), (0.01, 0.0, 1),
                                                                              (0.01, 0.9, 0)]
    best = result.best()
    assert best["val_loss"] == min(r["val_loss"] for r in result.table if not r["diverged"])
    model = result.member(best["member"])
    assert gdlab.evaluate(model, val)["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert 0 <= best["metric"] <= 1
    stored = Store(tmp_path).get_sweep("grid")
    assert stored["kind"] == "sweep" and len(stored["rows"]) == 12
    assert stored["rows"][best["member"]]["val_loss"] == pytest.approx(best["val_loss"])


def test_a_sweep_member_is_the_run_fit_makes(regression: TensorData) -> None:
    result = sweeps.sweep(lambda: nn.Linear(4, 1).double(), regression, optimizer="sgd", lr=[0.01, 0.05],
                          seeds=[4], steps=25, batch_size=16, progress=False)
    torch.manual_seed(4)
    alone = nn.Linear(4, 1).double()
    gdlab.fit(alone, regression, optimizer="sgd", lr=0.05, seed=4, steps=25, batch_size=16, progress=False)
    torch.testing.assert_close(result.member(1).weight, alone.weight, rtol=1e-10, atol=1e-12)
    assert result.table[1]["metric"] is None  # regression: no accuracy


def test_all_diverged_has_no_best(regression: TensorData) -> None:
    result = sweeps.sweep(lambda: nn.Linear(4, 1).double(), regression, optimizer="sgd", lr=[1e8, 1e9], steps=20,
                          progress=False)
    assert all(r["diverged"] for r in result.table)
    with pytest.raises(InvalidParameter, match="every member diverged"):
        result.best()


def test_bad_sweep_settings_are_named(regression: TensorData) -> None:
    with pytest.raises(InvalidParameter, match="invalid seeds 0"):
        sweeps.sweep(_linear, regression, seeds=0, progress=False)
    with pytest.raises(InvalidParameter, match="invalid clip_norm"):
        sweeps.sweep(_linear, regression, clip_norm=[1.0, 2.0], progress=False)
    with pytest.raises(InvalidParameter, match="invalid lr"):
        sweeps.sweep(_linear, regression, lr=[], progress=False)


def test_to_pandas(classes: TensorData) -> None:
    pd = pytest.importorskip("pandas")
    frame = sweeps.sweep(_linear, classes, lr=[0.1, 0.2], steps=3, progress=False).to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame["lr"]) == [0.1, 0.2]


def test_restarts_count_end_points(classes: TensorData) -> None:
    same = sweeps.restarts(_linear, classes, seeds=[3, 3, 3], lr=0.1, steps=20, progress=False)
    assert same.distinct == 1 and same.within_tol == 1.0 and same.spread == 0.0
    spread = sweeps.restarts(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), classes,
                             seeds=8, lr=0.5, steps=60, progress=False)
    assert len(spread.losses) == 8 and len(spread.clusters) == 8
    assert spread.best <= spread.median <= spread.worst
    assert 1 <= spread.distinct <= 8 and 0 < spread.within_tol <= 1
    assert spread.clusters[spread.losses.index(spread.best)] == 0  # the best end point is numbered first
    summary = spread.summary()
    assert summary["distinct_end_points"] == spread.distinct and summary["restarts"] == 8


def test_restarts_mark_diverged_members(regression: TensorData) -> None:
    result = sweeps.restarts(lambda: nn.Linear(4, 1).double(), regression, seeds=[0, 1], lr=0.01, steps=10,
                             progress=False)
    assert result.summary()["diverged"] == 0
    with pytest.raises(InvalidParameter, match="one number: restarts vary the seed only"):
        sweeps.restarts(_linear, regression, lr=[0.1, 0.2], progress=False)
    default = sweeps.restarts(lambda: nn.Linear(4, 1).double(), regression, seeds=3, steps=5, progress=False)
    assert len(default.losses) == 3 and {r["lr"] for r in default.sweep.table} == {0.1}  # one lr, not a grid
    with pytest.raises(InvalidParameter, match="invalid tol"):
        sweeps.restarts(_linear, regression, tol=0, progress=False)


def test_cluster_separates_different_functions() -> None:
    outputs = torch.tensor([[[0.9, 0.1]] * 4, [[0.8, 0.2]] * 4, [[0.1, 0.9]] * 4], dtype=torch.float64)
    labels = sweeps._cluster([0.30, 0.305, 0.301, math.nan][:3], outputs, 0.05, classes=True)
    assert labels == [0, 0, 1]  # same loss, but the third predicts the other class
    assert sweeps._cluster([0.3, math.nan], outputs[:2], 0.05, classes=True) == [0, -1]


