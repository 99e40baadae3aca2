"""The familiar optimizers, each a chain of transforms, with torch.optim's argument names and defaults.

Every hyperparameter may be a float, a schedule or a ``[members]`` tensor (see :mod:`gdlab.optim.transforms`).
The transform an alias returns records how it was made (``.source``: the alias and every keyword's value), so
:class:`~gdlab.optim.adapter.Optimizer` shows the hyperparameters in ``param_groups`` and makes the chain again
with each group's values. Each alias carries its record (:func:`~gdlab.optim.registry.register`: its update in one
line, the learning rates ``lr="auto"`` searches, a summary), which makes it a named optimizer of ``make``, ``fit``
and the CLI.

Example:
    >>> import torch
    >>> p = [torch.zeros(2, dtype=torch.float64)]
    >>> opt = adam(0.1)
    >>> state = opt.init(p)
    >>> updates, state = opt.update([torch.tensor([1.0, -3.0], dtype=torch.float64)], state, p)
    >>> [round(u, 6) for u in updates[0].tolist()]  # Adam's first step is lr * sign(g)
    [-0.1, 0.1]
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

from gdlab.errors import InvalidParameter
from gdlab.optim import fused
from gdlab.optim.registry import register
from gdlab.optim.transforms import (
    AdamState,
    ChainState,
    CountState,
    Hyper,
    Source,
    TraceState,
    Transform,
    add_decayed_weights,
    add_l2,
    chain,
    find,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    trace,
)

__all__ = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lion"]


def _zero(h: Hyper) -> bool:
    """Whether a hyperparameter is the plain number 0 (so its transform can be left out of the chain)."""
    return not isinstance(h, torch.Tensor) and not callable(h) and h == 0


def _chain(*parts: Transform | None) -> Transform:
    return chain(*[p for p in parts if p is not None])


A = TypeVar("A", bound=Callable[..., Transform])


def _recorded(alias: A) -> A:
    """The alias, its transforms recording their :class:`~gdlab.optim.transforms.Source`: this alias and every
    keyword's value (defaults included)."""
    signature = inspect.signature(alias)

    @functools.wraps(alias)
    def made(*args: Any, **kwargs: Any) -> Transform:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return alias(*args, **kwargs)._replace(source=Source(made, dict(bound.arguments)))

    return cast(A, made)


@register(equation="theta -= lr * g", lr_range=(1e-4, 10.0),
          summary="Gradient descent, as torch.optim.SGD.")
@_recorded
def sgd(lr: Hyper, momentum: Hyper = 0.0, dampening: Hyper = 0.0, nesterov: bool = False,
        weight_decay: Hyper = 0.0) -> Transform:
    """Stochastic gradient descent, as torch.optim.SGD: g += weight_decay * theta; heavy-ball momentum with
    dampening (or Nesterov's); theta -= lr * u.

    SGD without momentum is heavy-ball momentum with decay 0, so one transform serves both."""
    if nesterov and (_zero(momentum) or not _zero(dampening)):
        raise InvalidParameter("nesterov", True, "a momentum > 0 and zero dampening")
    plain = _chain(
        None if _zero(weight_decay) else add_l2(weight_decay),
        None if _zero(momentum) else trace(momentum, dampening=dampening, nesterov=nesterov),
        scale_by_learning_rate(lr),
    )

    def step(params: Any, grads: Any, state: ChainState) -> ChainState | None:
        count = find(state, CountState).count  # every count in a chain moves together
        h = fused.numbers(count, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        buffers = [] if _zero(momentum) else find(state, TraceState).buf
        if h is None or not fused.call("_fused_sgd_", params, grads, buffers, nesterov=nesterov, maximize=False,
                                       is_first_step=count == 0, **h):
            return plain.step(params, grads, state) if plain.step else None
        return fused.advance(state)

    return plain._replace(step=step)


@register(equation="v = momentum * v + g; theta -= lr * v", lr_range=(1e-4, 3.0),
          summary="SGD with heavy-ball momentum.")
@_recorded
def momentum(lr: Hyper, momentum: Hyper = 0.9, dampening: Hyper = 0.0, nesterov: bool = False,
             weight_decay: Hyper = 0.0) -> Transform:
    """SGD with heavy-ball momentum 0.9 by default."""
    return sgd(lr, momentum, dampening, nesterov, weight_decay)


@register(equation="v = momentum * v + g; theta -= lr * (g + momentum * v)", lr_range=(1e-4, 3.0),
          summary="SGD with Nesterov momentum.")
@_recorded
def nesterov(lr: Hyper, momentum: Hyper = 0.9, dampening: Hyper = 0.0, weight_decay: Hyper = 0.0) -> Transform:
    """SGD with Nesterov momentum 0.9 by default."""
    return sgd(lr, momentum, dampening, True, weight_decay)


@register(equation="s += g^2; theta -= lr * g / (sqrt(s) + eps)", lr_range=(1e-4, 3.0),
          summary="Steps shrink as squared gradients add up.")
@_recorded
def adagrad(lr: Hyper = 0.01, lr_decay: float = 0.0, weight_decay: Hyper = 0.0,
            initial_accumulator_value: float = 0.0, eps: Hyper = 1e-10) -> Transform:
    """AdaGrad, as torch.optim.Adagrad: the step size is lr / (1 + t * lr_decay) at step t (from 0)."""
    if lr_decay < 0:
        raise InvalidParameter("lr_decay", lr_decay, "a number >= 0")
    rate: Hyper = lr if lr_decay == 0 else (lambda t: _scalar(lr, t) / (1 + t * lr_decay))
    return _chain(
        None if _zero(weight_decay) else add_l2(weight_decay),
        scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        scale_by_learning_rate(rate),
    )


def _scalar(h: Hyper, t: int) -> Any:
    return h(t) if callable(h) and not isinstance(h, torch.Tensor) else h


@register(equation="s = alpha * s + (1 - alpha) * g^2; theta -= lr * g / (sqrt(s) + eps)",
          lr_range=(1e-5, 1.0), summary="Steps scaled by a moving average of g^2.")
@_recorded
def rmsprop(lr: Hyper = 0.01, alpha: Hyper = 0.99, eps: Hyper = 1e-8, weight_decay: Hyper = 0.0,
            momentum: Hyper = 0.0, centered: bool = False) -> Transform:
    """RMSProp, as torch.optim.RMSprop: momentum, when given, accumulates the scaled gradient."""
    return _chain(
        None if _zero(weight_decay) else add_l2(weight_decay),
        scale_by_rms(alpha=alpha, eps=eps, centered=centered),
        None if _zero(momentum) else trace(momentum),
        scale_by_learning_rate(lr),
    )


@register(equation="m, v = EMAs of g, g^2 (bias-corrected); theta -= lr * m / (sqrt(v) + eps)",
          lr_range=(1e-5, 1.0), summary="Momentum with RMSProp's scaling, bias-corrected.")
@_recorded
def adam(lr: Hyper = 0.001, betas: tuple[Hyper, Hyper] = (0.9, 0.999), eps: Hyper = 1e-8,
         weight_decay: Hyper = 0.0, amsgrad: bool = False) -> Transform:
    """Adam, as torch.optim.Adam: weight_decay is L2 added to the gradient (coupled)."""
    plain = _chain(
        None if _zero(weight_decay) else add_l2(weight_decay),
        scale_by_adam(b1=betas[0], b2=betas[1], eps=eps, amsgrad=amsgrad),
        scale_by_learning_rate(lr),
    )
    return plain._replace(step=_adam_step(plain, "_fused_adam_", lr, betas, eps, weight_decay, amsgrad))


@register(equation="adam, plus theta -= lr * weight_decay * theta (decoupled)", lr_range=(1e-5, 1.0),
          summary="Adam with decoupled weight decay.")
@_recorded
def adamw(lr: Hyper = 0.001, betas: tuple[Hyper, Hyper] = (0.9, 0.999), eps: Hyper = 1e-8,
          weight_decay: Hyper = 0.01, amsgrad: bool = False) -> Transform:
    """AdamW, as torch.optim.AdamW: Adam with decoupled weight decay (also scaled by lr)."""
    plain = _chain(
        scale_by_adam(b1=betas[0], b2=betas[1], eps=eps, amsgrad=amsgrad),
        None if _zero(weight_decay) else add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )
    return plain._replace(step=_adam_step(plain, "_fused_adamw_", lr, betas, eps, weight_decay, amsgrad))


def _adam_step(plain: Transform, kernel: str, lr: Hyper, betas: tuple[Hyper, Hyper], eps: Hyper,
               weight_decay: Hyper, amsgrad: bool) -> Any:
    """Adam's (or AdamW's) whole step by torch's fused kernel, else by ``plain``'s step."""

    def step(params: Any, grads: Any, state: ChainState) -> ChainState | None:
        moments = find(state, AdamState)
        count = moments.count
        h = fused.numbers(count, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        t = torch.tensor(float(count + 1), device=params[0].device) if params else None
        if h is None or not fused.call(kernel, params, grads, moments.mu, moments.nu,
                                       moments.nu_max if amsgrad else [], [t] * len(params),
                                       amsgrad=amsgrad, maximize=False, **h):
            return plain.step(params, grads, state) if plain.step else None
        return fused.advance(state)

    return step


@register(equation="theta -= lr * (sign(b1 * m + (1 - b1) * g) + weight_decay * theta)",
          lr_range=(1e-6, 0.3), summary="The sign of a momentum (Chen et al. 2023).")
@_recorded
def lion(lr: Hyper = 1e-4, betas: tuple[Hyper, Hyper] = (0.9, 0.99), weight_decay: Hyper = 0.0) -> Transform:
    """Lion (Chen et al. 2023): theta -= lr * (sign(b1 * m + (1 - b1) * g) + weight_decay * theta)."""
    return _chain(
        scale_by_lion(b1=betas[0], b2=betas[1]),
        None if _zero(weight_decay) else add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )

