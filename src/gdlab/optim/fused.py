"""torch's fused optimizer kernels behind gdlab's aliases: one pass over memory per step.

An alias's chain (say Adam's: moments, bias correction, ``-lr``, then ``params += updates``) reads and writes every
parameter-sized buffer several times; torch's fused kernels (``torch._fused_adam_``, ``_fused_adamw_``,
``_fused_sgd_``) do the same step in one pass (faster: docs/benchmarks.md, optim_step). The aliases use them, through
:attr:`Transform.step <gdlab.optim.transforms.Transform>`, when the step allows: every hyperparameter a number at
this step (a schedule is resolved first; ``[members]`` tensors are not), all parameters of one floating dtype on
one device, and the kernel present for that device. float16 and bfloat16 are refused on the CPU: there torch's
fused SGD leaves whole 16-element blocks of a low-precision parameter unchanged (the optimizer adapter steps such
parameters in float32 and rounds back, see :mod:`gdlab.optim.adapter`). Otherwise the plain transforms do the
step; tests check that both paths agree (to rounding: the kernels order the same arithmetic differently).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from gdlab.optim.transforms import ChainState

__all__ = ["call", "numbers", "advance", "off"]

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOW = (torch.float16, torch.bfloat16)
_unsupported: set[tuple[str, str, torch.dtype]] = set()  # (kernel, device type, dtype) found to fail
_enabled = contextvars.ContextVar("gdlab_fused_kernels", default=True)


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Within this block no fused kernel runs: the transforms do every step (for comparisons and tests)."""
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)


def numbers(count: int, **hyper: Any) -> dict[str, float] | None:
    """Each hyperparameter as a float at step ``count`` (schedules called), or None if one is a tensor."""
    values: dict[str, float] = {}
    for name, h in hyper.items():
        v = h(count) if callable(h) and not isinstance(h, Tensor) else h
        if isinstance(v, Tensor):
            return None
        values[name] = float(v)
    return values


def call(name: str, params: list[Tensor] | tuple[Tensor, ...], grads: list[Tensor] | tuple[Tensor, ...],
         *state: Any, **options: Any) -> bool:
    """Run ``torch.<name>(params, grads, *state, **options)`` in place; False (nothing changed) where it cannot."""
    if not params or not _enabled.get():
        return False
    first = params[0]
    key = (name, first.device.type, first.dtype)
    kernel: Callable[..., None] | None = getattr(torch, name, None)
    if kernel is None or key in _unsupported or first.dtype not in _FLOATING:
        return False
    if first.dtype in _LOW and first.device.type == "cpu":  # the CPU kernels skip blocks of low-precision values
        return False
    if any(p.dtype != first.dtype or p.device != first.device for p in params) or any(
        g.dtype != first.dtype or g.device != first.device or g.is_sparse for g in grads
    ):
        return False
    try:
        kernel(list(params), list(grads), *state, **options)
    except (RuntimeError, NotImplementedError):  # no kernel for this device or dtype: raised before any write
        _unsupported.add(key)
        return False
    return True


def advance(state: ChainState) -> ChainState:
    """A chain's state after a fused step: every member's count moved on by one (its buffers were updated in
    place by the kernel)."""
    return ChainState(tuple(s._replace(count=s.count + 1) for s in state.inner))
