"""Curvature (:class:`Expensive`): the sharpness, the largest Hessian eigenvalue by power iteration on
Hessian-vector products, against the stability limit 2/lr (2(1+beta)/lr with heavy-ball momentum beta), and the
step size along the update direction (Cockpit's alpha)."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import torch
from torch import Tensor

from gdlab.data import structure
from gdlab.instruments.budget import Budget, Instrument
from gdlab.instruments.passes import meta_copy, sub_batch_of, untouched
from gdlab.loop import LoopState

__all__ = ["Expensive"]


def _math_attention() -> contextlib.AbstractContextManager[Any]:
    """Attention by its plain formula (fused kernels have no second derivative, which sharpness needs)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


class Expensive(Instrument):
    """Every ``every`` steps: the sharpness (largest Hessian eigenvalue, ``iterations`` of power iteration)
    against the stability limit, and Cockpit's alpha for the step just taken."""

    cost = "expensive"

    def __init__(self, every: int = 50, sub_batch: int = 128, iterations: int = 20, budget: float = 0.5) -> None:
        self.every, self.sub_batch, self.iterations, self.budget_share = every, sub_batch, iterations, budget
        self.before: dict[str, Tensor] | None = None
        self.failed: str | None = None  # why the model cannot be measured (no double backward): measured no more

    def on_step_end(self, state: LoopState) -> None:
        row: dict[str, float] = {}
        if self.before is not None and self.failed is None:
            with self.budget.measure():
                batch = sub_batch_of(state, self.sub_batch)
                if batch is not None:
                    with untouched(state.model), _math_attention():
                        try:
                            row.update(self._alpha(state, *batch))
                            row.update(self._sharpness(state, *batch))
                        except RuntimeError as error:  # an op without a second derivative: the run goes on
                            self.failed = (str(error).strip().splitlines() or [type(error).__name__])[0]
                            row = {}
                            state.history.meta["sharpness_unavailable"] = self.failed
            self.before = None
        if (state.step + 1) % self.every == 0 and self.budget.allows(state.step + 1):
            self._keep(state)
        if row:
            state.history.steps.extend_last(row)

    def on_fit_start(self, state: LoopState) -> None:
        self.meta = meta_copy(state.model)
        self.budget = Budget(self.budget_share)
        self._keep(state)  # the first step is measured too

    def _keep(self, state: LoopState) -> None:
        """The parameters before the next step: alpha needs both ends of it."""
        self.before = {k: v.detach().clone() for k, v in state.model.named_parameters()}

    def _loss_and_grad(self, state: LoopState, params: dict[str, Tensor], x: Any,
                       y: Tensor) -> tuple[float, list[Tensor]]:
        names = list(params)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        buffers = {k: v.detach() for k, v in state.model.named_buffers()}
        template = copy.deepcopy(self.meta).train(state.model.training)
        assert state.forward is not None  # measured where the loss can be evaluated (passes.sub_batch_of)
        loss, _ = state.forward(structure.functional(template, {**leaves, **buffers}), x, y)
        grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
        return float(loss.detach()), [g if g is not None else torch.zeros_like(leaves[k]) for g, k in zip(grads, names)]

    def _alpha(self, state: LoopState, x: Any, y: Tensor) -> dict[str, float]:
        assert self.before is not None
        after = {k: v.detach() for k, v in state.model.named_parameters()}
        names = [k for k in after if k in self.before]
        step = [after[k] - self.before[k] for k in names]
        l0, g0 = self._loss_and_grad(state, {k: self.before[k] for k in names}, x, y)
        l1, g1 = self._loss_and_grad(state, {k: after[k] for k in names}, x, y)
        d0 = sum(float((g * s).sum()) for g, s in zip(g0, step))
        d1 = sum(float((g * s).sum()) for g, s in zip(g1, step))
        # q(t) = a t^2 + b t + c on the step t in [0, 1]: c = l0, b = d0; a from both the value and the slope at 1
        a = ((l1 - l0 - d0) + (d1 - d0) / 2) / 2
        if not (a > 0 and d0 < 0):
            return {"alpha": math.nan}
        t_min = -d0 / (2 * a)
        return {"alpha": 1 / t_min - 1}

    def _sharpness(self, state: LoopState, x: Any, y: Tensor) -> dict[str, float]:
        params = [p for p in state.model.parameters() if p.requires_grad]
        assert state.forward is not None
        loss, _ = state.forward(state.model, x, y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        generator = torch.Generator().manual_seed(state.step)
        v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
        norm = math.sqrt(sum(float(t.square().sum()) for t in v))
        v = [t / norm for t in v]
        eigen = math.nan
        for i in range(self.iterations):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=i < self.iterations - 1)
            eigen = sum(float((a * b).sum()) for a, b in zip(hv, v))
            norm = math.sqrt(sum(float(t.square().sum()) for t in hv))
            if norm == 0 or not math.isfinite(norm):
                break
            v = [t.detach() / norm for t in hv]
        group = state.optimizer.param_groups[0]
        lr = float(group.get("lr", math.nan))
        beta = float(group.get("momentum", 0.0) or 0.0)
        return {"sharpness": eigen, "stability_limit": 2 * (1 + beta) / lr if lr > 0 else math.inf}
