"""Clinic runs through the trainers' callbacks: a Lightning module (gdlab's Lightning ``Doctor``) and a tiny BERT
under the Hugging Face ``Trainer`` (gdlab's transformers ``Doctor``; nothing downloaded)."""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from .core import LR_HIGH, STUCK, Case, digits


def _lightning(lr: float, *, dead: bool = False, epochs: int = 4) -> Any:
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from gdlab.integrations.lightning import Doctor

    class DigitsModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
            if dead:  # pixels in [0, 1], small weights: every first-layer unit starts dead
                with torch.no_grad():
                    self.net[0].bias.fill_(-10.0)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            out = self.net(x)
            self.log("val_loss", F.cross_entropy(out, y))
            self.log("val_accuracy", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    (X, y), (Xv, yv) = digits()
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(Xv, yv), batch_size=360)
    doctor = Doctor(echo=False)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[doctor])
    trainer.fit(DigitsModule(), train, val)
    return doctor.report


def lightning_healthy() -> Any:
    return _lightning(0.05)


def lightning_lr_far_too_high() -> Any:
    return _lightning(3.0)


def lightning_dead_bias() -> Any:
    return _lightning(0.05, dead=True)


SIZE = 12


def _bert(lr: float, *, epochs: int = 5) -> Any:
    """A 2-layer BERT (hidden 32) learns whether token 7 is in a sequence, under the real Trainer."""
    import transformers

    from gdlab.integrations.transformers import Doctor

    def data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(8, 50, (n, SIZE), generator=g)
        labels = torch.randint(0, 2, (n,), generator=g)
        ids[labels == 1, 3] = 7
        return [{"input_ids": ids[i], "attention_mask": torch.ones(SIZE, dtype=torch.long), "labels": labels[i]}
                for i in range(n)]

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    doctor = Doctor(verbose=False)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=16,
                                              learning_rate=lr, report_to=[], use_cpu=True, logging_steps=5,
                                              save_strategy="no", eval_strategy="epoch", disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data(320, 1),
                                       eval_dataset=data(64, 2), callbacks=[doctor])
        trainer.remove_callback(transformers.PrinterCallback)  # the logs' dicts on stdout
        trainer.train()
    return doctor.report


def bert_healthy() -> Any:
    return _bert(3e-3)


def bert_lr_far_too_high() -> Any:
    return _bert(0.05)


def bert_lr_1e6() -> Any:
    return _bert(1e-6)


CASES = [
    Case("lightning_healthy", "lightning", "lightning", lightning_healthy, needs="lightning"),
    Case("lightning_lr_far_too_high", "lightning", "lightning", lightning_lr_far_too_high,
         ("lr_too_high", "non_finite"), LR_HIGH, needs="lightning"),
    Case("lightning_dead_bias", "lightning", "lightning", lightning_dead_bias, ("dead_relu",),
         (*STUCK, "vanishing_gradients"), needs="lightning"),
    Case("bert_healthy", "bert", "hf", bert_healthy, needs="transformers"),
    Case("bert_lr_far_too_high", "bert", "hf", bert_lr_far_too_high, ("lr_too_high", "non_finite"), LR_HIGH,
         needs="transformers"),
    Case("bert_lr_1e-6", "bert", "hf", bert_lr_1e6, ("lr_too_low",), STUCK, needs="transformers"),
]
