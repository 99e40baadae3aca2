from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gdlab.data import TensorData
from gdlab.errors import InvalidParameter, RunNotFound, StoreError
from gdlab.loop import Callback, LoopState
from gdlab.store import Store
from gdlab.train import fit


def test_runs_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({"data": "seed", "lr": 0.1}, {"samples": 3}, name="first")
    store.add_steps(run_id, [{"step": 1, "loss": 2.0, "grad_norm": 0.5},
                             {"step": 2, "loss": 1.5, "grad_norm": math.nan}])
    store.add_epochs(run_id, [{"epoch": 1, "train_loss": 1.7, "val_loss": 1.9}])
    store.finish(run_id, "finished", final={"train_loss": 1.5}, lr=0.1, seconds=0.5, steps=2)
    run = store.get(run_id)
    assert (run.status, run.name, run.config["lr"], run.final, run.steps) == ("finished", "first", 0.1,
                                                                              {"train_loss": 1.5}, 2)
    history = store.history(run_id)
    assert history.steps["loss"] == [2.0, 1.5] and math.isnan(history.steps["grad_norm"][1])
    assert history.epochs["val_loss"] == [1.9]
    assert run.dir.is_dir() and run.dir.parent == tmp_path
    assert sqlite3.connect(tmp_path / "gdlab.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_are_found_by_id_prefix_name_and_last(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a = store.create_run({}, name="alpha")
    b = store.create_run({}, name="beta")
    assert store.get(a).id == a
    assert store.get("alpha").id == a and store.get("last").id == b
    assert [r.id for r in store.runs()] == [b, a]
    with pytest.raises(RunNotFound, match="unknown run 'gamma'"):
        store.get("gamma")
    with pytest.raises(RunNotFound, match="ambiguous"):
        store.get(a[:4])  # both ids start with the year


def test_unique_prefix_finds_the_run(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({})
    assert store.get(run_id[:-1]).id == run_id


def test_bad_status_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({})
    with pytest.raises(InvalidParameter, match="invalid status 'done'"):
        store.finish(run_id, "done")


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=r"store directory '.*file/runs' cannot be written .*--store"):
        Store(blocker / "runs")


def test_a_run_whose_process_died_is_marked_failed(tmp_path: Path) -> None:
    code = f"from gdlab.store import Store; print(Store({str(tmp_path)!r}).create_run({{}}))"
    run_id = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    run = Store(tmp_path).get(run_id)
    assert run.status == "failed" and "ended without closing" in run.error


def test_a_live_run_stays_running(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({})
    assert store.get(run_id).status == "running" and os.getpid() > 0


def test_failed_fit_is_marked_failed_and_keeps_its_metrics(classes: TensorData, tmp_path: Path) -> None:
    class Boom(Callback):
        def on_step_end(self, state: LoopState) -> None:
            if state.step == 5:
                raise ValueError("boom")

    store = Store(tmp_path)
    with pytest.raises(ValueError):
        fit(nn.Linear(4, 3), classes, batch_size=8, epochs=3, store=store, progress=False, callbacks=[Boom()])
    run = store.runs()[0]
    assert run.status == "failed" and run.error == "ValueError: boom"
    assert store.history(run.id).steps["step"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_hard_interrupt_marks_the_run_stopped(classes: TensorData, tmp_path: Path) -> None:
    class HardStop(Callback):
        def on_step_end(self, state: LoopState) -> None:
            raise KeyboardInterrupt

    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit(nn.Linear(4, 3), classes, epochs=1, store=store, progress=False, callbacks=[HardStop()])
    assert store.runs()[0].status == "stopped"


def test_errors_before_training_store_nothing(classes: TensorData, tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(InvalidParameter):
        fit(nn.Linear(4, 3), classes, lr=-1.0, store=store, progress=False)
    with pytest.raises(Exception, match="does not accept"):
        fit(nn.Linear(5, 3), classes, store=store, progress=False)
    assert store.runs() == [] and not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_fit_records_config_plan_steps_and_epochs(classes: TensorData, tmp_path: Path) -> None:
    result = fit(nn.Linear(4, 3), classes, batch_size=16, epochs=2, store=tmp_path, name="mine", progress=False,
                 val=classes)
    store = Store(tmp_path)
    run = store.get("mine")
    assert run.id == result.run_id and run.status == "finished"
    assert run.plan["iterations_per_epoch"] == 4 and run.config["batch_size"] == 16
    assert run.final == pytest.approx(result.final)
    assert store.history(run.id).steps["loss"] == result.history.steps["loss"]
    assert torch.load(run.checkpoint, weights_only=True)["position"]["step"] == 8
