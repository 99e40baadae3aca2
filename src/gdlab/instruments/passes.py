"""Extra passes on the model that leave no trace: the step's sub-batch (or samples drawn in its place), a storage-free
copy of the model to call functionally, buffers and random generators put back as they were, and the mean gradients
of groups of samples by plain autograd (:func:`group_grads`, where ``torch.func.vmap`` would loop over samples)."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gdlab.data import structure
from gdlab.loop import LoopState

__all__ = ["untouched", "meta_copy", "sub_batch_of", "vmap_loops", "group_grads"]


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Measure without leaving a trace: buffers (BatchNorm's running statistics) and the random number generators
    (dropout) are as they were, so a run with instruments is the run without them."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def meta_copy(model: nn.Module) -> nn.Module:
    """A storage-free copy of ``model`` (on the meta device) to run ``functional_call`` on: copying it again
    per measurement costs nothing, and the user's module is never swapped out."""
    return copy.deepcopy(model).to("meta")


def sub_batch_of(state: LoopState, size: int) -> tuple[Any, Tensor] | None:
    """Up to ``size`` samples of the step's batch; when the batch is smaller (stochastic descent), ``size``
    samples drawn from the training data instead (by the step number, so the run's randomness is untouched)."""
    batch = getattr(state, "batch", None)
    if batch is None or batch[1] is None or getattr(state, "forward", None) is None:
        return None  # no batch, or no target or loss to take on it (a loop gdlab does not drive: gdlab.watch)
    x, y = batch
    sample = getattr(state, "sample", None)
    if len(y) < min(size, 16) and sample is not None:
        return sample(min(size, state.plan.samples), state.step)
    return structure.tree_map(lambda t: t[:size], x), y[:size]


def _rows(t: Tensor, part: slice) -> Tensor:
    return t[part]


def vmap_loops(model: nn.Module) -> bool:
    """Whether ``torch.func.vmap`` runs ``model`` sample by sample: it holds a recurrent layer (``nn.RNN``, ``GRU``,
    ``LSTM``), for which torch has no batching rule (vmap falls back to a loop, and ``grad`` differentiates the
    layer by its decomposition: on an LSTM of 32 units 2.6 ms before the first sample, 0.14 ms a sample, where a
    batched pass of 8 samples takes 0.34 ms)."""
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def group_grads(model_with: Callable[[dict[str, Tensor]], Any], params: dict[str, Tensor],
                forward: Callable[[Callable[..., Any], Any, Tensor], tuple[Tensor, Any]], x: Any, y: Tensor,
                groups: int) -> tuple[list[Tensor], Tensor]:
    """The gradients of the mean loss of ``groups`` consecutive groups of the samples ``(x, y)`` (sizes differing
    by one at most), one batched forward and backward each: per parameter of ``params`` a tensor [groups, ...],
    and the groups' sizes. ``model_with(tensors)`` is the model called with ``tensors`` as its parameters."""
    n = len(y)
    m = max(1, min(groups, n))
    bounds = [round(j * n / m) for j in range(m + 1)]
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    model = model_with(leaves)
    out: list[list[Tensor]] = [[] for _ in leaves]
    for a, b in zip(bounds, bounds[1:]):
        loss, _ = forward(model, structure.tree_map(functools.partial(_rows, part=slice(a, b)), x), y[a:b])
        found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for slot, g, p in zip(out, found, leaves.values()):
            slot.append(g if g is not None else torch.zeros_like(p))
    return [torch.stack(slot) for slot in out], torch.tensor([b - a for a, b in zip(bounds, bounds[1:])])
