"""Checkpoints and resume: a run stopped and resumed ends bitwise equal to one trained straight."""

from __future__ import annotations

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
