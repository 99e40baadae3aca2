"""Checkpoints and resume: a run stopped and resumed ends bitwise equal to one trained straight."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from gdlab import checkpoint
from gdlab.data import TensorData
from gdlab.errors import StoreError
from gdlab.loop import Callback, LoopState
from gdlab.store import Store
from gdlab.train import fit


def _model() -> nn.Module:
    torch.manual_seed(0)  # dropout makes the global RNG part of the state to restore
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


def _train(classes: TensorData, **kwargs: object):
    options = dict(optimizer="adam", lr=0.01, batch_size=8, epochs=20, seed=3, progress=False,
                   val=classes.subset(torch.arange(10)))
    return fit(_model(), classes, **{**options, **kwargs})


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class SigintAfterEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: LoopState) -> None:
        if state.epoch + 1 == self.epoch:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does


class CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: LoopState) -> None:
        if state.step == self.step:
            raise RuntimeError("power cut")


def test_interrupted_after_10_epochs_and_resumed_equals_20_straight(classes: TensorData, tmp_path: Path) -> None:
    straight = _train(classes)
    store = Store(tmp_path)
    first = _train(classes, store=store, callbacks=[SigintAfterEpoch(10)])
    assert first.status == "stopped" and first.steps == 10 * 8 and store.get(first.run_id).status == "stopped"
    assert not _same(first.model, straight.model)
    resumed = _train(classes, store=store, resume=first.run_id)
    assert resumed.status == "finished" and resumed.steps == 20 * 8
    assert _same(resumed.model, straight.model)
    assert resumed.history.steps["loss"] == straight.history.steps["loss"]
    assert resumed.history.epochs["val_loss"] == straight.history.epochs["val_loss"]
    stored = store.history(first.run_id)
    assert stored.steps["loss"] == straight.history.steps["loss"]
    assert len(stored.epochs) == 20 and store.get(first.run_id).status == "finished"


def test_crash_mid_epoch_resumes_from_the_last_checkpoint(classes: TensorData, tmp_path: Path) -> None:
    straight = _train(classes)
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="power cut"):
        _train(classes, store=store, checkpoint_every=3, callbacks=[CrashAtStep(23)])
    run = store.runs()[0]
    assert run.status == "failed" and "power cut" in run.error
    assert len(store.history(run.id).steps) == 23  # every step recorded before the crash is kept
    assert checkpoint.load(run.checkpoint)["position"]["step"] == 21  # mid-epoch 3 (8 steps an epoch)
    resumed = _train(classes, store=store, resume=run.id)
    assert _same(resumed.model, straight.model)
    assert store.history(run.id).steps["loss"] == straight.history.steps["loss"]


def test_resume_with_a_larger_budget_continues(classes: TensorData, tmp_path: Path) -> None:
    store = Store(tmp_path)
    short = _train(classes, store=store, epochs=5)
    longer = _train(classes, store=store, epochs=8, resume=short.run_id)
    assert longer.steps == 8 * 8 and len(longer.history.epochs) == 8
    assert _same(longer.model, _train(classes, epochs=8).model)


def test_checkpoints_load_without_unpickling_code(classes: TensorData, tmp_path: Path) -> None:
    result = _train(classes, store=Store(tmp_path), epochs=2)
    path = Store(tmp_path).get(result.run_id).checkpoint
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"format", "model", "optimizer", "rng", "position"}  # the history is in the store
    assert saved["position"]["step"] == 16
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"step": 1})

    def broken(obj: object, f: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(StoreError, match="could not be written"):
        checkpoint.save(path, {"step": 2})
    assert checkpoint.load(path) == {"step": 1} and not list(tmp_path.glob(".*.tmp"))


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StoreError, match="is damaged or not a gdlab checkpoint"):
        checkpoint.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("content", ["random", "truncated", "foreign"])
def test_a_damaged_checkpoint_never_suggests_unsafe_loading(tmp_path: Path, content: str) -> None:
    """torch's advice (weights_only=False) would run the file's code: the message says the file is damaged."""
    path = tmp_path / "bad.pt"
    if content == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif content == "truncated":
        checkpoint.save(path, {"step": 1, "weights": torch.ones(100)})
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save({"step": 1, "kind": Path("x")}, path)  # a pickled class the weights-only reader refuses
    with pytest.raises(StoreError, match="is damaged or not a gdlab checkpoint") as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert "weights_only" not in message and "trust" not in message and len(message.splitlines()) == 1


def test_dataloader_path_resumes_bitwise_mid_epoch(classes: TensorData, tmp_path: Path) -> None:
    from torch.utils.data import Subset

    wrapped = Subset(classes, list(range(len(classes))))  # not in memory: served by a DataLoader
    straight = fit(_model(), wrapped, optimizer="adam", lr=0.01, batch_size=8, epochs=3, seed=3, progress=False)
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        fit(_model(), wrapped, optimizer="adam", lr=0.01, batch_size=8, epochs=3, seed=3, progress=False,
            store=store, checkpoint_every=2, callbacks=[CrashAtStep(11)])
    run = store.runs()[0]
    resumed = fit(_model(), wrapped, optimizer="adam", lr=0.01, batch_size=8, epochs=3, seed=3, progress=False,
                  store=store, resume=run.id)
    assert _same(resumed.model, straight.model)


# -- issue 24: checkpoints that do not fit, crafted or damaged; temporary files after a failed write -------------


def _contents(root: Path) -> tuple[dict[str, bytes], list[tuple[object, ...]]]:
    """A store's files but its database (whose journal any reader may fold in), and what the database holds: each
    run's record and rows."""
    from hostile import snapshot

    files = {k: v for k, v in snapshot(root).items() if not k.startswith("gdlab.db")}
    store = Store(root)
    runs = [(r.id, r.status, r.steps, r.final, r.error, r.stop_reason, store.history(r.id).steps.rows(0),
             store.history(r.id).epochs.rows(0)) for r in store.runs()]
    return files, [tuple(list(run[:6]) + [list(run[6]), list(run[7])]) for run in runs]


@pytest.mark.parametrize(("kind", "message"), [
    ("shape_mismatch", "does not fit the model: its parameter '1.weight' has shape [5, 2] but the model's has shape "
     "[4, 2]; expected the model it was trained with (was its code changed?)"),
    ("no_position", "is damaged or not a gdlab checkpoint (it has no position)"),
    ("bad_rng", "is damaged or not a gdlab checkpoint (its torch RNG state is not one torch accepts"),
    ("negative_step", "is damaged or not a gdlab checkpoint (its position step is -3: expected an integer >= 0)"),
])
def test_resuming_a_checkpoint_that_does_not_fit_is_one_line_and_changes_nothing(hostile, kind: str,
                                                                                 message: str) -> None:
    from typer.testing import CliRunner

    from gdlab.cli import app

    root, ref = hostile(kind)
    before = _contents(root)
    result = CliRunner().invoke(app, ["train", "--resume", ref, "--store", str(root), "--epochs", "3"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and message in line and len(line.splitlines()) == 1
    assert "Traceback" not in result.output and "weights_only" not in line
    assert _contents(root) == before  # the run, its rows and its checkpoint as they were
    assert Store(root).get(ref).status == "finished"


def test_fit_raises_the_line_the_cli_prints_and_leaves_the_model(hostile) -> None:
    root, ref = hostile("shape_mismatch")
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StoreError, match=rf"^the checkpoint of run {ref} does not fit the model: its parameter "
                       r"'1.weight' has shape \[5, 2\] but the model's has shape \[4, 2\]"):
        fit(model, (torch.randn(20, 2), torch.arange(20) % 2), store=root, resume=ref, epochs=30, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.items())


def test_resuming_nan_weights_ends_non_finite_not_with_the_stale_accuracy(hostile) -> None:
    import json

    from typer.testing import CliRunner

    from gdlab.cli import app

    root, ref = hostile("nan_weights")
    assert Store(root).get(ref).final["val_accuracy"] > 0.5  # what a stale report would repeat
    for args in (["--json", "--quiet"], []):
        result = CliRunner().invoke(app, ["train", "--resume", ref, "--store", str(root), "--steps", "30",
                                          "--no-plot", *args])
        assert result.exit_code == 0, result.output
        if args:
            payload = json.loads(result.stdout)
            assert payload["final"] == {"train_loss": None, "val_loss": None, "val_accuracy": None}
            (finding,) = [f for f in payload["findings"] if f["code"] == "non_finite"]
            assert finding["evidence"]["quantity"] == "parameters" and finding["step"] == 26
        else:
            assert "train loss non-finite   val loss non-finite\n" in result.stdout
            assert "val accuracy" not in result.stdout
    final = Store(root).get(ref).final
    assert math.isnan(final["train_loss"]) and final["val_accuracy"] is None


def _checkpoint(**position: object) -> dict[str, object]:
    return {"format": 1, "model": {"w": torch.zeros(2)}, "optimizer": {"state": {}, "param_groups": []},
            "rng": checkpoint.rng_state(), "position": {"step": 3, "epoch": 0, "iteration": 3, "epoch_loss_sum": 1.5,
                                                       "epoch_samples": 24, "best_val_loss": math.inf,
                                                       "bad_epochs": 0, "seconds": 0.1, **position}}


@pytest.mark.parametrize(("change", "reason"), [
    ({"step": -1}, "its position step is -1: expected an integer >= 0"),
    ({"iteration": -2}, "its position iteration is -2"),
    ({"epoch": True}, "its position epoch is True"),
    ({"step": 2.5}, "its position step is 2.5"),
    ({"seconds": math.nan}, "its position seconds is nan: expected a finite number >= 0"),
    ({"epoch_loss_sum": math.inf}, "its position epoch_loss_sum is inf"),
    ({"epoch": 9}, "its position (step 3, epoch 9, iteration 3) is not one a run reaches"),
])
def test_a_position_no_run_reaches_is_refused(tmp_path: Path, change: dict[str, object], reason: str) -> None:
    checkpoint.save(tmp_path / "c.pt", _checkpoint(**change))
    with pytest.raises(StoreError, match="is damaged or not a gdlab checkpoint") as caught:
        checkpoint.read(tmp_path / "c.pt")
    assert f"({reason}" in str(caught.value) and len(str(caught.value).splitlines()) == 1
    checkpoint.save(tmp_path / "good.pt", _checkpoint())
    assert checkpoint.read(tmp_path / "good.pt")["position"]["step"] == 3


def test_an_iteration_past_the_epoch_is_refused_on_resume(classes: TensorData, tmp_path: Path) -> None:
    store = Store(tmp_path)
    run = _train(classes, store=store, epochs=2)
    path = store.get(run.run_id).checkpoint
    saved = torch.load(path, weights_only=True)
    saved["position"].update(step=24, iteration=8)  # 8 iterations an epoch: 0 to 7
    torch.save(saved, path)
    with pytest.raises(StoreError, match="its position is iteration 8 of an epoch of 8 iterations"):
        _train(classes, store=store, epochs=4, resume=run.run_id)
    assert store.get(run.run_id).status == "finished"


@pytest.mark.parametrize("failure", ["torch", "interrupt", "folder"])
def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 failure: str) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"step": 1})
    real = torch.save

    def half_written(obj: object, f: object) -> None:
        real({"partly": torch.zeros(1000)}, f)  # bytes on disk, then the failure torch reports for a full disk
        if failure == "torch":
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    if failure == "torch":
        with pytest.raises(StoreError, match="could not be written .*PytorchStreamWriter failed writing file"):
            checkpoint.save(path, {"step": 2})
    elif failure == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(path, {"step": 2})
    else:
        with pytest.raises(StoreError, match="could not be written"):
            checkpoint.save(tmp_path / "gone" / "c.pt", {"step": 2})
    assert checkpoint.load(path) == {"step": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
