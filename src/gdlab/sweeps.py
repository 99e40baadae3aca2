"""Sweeps and random restarts: grids of trainings run as one population.

:func:`sweep` trains one member per point of the grid of the values given (learning rates, momenta, seeds, any
optimizer option) and returns a table with one row per member. :func:`restarts` is a sweep over seeds that
asks the lecture's question: from random initial points, how many different minima does training end in?

Example:
    >>> import torch
    >>> X = torch.randn(128, 2); y = (X[:, 0] > 0).long()
    >>> result = sweep(lambda: torch.nn.Linear(2, 2), (X, y), optimizer="sgd", lr=[0.01, 0.3], seeds=[0, 1],
    ...                steps=40, progress=False)
    >>> len(result.table), result.best()["lr"]
    (4, 0.3)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gdlab import distributed, population
from gdlab.data import as_tensor_data, structure
from gdlab.data.source import collate
from gdlab.errors import InvalidParameter, check_number, check_seed
from gdlab.population import Population
from gdlab.population.run import check_members
from gdlab.problem import prediction
from gdlab.store import Store

__all__ = ["sweep", "SweepResult", "restarts", "RestartsResult", "parse_values", "SWEPT", "EXTRA_METRICS"]

SWEPT = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay")
MAX_VALUES = 1000
"""Hyperparameters a sweep can vary (besides seeds)."""


def parse_values(text: str, param: str = "values") -> list[float]:
    """``"a:b:n"`` (n log-spaced values from a to b), ``"x,y,z"`` or one number.

    Example:
        >>> [round(v, 6) for v in parse_values("1e-3:1e-1:3")]
        [0.001, 0.01, 0.1]
        >>> parse_values("0,0.9")
        [0.0, 0.9]
    """
    text = text.strip()
    expected = (f"a:b:n (n <= {MAX_VALUES} log-spaced values from a to b, a and b > 0), a comma-separated list or "
                "a number")
    try:
        if ":" in text:
            a, b, n = text.split(":")
            low, high, count = float(a), float(b), int(n)
            if not (low > 0 and high > 0 and 1 <= count <= MAX_VALUES and math.isfinite(low) and math.isfinite(high)):
                raise ValueError
            if count == 1:
                return [low]
            step = (math.log10(high) - math.log10(low)) / (count - 1)
            return [10 ** (math.log10(low) + i * step) for i in range(count)]
        items = text.split(",")
        if any(not item.strip() for item in items):
            raise ValueError
        values = [float(v) for v in items]
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError
        return values
    except ValueError:
        raise InvalidParameter(param, text, expected) from None


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise InvalidParameter("seeds", seeds, "a number of seeds or a list of seeds")
    if isinstance(seeds, int):
        if seeds < 1:
            raise InvalidParameter("seeds", seeds, "a positive number of seeds, or a list of seeds")
        return list(range(check_members(seeds, "seeds")))
    values = list(seeds)
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        raise InvalidParameter("seeds", seeds, "a number of seeds or a non-empty list of integers >= 0")
    check_members(len(values), "seeds")
    return [check_seed(s, "seeds") for s in values]


EXTRA_METRICS = ("subset_accuracy", "mae", "r2")
"""The members' validation metrics a sweep's rows carry (as ``val_<name>``) beside ``metric`` (the accuracy)."""


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        table: one row per member: ``member``, ``seed``, the swept and fixed settings, ``train_loss``,
            ``val_loss``, ``val_subset_accuracy`` (multilabel) or ``val_mae`` and ``val_r2`` (regression) where the
            members give predictions, ``metric`` (validation accuracy for class and multilabel targets, else
            None), ``diverged``.
        axes: the swept settings and their values (``seed`` included when more than one).
        population: the trained members (parameters, per-step losses).
    """

    table: list[dict[str, Any]]
    axes: dict[str, list[Any]]
    population: Population
    optimizer: str
    sweep_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def best(self) -> dict[str, Any]:
        """The row of the member with the lowest validation loss (train loss without validation data),
        diverged members left out."""
        scores = self.population.score()
        i = min(range(len(scores)), key=lambda k: scores[k])
        if math.isinf(scores[i]):
            raise InvalidParameter("sweep", "every member diverged", "at least one member that trained: "
                                   "try smaller learning rates")
        return self.table[i]

    def member(self, i: int) -> nn.Module:
        """Member ``i`` (its row's ``member``) as an ``nn.Module``."""
        return self.population.member(i)

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.table)

    def _repr_html_(self) -> str:  # Jupyter: the members best first and final loss against lr
        from gdlab.notebook import sweep_html

        return sweep_html(self)


def sweep(
    model_fn: Callable[[], nn.Module],
    train: Any,
    *,
    optimizer: str = "momentum",
    lr: float | Sequence[float] = (1e-3, 1e-2, 1e-1),
    momentum: float | Sequence[float] | None = None,
    seeds: int | Sequence[int] = (0,),
    batch_size: int | str = 32,
    epochs: int | None = None,
    steps: int | None = None,
    val: Any = None,
    loss: Any = "auto",
    device: str | torch.device = "auto",
    shared_order: bool = False,
    progress: bool = True,
    store: Any = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    target_key: str | None = None,
    workers: int = 1,
    **options: Any,
) -> SweepResult:
    """Train one member per point of the grid of ``lr`` x ``momentum`` x options x ``seeds``, at once.

    Args:
        model_fn: builds one member; called after ``torch.manual_seed(seed)``.
        lr, momentum, **options (``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``nesterov``): a number, a
            list of values, or text as the CLI takes it (``"1e-4:1:16"``); lists span the grid.
        seeds: a list of seeds, or a count (seeds 0..n-1).
        store: a :class:`~gdlab.store.Store` or its folder: the sweep and its members are recorded there (by rank 0
            alone, with ``workers``).
        workers: under ``torchrun``, the number of ranks: the members are spread over them, each rank training its
            share as one population; every rank returns the whole table, equal to one process's.
        The rest: as for :func:`gdlab.fit`.
    """
    seed_list = _seeds(seeds)
    settings: dict[str, Any] = {"lr": lr, "momentum": momentum, **options}
    for key in settings:
        if key not in SWEPT and key != "nesterov":
            raise InvalidParameter(key, settings[key], f"a setting a sweep can vary: {', '.join(SWEPT)}, nesterov")
    axes: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, str):
            value = parse_values(value, key)
            value = value[0] if len(value) == 1 else value
        if isinstance(value, (list, tuple)):
            if not value:
                raise InvalidParameter(key, list(value), "at least one value")
            axes[key] = list(value)
        else:
            fixed[key] = value
    names = list(axes)
    check_members(math.prod(len(v) for v in axes.values()) * len(seed_list), "sweep size")
    grid = list(itertools.product(*(axes[k] for k in names), seed_list))
    hyper: dict[str, Any] = {**fixed, **{k: [point[i] for point in grid] for i, k in enumerate(names)}}
    pop = population.train(model_fn, train, seeds=[point[-1] for point in grid], optimizer=optimizer, hyper=hyper,
                           batch_size=batch_size, epochs=epochs, steps=steps, val=val, loss=loss, device=device,
                           shared_order=shared_order, progress=progress, target_key=target_key, workers=workers)
    table = []
    for i, point in enumerate(grid):
        row: dict[str, Any] = {"member": i, "seed": point[-1]}
        row.update({k: v for k, v in fixed.items()})
        row.update({k: point[j] for j, k in enumerate(names)})
        row["train_loss"] = _clean(pop.train_loss[i])
        row["val_loss"] = _clean(pop.val_loss[i]) if pop.val_loss is not None else None
        row.update({f"val_{k}": _clean(pop.val_metrics[k][i]) for k in EXTRA_METRICS if k in pop.val_metrics})
        row["metric"] = _clean(pop.val_accuracy[i]) if pop.val_accuracy is not None else None
        row["diverged"] = pop.diverged_at[i] is not None
        table.append(row)
    if len(seed_list) > 1:
        axes["seed"] = seed_list
    result = SweepResult(table, axes, pop, optimizer)
    if store is not None and distributed.is_main():
        result.sweep_id = _record(store, "sweep", result, name, config or {
            "optimizer": optimizer, "batch_size": batch_size, "epochs": epochs, "steps": steps,
            "axes": axes, "fixed": fixed})
    return result


def _clean(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _record(store: Any, kind: str, result: SweepResult, name: str | None, config: dict[str, Any],
            summary: dict[str, Any] | None = None) -> str:
    db = store if isinstance(store, Store) else Store(store)
    pop = result.population
    curves = pop.epoch_train_loss.T.tolist()
    members = [{**row, "curve": [_clean(v) for v in curve]} for row, curve in zip(result.table, curves)]
    return db.add_sweep(kind, config, members, summary=summary or {}, name=name, seconds=pop.seconds,
                        steps=pop.steps)


# -- random restarts ---------------------------------------------------------------------------------------------


SPACES = ("function", "parameters")
"""Where :func:`restarts` measures the distance between two end points."""


@dataclass
class RestartsResult:
    """What :func:`restarts` returns.

    Attributes:
        sweep: the sweep over seeds (its table has a row per restart).
        losses: each restart's final loss (validation where given, else train; NaN if it diverged).
        clusters: each restart's end point, numbered from 0 (the best first): a restart joins the end point of
            the first (best) founder within ``tol`` of it in ``space`` (see ``distance``); -1 if it diverged.
        best, median, worst, spread (worst - best): of the final losses of the restarts that trained.
        within_tol: the share of restarts whose final loss is within ``tol`` (relative) of the best.
        space: ``function`` or ``parameters``; distance: the distance used and its tolerance, in words.
    """

    sweep: SweepResult
    losses: list[float]
    clusters: list[int]
    best: float
    median: float
    worst: float
    within_tol: float
    tol: float
    restarts_id: str | None = None
    space: str = "function"
    distance: str = ""

    @property
    def spread(self) -> float:
        return self.worst - self.best

    @property
    def distinct(self) -> int:
        """How many distinct end points the restarts reached (clusters in ``space`` within ``tol``)."""
        return len(set(c for c in self.clusters if c >= 0))

    def summary(self) -> dict[str, Any]:
        """The numbers in one JSON-friendly dict."""
        return {"restarts": len(self.losses), "diverged": sum(1 for c in self.clusters if c < 0),
                "best": self.best, "median": self.median, "worst": self.worst, "spread": self.spread,
                "distinct_end_points": self.distinct, "within_tol": self.within_tol, "tol": self.tol,
                "space": self.space, "distance": self.distance}

    def _repr_html_(self) -> str:  # Jupyter: the summary, the final losses by end point and every curve
        from gdlab.notebook import restarts_html

        return restarts_html(self)


def restarts(
    model_fn: Callable[[], nn.Module],
    train: Any,
    *,
    seeds: int | Sequence[int] = 16,
    lr: float = 0.1,
    tol: float = 0.05,
    space: str = "function",
    probe: Any = None,
    **kwargs: Any,
) -> RestartsResult:
    """Train from ``seeds`` random initial points (one population) and compare where they end.

    End points are grouped by their distance, not by their loss: best loss first, a restart joins the first
    end point whose founder is within ``tol`` of it, else founds a new one.

    Args:
        seeds: a count (0..n-1) or a list of seeds.
        tol: relative tolerance: a restart is "as good as the best" when its final loss is within ``tol`` of it,
            and two restarts share an end point when their distance in ``space`` is at most ``tol``.
        space: ``function`` (the default): the members' functions on held-out inputs: the share of inputs whose
            predicted class differs (multilabel: of label entries), or for regression the RMS output difference
            relative to the RMS output. ``parameters``: the distance between the parameter vectors relative to
            the larger norm (it counts a relabelling of hidden units, the same function, as a different point).
        probe: inputs to compare the members' functions on (default: the validation inputs, else up to 512
            training inputs).
        **kwargs: as for :func:`sweep` (``optimizer``, ``lr``, ``batch_size``, ``epochs``, ``val``...).
    """
    check_number(tol, "tol", above=0, expected="a number > 0, e.g. 0.05")
    if space not in SPACES:
        raise InvalidParameter("space", space, " or ".join(SPACES))
    for key, value in (("lr", lr), ("momentum", kwargs.get("momentum"))):
        if isinstance(value, (list, tuple, str)):
            raise InvalidParameter(key, value, "one number: restarts vary the seed only")
    result = sweep(model_fn, train, seeds=seeds, lr=lr,
                   **{k: v for k, v in kwargs.items() if k not in ("store", "name")})
    pop = result.population
    losses = [math.nan if s == math.inf else s for s in pop.score()]
    if space == "parameters":
        distance, described = _parameter_distance(pop), "relative parameter distance"
    else:
        inputs = _probe_inputs(probe, kwargs.get("val"), train)
        distance, described = _function_distance(_member_outputs(pop, inputs), task=pop.task)
    clusters = _cluster(losses, distance, tol)
    finite = sorted(v for v in losses if math.isfinite(v))
    if not finite:
        raise InvalidParameter("restarts", "every restart diverged", "a smaller learning rate")
    best = finite[0]
    within = sum(1 for v in finite if v <= best + tol * abs(best)) / len(losses)
    out = RestartsResult(result, losses, clusters, best, finite[len(finite) // 2], finite[-1], within, float(tol),
                         space=space, distance=f"{described} <= {tol:g}")
    if kwargs.get("store") is not None and distributed.is_main():
        out.restarts_id = _record(kwargs["store"], "restarts", result, kwargs.get("name"), {
            "optimizer": result.optimizer, "lr": lr, "seeds": len(losses), "tol": tol, "space": space},
            summary=out.summary())
    return out


def _probe_inputs(probe: Any, val: Any, train: Any) -> Any:
    """Up to 512 inputs (a tensor or a structure) the members' functions are compared on."""
    if probe is not None:
        return probe if not isinstance(probe, (list, float, int)) else torch.as_tensor(probe)
    for data in (val, train):
        tensors = as_tensor_data(data) if data is not None else None
        if tensors is not None:
            return structure.tree_map(lambda t: t[:512], tensors.X)
    return structure.split(collate([train[i] for i in range(min(len(train), 512))]))[0]


@torch.no_grad()
def _member_outputs(pop: Population, inputs: Any) -> torch.Tensor:
    """``[M, n, ...]``: every member's outputs on ``inputs`` (softmax probabilities for class targets, sigmoid
    ones for multilabel targets); ``[M, 0]``
    for a model whose outputs hold no predictions (a loss alone)."""
    outs = []
    for i in range(len(pop)):
        model = pop.member(i).eval()
        param = next(model.parameters())
        out = prediction(structure.call(model, structure.to(inputs, param.device, param.dtype)))
        if out is None:
            return torch.zeros(len(pop), 0, dtype=torch.float64)
        outs.append(out.softmax(-1) if pop.task == "classification" else out.sigmoid() if pop.task == "multilabel"
                    else out)
    return torch.stack(outs).double()


def _function_distance(outputs: torch.Tensor, *, task: str | None) -> tuple[Callable[[int, int], float], str]:
    """The distance between two members' functions from their outputs ``[M, n, ...]``, and its description."""
    n = outputs.shape[1] if outputs.dim() > 1 else 0
    if not outputs[0].numel():  # no predictions to compare: every member computes "the same" function
        return (lambda i, j: 0.0), "no predictions to compare (one end point)"
    if task in ("classification", "multilabel"):
        predicted = outputs.argmax(-1) if task == "classification" else outputs > 0.5
        what = "inputs" if task == "classification" else "label entries"
        return (lambda i, j: float((predicted[i] != predicted[j]).double().mean())), \
            f"share of {n} held-out {what} predicted differently"
    scale = outputs.square().mean().sqrt().clamp(min=1e-12)
    return (lambda i, j: float((outputs[i] - outputs[j]).square().mean().sqrt() / scale)), \
        f"RMS output difference on {n} held-out inputs relative to the RMS output"


def _parameter_distance(pop: Population) -> Callable[[int, int], float]:
    """``|theta_i - theta_j| / max(|theta_i|, |theta_j|)`` over every floating-point parameter and buffer."""
    flat = torch.cat([v.reshape(len(pop), -1).double() for v in pop.params.values() if v.is_floating_point()], 1)
    norms = flat.norm(dim=1)

    def distance(i: int, j: int) -> float:
        return float((flat[i] - flat[j]).norm() / torch.maximum(norms[i], norms[j]).clamp(min=1e-12))

    return distance


def _cluster(losses: list[float], distance: Callable[[int, int], float] | torch.Tensor, tol: float, *,
             classes: bool = False, multilabel: bool = False) -> list[int]:
    """Greedy clustering, best loss first: a member joins the first cluster whose founder is within ``tol`` of
    it by ``distance`` (a function of two member indices; or members' outputs ``[M, n, ...]``, compared as
    :func:`_function_distance` does for class, multilabel or regression targets). -1 if diverged."""
    if isinstance(distance, torch.Tensor):
        task = "classification" if classes else "multilabel" if multilabel else "regression"
        distance = _function_distance(distance, task=task)[0]
    order = sorted((i for i, v in enumerate(losses) if math.isfinite(v)), key=lambda i: losses[i])
    labels = [-1] * len(losses)
    founders: list[int] = []
    for i in order:
        for c, f in enumerate(founders):
            if distance(i, f) <= tol:
                labels[i] = c
                break
        else:
            labels[i] = len(founders)
            founders.append(i)
    return labels
