"""Landscapes: filter-normalised directions, the model at the centre, interpolation between two models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import gdlab
from gdlab.cli import app
from gdlab.data import TensorData
from gdlab.errors import InvalidParameter
from gdlab.lab import landscape


@pytest.fixture
def data() -> TensorData:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5, generator=g)
    return TensorData(X, (X[:, 0] - X[:, 1] > 0).long(), num_classes=2)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))


def test_directions_are_filter_normalised_and_skip_biases() -> None:
    model = _model()
    d = landscape.direction(model, torch.Generator().manual_seed(1))
    for p, v in zip(model.parameters(), d):
        if p.dim() <= 1:
            assert torch.count_nonzero(v) == 0  # biases and LayerNorm's scale and shift stay put
        else:
            torch.testing.assert_close(v.reshape(len(v), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1))


def test_plane_centre_is_the_models_loss_and_the_model_is_unchanged(data: TensorData) -> None:
    model = _model()
    gdlab.fit(model, data, lr=0.1, epochs=3, progress=False, doctor=False, instruments="none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    land = landscape.plane(model, data, steps=7, distance=0.5, samples=300, progress=False)
    expected = gdlab.evaluate(model, data)["loss"]
    assert land.losses.shape == (7, 7) and land.losses[3, 3].item() == pytest.approx(expected, rel=1e-5)
    assert land.center_loss == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float(land.losses.max()) > land.center_loss  # a trained model sits low in its neighbourhood
    line = landscape.line(model, data, steps=5, distance=0.5, samples=300, progress=False)
    assert line.losses.shape == (5,) and line.losses[2].item() == pytest.approx(expected, rel=1e-5)


def test_interpolation_ends_at_both_models(data: TensorData) -> None:
    a, b = _model(0), _model(1)
    for m in (a, b):
        gdlab.fit(m, data, lr=0.1, epochs=2, progress=False, doctor=False, instruments="none")
    path = landscape.interpolate(a, b, data, steps=5, samples=300, progress=False)
    assert path.losses[0].item() == pytest.approx(gdlab.evaluate(a, data)["loss"], rel=1e-5)
    assert path.losses[-1].item() == pytest.approx(gdlab.evaluate(b, data)["loss"], rel=1e-5)
    with pytest.raises(InvalidParameter, match="invalid model_b"):
        landscape.interpolate(a, nn.Linear(5, 2), data, progress=False)


def test_bad_arguments(data: TensorData) -> None:
    with pytest.raises(InvalidParameter, match="invalid steps 1"):
        landscape.plane(_model(), data, steps=1, progress=False)
    with pytest.raises(InvalidParameter, match="invalid distance 0"):
        landscape.line(_model(), data, distance=0, progress=False)


def test_a_grid_is_sized_before_any_work(data: TensorData) -> None:
    """steps=100000 made a plane of 10 billion points (2.9 GB in 50 s before anything was said): the points are
    counted first, for every kind, and the largest grid allowed is evaluated point by point, never held whole."""
    class Counted(nn.Linear):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counted.calls += 1
            return super().forward(x)

    model = Counted(5, 2)
    side = math.isqrt(landscape.MAX_POINTS)
    for make, steps in ((landscape.plane, side + 1), (landscape.line, landscape.MAX_POINTS + 1)):
        with pytest.raises(InvalidParameter, match=f"invalid steps {steps}: expected at most"):
            make(model, data, steps=steps, progress=False)
    with pytest.raises(InvalidParameter, match="at most 250,000 for an interpolation"):
        landscape.interpolate(model, model, data, steps=landscape.MAX_POINTS + 1, progress=False)
    assert Counted.calls == 0  # nothing evaluated
    assert landscape.check_size(side) == side * side <= landscape.MAX_POINTS
    assert landscape.check_size(7, "line") == 7 and landscape.check_size(7, "trajectory") == 49
    landscape.plane(model, data, steps=3, samples=50, progress=False)
    small, Counted.calls = Counted.calls, 0
    land = landscape.plane(model, data, steps=5, samples=50, progress=False)
    assert Counted.calls - small == 25 - 9 and land.losses.shape == (5, 5)  # one forward pass per point


def test_landscape_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    trained = json.loads(runner.invoke(app, ["train", "--data", "moons", "--hidden", "8", "--epochs", "2", "--store",
                                             "s", "--json", "--quiet", "--no-plot"]).stdout)
    result = runner.invoke(app, ["landscape", trained["run_id"], "--steps", "5", "--store", "s", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["losses"]) == 5 and Path(payload["plot"]).stat().st_size > 10_000
    assert payload["losses"][2][2] == pytest.approx(payload["center_loss"], rel=1e-5)
    bad = runner.invoke(app, ["landscape", "last", "--kind", "cube", "--store", "s"])
    assert bad.exit_code == 2 and "invalid --kind 'cube'" in bad.stderr
    path = runner.invoke(app, ["landscape", "last", "--kind", "trajectory", "--steps", "5", "--store", "s"])
    assert path.exit_code == 0 and "note" not in path.stderr  # the replay ends at the stored parameters


def test_trajectory_ends_at_the_model_and_spans_the_path(data: TensorData) -> None:
    model = _model()
    snaps = landscape.Snapshots(every=5)
    gdlab.fit(model, data, lr=0.2, steps=60, progress=False, doctor=False, instruments="none", callbacks=[snaps])
    assert len(snaps.points) == 13  # the start, every 5th step
    land = landscape.trajectory(model, data, snaps, steps=7, samples=300, progress=False)
    assert land.path is not None and land.path.shape == (13, 2)
    assert torch.allclose(land.path[-1], torch.zeros(2, dtype=torch.float64), atol=1e-6)  # the end is the model
    assert float(land.path.abs().max()) <= float(land.alphas.max())  # the plane holds the whole path
    assert land.explained is not None and 0 < sum(land.explained) <= 1 + 1e-9
    assert land.losses[3, 3].item() == pytest.approx(gdlab.evaluate(model, data)["loss"], rel=1e-5)
    first = [torch.cat([p.flatten() for p in d]) for d in land.directions]
    assert abs(float(first[0] @ first[1])) < 1e-6 and float(first[0].norm()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(InvalidParameter, match="invalid snapshots 2"):
        landscape.trajectory(model, data, snaps.points[:2], progress=False)
