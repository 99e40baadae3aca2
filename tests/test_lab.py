"""The lab: test functions are what they say, optimizers walk as the theory says, the pictures get written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gdlab.cli import app
from gdlab.errors import InvalidParameter, UnknownChoice
from gdlab.lab.functions import FUNCTIONS, get, quadratic
from gdlab.lab.walks import run, walk, walk_together


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_minima_are_minima_and_starts_are_inside(name: str) -> None:
    f = FUNCTIONS[name]
    assert f.inside(f.start)
    for m in f.minima:
        point = torch.tensor(m, dtype=torch.float64, requires_grad=True)
        value = f(point)
        (g,) = torch.autograd.grad(value, point)
        assert float(value.detach()) == pytest.approx(f.minimum, abs=1e-3) and float(g.norm()) < 0.05
        around = point.detach() + 0.05 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0),
                                                      dtype=torch.float64)
        assert float(f(around).min()) >= float(value.detach()) - 1e-3  # nothing lower nearby


@pytest.mark.parametrize("condition", [10.0, 100.0, 1000.0])
def test_contraction_rates_match_goh(condition: float) -> None:
    """Goh, "Why Momentum Really Works": with l1 = 1 and ln = k, gradient descent at step 2/(l1+ln) contracts
    the error by (k-1)/(k+1) per step; heavy-ball momentum at step (2/(sqrt(l1)+sqrt(ln)))^2 and beta
    ((sqrt(k)-1)/(sqrt(k)+1))^2 by (sqrt(k)-1)/(sqrt(k)+1)."""
    f = quadratic(condition, angle=30.0)
    start = torch.tensor([[2.5, 2.0]], dtype=torch.float64)
    k, root = condition, math.sqrt(condition)

    def measured(w: object, first: int, last: int) -> float:
        d = w.path[:, 0, :].norm(dim=-1)  # type: ignore[attr-defined]
        return float((d[last] / d[first]) ** (1 / (last - first)))

    gd = walk(f, "sgd", 2 / (1 + k), start, 3000)
    assert measured(gd, 100, 3000 if k == 1000 else 300) == pytest.approx((k - 1) / (k + 1), rel=0.02)
    heavy = walk(f, "momentum", (2 / (1 + root)) ** 2, start, 400, momentum=((root - 1) / (root + 1)) ** 2)
    last = 200 if k == 10 else 400
    assert measured(heavy, 100, last) == pytest.approx((root - 1) / (root + 1), rel=0.02)


def test_run_reports_and_draws(tmp_path: Path) -> None:
    result = run("booth", optimizers=["sgd", "momentum"], steps=150, lr=0.02, out=tmp_path)
    for row in result.table:
        assert row["distance"] < 0.01 and row["steps_to_tol"] is not None and not row["diverged"]
    assert Path(result.files["plot"]).stat().st_size > 10_000
    assert Path(result.files["animation"]).read_bytes()[:3] == b"GIF"


def test_auto_lr_and_restarts_find_basins(tmp_path: Path) -> None:
    tuned = run("quadratic", optimizers=["sgd"], steps=100, lr="auto", plots=False)
    assert tuned.table[0]["loss"] < 1e-6  # the tuned step gets to the bottom of the bowl
    basins = run("himmelblau", optimizers=["sgd"], steps=300, lr=0.01, restarts=40, plots=True, out=tmp_path)
    row = basins.table[0]
    assert row["reached_global"] > 0.9 and len(set(b for b in row["basins"] if b >= 0)) == 4  # all four minima
    assert Path(basins.files["plot"]).is_file()


def test_a_diverging_walk_stops_where_it_was() -> None:
    w = walk(get("rosenbrock"), "sgd", 1.0, torch.tensor([[-1.5, 2.0]], dtype=torch.float64), 20)
    assert w.diverged_at[0] is not None and torch.isfinite(w.path).all()


def test_bad_lab_input() -> None:
    with pytest.raises(UnknownChoice, match="unknown function 'nope'"):
        run("nope", plots=False)
    with pytest.raises(InvalidParameter, match="invalid start '9,9'"):
        run("rosenbrock", start=(9.0, 9.0), plots=False)
    with pytest.raises(UnknownChoice, match="unknown optimizer 'foo'"):
        run("booth", optimizers=["foo"], plots=False)
    with pytest.raises(InvalidParameter, match="invalid condition 0.5"):
        quadratic(0.5)


def test_lab_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["lab", "booth", "--optimizers", "sgd", "--steps", "50", "--lr", "0.02", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["table"][0]["optimizer"] == "sgd" and Path(payload["files"]["animation"]).is_file()
    listed = runner.invoke(app, ["functions"])
    assert "himmelblau" in listed.stdout and "plateau" in listed.stdout
    for args, message in ((["lab", "booth", "--start", "1"], "invalid --start '1'"),
                          (["lab", "nope"], "unknown function 'nope'"),
                          (["lab", "booth", "--lr", "fast"], "invalid --lr 'fast'")):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_lab_out_is_checked_before_any_walk_and_force_writes_over(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--out is a folder: a file there, or the store's own folder, is one line before any walk; a file of another
    kind where the lab writes its picture is kept unless --force."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    folder = Path("pictures")
    folder.mkdir()
    (folder / "trajectories.png").write_text("the user's notes")
    args = ["lab", "booth", "--optimizers", "sgd", "--steps", "20", "--lr", "0.02", "--out", str(folder)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.strip() == "error: invalid --out 'pictures/trajectories.png': expected a new path or a " \
        ".png file gdlab may replace: this file holds something else; pass --force to write over it"
    assert (folder / "trajectories.png").read_text() == "the user's notes" and not (folder / "descent.gif").exists()
    with pytest.raises(InvalidParameter, match="pass --force"):  # the library checks it the same way
        run("booth", optimizers=["sgd"], steps=20, lr=0.02, out=folder)
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (folder / "trajectories.png").read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, args)  # now a picture of its kind: written over without --force
    assert again.exit_code == 0, again.output


def test_optimizers_walk_as_one_population() -> None:
    """walk_together: one evaluation of the function per step for every optimizer and start, and each group's
    walk equal to walking it alone (adam's and momentum's state kept apart)."""
    f = get("himmelblau")
    calls = []

    class Counted:
        def __call__(self, points: torch.Tensor) -> torch.Tensor:
            calls.append(len(points))
            return f(points)

    starts = torch.tensor([[-4.0, 4.0], [1.0, -3.0], [0.5, 0.5]], dtype=torch.float64)
    groups = [("sgd", 0.01, starts, {}), ("momentum", 0.005, starts[:2], {"momentum": 0.8}),
              ("adam", torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), starts, {})]
    together = walk_together(Counted(), groups, 50)  # type: ignore[arg-type]
    assert calls == [8] * 51  # 50 steps and the final value: all 8 points at once
    for (name, lr, s, hyper), w in zip(groups, together):
        alone = walk(f, name, lr, s, 50, **hyper)
        assert w.optimizer == name and torch.allclose(w.path, alone.path, rtol=0, atol=1e-12)
        assert torch.equal(w.losses, alone.losses)
