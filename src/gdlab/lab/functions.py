"""2-D test functions for watching optimizers walk: each with its domain, global minima and a sensible start.

Every function takes a tensor ``[..., 2]`` of points and returns ``[...]`` values, so a whole population of
points (restarts, optimizers, a contour grid) is evaluated at once.

Example:
    >>> import torch
    >>> f = FUNCTIONS["rosenbrock"]
    >>> float(f(torch.tensor([1.0, 1.0]))), f.minima, f.start
    (0.0, ((1.0, 1.0),), (-1.5, 2.0))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gdlab.errors import InvalidParameter, UnknownChoice

__all__ = ["TestFunction", "FUNCTIONS", "get", "quadratic"]


@dataclass(frozen=True)
class TestFunction:
    """A 2-D function: ``fn(points[..., 2]) -> values[...]``, its ``domain`` ((x0, x1), (y0, y1)), global
    ``minima`` (empty where it is unbounded below), the value there, a ``start`` and one line of description."""

    name: str
    fn: Callable[[Tensor], Tensor]
    domain: tuple[tuple[float, float], tuple[float, float]]
    minima: tuple[tuple[float, float], ...]
    minimum: float | None
    start: tuple[float, float]
    description: str

    def __call__(self, points: Tensor) -> Tensor:
        return self.fn(points)

    def inside(self, point: tuple[float, float]) -> bool:
        (x0, x1), (y0, y1) = self.domain
        return x0 <= point[0] <= x1 and y0 <= point[1] <= y1

    def distance_to_minimum(self, point: Tensor) -> Tensor:
        """Distance from ``point [..., 2]`` to the nearest global minimum (NaN where there is none)."""
        if not self.minima:
            return torch.full(point.shape[:-1], math.nan, dtype=point.dtype)
        minima = torch.tensor(self.minima, dtype=point.dtype)
        return (point.unsqueeze(-2) - minima).norm(dim=-1).min(dim=-1).values


def _xy(p: Tensor) -> tuple[Tensor, Tensor]:
    return p[..., 0], p[..., 1]


def _rosenbrock(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rastrigin(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return 20 + x**2 - 10 * torch.cos(2 * math.pi * x) + y**2 - 10 * torch.cos(2 * math.pi * y)


def _himmelblau(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _beale(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _ackley(p: Tensor) -> Tensor:
    x, y = _xy(p)
    r = torch.sqrt(0.5 * (x**2 + y**2) + 1e-12)  # the kink at 0 made differentiable
    return -20 * torch.exp(-0.2 * r) - torch.exp(0.5 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y))) \
        + math.e + 20


def _styblinski_tang(p: Tensor) -> Tensor:
    return 0.5 * (p**4 - 16 * p**2 + 5 * p).sum(-1)


def _six_hump_camel(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def _booth(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def _saddle(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return x**2 - y**2


def _monkey_saddle(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return x**3 - 3 * x * y**2


def _plateau(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return torch.tanh(((x - 2) ** 2 + y**2) / 4)


def quadratic(condition: float = 10.0, angle: float = 30.0) -> TestFunction:
    """f = (l1 u^2 + l2 v^2) / 2 with (u, v) the point rotated by ``angle`` degrees, l1 = ``condition``, l2 = 1:
    its Hessian's eigenvalues are ``condition`` and 1, so gradient descent's best rate is (k-1)/(k+1)."""
    if not condition >= 1:
        raise InvalidParameter("condition", condition, "a condition number >= 1")
    theta = math.radians(angle)
    c, s = math.cos(theta), math.sin(theta)

    def fn(p: Tensor) -> Tensor:
        x, y = _xy(p)
        u, v = c * x + s * y, -s * x + c * y
        return 0.5 * (condition * u**2 + v**2)

    return TestFunction("quadratic", fn, ((-3.0, 3.0), (-3.0, 3.0)), ((0.0, 0.0),), 0.0, (2.5, 2.0),
                        f"an ill-conditioned bowl: condition number {condition:g}, rotated {angle:g} degrees")


FUNCTIONS: dict[str, TestFunction] = {f.name: f for f in [
    TestFunction("rosenbrock", _rosenbrock, ((-2.0, 2.0), (-1.0, 3.0)), ((1.0, 1.0),), 0.0, (-1.5, 2.0),
                 "a curved, narrow valley: easy to enter, slow to follow"),
    TestFunction("rastrigin", _rastrigin, ((-5.12, 5.12), (-5.12, 5.12)), ((0.0, 0.0),), 0.0, (3.3, -2.4),
                 "a bowl covered in a regular grid of local minima"),
    TestFunction("himmelblau", _himmelblau, ((-5.0, 5.0), (-5.0, 5.0)),
                 ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)), 0.0,
                 (0.0, 0.0), "four global minima: which one a start falls into depends on where it starts"),
    TestFunction("beale", _beale, ((-4.5, 4.5), (-4.5, 4.5)), ((3.0, 0.5),), 0.0, (1.0, 1.5),
                 "flat plains and steep walls: step sizes that suit one region break in another"),
    TestFunction("ackley", _ackley, ((-5.0, 5.0), (-5.0, 5.0)), ((0.0, 0.0),), 0.0, (3.0, -2.5),
                 "an almost flat outer region riddled with local minima around one deep hole"),
    TestFunction("styblinski_tang", _styblinski_tang, ((-5.0, 5.0), (-5.0, 5.0)), ((-2.903534, -2.903534),),
                 -78.33233, (4.0, 4.0), "four basins of different depths: the nearest is not the deepest"),
    TestFunction("six_hump_camel", _six_hump_camel, ((-3.0, 3.0), (-2.0, 2.0)),
                 ((0.0898, -0.7126), (-0.0898, 0.7126)), -1.0316, (-1.5, 1.5), "six local minima, two global"),
    TestFunction("booth", _booth, ((-10.0, 10.0), (-10.0, 10.0)), ((1.0, 3.0),), 0.0, (-8.0, -8.0),
                 "a plain quadratic bowl, slightly ill-conditioned"),
    TestFunction("saddle", _saddle, ((-2.0, 2.0), (-2.0, 2.0)), (), None, (1.5, 1e-3),
                 "x^2 - y^2: a saddle point at the origin, no minimum; descent must escape along y"),
    TestFunction("monkey_saddle", _monkey_saddle, ((-2.0, 2.0), (-2.0, 2.0)), (), None, (1.0, 0.1),
                 "x^3 - 3xy^2: a flat saddle with three ways down"),
    quadratic(),
    TestFunction("plateau", _plateau, ((-4.0, 4.0), (-4.0, 4.0)), ((2.0, 0.0),), 0.0, (-2.5, 1.0),
                 "a wide flat region before the valley: the gradient there is almost zero"),
]}


def get(name: str) -> TestFunction:
    """The test function called ``name`` (see :data:`FUNCTIONS`)."""
    if name not in FUNCTIONS:
        raise UnknownChoice("function", name, FUNCTIONS)
    return FUNCTIONS[name]
