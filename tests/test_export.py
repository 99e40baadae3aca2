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


# -- issue 24: no code from a file without consent; --out checked by guard.check_out ----------------------------

MARKER = '''
import pathlib

import torch

pathlib.Path("imported.txt").write_text("marker_models was imported")


def build(in_features, out_features):
    return torch.nn.Linear(in_features, out_features)
'''


@pytest.fixture
def marked(user_modules: Path):
    """A store ``s`` whose run's model is ``marker_models:build``, a module whose import writes imported.txt; after
    training, the module is forgotten and the file removed, so that an import would show. Yields the run's id."""
    import sys

    (user_modules / "marker_models.py").write_text(MARKER)
    result = gdlab_cli("train", "--data", "moons", "--model", "marker_models:build", "--epochs", "1", "--store", "s",
                       "--json", "--quiet", "--no-plot")
    assert result.exit_code == 0, result.output
    (user_modules / "imported.txt").unlink()
    sys.modules.pop("marker_models")
    yield json.loads(result.stdout)["run_id"]
    sys.modules.pop("marker_models", None)


REBUILDS = {  # the commands that rebuild a stored run's model, and what each can name again
    "predict": (["predict", "{run}", "--data", "moons", "--out", "p.csv"], "pass --model {spec} to run it, or "
                "--trust-store"),
    "export": (["export", "{run}", "--model", "m.safetensors"], "pass --trust-store to run it"),
    "resume": (["train", "--resume", "{run}", "--epochs", "2"], "pass --model {spec} to run it, or --trust-store"),
    "landscape": (["landscape", "{run}", "--steps", "3"], "pass --trust-store to run it"),
}


def _refused(args: list[str], run: str, store: Path, spec: str, how: str) -> None:
    """``args`` on ``run`` in ``store`` is one line naming ``spec`` and ``how`` to consent; nothing written."""
    from hostile import snapshot

    def kept() -> dict[str, bytes]:  # the store's files, its database as rows (a reader may fold its log in)
        import sqlite3

        files = {k: v for k, v in snapshot(store).items() if not k.startswith("gdlab.db")}
        db = sqlite3.connect(f"{(store / 'gdlab.db').as_uri()}?mode=ro", uri=True)
        files["gdlab.db"] = "\n".join(db.iterdump()).encode()
        db.close()
        return files

    before = kept()
    result = runner.invoke(app, [a.format(run=run) for a in args] + ["--store", str(store)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output
    assert f"stores model '{spec}', code gdlab would import and run" in line
    assert line.endswith(how.format(spec=spec)), line
    assert kept() == before and not Path("p.csv").exists() and not Path("m.safetensors").exists()


@pytest.mark.parametrize("command", sorted(REBUILDS))
def test_stored_code_is_not_imported_without_consent(marked: str, user_modules: Path, command: str) -> None:
    import sys

    args, how = REBUILDS[command]
    _refused(args, marked, user_modules / "s", "marker_models:build", how)
    assert not (user_modules / "imported.txt").exists() and "marker_models" not in sys.modules


@pytest.mark.parametrize("command", sorted(REBUILDS))
@pytest.mark.parametrize("kind", ["code", "interact"])
def test_hostile_stores_naming_os_abort_or_code_interact_run_nothing(hostile: Any, monkeypatch: pytest.MonkeyPatch,
                                                                     kind: str, command: str) -> None:
    import code
    import os

    called: list[str] = []
    monkeypatch.setattr(os, "abort", lambda *a, **k: called.append("os:abort"))  # were it imported, it would show
    monkeypatch.setattr(code, "interact", lambda *a, **k: called.append("code:interact"))
    root, run = hostile(kind)
    monkeypatch.chdir(root.parent)
    args, how = REBUILDS[command]
    _refused(args, run, root, "os:abort" if kind == "code" else "code:interact", how)
    assert called == []


def test_naming_the_model_again_or_trusting_the_store_runs_it(marked: str, user_modules: Path) -> None:
    from gdlab import models

    imported = user_modules / "imported.txt"
    ok = gdlab_cli("predict", marked, "--data", "moons", "--out", "p.csv", "--model", "marker_models:build",
                   "--store", "s")
    assert ok.exit_code == 0, ok.output
    assert imported.exists() and len((user_modules / "p.csv").read_text().splitlines()) == 201
    other = gdlab_cli("predict", marked, "--data", "moons", "--out", "q.csv", "--model", "user_models:regressor",
                      "--store", "s")
    assert other.exit_code == 2 and "invalid --model 'user_models:regressor': expected the run's stored model " \
        "'marker_models:build' (given again, it consents to running that code; it does not replace it)" in other.stderr
    assert not (user_modules / "q.csv").exists()
    exported = gdlab_cli("export", marked, "--model", "m.safetensors", "--trust-store", "--store", "s")
    assert exported.exit_code == 0, exported.output
    loaded = models.load(user_modules / "m.safetensors", model=torch.nn.Linear(2, 2))
    assert loaded.weight.shape == (2, 2)
    again = gdlab_cli("train", "--resume", marked, "--epochs", "2", "--model", "marker_models:build", "--store", "s",
                      "--quiet", "--no-plot")
    assert again.exit_code == 0, again.output
    trusted = gdlab_cli("train", "--resume", marked, "--epochs", "3", "--trust-store", "--store", "s", "--quiet",
                        "--no-plot")
    assert trusted.exit_code == 0, trusted.output
    assert gdlab.Store("s").get(marked).config["epochs"] == 3
    landscape = gdlab_cli("landscape", marked, "--kind", "line", "--steps", "3", "--samples", "50", "--out",
                          "l.png", "--trust-store", "--store", "s")
    assert landscape.exit_code == 0 and (user_modules / "l.png").is_file(), landscape.output
    swapped = gdlab_cli("train", "--resume", marked, "--epochs", "4", "--model", "mlp", "--store", "s")
    assert swapped.exit_code == 2 and "invalid --model 'mlp': expected the run's stored model" in swapped.stderr


def test_builtin_models_and_data_need_no_consent(user_modules: Path) -> None:
    trained = gdlab_cli("train", "--data", "moons", "--hidden", "4", "--epochs", "1", "--store", "s", "--quiet",
                        "--no-plot")
    assert trained.exit_code == 0, trained.output
    assert gdlab_cli("predict", "last", "--data", "moons", "--out", "p.csv", "--store", "s").exit_code == 0
    assert gdlab_cli("export", "last", "--model", "m.safetensors", "--store", "s").exit_code == 0
    assert gdlab_cli("train", "--resume", "last", "--epochs", "2", "--store", "s", "--quiet").exit_code == 0


def test_out_paths_are_checked_by_the_one_guard(user_modules: Path) -> None:
    import numpy as np

    np.savez(user_modules / "x.npz", X=np.zeros((4, 2), dtype=np.float32))
    (user_modules / "inputs.csv").write_text("a,b\n1,2\n")
    assert gdlab_cli("train", "--data", "moons", "--hidden", "4", "--epochs", "1", "--store", "s", "--quiet",
                     "--no-plot").exit_code == 0
    (user_modules / "notes.safetensors").write_text("my notes, not a model")
    (user_modules / "folder.csv").mkdir()
    for args, message in (
        (["predict", "last", "--data", "inputs.csv", "--out", "inputs.csv"], "invalid --out 'inputs.csv': expected a "
         "path other than the --data file it reads"),
        (["predict", "last", "--data", "x.npz", "--out", "gdlab.db"], "invalid --out 'gdlab.db': expected a .csv "
         "file path"),
        (["predict", "last", "--data", "x.npz", "--out", "folder.csv"], "invalid --out 'folder.csv': expected a .csv "
         "file path (this is a folder)"),
        (["export", "last", "--model", "notes.safetensors"], "invalid --model 'notes.safetensors': expected a new "
         "path or a .safetensors file gdlab may replace: this file holds something else; pass --force to write over "
         "it"),
        (["export", "last", "--out", "s"], "invalid --out 's': expected a folder outside the run store's own"),
        (["export", "last", "--out", "s/gdlab.db", "--format", "json"], "invalid --out 's/gdlab.db': expected a "
         ".json file path"),
    ):
        result = gdlab_cli(*args, "--store", "s")
        line = result.stderr.strip()
        assert result.exit_code == 2 and line.startswith(f"error: {message}") and "\n" not in line, result.output
    assert (user_modules / "inputs.csv").read_text() == "a,b\n1,2\n"
    assert (user_modules / "notes.safetensors").read_text() == "my notes, not a model"
    forced = gdlab_cli("export", "last", "--model", "notes.safetensors", "--force", "--store", "s")
    assert forced.exit_code == 0, forced.output
    again = gdlab_cli("export", "last", "--model", "notes.safetensors", "--store", "s")  # a model now: replaced
    assert again.exit_code == 0, again.output
    predicted = gdlab_cli("predict", "last", "--data", "x.npz", "--out", "p.csv", "--store", "s")
    assert predicted.exit_code == 0 and "4 predictions" in predicted.stdout
    train = "a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(10))
    (user_modules / "train.csv").write_text(train)
    assert gdlab_cli("train", "--data", "train.csv", "--target", "b", "--hidden", "2", "--epochs", "1", "--store", "t",
                     "--quiet", "--no-plot").exit_code == 0
    over = gdlab_cli("predict", "last", "--data", "x.npz", "--out", "train.csv", "--store", "t")
    assert over.exit_code == 2 and over.stderr.strip() == "error: invalid --out 'train.csv': expected a path other " \
        "than the run's training data"
    assert (user_modules / "train.csv").read_text() == train


def test_stored_data_code_needs_consent_too(user_modules: Path) -> None:
    (user_modules / "my_data.py").write_text("import torch\n\n\ndef pairs():\n"
                                             "    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))\n"
                                             "    return X, (X[:, 0] > 0).long()\n")
    trained = gdlab_cli("train", "--data", "my_data:pairs", "--model", "linear", "--epochs", "1", "--store", "s",
                        "--quiet", "--no-plot")
    assert trained.exit_code == 0, trained.output
    refused = gdlab_cli("predict", "last", "--data", "inputs.npz", "--out", "p.csv", "--store", "s")
    assert refused.exit_code == 2 and refused.stderr.strip().endswith(
        "stores data 'my_data:pairs', code gdlab would import and run; gdlab runs no code named by a store without "
        "consent: pass --data my_data:pairs to run it, or --trust-store")
    named = gdlab_cli("predict", "last", "--data", "my_data:pairs", "--out", "p.csv", "--store", "s")
    assert named.exit_code == 0 and "20 predictions" in named.stdout, named.output
    resumed = gdlab_cli("train", "--resume", "last", "--epochs", "2", "--store", "s", "--quiet")
    assert resumed.exit_code == 2 and "pass --data my_data:pairs to run it, or --trust-store" in resumed.stderr
    other = gdlab_cli("train", "--resume", "last", "--epochs", "2", "--data", "moons", "--store", "s")
    assert other.exit_code == 2 and "invalid --data 'moons': expected the run's stored data 'my_data:pairs'" \
        in other.stderr
    again = gdlab_cli("train", "--resume", "last", "--epochs", "2", "--data", "my_data:pairs", "--store", "s",
                      "--quiet")
    assert again.exit_code == 0, again.output
