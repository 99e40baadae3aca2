"""TensorBoard: fit(tensorboard=DIR) and gdlab train --tensorboard write the history and the findings, read back
with TensorBoard's own event reader; without the package, one line names the pip install."""

from __future__ import annotations

import builtins
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import gdlab
from gdlab.cli import app
from gdlab.errors import GdlabError, InvalidParameter, MissingExtra
from gdlab.records import History

runner = CliRunner()
MISSING = "needs the tensorboard package: pip install 'gdlab[tensorboard]'"


def _events(logdir: Path) -> Any:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install "
                                              "'gdlab[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(acc: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc: Any) -> dict[str, list[tuple[int, str]]]:
    tags = [t for t in acc.Tags()["tensors"] if t.startswith(("doctor/", "remedy/"))]
    # SummaryWriter.add_text(tag, ...) stores it as "<tag>/text_summary"
    return {t.removesuffix("/text_summary"): [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(t)]
            for t in tags}


def _expected(history: History) -> dict[str, list[tuple[int, float]]]:
    expected: dict[str, list[tuple[int, float]]] = {}
    for prefix, table in (("step/", history.steps), ("epoch/", history.epochs)):
        for row in table.rows():
            for key, value in row.items():
                if key not in ("step", "epoch") and math.isfinite(value):
                    expected.setdefault(prefix + key, []).append((int(row["step"]), value))
    return expected


def _same(acc: Any, history: History) -> None:
    expected = _expected(history)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, pairs in expected.items():
        got = _scalars(acc, tag)
        assert [s for s, _ in got] == [s for s, _ in pairs], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in pairs], rel=1e-6, abs=1e-12), tag


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g)
    return X, (X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]))


def test_fit_writes_every_column_and_the_findings(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    X, y = _data()
    result = gdlab.fit(torch.nn.Linear(4, 1), (X[:64], y[:64]), val=(X[64:], y[64:]), optimizer="sgd", lr=3.0,
                       epochs=4, batch_size=16, progress=False, instruments="full", tensorboard=tmp_path / "tb")
    acc = _events(tmp_path / "tb")
    _same(acc, result.history)
    tags = acc.Tags()["scalars"]
    assert {"step/loss", "step/lr", "epoch/train_loss", "epoch/val_loss"} <= set(tags)
    assert any(t.startswith("step/") and t not in ("step/loss", "step/lr") for t in tags)  # the instruments'
    assert result.findings, "lr=3 should give the doctor something to say"
    texts = _texts(acc)
    for finding in result.findings:
        (step, text), *_ = texts[f"doctor/{finding.code}"]
        assert step == (finding.step or 0) and finding.explanation in text


def test_the_events_are_written_live_at_each_epoch_end(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    seen: list[list[int]] = []

    class Peek(gdlab.Callback):  # the board comes after it: at each epoch's end, the epochs before are written
        def on_epoch_end(self, state: Any) -> None:
            acc = _events(tmp_path / "tb")
            seen.append([s for s, _ in _scalars(acc, "epoch/train_loss")] if "epoch/train_loss" in
                        acc.Tags()["scalars"] else [])

    X, y = _data(32)
    gdlab.fit(torch.nn.Linear(4, 1), (X, y), epochs=3, batch_size=8, progress=False, callbacks=[Peek()],
              tensorboard=tmp_path / "tb")
    assert seen == [[], [4], [4, 8]]


def test_the_cli_writes_the_stored_runs_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", "digits", "--steps", "6", "--store", "s", "--json", "--quiet",
                                 "--no-plot", "--tensorboard", "tb"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    _same(_events(tmp_path / "tb"), gdlab.Store("s").history(run_id))


def test_a_file_or_the_store_is_never_taken_for_the_event_folder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--tensorboard naming an existing file (or the store's own folder) is one line before any work, in fit and
    in export; the file is left as it was and nothing is stored."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    X, y = _data(16)
    for target in ("notes.txt", "s"):
        gdlab.Store("s").close()
        with pytest.raises(InvalidParameter, match=f"invalid tensorboard '{target}': expected a folder"):
            gdlab.fit(torch.nn.Linear(4, 1), (X, y), epochs=1, progress=False, tensorboard=target, store="s")
    assert (tmp_path / "notes.txt").read_text() == "mine" and gdlab.Store("s").runs() == []
    stored = gdlab.fit(torch.nn.Linear(4, 1), (X, y), epochs=1, progress=False, store="s")
    result = runner.invoke(app, ["export", stored.run_id, "--store", "s", "--tensorboard", "notes.txt"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: invalid --tensorboard 'notes.txt': expected a folder to write into " \
        "(this is a file)"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _without_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_fit_without_tensorboard_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without_tensorboard(monkeypatch)
    X, y = _data(16)
    with pytest.raises(MissingExtra) as caught:
        gdlab.fit(torch.nn.Linear(4, 1), (X, y), epochs=1, progress=False, tensorboard=str(tmp_path / "tb"),
                  store=tmp_path / "s")
    assert isinstance(caught.value, GdlabError)
    assert str(caught.value) == f"tensorboard={str(tmp_path / 'tb')!r} {MISSING}"
    assert not (tmp_path / "s").exists() or not gdlab.Store(tmp_path / "s").runs()  # nothing stored


def test_the_cli_without_tensorboard_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _without_tensorboard(monkeypatch)
    result = runner.invoke(app, ["train", "--data", "digits", "--steps", "2", "--store", "s", "--quiet",
                                 "--no-plot", "--tensorboard", "tb"])
    assert result.exit_code == 2, result.output
    assert MISSING in result.output and len(result.output.strip().splitlines()) == 1


def test_importing_gdlab_never_imports_tensorboard() -> None:
    code = "import sys, gdlab; gdlab.fit; print([m for m in sys.modules if m.split('.')[0] == 'tensorboard' " \
           "or m.startswith('torch.utils.tensorboard')])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_watch_writes_the_same_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    X, y = _data(32)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gdlab.watch(model, opt, tensorboard=tmp_path / "tb") as w:
        for _ in range(3):
            for i in range(0, 32, 8):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(X[i:i + 8]), y[i:i + 8])
                loss.backward()
                opt.step()
                w.step(loss)
            w.epoch_end()
    acc = _events(tmp_path / "tb")
    _same(acc, w.history)
    assert len(_scalars(acc, "epoch/train_loss")) == 3 and len(_scalars(acc, "step/loss")) == 12
