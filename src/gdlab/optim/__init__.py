"""Optimizers (lecture, points 6 to 8): gdlab's gradient transforms, by name or composed.

:func:`make` turns a name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``,
``lion``), a :class:`~gdlab.optim.transforms.Transform`, a factory ``params -> Optimizer`` or a ready
``torch.optim.Optimizer`` into an optimizer for ``fit``. Named ones are gdlab's transform chains (see
``aliases``; each is importable from here, as ``gdlab.optim.adam``) behind the ``torch.optim.Optimizer`` adapter,
with their hyperparameters in ``param_groups``. Each name has one record in :data:`OPTIMIZERS` (see
``registry``), made beside its alias.

Example:
    >>> import torch
    >>> opt = make("momentum", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]
    ('Optimizer', 0.1, 0.9)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from gdlab.errors import InvalidParameter, UnknownChoice, check_number
from gdlab.optim.adapter import Optimizer, inject
from gdlab.optim.aliases import adagrad, adam, adamw, lion, momentum, nesterov, rmsprop, sgd
from gdlab.optim.registry import LR_RANGES, OPTIMIZERS, OptimizerInfo, register
from gdlab.optim.transforms import Transform, chain, clip_by_global_norm

__all__ = [
    "LR_RANGES",
    "OPTIMIZERS",
    "OPTIONS",
    "Optimizer",
    "OptimizerInfo",
    "OptimizerSpec",
    "adagrad",
    "adam",
    "adamw",
    "check_lr",
    "check_momentum",
    "hyperparams",
    "lion",
    "make",
    "momentum",
    "nesterov",
    "register",
    "rmsprop",
    "sgd",
]

OptimizerSpec = (str | Transform | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
                 | torch.optim.Optimizer)


OPTIONS = ("beta1", "beta2", "eps", "weight_decay", "nesterov", "clip_norm")
"""Optimizer options that ``make`` (and ``fit``, and the CLI) take besides lr and momentum."""


def check_lr(lr: Any, param: str = "lr") -> float:
    """The learning rate as a float, or a clear error unless it is finite and > 0."""
    return check_number(lr, param, above=0, expected="a finite number > 0, e.g. 0.01")


def check_momentum(momentum: Any, param: str = "momentum") -> float | None:
    """The momentum as a float in [0, 1), or None."""
    if momentum is None:
        return None
    return check_number(momentum, param, least=0, below=1, expected="a number in [0, 1), e.g. 0.9")


def make(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], *, lr: float,
         momentum: float | None = None, **options: Any) -> torch.optim.Optimizer:
    """Build the optimizer for ``params``.

    Args:
        spec: a name in ``OPTIMIZERS``, a Transform, a factory ``params -> Optimizer``, or an Optimizer
            (returned as is).
        lr: learning rate of a named optimizer. momentum: its momentum (None keeps the alias's default).
        **options: ``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``nesterov`` (where the optimizer has
            them) and ``clip_norm`` (clip the gradient's global norm first); None means the default.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if isinstance(spec, Transform):
        return Optimizer(params, spec)
    if callable(spec):
        made = spec(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise InvalidParameter("optimizer", spec, f"a factory returning a torch.optim.Optimizer, "
                                   f"got {type(made).__name__}")
        return made
    if spec not in OPTIMIZERS:
        raise UnknownChoice("optimizer", spec, OPTIMIZERS, ", a Transform, a factory or a torch.optim.Optimizer")
    info = OPTIMIZERS[spec]
    hyper = hyperparams(spec, lr=lr, momentum=momentum, **options)
    clip = options.get("clip_norm")
    if clip is None:
        return Optimizer(params, inject(info.alias, **hyper))
    check_number(clip, "clip_norm", above=0, expected="a number > 0")
    return Optimizer(params, inject(lambda **h: chain(clip_by_global_norm(clip), info.alias(**h)), **hyper))


def hyperparams(name: str, /, *, lr: float, momentum: float | None = None, **options: Any) -> dict[str, Any]:
    """The keyword arguments of optimizer ``name``'s alias from lr, momentum and ``make``'s options, checked.

    Args:
        name: a name in ``OPTIMIZERS``. lr, momentum, **options: as :func:`make` takes them (``clip_norm`` is
            left to the caller; None means the default).

    Returns:
        Every keyword of the alias, its default where not given (``beta1``/``beta2`` become ``betas``).

    Example:
        >>> hyperparams("adam", lr=0.01, beta2=0.99)
        {'lr': 0.01, 'betas': (0.9, 0.99), 'eps': 1e-08, 'weight_decay': 0.0, 'amsgrad': False}
    """
    if name not in OPTIMIZERS:
        raise UnknownChoice("optimizer", name, OPTIMIZERS)
    info = OPTIMIZERS[name]
    accepted = info.defaults
    hyper: dict[str, Any] = {**accepted, "lr": check_lr(lr)}  # every hyperparameter shows in param_groups
    momentum = check_momentum(momentum)
    given = {**{k: v for k, v in options.items() if v is not None},
             **({"momentum": momentum} if momentum is not None else {})}
    for key, value in given.items():
        if key == "clip_norm":
            continue
        target = "betas" if key in ("beta1", "beta2") else key
        if key not in OPTIONS and key != "momentum":
            raise InvalidParameter("optimizer option", key, f"one of momentum, {', '.join(OPTIONS)}")
        if target not in accepted:
            takes = ", ".join(n for n, i in OPTIMIZERS.items() if target in i.defaults)
            raise InvalidParameter(key, value, f"no {key} with optimizer {name!r} (it applies to {takes})")
        if key in ("beta1", "beta2"):
            betas = list(hyper["betas"])
            betas[key == "beta2"] = value
            hyper["betas"] = tuple(betas)
        else:
            hyper[key] = value
    info.alias(**hyper)  # build once now: bad values fail here, before anything runs
    return hyper
