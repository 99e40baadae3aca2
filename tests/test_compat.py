"""A store written by gdlab 0.1.0 (tests/data/store-0.1.0: two runs, one an Adam run, and a sweep) still reads,
explains, plots and resumes with the current code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gdlab.cli import app
from gdlab.store import Store

OLD = Path(__file__).parent / "data" / "store-0.1.0"
runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(OLD, tmp_path / "s")
    return tmp_path / "s"


def gdlab(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_old_store_lists_shows_and_explains(store: Path) -> None:
    listing = gdlab("runs", "--store", str(store))
    assert "old-train" in listing and "old-adam" in listing
    shown = gdlab("show", "old-train", "--store", str(store))
    assert "finished" in shown and "1438 samples, batch 32 -> 45 iterations per epoch" in shown
    assert "90 steps, 2 epochs" in gdlab("doctor", "old-train", "--store", str(store))
    sweeps = Store(store).sweeps()
    assert len(sweeps) == 1
    assert "lr" in gdlab("show", sweeps[0]["id"], "--store", str(store))


def test_old_store_plots(store: Path) -> None:
    gdlab("plot", "old-train", "--store", str(store), "--instruments", "--out", "dash.png")
    gdlab("gradflow", "old-train", "--store", str(store), "--out", "flow.png")
    assert Path("dash.png").stat().st_size > 1000 and Path("flow.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["old-train", "old-adam"])
def test_old_runs_resume(store: Path, name: str) -> None:
    before = Store(store).get(name)
    gdlab("train", "--resume", name, "--store", str(store), "--epochs", "3", "--steps", "200", "--quiet")
    after = Store(store).get(name)
    assert after.status == "finished" and after.steps > before.steps
    assert len(Store(store).history(after.id).steps) == after.steps
