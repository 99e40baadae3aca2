"""The validation metrics reported beside the loss, chosen by the task (the kind of target), under any loss.

==============  ====================================================================================================
task            metrics (recorded as ``val_<name>`` in the epoch rows, ``Result.final`` and the store)
==============  ====================================================================================================
classification  ``accuracy``: the share of targets whose class gets the model's largest output (negative targets,
                an ignore index such as -100, are left out)
multilabel      ``accuracy``: the share of label entries predicted right (an output above the :func:`threshold`
                predicts 1); ``subset_accuracy``: the share of samples with every label right (exact match; with
                one label it equals ``accuracy``)
regression      ``mae``: the mean absolute error over every target entry; ``r2``: the coefficient of
                determination 1 - SSE/SST over all target columns, SST taken about each column's own mean (for
                several columns this is sklearn's ``r2_score(multioutput="variance_weighted")``; NaN when the
                targets do not vary)
==============  ====================================================================================================

The predictions are the model's outputs (or their ``.logits``, :func:`gdlab.problem.prediction`), so a classifier
trained with label smoothing, class weights, a focal loss or ``loss="model"`` still reports its accuracy; a metric
whose predictions are missing or do not match the targets' shape is left out.

Each chunk of data gives sums (:func:`chunk_sums`: tensor arithmetic only, so ``vmap`` takes it per member of a
population); :class:`Metrics` adds them up with the targets' own spread, which R² needs, merged exactly chunk by
chunk, and gives the metrics of the whole data at the end.

Example:
    >>> m = Metrics("regression")
    >>> m.add(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [5.0]]))
    >>> {k: round(float(v), 4) for k, v in m.result().items()}
    {'mae': 0.6667, 'r2': 0.75}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["METRICS", "Metrics", "accumulator_dtype", "chunk_sums", "threshold"]

METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "multilabel": ("accuracy", "subset_accuracy"),
    "regression": ("mae", "r2"),
}
"""The metrics of each task, by name (recorded with the prefix ``val_`` for the validation data)."""

_PROBABILITY_LOSSES = ("mse", "l1", "huber")


def threshold(loss_fn: Callable[..., Any] | None, loss_name: str | None) -> float:
    """Where a multilabel output starts predicting 1: 0.5 when the outputs estimate the 0/1 targets themselves
    (losses ``mse``, ``l1``, ``huber``, or ``F.binary_cross_entropy`` on probabilities), else 0, the outputs
    being logits (``bce``, the default for 0/1 targets; a custom loss; ``loss="model"``): ``sigmoid(logit) > 0.5``."""
    return 0.5 if loss_name in _PROBABILITY_LOSSES or loss_fn is F.binary_cross_entropy else 0.0


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype sums are kept in: float64, or float32 on Apple's MPS (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def chunk_sums(task: str, pred: Tensor | None, y: Tensor, cut: float = 0.0) -> dict[str, Tensor]:
    """The sums one chunk adds to the task's metrics, as 0-dim tensors on ``y``'s device (empty where ``pred`` is
    None or its shape does not fit the targets). ``cut`` is the multilabel :func:`threshold`.

    Shapes alone choose the branches, so the function runs under ``vmap`` (one ``pred`` per member, shared ``y``).
    Classification predictions are ``[..., classes]`` for targets ``[...]`` (or torch's ``[batch, classes, d...]``
    for targets ``[batch, d...]``), with two classes or more; the others have as many entries as the targets.
    """
    if pred is None:
        return {}
    acc = accumulator_dtype(y.device)
    if task == "classification":
        if pred.dim() == y.dim() + 1 and pred.shape[-1] >= 2 and pred.shape[:-1] == y.shape:
            guess = pred.argmax(-1)
        elif pred.dim() == y.dim() + 1 and pred.dim() > 2 and pred.shape[1] >= 2 and \
                pred.shape[0] == y.shape[0] and pred.shape[2:] == y.shape[1:]:
            guess = pred.argmax(1)
        else:
            return {}
        counted = y >= 0
        return {"correct": ((guess == y) & counted).sum().to(acc), "counted": counted.sum().to(acc)}
    if pred.numel() != y.numel() or not len(y):
        return {}
    pred = pred.reshape(y.shape)
    entries = torch.full((), y.numel(), dtype=acc, device=y.device)
    if task == "multilabel":
        right = (pred > cut) == (y > 0.5)
        return {"correct": right.sum().to(acc), "counted": entries,
                "exact": right.reshape(len(y), -1).all(1).sum().to(acc),
                "samples": torch.full((), len(y), dtype=acc, device=y.device)}
    error = pred.to(acc) - y.to(acc)
    return {"abs": error.abs().sum(), "squared": error.square().sum(), "counted": entries}


class Metrics:
    """The task's metrics over data given chunk by chunk, exactly (sums, not means of chunk means).

    :meth:`add` takes one model's predictions; a population adds its members' sums (``[M]`` each, from a vmapped
    :func:`chunk_sums`) with :meth:`add_sums` and the chunk's targets with :meth:`add_targets`. The values stay on
    the device until :meth:`result` (no host sync per chunk).

    Args:
        task: ``classification``, ``multilabel`` or ``regression``.
        cut: the multilabel :func:`threshold`.
    """

    def __init__(self, task: str, cut: float = 0.0) -> None:
        self.task, self.cut = task, cut
        self.sums: dict[str, Tensor] = {}
        # the targets' count, column means and summed squared deviations, for R² (regression)
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, pred: Tensor | None, y: Tensor) -> None:
        """One chunk: the model's predictions (or None) and the targets."""
        self.add_sums(chunk_sums(self.task, pred, y, self.cut))
        self.add_targets(y)

    def add_sums(self, sums: dict[str, Tensor]) -> None:
        """Add one chunk's sums (0-dim, or ``[M]`` for a population)."""
        for key, value in sums.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    @torch.no_grad()
    def add_targets(self, y: Tensor) -> None:
        """Merge one chunk's targets into the spread R² needs (Chan, Golub and LeVeque's pairwise update: no
        cancellation, however far the targets lie from zero)."""
        if self.task != "regression" or not len(y):
            return
        y = y.reshape(len(y), -1).to(accumulator_dtype(y.device))
        n = len(y)
        mean = y.mean(0)
        m2 = (y - mean).square().sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def result(self) -> dict[str, Tensor]:
        """The metrics (0-dim or ``[M]`` tensors on the device) by name; only those the chunks gave sums for."""
        s, out = self.sums, {}
        if "correct" in s:
            out["accuracy"] = s["correct"] / s["counted"]
        if "exact" in s:
            out["subset_accuracy"] = s["exact"] / s["samples"]
        if "abs" in s:
            out["mae"] = s["abs"] / s["counted"]
            sst = self.m2.sum() if self.m2 is not None else torch.zeros((), dtype=s["squared"].dtype)
            sst = sst.to(s["squared"].device)
            out["r2"] = torch.where(sst > 0, 1 - s["squared"] / sst, torch.full_like(s["squared"], float("nan")))
        return out
