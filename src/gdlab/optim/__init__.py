"""Optimizers by name (lecture, points 6 to 8).

Until gdlab's own gradient transforms land, the names map to ``torch.optim``. :func:`make` takes a name, a
factory ``params -> Optimizer`` or a ready ``torch.optim.Optimizer`` and checks the learning rate and momentum.

Example:
    >>> import torch
    >>> opt = make("momentum", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    >>> type(opt).__name__, opt.param_groups[0]["momentum"]
    ('SGD', 0.9)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from gdlab.errors import InvalidParameter, UnknownChoice

__all__ = ["OPTIMIZERS", "OptimizerInfo", "OptimizerSpec", "make", "check_lr", "check_momentum"]

OptimizerSpec = str | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer


@dataclass(frozen=True)
class OptimizerInfo:
    """A named optimizer: how to build it, its defaults and its update in one line."""

    name: str
    build: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any]
    equation: str
    momentum: float | None  # the default momentum where momentum applies, None where it does not


def _sgd(params: Any, lr: float, momentum: float | None, default: float, nesterov: bool = False) -> Any:
    return torch.optim.SGD(params, lr=lr, momentum=default if momentum is None else momentum, nesterov=nesterov)


OPTIMIZERS: dict[str, OptimizerInfo] = {
    info.name: info
    for info in [
        OptimizerInfo("sgd", lambda p, lr, m: _sgd(p, lr, m, 0.0), {"momentum": 0.0},
                      "theta -= lr * g", 0.0),
        OptimizerInfo("momentum", lambda p, lr, m: _sgd(p, lr, m, 0.9), {"momentum": 0.9},
                      "v = momentum * v + g; theta -= lr * v", 0.9),
        OptimizerInfo("nesterov", lambda p, lr, m: _sgd(p, lr, m, 0.9, nesterov=True), {"momentum": 0.9},
                      "v = momentum * v + g; theta -= lr * (g + momentum * v)", 0.9),
        OptimizerInfo("adagrad", lambda p, lr, m: torch.optim.Adagrad(p, lr=lr), {"eps": 1e-10},
                      "s += g^2; theta -= lr * g / (sqrt(s) + eps)", None),
        OptimizerInfo("rmsprop", lambda p, lr, m: torch.optim.RMSprop(p, lr=lr, momentum=m or 0.0),
                      {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0},
                      "s = alpha * s + (1 - alpha) * g^2; theta -= lr * g / (sqrt(s) + eps)", 0.0),
        OptimizerInfo("adam", lambda p, lr, m: torch.optim.Adam(p, lr=lr), {"betas": (0.9, 0.999), "eps": 1e-8},
                      "m, v = EMAs of g, g^2 (bias-corrected); theta -= lr * m / (sqrt(v) + eps)", None),
        OptimizerInfo("adamw", lambda p, lr, m: torch.optim.AdamW(p, lr=lr),
                      {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
                      "adam, plus theta -= lr * weight_decay * theta (decoupled)", None),
    ]
}


def check_lr(lr: Any, param: str = "lr") -> float:
    """The learning rate as a float, or a clear error unless it is finite and > 0."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InvalidParameter(param, lr, "a finite number > 0, e.g. 0.01")
    return float(lr)


def check_momentum(momentum: Any, param: str = "momentum") -> float | None:
    """The momentum as a float in [0, 1), or None."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise InvalidParameter(param, momentum, "a number in [0, 1), e.g. 0.9")
    return float(momentum)


def make(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], *, lr: float,
         momentum: float | None = None) -> torch.optim.Optimizer:
    """Build the optimizer for ``params``.

    Args:
        spec: a name in ``OPTIMIZERS``, a factory ``params -> Optimizer``, or an Optimizer (returned as is).
        lr: learning rate for a named optimizer.
        momentum: momentum for ``sgd``, ``momentum``, ``nesterov`` and ``rmsprop``; None keeps the default.
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec):
        made = spec(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise InvalidParameter("optimizer", spec, f"a factory returning a torch.optim.Optimizer, "
                                   f"got {type(made).__name__}")
        return made
    if spec not in OPTIMIZERS:
        raise UnknownChoice("optimizer", spec, OPTIMIZERS, ", a factory or a torch.optim.Optimizer")
    info = OPTIMIZERS[spec]
    momentum = check_momentum(momentum)
    if momentum is not None and info.momentum is None:
        with_momentum = ", ".join(n for n, i in OPTIMIZERS.items() if i.momentum is not None)
        raise InvalidParameter("momentum", momentum, f"no momentum with optimizer {spec!r} (it applies to "
                               f"{with_momentum})")
    return info.build(params, check_lr(lr), momentum)
