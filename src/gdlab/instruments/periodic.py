"""Periodic statistics (:class:`Periodic`): on a scheduled step's sub-batch, the gradient noise scale and SNR
(:mod:`~gdlab.instruments.persample`), dead and saturated units (:mod:`~gdlab.instruments.activations`) and the
norm of the gradient arriving at each layer's output, riding on the step's own pass where it can."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from gdlab.data import structure
from gdlab.errors import check_int
from gdlab.instruments.activations import activation_counts, activation_sums
from gdlab.instruments.budget import Budget, Instrument
from gdlab.instruments.layers import layer_name, unwrap
from gdlab.instruments.passes import group_grads, meta_copy, sub_batch_of, untouched, vmap_loops
from gdlab.instruments.persample import factorable, grouped_sums, noise_from_trace, noise_scale_and_snr, per_sample_sums
from gdlab.instruments.pooling import RankPool, rank_zero_decides
from gdlab.loop import LoopState

__all__ = ["Periodic"]

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _eager(hook: Any) -> Any:
    """A hook that torch.compile leaves out of its graphs (a model compiled with ``torch.compile`` calls its
    layers' hooks from the compiled code): run as written, on the real tensors, where dynamo would otherwise trace
    it and break the graph on the budget's clock."""
    return torch.compiler.disable(hook)


class Periodic(Instrument):
    """On the first step, the ``every``-th and then every ``interval``-th (:meth:`scheduled`; ``interval`` fixed once
    after the second measurement so that measuring costs about ``budget`` of the training time, 2%): the gradient
    noise scale and SNR, activation statistics, and the gradient arriving at each layer's output, on up to
    ``sub_batch`` samples.

    Where the step's batch has at least 16 samples, the measurement rides on the step's own forward and backward
    pass (hooks for that one step; no extra pass): activation statistics from the forward hooks, the arriving
    gradients from hooks on the layers' outputs and, when every trained parameter belongs to a ``Linear`` or
    ``Conv2d`` layer and the loss is a mean over samples (the built-in losses), the per-sample gradients' norms
    from each layer's input and output gradient (for ``Linear`` on 2-D inputs, |g_i|^2 = |x_i|^2 |delta_i|^2;
    for the rest, per-sample products). Smaller batches (stochastic descent) get one extra forward and backward,
    with the same hooks, on ``sub_batch`` drawn training samples. Otherwise (other layers, batch-mixing
    normalisation, a custom loss, tied weights, a model folding positions into the batch's rows) the per-sample
    gradients come from ``torch.func`` on the sub-batch after the step; where vmap would loop over the samples
    (a recurrent layer, :func:`~gdlab.instruments.passes.vmap_loops`) and the loss is a mean, from the mean
    gradients of ``groups`` groups of the sub-batch instead, one batched pass each (an unbiased estimate of the
    same noise from ``groups`` gradients rather than ``sub_batch``: 5 degrees of freedom against 63, about 3.5x
    the spread).
    ``noise_gradients``, written with each reading, says how many gradients its noise was estimated from. The
    step's own pass includes its dropout masks (the noise the step really had); the ``torch.func`` and group
    passes run in eval mode, so with dropout the two read somewhat apart.
    """

    cost = "periodic"
    min_batch = 16
    clock = staticmethod(time.thread_time)
    """What the schedule's timings read: the training thread's CPU time (a test gives its own)."""

    def __init__(self, every: int = 25, sub_batch: int = 64, budget: float = 0.02, groups: int = 6) -> None:
        check_int(every, "every", expected="an integer >= 1")
        check_int(sub_batch, "sub_batch", least=2)
        check_int(groups, "groups", least=2)
        self.every, self.sub_batch, self.budget_share, self.groups = every, sub_batch, budget, groups
        self.per_sample_failed: str | None = None

    def on_fit_start(self, state: LoopState) -> None:
        model = unwrap(state.model)  # layers named in the module a torch.compile or DDP wrapper holds
        self.activations = [(layer_name(model, n), m) for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
        self.layers = [(layer_name(model, n), m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
        self.params = list(state.model.parameters())
        self.trained: tuple[bool, ...] | None = None  # which parameters train, when factoring was last judged
        self.can_factor = False
        self.owners: set[str] = set()
        self.template: nn.Module | None = None  # the model's meta copy in eval mode, made when first needed
        self.looped = vmap_loops(model)  # the noise from groups of samples (where the loss is a mean), not vmap
        self.budget = Budget(self.budget_share)  # ``spent``: the time inside its hooks (benchmarks read it)
        self.interval = self.every  # steps between measurements: ``every`` until fixed by _fix_interval
        self.measured = 0  # measurements taken so far
        self.timing: tuple[float, float] = (0.0, 0.0)  # when the last measured step started and ended
        self.started = 0.0  # when the step being measured started
        self.mean_loss = bool(getattr(state, "mean_loss", False))
        self.unfactorable = False  # seen not to factor (a layer used twice, samples folded into rows): for good
        self.handles: list[Any] = []
        self.due = False
        self.pool: RankPool | None = None  # data-parallel: this step's share of the measured samples (pooled)

    # -- the schedule: which steps are measured (the one place that decides it) -------------------------------
    def scheduled(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) is measured: the first and every ``interval``-th. A function of the
        step alone (a loop may ask ahead: :func:`gdlab.watch` puts its forward hook on those steps only)."""
        return step == 1 or step % self.interval == 0

    def _timed(self, step: int, start: float) -> None:
        """After a measured step: the interval, fixed once from the second measurement (the first warms up),
        so that measuring costs about ``budget`` of the training time: the measured step's whole extra time
        (the hooks, torch's dispatch of them, the reads) against the mean step between the two measurements,
        both by the training thread's CPU time (``time.thread_time``: another process's turn on the core, which
        swung the wall-clock timings tenfold on a loaded machine, counts in neither). Fixed, the schedule
        depends on the step alone, so identical runs measure the same steps (bar a different interval where the
        two timings straddle a power of two)."""
        end = self.clock()
        self.measured += 1
        if self.measured == 2 and self.budget_share != math.inf and self.every >= 3:
            between = step - 2  # the steps from the first measurement to this one, neither counted
            typical = (start - self.timing[1]) / between if between > 0 else 0.0
            if typical > 0:
                self._fix_interval((end - start - typical) / (self.budget_share * typical * self.every))
        self.timing = (start, end)

    def _fix_interval(self, ratio: float) -> None:
        """``interval``: ``every`` times the power of two that covers ``ratio`` (a measurement's extra time over
        ``budget`` of ``every`` steps' time), at least ``every``."""
        self.interval = self.every * (2 ** math.ceil(math.log2(ratio)) if ratio > 1 else 1)

    # -- riding on the step ----------------------------------------------------------------------------------
    def on_step_start(self, state: LoopState) -> None:
        if self.handles:
            self.close()
        step = state.step + 1
        plan = getattr(state, "plan", None)
        ranked = plan is not None and plan.ranks > 1
        self.due = self.scheduled(step)
        if ranked and (step % self.every == 0 or step == 1):
            # RANKS AGREE ON THE SCHEDULE here: rank 0's decision (each rank fixed its interval by its own clock;
            # every scheduled step is a multiple of ``every``, so these candidates cover them all)
            self.due = rank_zero_decides(self.due)
        if not self.due:
            return
        self.started = self.clock()
        size = _batch_size(state.batch) if state.batch is not None else 0
        self.pool = RankPool.make(plan, state.iteration, self.sub_batch) if ranked else None
        if size >= self.min_batch or self.pool is not None:  # with ranks, always on the step (any slice serves)
            self._judge(state)
            self._arm(size)

    def _judge(self, state: LoopState) -> None:
        """``factored``: whether the hooks can give the per-sample gradients' norms on this pass."""
        # which layers train may change during a run (unfreezing): look again when it has
        trained = tuple(p.requires_grad for p in self.params)
        if trained != self.trained:
            self.trained = trained
            self.can_factor = factorable(state.model)
            self.owners = {n for n, m in self.layers if any(p.requires_grad for p in m.parameters(recurse=False))}
        self.factored = self.mean_loss and not self.unfactorable and self.can_factor

    def _arm(self, batch: int) -> None:
        pool = self.pool
        n = min(batch, self.sub_batch) if pool is None else pool.n
        self.seen: dict[str, tuple[Tensor, float]] = {}  # column -> (a scalar tensor, the factor it takes)
        self.calls: dict[str, int] = {}
        # layer -> (sum_i |g_i|^2, |sum_i g_i|^2) over n samples; with the whole batch (n == batch), sum_i g_i is
        # the batch gradient times n, whose norm the loop has already taken: no second sum
        self.sums: dict[str, tuple[list[Tensor], list[Tensor] | None]] = {}
        budget = self.budget

        def activation_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                start = time.perf_counter()
                if pool is None:
                    self.seen.update(activation_counts(name, module, output.detach()[:n]))
                else:
                    pool.parts.update(activation_sums(name, module, output.detach()[:n]))
                budget.spent += time.perf_counter() - start
            return hook

        def layer_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                self.calls[name] = self.calls.get(name, 0) + 1
                if not isinstance(output, Tensor) or not output.requires_grad:
                    return
                x = inputs[0].detach() if inputs and isinstance(inputs[0], Tensor) else None
                if x is None or len(x) != batch or len(output) != batch:
                    self.unfactorable = True  # rows are not samples (a model folding positions into the batch)

                def on_grad(g: Tensor) -> None:
                    start = time.perf_counter()
                    g = g.detach()
                    if pool is not None:
                        pool.grad_out(name, g[:n])
                    else:
                        self.seen[f"grad_out/{name}"] = (torch.linalg.vector_norm(g[:n]), 1 / math.sqrt(len(g[:n])))
                    if self.factored and name in self.owners and x is not None:
                        self.sums[name] = per_sample_sums(module, x[:n], g[:n], total=n < len(g)) \
                            if pool is None else per_sample_sums(module, x[:n], g[:n], total=pool.partial,
                                                                  vectors=True)
                    budget.spent += time.perf_counter() - start

                output.register_hook(on_grad)
            return hook

        self.handles = [m.register_forward_hook(_eager(activation_hook(n))) for n, m in self.activations]
        self.handles += [m.register_forward_hook(_eager(layer_hook(n))) for n, m in self.layers]

    def close(self) -> None:
        """Take the hooks off the model (after the step they rode on, or when the run fails)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def on_fit_end(self, state: LoopState) -> None:
        self.close()

    def next_scheduled(self, step: int) -> int:
        """The first step from ``step`` on that is measured (:meth:`scheduled`)."""
        return 1 if step <= 1 else step + (-step) % self.interval

    def needs_step(self, step: int) -> bool:
        """Whether ``step`` needs :meth:`on_step_end` on its own (:func:`gdlab.watch`'s lane): a measured one."""
        return self.scheduled(step)

    def next_needed(self, step: int) -> int:
        """The first step from ``step`` on that :meth:`needs_step`."""
        return self.next_scheduled(step)

    def on_steps_end(self, state: LoopState, rows: range) -> None:
        """Steps it does not measure: nothing to do."""

    def on_step_end(self, state: LoopState) -> None:
        if not self.due:
            return
        self.due = False
        try:
            self._measure(state)
        finally:
            self._timed(state.step, self.started)

    def _measure(self, state: LoopState) -> None:
        row: dict[str, float] = {}
        rode = bool(self.handles)
        if rode:
            self.close()
            assert state.batch is not None  # measured on a step with a batch
            row.update(self._collected(state, _batch_size(state.batch), state.grad_norm))
        if "noise_scale" not in row:
            batch = sub_batch_of(state, self.sub_batch) if self.pool is None else self.pool.sub_batch(state)
            if batch is not None and (len(batch[1]) >= 2 or self.pool is not None):
                with untouched(state.model):
                    if not rode:  # a small batch: nothing rode on the step
                        row.update(self._extra_pass(state, *batch))
                    if "noise_scale" not in row:
                        row.update(self._noise(state, *batch))
        if row:
            state.history.steps.extend_last(row)

    def _collected(self, state: LoopState, size: int, grad_norm: Tensor | None) -> dict[str, float]:
        """The numbers the hooks gathered during a pass over ``size`` samples whose mean loss's gradient has the
        norm ``grad_norm`` (the step's, or an extra pass's), with one host sync."""
        if any(c != 1 for c in self.calls.values()):
            self.unfactorable = True  # a layer used twice (tied weights): per-sample norms do not factor
        if self.unfactorable:
            self.factored = False
        sums = list(self.sums.values()) if self.factored and self.owners <= self.sums.keys() else []
        if self.pool is not None:  # data-parallel: one all-reduce of every rank's sums, then the statistics
            return self.pool.row(state, sums)
        eaches = [t for each, _ in sums for t in each]
        wholes = [t for _, whole in sums for t in whole or []]
        scale = size ** 2  # the per-sample gradients are the batch size times the hooks' shares
        grad_norm = grad_norm if grad_norm is not None else torch.zeros(())
        values = _scalars([*self.seen.values(), *((t, scale) for t in eaches + wholes), (grad_norm, 1.0)])
        row = dict(zip(self.seen, values))
        if sums:
            n = min(size, self.sub_batch)
            rest = values[len(self.seen):-1]
            if all(whole is not None for _, whole in sums):
                mean_sq = sum(rest[len(eaches):]) / (n * n)
            else:  # the whole batch: |mean_i g_i| is the batch gradient's norm, which the loop has taken
                mean_sq = values[-1] ** 2
            row.update(noise_scale_and_snr(sum(rest[:len(eaches)]), mean_sq, n, state.plan.batch_size))
        return row

    # -- extra passes, where the step's own cannot serve -----------------------------------------------------
    def _noise(self, state: LoopState, x: Any, y: Tensor) -> dict[str, float]:
        """B_simple and the SNR from per-sample gradients by ``torch.func`` or, where vmap would loop over the
        samples and the loss is a mean, from the mean gradients of ``groups`` groups of them (both in eval mode:
        one sample has no batch statistics)."""
        if self.per_sample_failed is not None:
            return {}
        params = {k: v.detach() for k, v in state.model.named_parameters() if v.requires_grad}
        # buffers and frozen parameters: constants of the call
        consts = {k: v.detach() for k, v in state.model.named_parameters() if not v.requires_grad}
        consts.update({k: v.detach() for k, v in state.model.named_buffers()})
        forward = state.forward
        assert forward is not None  # measured where the loss can be evaluated (passes.sub_batch_of)
        if self.template is None:  # never the user's module; functional_call puts the copy's own tensors back
            self.template = meta_copy(state.model).eval()
        template = self.template

        def model_with(p: dict[str, Tensor]) -> Any:
            return structure.functional(template, {**p, **consts})

        def one(p: dict[str, Tensor], xi: Any, yi: Tensor) -> Tensor:
            return forward(model_with(p), structure.tree_map(lambda t: t.unsqueeze(0), xi), yi.unsqueeze(0))[0]

        try:
            if self.looped and self.mean_loss and self.pool is None:
                grads, sizes = group_grads(model_with, params, forward, x, y, self.groups)
            else:
                with warnings.catch_warnings():  # an op without a batching rule (attention) is slower, not wrong
                    warnings.filterwarnings("ignore", message="There is a performance drop")
                    grads = [g.detach() for g in vmap(grad(one), in_dims=(None, 0, 0))(params, x, y).values()]
                sizes = torch.ones(len(y))
        except Exception as error:  # a model per-sample gradients cannot serve
            self.per_sample_failed = str(error).splitlines()[0] if str(error) else type(error).__name__
            return {}
        if self.pool is not None:  # data-parallel: the ranks' sums pooled
            flat = torch.cat([g.reshape(len(y), -1) for g in grads], dim=1).double()
            return self.pool.noise(flat, state.plan.batch_size)
        trace, mean_sq = grouped_sums(grads, sizes).tolist()
        return noise_from_trace(trace, mean_sq, len(sizes), state.plan.batch_size)

    def _extra_pass(self, state: LoopState, x: Any, y: Tensor) -> dict[str, float]:
        """One extra forward and backward on the drawn samples with the hooks a step rides on (:meth:`_arm`):
        activation statistics, arriving gradients and, where they factor, the per-sample gradients' norms."""
        assert state.forward is not None  # measured where the loss can be evaluated (passes.sub_batch_of)
        self._judge(state)
        self._arm(len(y))
        params = [p for p in state.model.parameters() if p.requires_grad]
        try:
            loss, _ = state.forward(state.model, x, y)
            found = torch.autograd.grad(loss, params, allow_unused=True)  # leaves .grad alone
        finally:
            self.close()
        norms = [torch.linalg.vector_norm(g) for g in found if g is not None]
        return self._collected(state, len(y), torch.linalg.vector_norm(torch.stack(norms)) if norms else None)


def _batch_size(batch: tuple[Any, Tensor | None]) -> int:
    """The samples in a step's batch: its target's, or its inputs' where it shows no target (gdlab.watch)."""
    x, y = batch
    return len(y) if y is not None else structure.count(x)


def _scalars(entries: Sequence[tuple[Tensor, float]]) -> list[float]:
    """Each scalar tensor (of any dtype) times its factor, as floats, with one host sync for all."""
    if not entries:
        return []
    values = torch.stack([t for t, _ in entries]).tolist()  # stack promotes: counts and float32 norms together
    return [v * factor for v, (_, factor) in zip(values, entries)]
