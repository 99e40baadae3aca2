from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gdlab import callbacks
from gdlab import store as store_module
from gdlab.callbacks import Recorder
from gdlab.cli import app
from gdlab.data import TensorData
from gdlab.doctor import diagnose
from gdlab.errors import InvalidParameter, RunNotFound, StoreError
from gdlab.loop import Callback, LoopState
from gdlab.records import History
from gdlab.store import SCHEMA_VERSION, Store
from gdlab.train import fit

DATA = Path(__file__).parent / "data"

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


def _long_run(store: Store, steps: int, step_rows: int, spike: int) -> str:
    """A synthetic run written as fit writes it: the Recorder flushing each epoch's rows (45 steps)."""
    run_id = store.create_run({})
    recorder = Recorder(store, run_id, step_rows=step_rows)
    state = SimpleNamespace(history=History())
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 1.0 + (step % 7) / 10, "grad_norm": 1000.0 if step == spike else 1.0}
        if step % 20 == 0:
            row["dead_share/2"] = 0.25
        state.history.steps.append(row)
        if step % 45 == 0 or step == steps:
            recorder.flush(state)  # type: ignore[arg-type]
    return run_id


def test_a_long_run_keeps_its_newest_steps_and_buckets_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = _long_run(store, 50_000, step_rows=1000, spike=20_000)
    stored = store._rows.read(store._db, run_id, "step")
    full = [int(s) for b in stored if b.width == 1 for s in b.index]
    older = [b for b in stored if b.width > 1]
    assert [b.width for b in stored] == sorted((b.width for b in stored), reverse=True)  # the buckets come first
    assert full == list(range(full[0], 50_001)) and 1000 <= len(full) < 1000 + 1000 // 16 + 256
    loss_counts = [c for b in older for c in b.planes[0][b.keys.index("loss")]]
    buckets = (len(loss_counts), len({b.width for b in older}), sum(loss_counts))
    assert buckets[0] <= 250 and buckets[1] == 1 and buckets[2] == full[0] - 1  # each older step, once
    values = store._db.execute("SELECT SUM(LENGTH(idx) + LENGTH(data)) FROM blocks").fetchone()[0]
    assert values < 1300 * 8 * 3 + 250 * 8 * 12  # 50,000 steps of 2 to 3 keys: about 1.3 * 1000 rows of each
    history = store.history(run_id)
    steps = history.steps
    assert len(steps) == len(full) + buckets[0] and steps["step"] == sorted(steps["step"])
    assert steps["loss"][-1000:] == [1.0 + (s % 7) / 10 for s in range(49_001, 50_001)]  # the newest, as recorded
    row = steps["max:grad_norm"].index(1000.0)  # the old spike survives as its bucket's max
    assert steps["step"][row - 1] < 20_000 <= steps["step"][row] and steps["min:grad_norm"][row] == 1.0
    spikes = [f.step for f in diagnose(history) if f.code == "exploding_gradients"]  # the doctor still sees it
    assert spikes == [steps["step"][row]]
    assert math.isnan(steps["max:loss"][-1])  # a row of one step has no spread
    merged = [(m, lo, hi) for m, lo, hi in zip(steps["loss"], steps["min:loss"], steps["max:loss"])
              if math.isfinite(lo)]
    assert all(lo <= m <= hi for m, lo, hi in merged) and len(merged) == buckets[0]
    total = sum(c * m for b in older for c, m in zip(b.planes[0][b.keys.index("loss")],
                                                  b.planes[1][b.keys.index("loss")])) + sum(steps["loss"][-len(full):])
    assert total == pytest.approx(sum(1.0 + (s % 7) / 10 for s in range(1, 50_001)))
    readings = sum(s % 20 == 0 for s in full) + buckets[0]  # each bucket holds some of the readings every 20 steps
    assert [v for v in steps["dead_share/2"] if math.isfinite(v)] == [0.25] * readings


def test_step_rows_zero_keeps_every_step_and_bad_bounds_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = _long_run(store, 3000, step_rows=0, spike=5)
    assert len(store.history(run_id).steps) == 3000
    assert "max:grad_norm" not in store.history(run_id).steps
    for bad in (-1, 2.5, True):
        with pytest.raises(InvalidParameter, match="step_rows"):
            store.add_steps(run_id, [], step_rows=bad)  # type: ignore[arg-type]


def test_a_failed_merge_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = _long_run(store, 900, step_rows=0, spike=5)
    store._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON blocks WHEN NEW.width > 1 BEGIN SELECT "
                      "RAISE(ABORT, 'database or disk is full'); END")
    before = store.history(run_id).steps.columns
    with pytest.raises(StoreError, match=r"could not be written: database or disk is full$"):
        store.add_steps(run_id, [{"step": 901, "loss": 2.0}], step_rows=100)
    assert store.history(run_id).steps.columns == before  # neither the new row nor a half-made merge


def test_resuming_drops_the_buckets_past_the_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = _long_run(store, 2000, step_rows=200, spike=5)
    last_bucket = max(s for s, lo in zip(store.history(run_id).steps["step"],
                                         store.history(run_id).steps["min:loss"]) if math.isfinite(lo))
    store.reopen(run_id, step=int(last_bucket) - 1, epochs=0)
    steps = store.history(run_id).steps["step"]
    assert steps and max(steps) < last_bucket


def _nan_equal(a: list[float | None], b: list[float]) -> bool:
    return len(a) == len(b) and all((x is None and math.isnan(y)) or x == y for x, y in zip(a, b))


def test_a_store_written_a_row_per_key_reads_as_before_and_takes_new_rows(tmp_path: Path) -> None:
    """tests/data/store-long-rows was written by gdlab before the blocks (schema version 0: a row per step and key,
    the older steps in step_buckets; 2,000 steps, step_rows 200, a spike at step 300); the history that version
    read from it is tests/data/store-long-rows.history.json."""
    old = tmp_path / "old"
    shutil.copytree(DATA / "store-long-rows", old)
    saved = json.loads((DATA / "store-long-rows.history.json").read_text())
    database = (old / "gdlab.db").read_bytes()
    history = Store(old, create=False).history(saved["run"])
    for table, columns in ((history.steps, saved["steps"]), (history.epochs, saved["epochs"])):
        assert set(table.columns) == set(columns) and all(_nan_equal(v, table[k]) for k, v in columns.items())
    assert max(v for v in history.steps["max:grad_norm"] if math.isfinite(v)) == 1000.0  # the spike, in a bucket
    assert (old / "gdlab.db").read_bytes() == database  # read, never upgraded
    # opened for writing: the new table and version; its rows stay where they are, and a resumed run appends blocks
    store = Store(old)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.reopen(saved["run"], step=1900, epochs=42)
    store.add_rows(saved["run"], steps=[{"step": s, "loss": 0.5} for s in range(1901, 2101)],
                   epochs=[{"epoch": 43, "step": 2100, "train_loss": 0.5}], step_rows=200)
    steps = store.history(saved["run"]).steps
    assert steps["step"] == sorted(steps["step"]) and steps["step"][-201:] == list(range(1900, 2101))
    assert steps["loss"][-200:] == [0.5] * 200 and steps["max:grad_norm"].count(1000.0) == 1
    assert store.history(saved["run"]).epochs["epoch"] == list(range(1, 44))


def test_a_store_of_a_later_version_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.close()
    with sqlite3.connect(tmp_path / "gdlab.db") as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    for create in (True, False):
        with pytest.raises(StoreError, match=f"written by a newer gdlab \\(schema version {SCHEMA_VERSION + 1}"):
            Store(tmp_path, create=create)


@pytest.mark.parametrize("damage", ["keys", "index", "data", "first"])
def test_rows_that_do_not_decode_are_a_damaged_store_in_one_line(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({})
    store.add_steps(run_id, [{"step": s, "loss": 1.0 / s} for s in range(1, 50)])
    change = {"keys": ("keys", '{"__class__": "os.system"}'), "index": ("idx", b"\x01\x02\x03"),
              "data": ("data", b"\x80\x04\x95" + b"\x00" * 5), "first": ("first", 7)}[damage]
    store._db.execute(f"UPDATE blocks SET {change[0]} = ?", (change[1],))
    store._db.commit()
    with pytest.raises(StoreError) as caught:
        Store(tmp_path, create=False).history(run_id)
    message = str(caught.value)
    assert "is damaged" in message and f"the step rows of run {run_id}" in message and "\n" not in message


def test_the_bound_holds_whatever_the_number_of_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SERIES_BYTES bounds a run's steps, and apart its epochs (a run of one-step epochs), with many keys: fewer rows
    are kept as recorded, never more bytes."""
    monkeypatch.setattr(store_module, "SERIES_BYTES", 400_000)
    store = Store(tmp_path)
    run_id = store.create_run({})
    recorder = Recorder(store, run_id, step_rows=2000)
    state = SimpleNamespace(history=History())
    for step in range(1, 6001):
        state.history.steps.append({"step": step, "loss": 1.0 / step, **{f"grad_norm/{i}": float(i) for i in range(60)},
                                    **({f"dead/{i}": 0.5 for i in range(100)} if step % 20 == 0 else {})})
        state.history.epochs.append({"epoch": step, "step": step, "train_loss": 1.0 / step})
        if step % 7 == 0:
            recorder.flush(state)  # type: ignore[arg-type]
    recorder.flush(state)  # type: ignore[arg-type]
    for series in ("step", "epoch"):
        stored = store._db.execute("SELECT SUM(LENGTH(idx) + LENGTH(data)), SUM(rows * (width = 1)) FROM blocks "
                                   "WHERE series = ?", (series,)).fetchone()
        assert stored[0] <= 400_000 and (stored[1] < 2000 if series == "step" else stored[1] >= 2000)
    history = store.history(run_id)
    assert history.steps["step"][-1] == 6000.0 and history.steps["grad_norm/59"][-1] == 59.0
    assert history.epochs["epoch"][-1] == 6000.0 and math.isfinite(history.epochs["min:train_loss"][0])
    assert sum(v == 0.5 for v in history.steps["dead/99"]) >= 1


def test_a_run_of_one_step_epochs_writes_a_block_a_second_not_a_transaction_a_step(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    store = Store(tmp_path)
    run_id = store.create_run({})
    recorder = Recorder(store, run_id, step_rows=0)
    state = SimpleNamespace(history=History())
    for step in range(1, 101):
        state.history.steps.append({"step": step, "loss": 1.0})
        state.history.epochs.append({"epoch": step, "train_loss": 1.0})
        clock[0] += 0.125
        recorder.on_epoch_end(state)  # type: ignore[arg-type]
    assert len(store.history(run_id).steps) == 96  # written every 8 epochs (1 s)
    recorder.flush(state)  # type: ignore[arg-type]  # a checkpoint, the end or a failure writes the rest
    assert store.history(run_id).epochs["epoch"] == list(range(1, 101))
    # 13 writes: the first 8 blocks gathered into one, then 5 more
    assert store._db.execute("SELECT COUNT(*) FROM blocks WHERE series = 'step'").fetchone()[0] == 6


def test_fit_bounds_the_stored_steps_and_the_readers_read_them(classes: TensorData, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    result = fit(nn.Linear(4, 3), classes, batch_size=8, steps=400, store=tmp_path, progress=False, step_rows=64,
                 instruments="cheap")
    store = Store(tmp_path)
    steps = store.history(result.run_id).steps
    assert 64 <= len([v for v in steps["min:loss"] if math.isnan(v)]) < 64 + 4 + 32 and len(steps) < 200
    assert steps["loss"][-64:] == result.history.steps["loss"][-64:]
    with pytest.raises(InvalidParameter, match="invalid step_rows -1"):
        fit(nn.Linear(4, 3), classes, steps=5, store=tmp_path, progress=False, step_rows=-1)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["doctor", result.run_id], ["plot", result.run_id, "--out", "loss.png"],
                 ["plot", result.run_id, "--instruments", "--out", "dash.png"], ["show", result.run_id]):
        done = runner.invoke(app, [*args, "--store", str(tmp_path)], catch_exceptions=False)
        assert done.exit_code == 0, done.output
    said = runner.invoke(app, ["doctor", result.run_id, "--store", str(tmp_path)]).output
    merged = sum(map(math.isfinite, steps["min:loss"]))
    assert f"400 steps (the first {int(steps['step'][merged - 1])} merged into {merged} rows" in said
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "dash.png").stat().st_size > 1000


# -- issue 24: store safety: liveness by lock, ids as paths, damaged and read-only stores -------------------------

LIVE = """
import sys
from gdlab.store import Store
print(Store(sys.argv[1]).create_run({}, name="live"), flush=True)
sys.stdin.read()  # runs until killed (or its stdin closes)
"""


def gdlab(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_a_run_killed_with_sigkill_is_failed_at_once_and_a_live_one_is_refused(tmp_path: Path) -> None:
    from hostile import set_columns

    process = subprocess.Popen([sys.executable, "-c", LIVE, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        run_id = process.stdout.readline().strip()  # type: ignore[union-attr]
        set_columns(tmp_path, run_id, pid=2**22 + 1, host="elsewhere")  # no pid or host to go by: the lock decides
        store = Store(tmp_path)
        assert store.get(run_id).status == "running" and store.runs()[0].status == "running"
        with pytest.raises(StoreError, match="is running: stop it first .* delete it with --force"):
            store.delete_run(run_id)
        for refused in (lambda: store.delete_run(run_id, force=True), lambda: store.abandon(run_id)):
            with pytest.raises(StoreError, match="a live process holds its lock"):
                refused()
        bad = gdlab("runs", "rm", run_id, "--force", "--store", str(tmp_path))
        assert bad.exit_code == 2 and "a live process holds its lock" in bad.stderr
    finally:
        process.kill()
        process.wait()
    run = Store(tmp_path).get(run_id)  # no wait: the system let go of the dead process's lock
    assert run.status == "failed" and "ended without closing" in run.error
    assert (tmp_path / run_id).is_dir()


def test_a_run_is_live_while_its_store_holds_it_in_this_process_too(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_id = store.create_run({})
    other = Store(tmp_path)
    assert other.get(run_id).status == "running"  # another open of the lock conflicts, in this process too
    store.finish(run_id, "finished")
    assert other.get(run_id).status == "finished"
    second = store.create_run({})
    store.close()  # closing the store lets go of its runs: they read as dead
    assert other.get(second).status == "failed"
    resumed = Store(tmp_path)
    resumed.reopen(second, step=0, epochs=0)
    assert other.get(second).status == "running"
    with pytest.raises(StoreError, match="running in another process .*it holds the run's lock"):
        other.reopen(second, step=0, epochs=0)


def test_the_stale_kind_is_seen_as_dead_and_resumes(hostile) -> None:
    root, run_id = hostile("stale")  # running, under this very process's pid and host
    reader = Store(root, create=False)
    assert reader.get(run_id).status == "failed"  # read as dead, not stored: the store was opened for reading
    with sqlite3.connect(root / "gdlab.db") as db:
        assert db.execute("SELECT status FROM runs").fetchone() == ("running",)
    resumed = gdlab("train", "--resume", run_id, "--epochs", "2", "--store", str(root), "--json", "--quiet",
                    "--no-plot")
    assert resumed.exit_code == 0, resumed.output
    assert Store(root).get(run_id).status == "finished"


def test_what_no_check_can_settle_takes_force(hostile) -> None:
    root, run_id = hostile("stale")
    (root / run_id / ".lock").unlink()  # a run stored before runs held a lock: the pid (this process's) decides
    assert Store(root).get(run_id).status == "running"
    bad = gdlab("train", "--resume", run_id, "--epochs", "2", "--store", str(root), "--quiet", "--no-plot")
    assert bad.exit_code == 2 and "gdlab train --resume RUN --force" in bad.stderr
    bad = gdlab("runs", "rm", run_id, "--store", str(root))
    assert bad.exit_code == 2 and "pass --force" in bad.stderr and Store(root).get(run_id).status == "running"
    resumed = gdlab("train", "--resume", run_id, "--force", "--epochs", "2", "--store", str(root), "--json",
                    "--quiet", "--no-plot")
    assert resumed.exit_code == 0, resumed.output
    assert Store(root).get(run_id).status == "finished" and (root / run_id / ".lock").is_file()
    other, other_id = hostile("stale")
    (other / other_id / ".lock").unlink()
    removed = gdlab("runs", "rm", other_id, "--force", "--store", str(other))
    assert removed.exit_code == 0, removed.output
    assert not (other / other_id).exists() and Store(other).runs() == [] and (other / "gdlab.db").is_file()


@pytest.mark.parametrize("kind", ["dot", "parent", "absolute"])
def test_an_id_that_is_not_gdlab_s_is_a_damaged_store_and_nothing_is_deleted(hostile, kind: str) -> None:
    from hostile import snapshot, unchanged

    root, ref = hostile(kind)
    before = snapshot(root.parent)
    store = Store(root)
    for call in (store.runs, lambda: store.get(ref), lambda: store.delete_run(ref),
                 lambda: store.delete_run(ref, force=True), lambda: store.abandon(ref)):
        with pytest.raises(StoreError, match=r"is damaged: run id .* is not a gdlab run id \(expected YYYYmmdd"):
            call()
    for args in (["runs", "rm", ref, "--force"], ["plot", ref], ["gradflow", ref], ["doctor", ref], ["show", ref]):
        result = gdlab(*args, "--store", str(root))
        assert result.exit_code == 2 and "is damaged" in result.stderr and len(result.stderr.splitlines()) == 1
    assert unchanged(before, snapshot(root.parent)) and (root.parent / "victim" / "precious.txt").is_file()


def test_run_dir_proves_the_folder_stays_inside_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert store.run_dir("20261130-063901-ff49") == tmp_path / "s" / "20261130-063901-ff49"
    assert store.sweep_dir("s20261130-063908-3e28") == tmp_path / "s" / "s20261130-063908-3e28"
    for bad in (".", "..", "../victim", str(tmp_path), "20261130-063901-ff49/..", "20261130-063901-FF49", "",
                "20261130-063901-ff49\n"):
        with pytest.raises(StoreError, match="is damaged"):
            store.run_dir(bad)
    with pytest.raises(StoreError, match="is damaged"):
        store.sweep_dir("20261130-063901-ff49")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "s" / "20261130-063901-ff49").symlink_to(tmp_path / "elsewhere")  # a link out of the store
    with pytest.raises(StoreError, match="leads outside it"):
        store.run_dir("20261130-063901-ff49")


@pytest.mark.parametrize("kind", ["empty_db", "corrupt_db"])
def test_a_damaged_database_is_reported_and_never_written(hostile, kind: str) -> None:
    from hostile import snapshot, unchanged

    root, _ = hostile(kind)
    before = snapshot(root.parent)
    for open_ in (lambda: Store(root), lambda: Store(root, create=False), lambda: Store(root, write=True)):
        with pytest.raises(StoreError, match=f"store '{root}' is damaged"):
            open_()
    result = gdlab("train", "--data", "moons", "--hidden", "4", "--epochs", "1", "--store", str(root), "--quiet")
    assert result.exit_code == 2 and "is damaged" in result.stderr
    assert unchanged(before, snapshot(root.parent))


def test_a_missing_or_foreign_database_beside_run_folders_is_damaged(hostile, tmp_path: Path) -> None:
    root, _ = hostile("stale")
    (root / "gdlab.db").unlink()
    with pytest.raises(StoreError, match="holds run folders but its database .* is missing"):
        Store(root)
    assert not (root / "gdlab.db").exists()
    sqlite3.connect(tmp_path / "gdlab.db").executescript("CREATE TABLE notes (x); INSERT INTO notes VALUES (1);")
    with pytest.raises(StoreError, match="holds tables notes but no runs table"):
        Store(tmp_path)
    assert Store(tmp_path / "new").runs() == []  # a new store, or an empty database with no run beside it, is fine
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "gdlab.db").write_bytes(b"")
    assert Store(tmp_path / "empty", create=False).runs() == [] and Store(tmp_path / "empty").runs() == []


def test_an_empty_store_path_is_refused() -> None:
    for open_ in (lambda: Store(""), lambda: Store("", create=False)):
        with pytest.raises(InvalidParameter, match="invalid --store '': expected a folder path"):
            open_()


def test_a_store_opened_for_reading_is_never_written(tmp_path: Path) -> None:
    import shutil

    store = Store(tmp_path / "s")
    run_id = store.create_run({"data": "seed"}, None, name="demo")
    store.add_steps(run_id, [{"step": 1, "loss": 2.0}])
    store.finish(run_id, "finished", final={"train_loss": 1.0})
    store.close()
    database = (tmp_path / "s" / "gdlab.db").read_bytes()
    reader = Store(tmp_path / "s", create=False)
    assert reader.get("demo").status == "finished" and reader.history(run_id).steps["loss"] == [2.0]
    assert reader.sweeps() == [] and not reader.writable
    for write in (lambda: reader.create_run({}), lambda: reader.finish(run_id, "failed"),
                  lambda: reader.delete_run(run_id), lambda: reader.add_steps(run_id, [{"step": 2, "loss": 1.0}])):
        with pytest.raises(StoreError, match="was opened for reading"):
            write()
    for args in (["runs"], ["show", "demo"], ["doctor", "demo"], ["plot", "demo", "--out", str(tmp_path / "l.png")],
                 ["report", "demo", "--out", str(tmp_path / "r.html")]):
        result = gdlab(*args, "--store", str(tmp_path / "s"))
        assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "gdlab.db").read_bytes() == database
    assert not (tmp_path / "s" / "gdlab.db-wal").exists() or not (tmp_path / "s" / "gdlab.db-wal").read_bytes()
    # a store written before a table was added reads as before, without the table being made in it
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "store-0.1.0", old)
    assert [len(Store(old, create=False).history(r.id).steps) > 0 for r in Store(old, create=False).runs()]
    with sqlite3.connect(f"file:{old / 'gdlab.db'}?mode=ro", uri=True) as db:
        assert "step_buckets" not in {n for (n,) in db.execute("SELECT name FROM sqlite_master")}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_folder_serves_the_reading_commands(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    run_id = store.create_run({"data": "seed"}, name="demo")
    store.add_steps(run_id, [{"step": 1, "loss": 2.0}])
    store.finish(run_id, "finished", final={"train_loss": 1.0})
    store.close()
    for path in (tmp_path / "s", tmp_path / "s" / run_id):
        path.chmod(0o555)
    try:
        assert Store(tmp_path / "s", create=False).get("demo").status == "finished"
        for args in (["runs"], ["show", "demo"], ["doctor", "demo"], ["report", "demo", "--out",
                                                                        str(tmp_path / "r.html")]):
            result = gdlab(*args, "--store", str(tmp_path / "s"))
            assert result.exit_code == 0, result.output
        bad = gdlab("runs", "rm", "demo", "--store", str(tmp_path / "s"))
        assert bad.exit_code == 2 and "cannot be written" in bad.stderr
    finally:
        for path in (tmp_path / "s", tmp_path / "s" / run_id):
            path.chmod(0o755)


def test_show_says_a_run_that_did_not_finish_was_not_diagnosed(hostile) -> None:
    root, run_id = hostile("stale")  # a killed run
    shown = gdlab("show", run_id, "--store", str(root))
    assert shown.exit_code == 0 and "no problems found" not in shown.stdout
    assert f"not diagnosed: the run failed before its end; gdlab doctor {run_id} reads what it recorded" in \
        " ".join(shown.stdout.split())
    finished = gdlab("show", run_id, "--store", str(hostile("escapes")[0]))
    assert "not diagnosed" not in finished.stdout


@pytest.mark.slow
def test_trainings_started_at_once_on_one_store_each_keep_their_run(tmp_path: Path) -> None:
    """Three ``gdlab train`` processes on one store at the same time: three finished runs, each with every step
    and epoch it trained, and a reader listing the store while they write."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "gdlab.cli", "train", "--data", "moons", "--hidden", "8", "--epochs", "4",
               "--batch-size", "16", "--store", str(tmp_path / "s"), "--quiet", "--no-plot", "--threads", "1"]
    started = [subprocess.Popen([*command, "--name", f"p{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(3)]
    listed = subprocess.run([sys.executable, "-m", "gdlab.cli", "runs", "--store", str(tmp_path / "s")],
                            capture_output=True, text=True)
    assert listed.returncode in (0, 2) and "Traceback" not in listed.stderr  # 2: the store is not made yet
    for process in started:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    store = Store(tmp_path / "s", create=False)
    runs = store.runs()
    assert sorted(r.name for r in runs) == ["p0", "p1", "p2"] and {r.status for r in runs} == {"finished"}
    for r in runs:
        history = store.history(r.id)
        assert history.steps["step"] == [float(s) for s in range(1, r.steps + 1)]
        assert len(history.epochs) == 4


def test_a_name_several_runs_share_is_shown_with_a_note_and_never_deleted_by_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    twins = []
    for loss in (1.0, 2.0, 3.0):
        twins.append(store.create_run({"data": "seed"}, name="twin"))
        store.finish(twins[-1], "finished", final={"train_loss": loss})
    alone = store.create_run({"data": "seed"}, name="alone")
    store.finish(alone, "finished")
    shown = gdlab("show", "twin", "--store", str(tmp_path))
    assert shown.exit_code == 0 and f"run {twins[2]} (twin)" in shown.stdout  # the newest, as before
    note = shown.stderr.strip()
    assert note == f"note: 3 runs are named 'twin'; this is the newest, {twins[2]}; the others: {twins[1]}, " \
                   f"{twins[0]} (gdlab show ID shows one)"
    assert json.loads(gdlab("show", "twin", "--store", str(tmp_path), "--json").stdout)["same_name"] == twins[1::-1]
    for ref in (twins[0], "alone", "last"):  # an id, a name no other run has: no note
        assert gdlab("show", ref, "--store", str(tmp_path)).stderr == ""
    for args in (["twin"], [alone, "twin"]):
        refused = gdlab("runs", "rm", *args, "--store", str(tmp_path))
        line = refused.stderr.strip()
        assert refused.exit_code == 2 and len(line.splitlines()) == 1, refused.output
        assert line == f"error: run name 'twin' is ambiguous: 3 runs have it ({twins[2]}, {twins[1]}, {twins[0]}): " \
                       "give the id of the one to delete; nothing was deleted"
        assert sorted(r.id for r in store.runs()) == sorted([*twins, alone])  # nothing deleted
    removed = gdlab("runs", "rm", twins[1], "--store", str(tmp_path))
    assert removed.exit_code == 0 and sorted(r.id for r in store.runs()) == sorted([twins[0], twins[2], alone])


def test_gdlab_runs_imports_no_torch(tmp_path: Path) -> None:
    """gdlab runs (and --json) answers without torch: its whole path, a store with a run and a sweep, in a fresh
    interpreter."""
    store = Store(tmp_path)
    run_id = store.create_run({"data": "seed", "lr": 0.1}, name="listed")
    store.add_rows(run_id, steps={"step": [1], "loss": [0.5]}, epochs=[{"epoch": 1, "train_loss": 0.5}])
    store.finish(run_id, "finished", final={"train_loss": 0.5})
    store.add_sweep("sweep", {"axes": {"lr": [0.1, 0.2]}}, [{"lr": 0.1, "train_loss": 0.3}, {"lr": 0.2}],
                    name="grid")
    store.close()
    code = ("import sys\nfrom gdlab.cli import main\nsys.argv = ['gdlab', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    for args in (["runs"], ["runs", "--json"]):
        done = subprocess.run([sys.executable, "-c", code, *args, "--store", str(tmp_path)], capture_output=True,
                              text=True, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("no torch") and run_id in done.stdout and "grid" in done.stdout
