"""gdlab export RUN --out PATH --format csv|json|parquet writes the run's history, findings and remedies;
--tensorboard DIR writes it as TensorBoard events after the fact, as fit(tensorboard=...) writes them live."""

from __future__ import annotations

import builtins
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import gdlab
from gdlab.cli import app

runner = CliRunner()


def gdlab_cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A run fit from Python (lr too large: the doctor has findings), and its stored history."""
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    result = gdlab.fit(torch.nn.Linear(4, 1), (X[:64], y[:64]), val=(X[64:], y[64:]), optimizer="sgd", lr=3.0,
                       epochs=4, batch_size=16, progress=False, store="s", step_rows=0)
    assert result.findings
    return result.run_id, gdlab.Store("s").history(result.run_id)


def _same(rows: list[dict[str, Any]], table: Any) -> None:
    assert len(rows) == len(table)
    for key, column in table.columns.items():
        got = [row.get(key) for row in rows]
        assert [math.nan if v is None or v == "" else float(v) for v in got] == \
            pytest.approx(column, nan_ok=True), key


def test_json_is_one_file_with_everything(stored: tuple[str, Any]) -> None:
    run_id, history = stored
    result = gdlab_cli("export", run_id, "--format", "json", "--out", "h.json", "--store", "s")
    assert result.exit_code == 0, result.output
    data = json.loads(Path("h.json").read_text())
    _same(data["steps"], history.steps)
    _same(data["epochs"], history.epochs)
    assert data["run_id"] == run_id and data["findings"] == gdlab.Store("s").get(run_id).findings
    assert "remedies" in data and data["status"] == "finished"


def test_csv_is_a_folder_of_steps_epochs_and_findings(stored: tuple[str, Any]) -> None:
    run_id, history = stored
    result = gdlab_cli("export", run_id, "--out", "h", "--store", "s")  # csv is the default
    assert result.exit_code == 0, result.output
    for name, table in (("steps", history.steps), ("epochs", history.epochs)):
        with open(f"h/{name}.csv", newline="") as f:
            _same(list(csv.DictReader(f)), table)
    about = json.loads(Path("h/findings.json").read_text())
    assert about["findings"] == gdlab.Store("s").get(run_id).findings and about["remedies"] == []


def test_parquet_is_a_folder_too(stored: tuple[str, Any]) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed: pip install "
                                                       "'gdlab[parquet]'")
    run_id, history = stored
    result = gdlab_cli("export", run_id, "--format", "parquet", "--out", "h", "--store", "s")
    assert result.exit_code == 0, result.output
    for name, table in (("steps", history.steps), ("epochs", history.epochs)):
        _same(pq.read_table(f"h/{name}.parquet").to_pylist(), table)
    assert json.loads(Path("h/findings.json").read_text())["findings"]


def test_parquet_without_pyarrow_names_the_install(stored: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    run_id, _ = stored
    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "pyarrow":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    result = runner.invoke(app, ["export", run_id, "--format", "parquet", "--out", "h", "--store", "s"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --format parquet needs the pyarrow package: pip install 'gdlab[parquet]'" \
        or ("pip install 'gdlab[parquet]'" in result.output and len(result.output.strip().splitlines()) == 1)
    assert not Path("h").exists()


def test_tensorboard_writes_a_stored_run_as_fit_writes_it_live(stored: tuple[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from test_tensorboard import _events, _texts
    from test_tensorboard import _same as same_events

    run_id, history = stored
    result = gdlab_cli("export", run_id, "--tensorboard", "tb", "--store", "s")
    assert result.exit_code == 0, result.output
    acc = _events(tmp_path / "tb")
    same_events(acc, history)
    findings = gdlab.Store("s").get(run_id).findings
    assert {f"doctor/{f['code']}" for f in findings} <= set(_texts(acc))


def test_export_needs_something_to_write_and_a_known_format(stored: tuple[str, Any]) -> None:
    run_id, _ = stored
    for args in ([], ["--out", "h", "--format", "xml"], ["--out", "h", "--format", "json"]):
        result = runner.invoke(app, ["export", run_id, *args, "--store", "s"])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
