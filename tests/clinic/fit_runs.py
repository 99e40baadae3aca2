"""Clinic runs through ``gdlab.fit``: MLPs, a BatchNorm CNN, an LSTM and regressions, healthy and broken."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import gdlab

from .core import LR_HIGH, STUCK, Case, digits, split, standardize

QUIET: dict[str, Any] = {"progress": False, "seed": 0}


def _mlp(act: type[nn.Module] = nn.ReLU, sizes: tuple[int, ...] = (64, 64, 10)) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def mlp_healthy() -> Any:
    train, val = digits()
    return gdlab.fit(_mlp(), train, val=val, optimizer="momentum", lr=0.05, batch_size=32, epochs=8, **QUIET)


def mlp_lr_far_too_high() -> Any:
    train, val = digits()
    return gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=4.0, batch_size=32, epochs=8, **QUIET)


def mlp_lr_1e6() -> Any:
    train, val = digits()
    return gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=1e-6, batch_size=32, epochs=6, **QUIET)


def mlp_deep_sigmoid() -> Any:
    train, val = digits()
    model = _mlp(nn.Sigmoid, (64, *[32] * 8, 10))
    return gdlab.fit(model, train, val=val, optimizer="sgd", lr=0.05, batch_size=32, epochs=6, **QUIET)


def mlp_dead_bias() -> Any:
    train, val = digits()
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # pixels in [0, 1], small weights: every first-layer unit starts dead
    return gdlab.fit(model, train, val=val, optimizer="momentum", lr=0.05, batch_size=32, epochs=6, **QUIET)


def mlp_shuffled_labels() -> Any:
    (X, y), val = digits()
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    model = _mlp(sizes=(64, 256, 256, 10))
    return gdlab.fit(model, (X, y), val=val, optimizer="adam", lr=1e-3, batch_size=32, epochs=25, **QUIET)


def mlp_overfit_tiny() -> Any:
    """A big MLP on 40 breast-cancer samples (standardized), 200 full-batch epochs, 529 to validate on."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    train, val = split(standardize(d.data), d.target, val=0.93)
    return gdlab.fit(_mlp(sizes=(30, 512, 512, 2)), train, val=val, optimizer="adam", lr=1e-3, batch_size="full",
                     epochs=200, **QUIET)


def mlp_breast_cancer_healthy() -> Any:
    """The issue's false alarm: 119 validation samples, whose loss wobbles from epoch to epoch."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    train, val = split(standardize(d.data), d.target, val=0.21)
    return gdlab.fit(_mlp(sizes=(30, 32, 2)), train, val=val, optimizer="adam", lr=1e-3, batch_size=32, epochs=40,
                     **QUIET)


def logistic_breast_cancer_healthy() -> Any:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    train, val = split(standardize(d.data), d.target, val=0.2)
    torch.manual_seed(0)
    return gdlab.fit(nn.Linear(30, 2), train, val=val, optimizer="sgd", lr=0.1, batch_size=32, epochs=20, **QUIET)


def mlp_batch_one() -> Any:
    train, val = digits()
    return gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=0.2, batch_size="stochastic", epochs=1, **QUIET)


def mlp_batch_32_twin() -> Any:
    train, val = digits()
    return gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=0.2, batch_size=32, epochs=8, **QUIET)


def mlp_ill_conditioned() -> Any:
    (X, y), (Xv, yv) = digits()
    scale = torch.logspace(-2, 2, 64)  # the columns' scales span four orders of magnitude
    return gdlab.fit(_mlp(), (X * scale, y), val=(Xv * scale, yv), optimizer="sgd", lr=1e-3, batch_size=32,
                     epochs=6, **QUIET)


def _images() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    (X, y), (Xv, yv) = digits()
    return (X.view(-1, 1, 8, 8), y), (Xv.view(-1, 1, 8, 8), yv)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def cnn_healthy() -> Any:
    train, val = _images()
    return gdlab.fit(_cnn(), train, val=val, optimizer="momentum", lr=0.05, batch_size=32, epochs=4, **QUIET)


def cnn_lr_far_too_high() -> Any:
    train, val = _images()
    return gdlab.fit(_cnn(), train, val=val, optimizer="sgd", lr=20.0, batch_size=32, epochs=4, **QUIET)


def cnn_lr_1e6() -> Any:
    train, val = _images()
    return gdlab.fit(_cnn(), train, val=val, optimizer="sgd", lr=1e-6, batch_size=32, epochs=4, **QUIET)


class SequenceClassifier(nn.Module):
    """An LSTM over a sequence of 8-vectors (the digit image's rows), classified from its last state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.view(-1, 8, 8))
        return self.head(out[:, -1])


def lstm_healthy() -> Any:
    train, val = digits()
    return gdlab.fit(SequenceClassifier(), train, val=val, optimizer="adam", lr=1e-2, batch_size=32, epochs=5,
                     **QUIET)


def lstm_lr_far_too_high() -> Any:
    train, val = digits()
    return gdlab.fit(SequenceClassifier(), train, val=val, optimizer="sgd", lr=50.0, batch_size=32, epochs=5,
                     **QUIET)


def lstm_lr_1e6() -> Any:
    train, val = digits()
    return gdlab.fit(SequenceClassifier(), train, val=val, optimizer="adam", lr=1e-6, batch_size=32, epochs=5,
                     **QUIET)


def _house(scale: float) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic house prices: 8 standardized features, a price linear in them plus noise, times ``scale``."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 8))
    y = (3.0 + X @ rng.normal(0.5, 0.3, size=8) * 0.4 + rng.normal(0, 0.2, size=800)) * scale
    return split(X, y.astype(np.float32).reshape(-1, 1))


def regression_raw_targets() -> Any:
    """The issue's failed regression: prices around 3e5, inputs standardized, the target not."""
    train, val = _house(1e5)
    return gdlab.fit(_mlp(sizes=(8, 32, 1)), train, val=val, optimizer="momentum", lr=0.1, batch_size=32, epochs=10,
                     **QUIET)


def regression_raw_targets_adam() -> Any:
    """The same with Adam at 1e-3: nothing overflows, the predictions crawl towards 3e5 and R^2 ends far below 0."""
    train, val = _house(1e5)
    return gdlab.fit(_mlp(sizes=(8, 32, 1)), train, val=val, optimizer="adam", lr=1e-3, batch_size=32, epochs=10,
                     **QUIET)


def regression_scaled_twin() -> Any:
    train, val = _house(1.0)
    return gdlab.fit(_mlp(sizes=(8, 32, 1)), train, val=val, optimizer="momentum", lr=0.01, batch_size=32,
                     epochs=10, **QUIET)


def regression_diabetes_healthy() -> Any:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    y = standardize(d.target.reshape(-1, 1)).astype(np.float32)
    train, val = split(standardize(d.data), y)
    return gdlab.fit(_mlp(sizes=(10, 32, 1)), train, val=val, optimizer="adam", lr=1e-3, batch_size=32, epochs=30,
                     **QUIET)



def target_scale(finding: Any) -> str | None:
    """A ``detail`` check: the finding names the target's scale (its evidence, or a remedy that scales it)."""
    if "target_scale" in finding.evidence or "standardize_target" in str(finding.remedy):
        return None
    return f"the target's scale is not named (remedy {finding.remedy})"


CASES = [
    Case("mlp_healthy", "mlp", "fit", mlp_healthy, fast=True),
    Case("mlp_lr_far_too_high", "mlp", "fit", mlp_lr_far_too_high, ("lr_too_high",), LR_HIGH, fast=True),
    Case("mlp_lr_1e-6", "mlp", "fit", mlp_lr_1e6, ("lr_too_low",), STUCK, fast=True),
    Case("mlp_deep_sigmoid", "mlp", "fit", mlp_deep_sigmoid, ("vanishing_gradients",),
         (*STUCK, "saturated_activations", "lr_too_low")),
    Case("mlp_dead_bias", "mlp", "fit", mlp_dead_bias, ("dead_relu",), (*STUCK, "vanishing_gradients")),
    Case("mlp_shuffled_labels", "mlp", "fit", mlp_shuffled_labels, ("labels_do_not_fit",), ("overfitting",)),
    Case("mlp_overfit_tiny", "mlp", "fit", mlp_overfit_tiny, ("overfitting",)),
    Case("mlp_breast_cancer_healthy", "mlp", "fit", mlp_breast_cancer_healthy),
    Case("mlp_logistic_healthy", "mlp", "fit", logistic_breast_cancer_healthy, fast=True),
    Case("mlp_batch_one", "mlp", "fit", mlp_batch_one, ("gradient_noise",)),
    Case("mlp_batch_32_twin", "mlp", "fit", mlp_batch_32_twin),
    Case("mlp_ill_conditioned", "mlp", "fit", mlp_ill_conditioned, ("ill_conditioned_inputs",),
         (*STUCK, "lr_too_low", "lr_too_high")),
    Case("cnn_healthy", "cnn", "fit", cnn_healthy),
    Case("cnn_lr_far_too_high", "cnn", "fit", cnn_lr_far_too_high, ("lr_too_high", "non_finite"), LR_HIGH),
    Case("cnn_lr_1e-6", "cnn", "fit", cnn_lr_1e6, ("lr_too_low",), STUCK),
    Case("lstm_healthy", "lstm", "fit", lstm_healthy),
    Case("lstm_lr_far_too_high", "lstm", "fit", lstm_lr_far_too_high, ("lr_too_high", "non_finite"), LR_HIGH),
    Case("lstm_lr_1e-6", "lstm", "fit", lstm_lr_1e6, ("lr_too_low",), STUCK),
    Case("regression_raw_targets", "regression", "fit", regression_raw_targets, ("not_learning", "non_finite"),
         ("lr_too_high",), detail=target_scale),
    Case("regression_raw_targets_adam", "regression", "fit", regression_raw_targets_adam, ("not_learning",),
         STUCK, detail=target_scale),
    Case("regression_scaled_twin", "regression", "fit", regression_scaled_twin, fast=True),
    Case("regression_diabetes_healthy", "regression", "fit", regression_diabetes_healthy),
]
