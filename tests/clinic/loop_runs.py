"""Clinic runs through ``gdlab.watch`` in hand-written loops: a character-level transformer LM (nanoGPT-like) and
digits MLPs, healthy and broken (a recovered divergence, a loop that never zeroes its gradients, a NaN batch)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gdlab

from .core import LR_HIGH, Case, digits, source

BLOCK = 32


def _text() -> str:
    """About 10k characters of English that ships with scikit-learn (its data sets' descriptions)."""
    from sklearn import datasets

    loaders = [datasets.load_digits, datasets.load_breast_cancer, datasets.load_diabetes, datasets.load_wine,
               datasets.load_iris]
    return "\n".join(load().DESCR for load in loaders)


class CharLM(nn.Module):
    """A tiny GPT: token and position embeddings, two pre-norm causal self-attention blocks, a linear head."""

    def __init__(self, vocab: int, dim: int = 48, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(BLOCK, dim)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(BLOCK), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(n, device=ids.device))
        x = self.blocks(x, mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(x))


def _lm(lr: float, *, optimizer: str = "adamw", clip: float | None = 1.0, zero_grad: bool = True,
        steps: int = 300) -> Any:
    """nanoGPT's loop on characters: random windows, AdamW (or SGD), gradient clipping, warmup and cosine; the
    validation loss on held-out windows every 50 steps."""
    text = _text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    cut = int(len(data) * 0.9)
    train, val = data[:cut], data[cut:]
    g = torch.Generator().manual_seed(0)

    def windows(source: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        at = torch.randint(0, len(source) - BLOCK - 1, (n,), generator=g)
        x = torch.stack([source[i:i + BLOCK] for i in at])
        return x, torch.stack([source[i + 1:i + BLOCK + 1] for i in at])

    model = CharLM(len(chars))
    opt: torch.optim.Optimizer = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
                                  if optimizer == "adamw" else torch.optim.SGD(model.parameters(), lr=lr))
    warmup = steps // 5

    def shape(s: int) -> float:  # nanoGPT's: a linear warmup, then a cosine down to a tenth
        if s < warmup:
            return (s + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    vx, vy = windows(val, 64)
    doctor = gdlab.watch(model, opt, batch_size=16, steps_per_epoch=50)
    for step in range(steps):
        x, y = windows(train, 16)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        schedule.step()
        doctor.step(loss)
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                doctor.epoch_end(val_loss=float(F.cross_entropy(model(vx).flatten(0, 1), vy.flatten())))
    return doctor.close()


def lm_healthy() -> Any:
    return _lm(1e-2)


def lm_recovered_divergence() -> Any:
    """The issue's LM: lr 1.0, clipped at 1.0, cosine: the loss rises mid-run (3.5 to 5.7 over 30 steps), then
    recovers to an end worse than the healthy run's (3.3 against 2.1)."""
    return _lm(1.0)


def lm_lr_too_high_flat() -> Any:
    """lr 0.3: no blow-up, the loss hovers about 3.2 from step 30 on and ends at 3.05 (the healthy run: 2.1)."""
    return _lm(0.3)


def lm_no_zero_grad() -> Any:
    return _lm(1e-2, zero_grad=False)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _digits_loop(lr: float, *, zero_grad: bool = True, nan_at: int | None = None, epochs: int = 6) -> Any:
    """The loop everyone writes: shuffled batches of 32, SGD with momentum, the validation loss each epoch."""
    (X, y), (Xv, yv) = digits()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    doctor = gdlab.watch(model, opt)
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(32):
            xb, yb = X[idx], y[idx]
            step += 1
            if step == nan_at:
                xb = xb.clone()
                xb[3, 10] = float("nan")  # one corrupt sample in one batch
            loss = F.cross_entropy(model(xb), yb)
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.step(loss)
        with torch.no_grad():
            doctor.epoch_end(val_loss=float(F.cross_entropy(model(Xv), yv)))
    return doctor.close()


def mlp_watch_healthy() -> Any:
    return _digits_loop(0.05)


def mlp_watch_no_zero_grad() -> Any:
    return _digits_loop(0.05, zero_grad=False)


def mlp_watch_nan_batch() -> Any:
    return _digits_loop(0.05, nan_at=150)


def mlp_watch_lr_1e6() -> Any:
    return _digits_loop(1e-6)


def mlp_watch_lr_far_too_high() -> Any:
    return _digits_loop(3.0)


_NOT_ZEROED = ("lr_too_high", "exploding_gradients", "non_finite", "not_learning")

CASES = [
    Case("lm_healthy", "lm", "watch", lm_healthy),
    Case("lm_recovered_divergence", "lm", "watch", lm_recovered_divergence, ("lr_too_high", "unstable"), LR_HIGH),
    Case("lm_lr_too_high_flat", "lm", "watch", lm_lr_too_high_flat, ("lr_too_high", "unstable"), LR_HIGH),
    Case("lm_no_zero_grad", "lm", "watch", lm_no_zero_grad, ("grads_not_zeroed",), _NOT_ZEROED),
    Case("mlp_watch_healthy", "mlp", "watch", mlp_watch_healthy, fast=True),
    Case("mlp_watch_no_zero_grad", "mlp", "watch", mlp_watch_no_zero_grad, ("grads_not_zeroed",), _NOT_ZEROED),
    Case("mlp_watch_nan_batch", "mlp", "watch", mlp_watch_nan_batch, ("non_finite",), detail=source("data")),
    Case("mlp_watch_lr_1e-6", "mlp", "watch", mlp_watch_lr_1e6, ("lr_too_low",), ("not_learning", "plateau")),
    Case("mlp_watch_lr_far_too_high", "mlp", "watch", mlp_watch_lr_far_too_high, ("lr_too_high", "non_finite"),
         LR_HIGH),
]
