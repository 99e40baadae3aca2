"""The lab: optimizers walking over 2-D test functions, side by side, with pictures.

Every optimizer and every starting point walk as one population (:func:`walk_together`): the points are one
``[N, 2]`` tensor, the function is evaluated and differentiated once per step for all of them (each row moves on
its own, since the functions act row by row), and each of gdlab's optimizers updates its own rows.
``lr="auto"`` tunes every optimizer's learning rate first, in one population too: 13 learning rates from 1e-4
to 1 per optimizer walk from the start (a ``[13]`` learning-rate tensor each), and per optimizer the one ending
lowest wins (ties broken by the fewest steps to the tolerance).

Example:
    >>> result = run("booth", optimizers=["sgd", "momentum"], steps=300, lr=0.02, plots=False)
    >>> [(row["optimizer"], round(row["loss"], 6), row["steps_to_tol"]) for row in result.table]
    [('sgd', 0.0, 94), ('momentum', 0.0, 98)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gdlab import optim
from gdlab.errors import InvalidParameter, check_int
from gdlab.lab.functions import TestFunction, get

__all__ = ["run", "LabResult", "Walk", "walk", "walk_together", "AUTO_GRID", "FILES", "check_folder"]

FILES = {"plot": "trajectories.png", "animation": "descent.gif"}
"""The files :func:`run` writes into its folder."""

AUTO_GRID = [10 ** (-4 + k / 3) for k in range(13)]
"""The learning rates ``lr="auto"`` tries (1e-4 to 1, three per decade)."""


@dataclass
class Walk:
    """One optimizer's walk from ``K`` starts: ``path [steps+1, K, 2]``, ``losses [steps+1, K]``, the step each
    start diverged at (or None)."""

    optimizer: str
    lr: float
    path: Tensor
    losses: Tensor
    diverged_at: list[int | None]


@dataclass
class LabResult:
    """What :func:`run` returns: the walks, one table row per optimizer, and the files written."""

    function: TestFunction
    walks: list[Walk]
    table: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)

    def _repr_html_(self) -> str:  # Jupyter: a row per optimizer and the paths over the contour
        from gdlab.notebook import lab_html

        return lab_html(self)


def walk(function: TestFunction, optimizer: str, lr: float | Tensor, starts: Tensor, steps: int,
         **hyper: Any) -> Walk:
    """``steps`` steps of ``optimizer`` from each row of ``starts [K, 2]`` (``lr`` a number, or ``[K]`` values:
    one per start; ``hyper``: the alias's other hyperparameters, e.g. ``momentum``). A start whose value or
    gradient stops being finite stays where it last was."""
    return walk_together(function, [(optimizer, lr, starts, hyper)], steps)[0]


Group = tuple[str, "float | Tensor", Tensor, dict[str, Any]]
"""One optimizer's part of a population: its name, lr (a number or one per start), starts ``[K, 2]`` and other
hyperparameters."""


def walk_together(function: TestFunction, groups: Sequence[Group], steps: int) -> list[Walk]:
    """Walk several optimizers as one population: every group's starts stacked into one ``[N, 2]`` tensor of
    points, one evaluation of ``function`` and one gradient per step for all of them, and each optimizer
    updating its own rows. Returns one :class:`Walk` per group, in order."""
    for name, *_ in groups:
        if name not in optim.OPTIMIZERS:
            raise optim.UnknownChoice("optimizer", name, optim.OPTIMIZERS)
    bounds, at = [], 0
    for _, _, starts, _ in groups:
        bounds.append(slice(at, at + len(starts)))
        at += len(starts)
    point = torch.cat([starts.detach().double() for _, _, starts, _ in groups])
    transforms = [optim.OPTIMIZERS[name].alias(lr=lr, **hyper) for name, lr, _, hyper in groups]
    states = [t.init([point[rows].clone()]) for t, rows in zip(transforms, bounds)]
    active = torch.ones(len(point), dtype=torch.bool)
    diverged: list[int | None] = [None] * len(point)
    path, losses = [point.clone()], []
    for step in range(1, steps + 1):
        leaf = point.clone().requires_grad_()
        value = function(leaf)
        (g,) = torch.autograd.grad(value.sum(), leaf)
        losses.append(value.detach())
        bad = active & ~(torch.isfinite(value.detach()) & torch.isfinite(g).all(-1))
        for i in bad.nonzero().flatten().tolist():
            diverged[i] = step
        active &= ~bad
        g = torch.where(active.unsqueeze(-1), g, torch.zeros_like(g))
        moved = point.clone()
        with torch.no_grad():
            for k, (transform, rows) in enumerate(zip(transforms, bounds)):
                updates, states[k] = transform.update([g[rows]], states[k], [point[rows]])
                moved[rows] += updates[0]
            point = torch.where(active.unsqueeze(-1) & torch.isfinite(moved).all(-1, keepdim=True), moved, point)
        path.append(point.clone())
    with torch.no_grad():
        losses.append(function(point))
    paths, values = torch.stack(path), torch.stack(losses)
    return [Walk(name, float(lr) if not isinstance(lr, Tensor) else math.nan, paths[:, rows], values[:, rows],
                 diverged[rows]) for (name, lr, _, _), rows in zip(groups, bounds)]


def _steps_to(losses: Tensor, target: float) -> list[int | None]:
    """Per start, the first step at which the loss is within the tolerance (None if never)."""
    hit = losses <= target
    out: list[int | None] = []
    for k in range(losses.shape[1]):
        where = hit[:, k].nonzero()
        out.append(int(where[0]) if len(where) else None)
    return out


def _tune(function: TestFunction, optimizers: Sequence[str], start: Tensor, steps: int, tol: float) -> list[float]:
    """Each optimizer's best lr of :data:`AUTO_GRID`: every optimizer x lr walks from ``start`` as one population."""
    lrs = torch.tensor(AUTO_GRID, dtype=torch.float64)
    walks = walk_together(function, [(name, lrs, start.expand(len(lrs), 2), {}) for name in optimizers], steps)
    return [_best_lr(function, w, lrs, steps, tol) for w in walks]


def _best_lr(function: TestFunction, w: Walk, lrs: Tensor, steps: int, tol: float) -> float:
    final = w.losses[-1].clone()
    final[~torch.isfinite(final)] = math.inf
    for i, d in enumerate(w.diverged_at):
        if d is not None:
            final[i] = math.inf
    target = (function.minimum if function.minimum is not None else -math.inf) + tol
    reach = _steps_to(w.losses, target)
    best = min(range(len(lrs)), key=lambda i: (round(float(final[i]), 9), reach[i] if reach[i] is not None
                                                 else steps + 1))
    return float(lrs[best])


def check_folder(out: str | Path, flag: str = "out", *, force: bool = False) -> Path:
    """``out`` if the lab may write its pictures there (:func:`gdlab.guard.check_out`): a folder (new or
    existing, never a file, nor a run store's), and in it :data:`FILES`, each new or a picture of its kind, unless
    ``force``. Checked before any walk."""
    from gdlab.guard import check_out

    folder = check_out(out, flag, (), folder=True)
    for name in FILES.values():  # an error names the file in the folder
        check_out(folder / name, flag, (Path(name).suffix,), force=force)
    return folder


def run(
    function: str | TestFunction,
    *,
    optimizers: Sequence[str] = ("sgd", "momentum", "nesterov", "adam"),
    steps: int = 200,
    lr: float | str | dict[str, float] = "auto",
    start: tuple[float, float] | None = None,
    restarts: int = 0,
    seed: int = 0,
    tol: float = 1e-3,
    out: str | Path | None = None,
    plots: bool = True,
    force: bool = False,
) -> LabResult:
    """Walk every optimizer over ``function`` and report, per optimizer: its lr, end point, loss, distance to the
    nearest global minimum, steps to come within ``tol`` of the minimum value (or None); with ``restarts=K``, K
    random starts in the domain, which minimum each falls into, and the share reaching a global minimum.

    Args:
        lr: a number for all, a dict per optimizer, or ``"auto"`` (tuned per optimizer, see the module).
        out: the folder for the contour plot (``trajectories.png``) and the animation (``descent.gif``), checked
            before any walk (:func:`check_folder`); ``force`` writes over files of another kind there.
    """
    f = get(function) if isinstance(function, str) else function
    if plots and out is not None:
        check_folder(out, force=force)
    check_int(steps, "steps")
    check_int(restarts, "restarts", least=0)
    if not optimizers:
        raise InvalidParameter("optimizers", list(optimizers), "at least one optimizer")
    for name in optimizers:
        if name not in optim.OPTIMIZERS:
            raise optim.UnknownChoice("optimizer", name, optim.OPTIMIZERS)
    point = start if start is not None else f.start
    if not f.inside(point):
        (x0, x1), (y0, y1) = f.domain
        raise InvalidParameter("start", f"{point[0]:g},{point[1]:g}",
                               f"a point inside {f.name}'s domain x in [{x0:g}, {x1:g}], y in [{y0:g}, {y1:g}]")
    if isinstance(lr, str) and lr != "auto":
        raise InvalidParameter("lr", lr, 'a number > 0, one per optimizer, or "auto"')
    start_t = torch.tensor([point], dtype=torch.float64)
    if restarts:
        g = torch.Generator().manual_seed(seed)
        (x0, x1), (y0, y1) = f.domain
        u = torch.rand(restarts, 2, generator=g, dtype=torch.float64)
        starts = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=1)
    else:
        starts = start_t
    target = (f.minimum if f.minimum is not None else -math.inf) + tol
    if lr == "auto":
        rates = _tune(f, optimizers, start_t, steps, tol)
    elif isinstance(lr, dict):
        rates = [optim.check_lr(lr.get(name, math.nan), f"lr of {name}") for name in optimizers]
    else:
        rates = [optim.check_lr(lr)] * len(optimizers)
    walks = walk_together(f, [(name, rate, starts, {}) for name, rate in zip(optimizers, rates)], steps)
    table = []
    for name, rate, w in zip(optimizers, rates, walks):
        end = w.path[-1]
        loss = w.losses[-1]
        reached = _steps_to(w.losses, target)
        row: dict[str, Any] = {"optimizer": name, "lr": rate}
        if not restarts:
            row.update(end=[float(end[0, 0]), float(end[0, 1])], loss=float(loss[0]),
                       distance=_none(float(f.distance_to_minimum(end)[0])), steps_to_tol=reached[0],
                       diverged=w.diverged_at[0] is not None)
        else:
            basins = _basins(f, end, loss, tol)
            row.update(restarts=restarts, reached_global=sum(b >= 0 for b in basins) / restarts,
                       basins=basins, best_loss=float(loss[torch.isfinite(loss)].min()) if torch.isfinite(loss).any()
                       else None, diverged=sum(d is not None for d in w.diverged_at))
        table.append(row)
    result = LabResult(f, walks, table)
    if plots:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(out) if out is not None else Path("gdlab-runs") / "lab" / f"{f.name}-{stamp}"
        from gdlab.plots import animate_walks, plot_walks

        result.files["plot"] = str(plot_walks(result, folder / FILES["plot"], restarts=bool(restarts)))
        result.files["animation"] = str(animate_walks(result, folder / FILES["animation"]))
    return result


def _none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _basins(f: TestFunction, ends: Tensor, losses: Tensor, tol: float) -> list[int]:
    """Per start, the index of the global minimum it ended at (within 0.05, loss within ``tol``), else -1."""
    if not f.minima:
        return [-1] * len(ends)
    minima = torch.tensor(f.minima, dtype=ends.dtype)
    distance = (ends.unsqueeze(1) - minima).norm(dim=-1)  # [K, minima]
    nearest = distance.argmin(dim=1)
    assert f.minimum is not None
    return [int(nearest[k]) if float(distance[k, nearest[k]]) < 0.05 and float(losses[k]) <= f.minimum + tol else -1
            for k in range(len(ends))]
