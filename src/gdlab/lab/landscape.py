"""Loss landscapes of real networks: the loss along a line or over a plane through the trained parameters.

Directions are random with filter normalisation (Li et al. 2018, https://arxiv.org/abs/1712.09913): each filter
(a row of a weight: an output unit or channel) of a random direction is rescaled to the norm of the same filter
of the model, so that the picture does not depend on the weights' scale; biases and normalisation parameters
(1-D tensors) are left at zero. Grid points are evaluated one after another with the parameters set in place
(on the CPU that was as fast as batching them, see ``docs/benchmarks.md``), on a fixed subset of the data. A grid
is sized before any work: at most :data:`MAX_POINTS` points (:func:`check_size`).

Example:
    >>> import torch
    >>> X = torch.randn(64, 3); y = (X[:, 0] > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> land = plane(model, (X, y), steps=5, progress=False)
    >>> land.losses.shape, bool(abs(land.losses[2, 2] - land.center_loss) < 1e-6)
    (torch.Size([5, 5]), True)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gdlab.errors import InvalidParameter, check_int, check_number
from gdlab.loop import Callback, LoopState
from gdlab.problem import Problem

__all__ = ["MAX_POINTS", "Landscape", "Snapshots", "check_size", "direction", "interpolate", "line", "plane",
           "trajectory"]


@dataclass
class Landscape:
    """``losses`` ``[steps]`` (a line) or ``[steps, steps]`` (a plane: rows along the second direction, columns
    along the first), the coordinates ``alphas`` (and ``betas``), the directions and the loss at the centre."""

    losses: Tensor
    alphas: Tensor
    betas: Tensor | None
    directions: list[list[Tensor]]
    center_loss: float
    samples: int
    path: Tensor | None = None  # [snapshots, 2]: a training trajectory's coordinates in the plane
    explained: list[float] | None = None  # the share of the trajectory's variance each direction explains

    def plot(self, path: str, title: str | None = None) -> Any:
        from gdlab.plots import plot_landscape

        return plot_landscape(self, path, title=title)

    def _repr_html_(self) -> str:  # Jupyter: the loss at the model and over the grid, and the picture
        from gdlab.notebook import landscape_html

        return landscape_html(self)


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def direction(model: nn.Module, generator: torch.Generator) -> list[Tensor]:
    """A random direction, filter-normalised to ``model``'s weights; zero for biases and normalisation (1-D)."""
    out = []
    for p in _params(model):
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        rows_d = d.reshape(len(d), -1).norm(dim=1).clamp(min=1e-12)
        rows_p = p.detach().reshape(len(p), -1).norm(dim=1)
        out.append(d * (rows_p / rows_d).reshape(-1, *([1] * (p.dim() - 1))))
    return out


def _subset(data: Any, samples: int, model: nn.Module, loss: Any) -> tuple[Problem, Any, Tensor]:
    """The problem of ``model`` on ``data`` and a fixed subset of its samples (drawn by seed 0)."""
    problem = Problem.make(model, data, loss=loss, device=next(model.parameters()).device)
    x, y = problem.source.sample(min(samples, len(problem.source)), 0)
    return problem, x, y


Axis = tuple[Tensor, list[Tensor]]  # the coordinates along a direction, and the direction


@torch.no_grad()
def _grid(model: nn.Module, data: Any, loss: Any, samples: int, columns: Axis, rows: Axis | None,
          progress: bool) -> tuple[Tensor, float, int]:
    """The loss at theta + a d1 (+ b d2) for every a of ``columns`` (and b of ``rows``): ``[rows, columns]``, one
    row for a line. The points are made one at a time, never held as a list."""
    problem, x, y = _subset(data, samples, model, loss)
    params = _params(model)
    data_ = [p.data for p in params]
    start = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    alphas, d1 = columns
    betas, d2 = rows if rows is not None else (None, None)
    total = len(alphas) * (len(betas) if betas is not None else 1)
    bar = None
    if progress:
        from gdlab.progress import TaskBar  # an edge: rich only when a bar is wanted

        bar = TaskBar(f"landscape: {total} points x {len(y)} samples", total, transient=True,
                      every=max(1, total // 100))
    values: list[list[float]] = []
    try:
        center = float(problem.batch_loss(model, x, y))
        for b in betas.tolist() if betas is not None else [0.0]:
            out_row = []
            for a in alphas.tolist():
                torch._foreach_copy_(data_, start)
                for coefficient, d in ((a, d1), (b, d2)):
                    if coefficient and d is not None:
                        torch._foreach_add_(data_, d, alpha=coefficient)
                out_row.append(float(problem.batch_loss(model, x, y)))
                if bar is not None:
                    bar.update(len(values) * len(alphas) + len(out_row))
            values.append(out_row)
    finally:
        for p, s in zip(params, start):
            p.copy_(s)
        model.train(was_training)
        if bar is not None:
            bar.close()
    return torch.tensor(values, dtype=torch.float64), center, len(y)


MAX_POINTS = 250_000
"""The most points a landscape evaluates (a plane of 500 x 500, a line of 250,000): each point is a forward pass
over the samples, so a grid is sized before any work (``steps`` of 100,000 made a plane of 10 billion points)."""


def check_size(steps: Any, kind: str = "plane") -> int:
    """The number of points of a ``kind`` landscape (``line``, ``interpolate``: ``steps``; ``plane``,
    ``trajectory``: ``steps`` squared) if it is at most :data:`MAX_POINTS`, else one line naming ``steps``.

    Example:
        >>> check_size(25), check_size(25, "line")
        (625, 25)
        >>> check_size(100_000)
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid steps 100000: expected at most 500 for a plane (500 x 500 = 250,000 \
points, each a forward pass over the samples; 100000 x 100000 = 10,000,000,000 asked)
    """
    check_int(steps, "steps", least=2)
    what = _KINDS.get(kind, f"a {kind}")
    if kind in ("line", "interpolate"):
        if steps > MAX_POINTS:
            raise InvalidParameter("steps", steps, f"at most {MAX_POINTS:,} for {what} (each point a forward pass "
                                   "over the samples)")
        return int(steps)
    side = math.isqrt(MAX_POINTS)
    if steps > side:
        raise InvalidParameter("steps", steps, f"at most {side} for {what} ({side} x {side} = {side * side:,} "
                               f"points, each a forward pass over the samples; {steps} x {steps} = "
                               f"{steps * steps:,} asked)")
    return int(steps) ** 2


_KINDS = {"line": "a line", "interpolate": "an interpolation", "plane": "a plane", "trajectory": "a trajectory"}


def _check(steps: Any, distance: Any, samples: Any, kind: str) -> None:
    check_size(steps, kind)
    check_number(distance, "distance", above=0, expected="a number > 0")
    check_int(samples, "samples")


def plane(model: nn.Module, data: Any, *, loss: Any = "auto", steps: int = 25, distance: float = 1.0, seed: int = 0,
          samples: int = 1000, progress: bool = True) -> Landscape:
    """The loss over the plane theta + a d1 + b d2, a and b in [-distance, distance] (``steps`` each; an odd
    ``steps`` puts the model itself at the centre), d1 and d2 random filter-normalised directions."""
    _check(steps, distance, samples, "plane")
    g = torch.Generator().manual_seed(seed)
    d1, d2 = direction(model, g), direction(model, g)
    coords = torch.linspace(-distance, distance, steps, dtype=torch.float64)
    losses, center, n = _grid(model, data, loss, samples, (coords, d1), (coords, d2), progress)
    return Landscape(losses, coords, coords, [d1, d2], center, n)


def line(model: nn.Module, data: Any, *, loss: Any = "auto", steps: int = 25, distance: float = 1.0, seed: int = 0,
         samples: int = 1000, progress: bool = True) -> Landscape:
    """The loss along theta + a d, a in [-distance, distance], d a random filter-normalised direction."""
    _check(steps, distance, samples, "line")
    d = direction(model, torch.Generator().manual_seed(seed))
    coords = torch.linspace(-distance, distance, steps, dtype=torch.float64)
    losses, center, n = _grid(model, data, loss, samples, (coords, d), None, progress)
    return Landscape(losses[0], coords, None, [d], center, n)


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Any, *, loss: Any = "auto", steps: int = 25,
                samples: int = 1000, progress: bool = True) -> Landscape:
    """The loss along (1 - t) theta_a + t theta_b for t in [0, 1]: is there a barrier between two minima?"""
    _check(steps, 1.0, samples, "interpolate")
    pa, pb = _params(model_a), _params(model_b)
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise InvalidParameter("model_b", type(model_b).__name__, "a model with model_a's parameter shapes")
    model = copy.deepcopy(model_a)
    d = [b.detach() - a.detach() for a, b in zip(pa, pb)]
    coords = torch.linspace(0, 1, steps, dtype=torch.float64)
    losses, center, n = _grid(model, data, loss, samples, (coords, d), None, progress)
    return Landscape(losses[0], coords, None, [d], center, n)


class Snapshots(Callback):
    """A callback keeping the parameters (flattened, on the CPU) every ``every`` steps and at the end, for
    :func:`trajectory`: ``fit(model, data, callbacks=[snaps := Snapshots(10)])``."""

    def __init__(self, every: int = 10) -> None:
        self.every = check_int(every, "every")
        self.points: list[Tensor] = []

    def _keep(self, state: LoopState) -> None:
        self.points.append(torch.cat([p.detach().flatten().cpu() for p in _params(state.model)]))

    def on_fit_start(self, state: LoopState) -> None:
        self._keep(state)

    def on_step_end(self, state: LoopState) -> None:
        if state.step % self.every == 0:
            self._keep(state)

    def on_fit_end(self, state: LoopState) -> None:
        if state.step % self.every:
            self._keep(state)


def trajectory(model: nn.Module, data: Any, snapshots: Snapshots | list[Tensor], *, loss: Any = "auto",
               steps: int = 25, margin: float = 0.2, samples: int = 1000, progress: bool = True) -> Landscape:
    """The training trajectory seen from the end point: the snapshots' offsets from the final parameters
    (``model``'s) projected on their first two principal components, and the loss over the plane those two
    directions span around the model, wide enough (plus ``margin``) to hold the whole path."""
    points = snapshots.points if isinstance(snapshots, Snapshots) else list(snapshots)
    if len(points) < 3:
        raise InvalidParameter("snapshots", len(points), "at least 3 snapshots of the parameters")
    _check(steps, 1.0, samples, "trajectory")
    params = _params(model)
    final = torch.cat([p.detach().flatten().cpu() for p in params])
    offsets = torch.stack(points).double() - final.double()  # [snapshots, parameters]
    _, singular, v = torch.linalg.svd(offsets, full_matrices=False)
    basis = v[:2]  # orthonormal rows: the two directions of largest spread
    path = offsets @ basis.T  # [snapshots, 2]
    variance = singular.square()
    explained = (variance[:2] / variance.sum()).tolist()
    directions = []
    for row in basis:
        pieces, start = [], 0
        for p in params:
            pieces.append(row[start : start + p.numel()].reshape(p.shape).to(p.dtype).to(p.device))
            start += p.numel()
        directions.append(pieces)
    reach = float(path.abs().max()) * (1 + margin)
    coords = torch.linspace(-reach, reach, steps, dtype=torch.float64)
    losses, center, n = _grid(model, data, loss, samples, (coords, directions[0]), (coords, directions[1]),
                              progress)
    return Landscape(losses, coords, coords, directions, center, n, path=path, explained=explained)
