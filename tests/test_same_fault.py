"""One fault, four ways in: ``gdlab.fit``, a hand-written loop under ``gdlab.watch``, a LightningModule with
gdlab's Lightning ``Doctor`` and the Hugging Face ``Trainer`` with gdlab's transformers ``Doctor`` give the same
diagnosis: the same root cause first and, for a non-finite loss, the same source.

Each way trains the same small ReLU MLP (seeded alike) with plain SGD on the same synthetic classes, batches of
32, no clipping and a constant learning rate; the faults: a learning rate far too large, one far too small, and
a data set that serves NaN inputs for one batch after the start.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import gdlab
from gdlab.doctor.story import of_result

pytestmark = pytest.mark.slow  # Lightning and the Trainer end to end (about 10 s in all)

BATCH = 32
N = 512  # 16 batches an epoch
EPOCHS = 3
NAN_AT = 5 * BATCH  # the samples fetched from here, one batch of them, come back with NaN inputs


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(99)) * 2.0
    y = torch.randint(0, 4, (n,), generator=g)
    return centers[y] + torch.randn(n, 8, generator=g), y


class Samples(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(x, y)`` samples; with ``nan_at``, once training has started (:meth:`start`), the samples fetched after
    the first ``nan_at`` (in the order fetched, whatever their index) have NaN inputs, for one batch: one corrupt
    batch, once, in the middle of the first epoch. (The data checks before training see clean samples.)"""

    def __init__(self, n: int, seed: int, nan_at: int | None = None) -> None:
        self.X, self.y = _classes(n, seed)
        self.nan_at, self.fetched, self.started = nan_at, 0, False

    def start(self) -> None:
        """Training starts: count the samples fetched from here."""
        self.started = True

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, self.fetched = self.X[i], self.fetched + self.started
        if self.started and self.nan_at is not None and self.nan_at < self.fetched <= self.nan_at + BATCH:
            x = torch.full_like(x, float("nan"))
        return x, self.y[i]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))


def _loader(data: Dataset[Any], *, shuffle: bool) -> DataLoader[Any]:
    return DataLoader(data, batch_size=BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


# -- the four ways ----------------------------------------------------------------------------------------------------

class _Start(gdlab.Callback):
    def __init__(self, train: Samples) -> None:
        self.train = train

    def on_fit_start(self, state: Any) -> None:
        self.train.start()


def by_fit(lr: float, train: Samples, val: Samples) -> Any:
    return gdlab.fit(_net(), train, val=val, optimizer="sgd", lr=lr, batch_size=BATCH, epochs=EPOCHS, seed=0,
                     progress=False, callbacks=[_Start(train)])


def by_watch(lr: float, train: Samples, val: Samples) -> Any:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doctor = gdlab.watch(model, opt)
    train.start()
    for _ in range(EPOCHS):
        for x, y in _loader(train, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.step(loss)
        with torch.no_grad():
            doctor.epoch_end(val_loss=float(F.cross_entropy(model(val.X), val.y)))
    return doctor.close()


def by_lightning(lr: float, train: Samples, val: Samples) -> Any:
    import lightning.pytorch as pl

    from gdlab.integrations.lightning import Doctor

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def on_train_start(self) -> None:
            train.start()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    doctor = Doctor(echo=False)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[doctor])
    trainer.fit(Module(), _loader(train, shuffle=True), DataLoader(val, batch_size=len(val)))
    return doctor.report


class _HFModel(nn.Module):
    """The MLP as a Hugging Face model: ``forward(x, labels)`` returns its ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class _Dicts(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.samples[i]
        return {"x": x, "labels": y}


def by_trainer(lr: float, train: Samples, val: Samples) -> Any:
    import transformers

    from gdlab.integrations.transformers import Doctor

    model = _HFModel()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doctor = Doctor(verbose=False)

    class Start(transformers.TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            train.start()

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=lr,
            lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], use_cpu=True, logging_steps=5,
            save_strategy="no", eval_strategy="epoch", disable_tqdm=True, seed=0, dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=_Dicts(train), eval_dataset=_Dicts(val),
                                       optimizers=(opt, None), callbacks=[Start(), doctor])
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
    return doctor.report


WAYS: dict[str, Callable[[float, Samples, Samples], Any]] = {
    "fit": by_fit, "watch": by_watch, "lightning": by_lightning, "trainer": by_trainer}


def _first(result: Any) -> tuple[str | None, Any]:
    """The first root cause the diagnosis names: its code and, for a non-finite loss, the source it names."""
    assert result is not None
    causes = of_result(result).causes
    if not causes:
        return None, None
    evidence = causes[0].finding.evidence if isinstance(causes[0].finding.evidence, dict) else {}
    return causes[0].code, evidence.get("source")


CASES: dict[str, tuple[float, int | None, set[tuple[str, str | None]]]] = {
    # a learning rate far too large: the run blows up, the lr is named (as lr_too_high or a divergence)
    "lr_far_too_high": (50.0, None, {("lr_too_high", None), ("non_finite", None)}),
    "lr_far_too_low": (1e-6, None, {("lr_too_low", None)}),
    "nan_batch": (0.05, NAN_AT, {("non_finite", "data")}),
}
@pytest.mark.parametrize("case", list(CASES))
def test_the_same_fault_gets_the_same_diagnosis_every_way(case: str) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    lr, nan_at, expected = CASES[case]
    said = {way: _first(run(lr, Samples(N, 0, nan_at), Samples(128, 1))) for way, run in WAYS.items()}
    assert len(set(said.values())) == 1, said
    assert set(said.values()) <= expected, said


def test_a_batch_corrupt_once_is_named_as_data_by_each_way() -> None:
    """Each way tests the batch the step saw, not one read again (loop.HeldBatches): fit holds the batches it reads
    from a Dataset, watch every step's, Lightning through ``Watch.inputs`` (its ``training_step`` calls
    ``self.net``, not the module's own forward pass), the Trainer through the model's forward pass."""
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    said = {way: _first(WAYS[way](0.05, Samples(N, 0, NAN_AT), Samples(128, 1)))
            for way in ("fit", "watch", "lightning", "trainer")}
    assert set(said.values()) == {("non_finite", "data")}, said
