"""The model zoo: the models practitioners bring, each through fit, a small sweep, lr="auto", lr_find and a
landscape. The healthy ones get no warning from the doctor.

Every case is small (a few hundred samples, a few epochs) so the zoo stays a few seconds a model on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import gdlab
from gdlab.data import datasets


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- data ----------------------------------------------------------------------------------------------------
def token_data(n: int, seed: int, vocab: int = 20, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids; the class is whether most tokens are in the lower half of the vocabulary."""
    ids = torch.randint(0, vocab, (n, length), generator=_generator(seed))
    return ids, ((ids < vocab // 2).sum(1) > length // 2).long()


def two_input_data(n: int, seed: int) -> TensorDataset:
    g = _generator(seed)
    u, v = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    return TensorDataset(u, v, u[:, :1] - 0.5 * v[:, 1:] + 0.3 * u[:, 1:2] * v[:, :1])


class DictSamples(Dataset):
    """Samples as dicts, the Hugging Face style: ``{"x": features, "label": class}``."""

    def __init__(self, n: int, seed: int) -> None:
        self.x = torch.randn(n, 6, generator=_generator(seed))
        self.label = (self.x[:, 0] + self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "label": int(self.label[i])}


def digits_images(n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    train, val = datasets.load("digits")
    shape = (-1, 1, 8, 8)
    return ((train.X[:n].reshape(shape), train.y[:n]), (val.X[: n // 2].reshape(shape), val.y[: n // 2]))


def digits_flat(n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    train, val = datasets.load("digits")
    return (train.X[:n], train.y[:n]), (val.X[: n // 2], val.y[: n // 2])


def multilabel_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 5, generator=_generator(99))
    return x, (x @ w > 0).float()  # 5 labels, each 0 or 1


# -- models -----------------------------------------------------------------------------------------------------
class BagOfTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 16), nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 16), nn.Linear(2, 16), nn.Linear(16, 1)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.a(u) + self.b(v)))


class Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(ids)).mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lstm, self.head = nn.Embedding(20, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(ids))
        return self.head(out.mean(1))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Flatten(), nn.Linear(8 * 64, 10))


def frozen_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model[0].requires_grad_(False)  # a frozen "backbone"
    return model


class TiedLM(nn.Module):
    """The output layer shares the embedding's weights (as language models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(ids).mean(1)))


def tied_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 20, (n, 1), generator=_generator(seed))
    return ids, ids[:, 0]  # give back the token: logits E tanh(E[i]) peak at i once the rows are apart


def bf16_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).to(torch.bfloat16)


def multilabel_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))


# -- the zoo ------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    model_fn: Callable[[], nn.Module]
    data: Callable[[], tuple[Any, Any]]  # (train, val)
    optimizer: str = "adam"
    lr: float = 0.01
    epochs: int = 6
    good: Callable[[dict[str, Any]], bool] = lambda final: True  # what a healthy run reaches
    healthy: bool = True


def _acc(threshold: float) -> Callable[[dict[str, Any]], bool]:
    return lambda final: final.get("val_accuracy") is not None and final["val_accuracy"] > threshold


ZOO = [
    Case("embedding", BagOfTokens, lambda: (token_data(384, 0), token_data(128, 1)), lr=0.03, good=_acc(0.85)),
    Case("two_inputs", TwoInputs, lambda: (two_input_data(384, 0), two_input_data(128, 1)), lr=0.01,
         good=lambda final: final["val_loss"] < 0.1),
    Case("dict_samples", Keyword, lambda: (DictSamples(256, 0), DictSamples(128, 1)), lr=0.01, good=_acc(0.9)),
    Case("transformer", TinyTransformer, lambda: (token_data(256, 0), token_data(128, 1)), lr=0.003,
         good=_acc(0.8)),
    Case("lstm", LSTMClassifier, lambda: (token_data(256, 0), token_data(128, 1)), lr=0.01, epochs=8,
         good=_acc(0.75)),
    Case("cnn_batchnorm_dropout", cnn, lambda: digits_images(512), lr=0.003, epochs=5, good=_acc(0.9)),
    Case("frozen_weight_decay", frozen_mlp, lambda: digits_flat(512), optimizer="adamw", lr=0.03, epochs=8,
         good=_acc(0.85)),
    Case("tied_weights", TiedLM, lambda: (tied_data(384, 0), tied_data(128, 1)), lr=0.03, epochs=8,
         good=_acc(0.6)),
    Case("bf16_mlp", bf16_mlp, lambda: digits_flat(512), lr=0.01, good=_acc(0.85)),
    Case("multilabel", multilabel_mlp, lambda: (multilabel_data(384, 0), multilabel_data(128, 1)), lr=0.01,
         good=_acc(0.85)),
]


def _model(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.model_fn()


def _frozen_and_tied_kept(case: Case, before: nn.Module, after: nn.Module) -> None:
    if case.name == "frozen_weight_decay":
        assert torch.equal(before[0].weight, after[0].weight) and torch.equal(before[0].bias, after[0].bias)
        assert not torch.equal(before[2].weight, after[2].weight)
    if case.name == "tied_weights":
        assert after.head.weight is after.emb.weight


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_fit_learns_and_the_doctor_stays_quiet(case: Case) -> None:
    train, val = case.data()
    model = _model(case)
    start = _model(case)
    result = gdlab.fit(model, train, val=val, optimizer=case.optimizer, lr=case.lr, epochs=case.epochs,
                       progress=False, instruments="full")
    assert case.good(result.final), result.final
    warnings = [f.code for f in result.findings if f.severity != "info"]
    assert not warnings, [f.to_dict() for f in result.findings]
    _frozen_and_tied_kept(case, start, model)
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), model.parameters()) if a.requires_grad]
    assert all(moved)  # every trainable parameter learns (bf16 included)


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_sweep_lr_auto_lr_find_and_landscape(case: Case) -> None:
    train, val = case.data()
    result = gdlab.sweep(lambda: case.model_fn(), train, val=val, optimizer=case.optimizer, lr=[case.lr, case.lr / 3],
                         epochs=2, progress=False)
    assert len(result.table) == 2 and all(row["val_loss"] == row["val_loss"] for row in result.table)
    _frozen_and_tied_kept(case, _model(case), result.member(0))
    model = _model(case)
    auto = gdlab.fit(model, train, val=val, optimizer=case.optimizer, lr="auto", epochs=2, progress=False,
                     doctor=False, instruments="none")
    assert auto.lr_selection is not None and auto.final["train_loss"] == auto.final["train_loss"]
    _frozen_and_tied_kept(case, _model(case), model)
    found = gdlab.lr_find(_model(case), train, optimizer=case.optimizer, num_iter=20, progress=False)
    assert len(found.lrs) >= 5
    line = gdlab.landscape.line(_model(case), train, steps=5, samples=64, progress=False)
    assert torch.isfinite(line.losses).all()
