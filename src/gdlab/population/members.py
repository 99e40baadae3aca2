"""What a member is: its optimizer hyperparameters (one value shared, or one per member) and its record in the
:class:`Population` that :func:`gdlab.population.train` returns."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gdlab import optim
from gdlab.data import BatchPlan
from gdlab.errors import InvalidParameter, MissingParameter

__all__ = ["BLOWUP", "HALVING_WINDOW", "ModelFn", "Population", "halving_score", "member_hyperparams",
           "member_values"]

BLOWUP = 1000.0
"""A member whose batch loss passes BLOWUP times its first batch loss is frozen as diverged."""

HALVING_WINDOW = 3
"""Successive halving ranks a member by the median of its last this many validation losses (the one at the cut and
those of the epochs before it)."""


def halving_score(evaluations: Tensor) -> Tensor:
    """``[k, m]`` validation losses of ``m`` members, oldest first, the last row measured at the cut -> ``[m]``: the
    median of the last :data:`HALVING_WINDOW` rows (NaN rows left out; the lower middle of an even count).

    One evaluation is a noisy ranking: at a large learning rate the validation loss jumps from epoch to epoch (on
    moons, 0.08 one epoch and 0.22 the next), and a cut that reads one of them drops the learning rate that ends
    best. The median of the last few keeps the level each member has reached and ignores one bad epoch.

    Example:
        >>> halving_score(torch.tensor([[0.10, 0.08], [0.11, 0.09], [0.12, 0.22]], dtype=torch.float64)).tolist()
        [0.11, 0.09]
    """
    return evaluations[-HALVING_WINDOW:].nanmedian(0).values


ModelFn = Callable[[], nn.Module]
"""Builds one member (called after ``torch.manual_seed(seed)``)."""


@dataclass
class Population:
    """What :func:`gdlab.population.train` returns: the trained members and their records.

    Attributes:
        seeds: each member's seed. hyper: each member's optimizer hyperparameters (plain numbers).
        params: the members' parameters and buffers, stacked: name -> ``[M, ...]`` tensor (CPU).
        train_loss: each member's mean batch loss over its last epoch (NaN when it diverged).
        val_loss, val_accuracy: on the validation data at the end (None without it; accuracy for class and
            multilabel targets under any loss, where the outputs hold predictions).
        diverged_at: the step at which each member was frozen, or None.
        losses: ``[steps, M]`` batch losses (NaN after a member is frozen).
        epoch_train_loss, epoch_val_loss: ``[epochs, M]`` per-epoch means (val None without validation data).
        plan: the batch plan; steps: steps taken; seconds: training time; vectorized: False when the members
        were trained one by one (the notice says why).
        pruned_at: with ``halving``, the step at which each member was cut (its records are from then), or None.
        val_metrics: every validation metric of the task by name (:mod:`gdlab.metrics`: ``accuracy``,
            ``subset_accuracy``, ``mae``, ``r2``), one value per member (NaN when it diverged); empty without
            validation data. Members trained one by one (the fallback) carry only ``accuracy`` here.
    """

    seeds: list[int]
    hyper: list[dict[str, Any]]
    params: dict[str, Tensor]
    template: nn.Module
    train_loss: list[float]
    val_loss: list[float] | None
    val_accuracy: list[float] | None
    diverged_at: list[int | None]
    losses: Tensor
    epoch_train_loss: Tensor
    epoch_val_loss: Tensor | None
    plan: BatchPlan
    steps: int
    seconds: float
    task: str
    vectorized: bool = True
    notice: str | None = None
    optimizer: str = "momentum"
    pruned_at: list[int | None] = field(default_factory=list)
    val_metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.val_accuracy is not None and "accuracy" not in self.val_metrics:
            self.val_metrics["accuracy"] = list(self.val_accuracy)

    @property
    def member_steps(self) -> int:
        """The steps all members took together (a pruned member stops counting when it is cut)."""
        return sum(p if p is not None else self.steps for p in (self.pruned_at or [None] * len(self)))

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        diverged = sum(d is not None for d in self.diverged_at)
        how = "vectorized" if self.vectorized else "one by one"
        return (f"Population({len(self)} members, {self.steps} steps, {how}, {diverged} diverged, "
                f"{self.seconds:.2f} s)")

    @property
    def diverged(self) -> list[bool]:
        return [d is not None for d in self.diverged_at]

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary ``nn.Module`` (a copy; CPU)."""
        if not -len(self) <= i < len(self):
            raise InvalidParameter("member", i, f"an index in 0..{len(self) - 1}")
        model = copy.deepcopy(self.template)
        # strict=False: a tied weight is stored once, under its first name, and loads into every alias
        model.load_state_dict({k: v[i] for k, v in self.params.items()}, strict=False)
        return model

    def score(self) -> list[float]:
        """The number members are ranked by: validation loss where there is validation data, else train loss;
        inf for diverged members."""
        values = self.val_loss if self.val_loss is not None else self.train_loss
        return [math.inf if d is not None or not math.isfinite(v) else v for v, d in zip(values, self.diverged_at)]


def member_hyperparams(optimizer: str, members: int, hyper: Mapping[str, Any]) -> dict[str, Any]:
    """The alias's keyword arguments for ``members`` members: each value a number (shared) or one per member.

    Every member's values are checked as ``gdlab.optim.make`` checks them. In the result a value the members
    share stays a number and one that differs (and ``lr``, always) is a ``[members]`` float64 tensor.

    Example:
        >>> h = member_hyperparams("adam", 3, {"lr": [1e-3, 1e-2, 1e-1], "beta2": 0.99})
        >>> h["lr"].tolist(), h["betas"]                 # values all members share stay numbers
        ([0.001, 0.01, 0.1], (0.9, 0.99))
    """
    if optimizer not in optim.OPTIMIZERS:
        raise optim.UnknownChoice("optimizer", optimizer, optim.OPTIMIZERS)
    if "lr" not in hyper:
        raise MissingParameter("lr", "a learning rate (one number, or one per member)")
    columns: dict[str, list[Any]] = {}
    for key, value in hyper.items():
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value] * members
        if len(values) != members:
            raise InvalidParameter(key, value, f"one value, or one per member ({members})")
        columns[key] = values
    per_member = []
    for i in range(members):
        row = {k: v[i] for k, v in columns.items()}
        lr = row.pop("lr")
        momentum = row.pop("momentum", None)
        per_member.append(optim.hyperparams(optimizer, lr=lr, momentum=momentum, **row))
    def column(values: list[Any], key: str) -> Any:
        # A value shared by all members stays a number (the foreach path; a zero leaves its transform out);
        # the learning rate is always per member (a diverging member is frozen by zeroing its own).
        if key != "lr" and len(set(values)) == 1:
            return values[0]
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    stacked: dict[str, Any] = {}
    for key, first in per_member[0].items():
        values = [h[key] for h in per_member]
        if isinstance(first, bool):
            if len(set(values)) > 1:
                raise InvalidParameter(key, values, "one value shared by all members")
            stacked[key] = first
        elif isinstance(first, tuple):
            stacked[key] = tuple(column([v[j] for v in values], key) for j in range(len(first)))
        else:
            stacked[key] = column(values, key)
    return stacked


def member_values(hyper: dict[str, Any], i: int) -> dict[str, Any]:
    """Member ``i``'s values in :func:`member_hyperparams`' result as plain numbers (betas as a pair)."""
    out: dict[str, Any] = {}
    for key, value in hyper.items():
        if isinstance(value, tuple):
            out[key] = tuple(float(v[i]) if isinstance(v, Tensor) else v for v in value)
        elif isinstance(value, Tensor):
            out[key] = float(value[i])
        else:
            out[key] = value
    return out
