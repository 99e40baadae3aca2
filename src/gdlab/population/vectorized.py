"""The vectorised engine: all members' parameters stacked along a leading ``[m]`` axis, trained in one loop."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from gdlab import optim
from gdlab.data import BatchPlan, epoch_order
from gdlab.data.source import Source
from gdlab.population.forward import evaluate, in_memory, member_losses
from gdlab.population.members import BLOWUP, Population
from gdlab.problem import LossFn

__all__ = ["train_vectorized"]


class _View:
    """What the progress bar reads (duck-typed like LoopState)."""

    def __init__(self, plan: BatchPlan, total: int) -> None:
        self.plan, self.total_steps = plan, total
        self.step = self.epoch = self.iteration = 0
        self.loss = math.nan


def _take(tree: Any, keep: Tensor, m: int) -> Any:
    """``tree`` (an optimizer state, hyperparameters) with every ``[m, ...]`` tensor cut to the rows ``keep``."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, keep.to(tree.device)) if tree.dim() > 0 and tree.shape[0] == m else tree
    if isinstance(tree, dict):
        return {k: _take(v, keep, m) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(v, keep, m) for v in tree)
    return tree


def train_vectorized(models: list[nn.Module], source: Source, val_source: Source | None, seeds: list[int],
                optimizer: str, stacked: dict[str, Any], members: list[dict[str, Any]], loss_fn: LossFn,
                loss_name: str, plan: BatchPlan, total: int, shared_order: bool, progress: bool,
                halving: Sequence[tuple[int, int]] = ()) -> Population:
    M = len(models)
    dev = next(models[0].parameters()).device
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")
    names = list(params)
    dtype = params[names[0]].dtype

    def move(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(move(t) for t in v)
        return v.to(dev, dtype) if isinstance(v, Tensor) else v

    hyper = {k: move(v) for k, v in stacked.items()}
    lr_now = hyper["lr"].clone()  # zeroed for frozen members; the transform reads it every step
    transform = optim.OPTIMIZERS[optimizer].alias(**{**hyper, "lr": lr_now})
    plist = [params[n] for n in names]
    detached = [p.detach() for p in plist]
    with torch.no_grad():
        opt_state = transform.init(detached)
    # rows: the members still training (original indices); pruned members' records are final when cut
    rows = list(range(M))
    final_state = {k: v.detach().clone() for k, v in {**params, **buffers}.items()}
    final_train = [math.nan] * M
    final_val: list[float] = [math.nan] * M
    final_acc: list[float] = [math.nan] * M
    pruned_at: list[int | None] = [None] * M
    active = torch.ones(M, dtype=torch.bool)  # on the CPU, beside the losses it is checked against
    inactive = torch.zeros(M, dtype=torch.bool, device=dev)
    diverged_at: list[int | None] = [None] * M
    first_loss = torch.full((M,), math.nan, dtype=torch.float64)
    milestones = dict(halving)

    shared_batch = plan.mode == "full" or shared_order
    batched_loss = member_losses(template, loss_fn, loss_name, shared_batch, M)
    X, Y = in_memory(source)
    view = _View(plan, total)
    bar = None
    if progress:
        from gdlab.progress import ProgressBar

        bar = ProgressBar()
        bar.on_fit_start(view)
    step_losses: list[Tensor] = []
    epoch_train: list[Tensor] = []
    epoch_val: list[Tensor] = []
    epoch_sum = torch.zeros(M, dtype=torch.float64)
    epoch_count = 0
    recent: list[Tensor] = []  # the last epoch's worth of batch losses: the score without validation data
    order = torch.empty(0, dtype=torch.long)  # this epoch's sample order (per member: [m, samples])

    def full(values: Tensor) -> Tensor:
        out = torch.full((M,), math.nan, dtype=torch.float64)
        out[rows] = values.double().cpu()
        return out

    def keep_rows(keep: list[int]) -> None:
        """Cut the computation to the rows at positions ``keep``, recording the others as they are now."""
        nonlocal params, buffers, plist, detached, opt_state, transform, lr_now, hyper, batched_loss, active
        nonlocal inactive, first_loss, epoch_sum, order, rows, recent
        m = len(rows)
        index = torch.tensor(keep, dtype=torch.long)
        with torch.no_grad():
            params = {n: p.detach().index_select(0, index.to(dev)).requires_grad_() for n, p in params.items()}
            buffers = {n: b.index_select(0, index.to(dev)) for n, b in buffers.items()}
        plist = [params[n] for n in names]
        detached = [p.detach() for p in plist]
        opt_state = _take(opt_state, index, m)
        hyper = _take(hyper, index, m)
        lr_now = _take(lr_now, index, m)
        transform = optim.OPTIMIZERS[optimizer].alias(**{**hyper, "lr": lr_now})
        active, first_loss, epoch_sum = active[index], first_loss[index], epoch_sum[index]
        inactive = (~active).to(dev)
        recent = [r[index] for r in recent]
        if not shared_batch:
            order = order.index_select(0, index.to(dev))
        rows = [rows[k] for k in keep]
        batched_loss = member_losses(template, loss_fn, loss_name, shared_batch, len(rows))

    def halve(keep_count: int) -> None:
        """Successive halving: keep the ``keep_count`` best rows by validation loss (the last epoch's mean batch
        loss without validation data); record the rest as they stand."""
        m = len(rows)
        train_score = torch.stack(recent).mean(0) if recent else torch.full((m,), math.inf, dtype=torch.float64)
        val_score = acc = None
        if val_source is not None:
            val_score, acc = evaluate(template, params, buffers, val_source, loss_fn, loss_name, m)
        score = (val_score if val_score is not None else train_score).clone()
        score[~active | ~torch.isfinite(score)] = math.inf
        ranked = sorted(range(m), key=lambda k: float(score[k]))
        keep = sorted(ranked[:keep_count])
        for k in ranked[keep_count:]:
            i = rows[k]
            pruned_at[i] = step
            final_train[i] = float(train_score[k])
            if val_score is not None:
                final_val[i] = float(val_score[k])
            if acc is not None:
                final_acc[i] = float(acc[k])
            for n, t in {**params, **buffers}.items():
                final_state[n][i] = t[k].detach()
        keep_rows(keep)

    torch.manual_seed(seeds[0])  # dropout draws per member from this generator
    template.train()
    started = time.perf_counter()
    step = epoch = 0
    try:
        while step < total:
            if shared_batch:
                order = epoch_order(plan, seeds[0], epoch).to(dev)
            else:
                order = torch.stack([epoch_order(plan, seeds[i], epoch) for i in rows]).to(dev)  # [m, samples]
            for it in range(plan.iterations_per_epoch):
                if step >= total:
                    break
                m = len(rows)
                lo, hi = it * plan.batch_size, (it + 1) * plan.batch_size
                if shared_batch:
                    index = order[lo:hi]
                    xb, yb = X.index_select(0, index), Y.index_select(0, index)
                else:
                    index = order[:, lo:hi]
                    size = index.shape[1]
                    flat = index.reshape(-1)
                    xb = X.index_select(0, flat).reshape(m, size, *X.shape[1:])
                    yb = Y.index_select(0, flat).reshape(m, size, *Y.shape[1:])
                losses = batched_loss(params, buffers, xb, yb)
                # one backward over the summed losses: member i's gradient comes from its own loss only.
                # autograd.grad, not backward: no copy of each gradient into .grad
                found = torch.autograd.grad(losses.sum(), plist, allow_unused=True)
                grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(found, plist)]
                with torch.no_grad():
                    # a member's gradient sum is non-finite exactly when one of its entries is (or overflows)
                    g_sum = torch.stack([g.sum(tuple(range(1, g.dim()))) if g.dim() > 1 else g for g in grads]).sum(0)
                    record = torch.stack([losses.detach().to(torch.float64), g_sum.to(torch.float64)]).cpu()
                step += 1
                batch_loss, grad_sum = record[0], record[1]
                if step == 1:
                    first_loss = batch_loss.abs().clamp(min=1e-12)
                bad = active & ~(torch.isfinite(batch_loss) & torch.isfinite(grad_sum)
                                 & (batch_loss <= BLOWUP * first_loss))
                if bool(bad.any()):
                    for k in bad.nonzero().flatten().tolist():
                        diverged_at[rows[k]] = step
                    active &= ~bad
                    inactive = (~active).to(dev)
                    lr_now.mul_(active.to(dev, dtype))
                with torch.no_grad():
                    if not bool(active.all()):
                        for g in grads:
                            g.masked_fill_(inactive.reshape(-1, *([1] * (g.dim() - 1))), 0.0)
                    assert transform.step is not None
                    stepped = transform.step(detached, grads, opt_state)
                    assert stepped is not None  # member values: the chain's own step, which always serves
                    opt_state = stepped
                shown = torch.where(active, batch_loss, torch.full_like(batch_loss, math.nan))
                step_losses.append(full(shown))
                recent = [*recent[-(plan.iterations_per_epoch - 1):], shown] if plan.iterations_per_epoch > 1 \
                    else [shown]
                samples = len(yb if shared_batch else yb[0])
                epoch_sum += torch.nan_to_num(batch_loss, nan=0.0) * samples
                epoch_count += samples
                view.step, view.iteration, view.epoch = step, it + 1, epoch
                if bar is not None:
                    finite = shown[torch.isfinite(shown)]
                    view.loss = float(finite.median()) if len(finite) else math.nan
                    bar.on_step_end(view)
                if step in milestones and milestones[step] < len(rows):
                    halve(milestones[step])
            # an epoch ends, or the budget ends mid-epoch: record the part done
            mean = epoch_sum / max(epoch_count, 1)
            epoch_train.append(full(torch.where(active, mean, torch.full_like(mean, math.nan))))
            if val_source is not None:
                epoch_val.append(full(evaluate(template, params, buffers, val_source, loss_fn, loss_name,
                                                len(rows))[0]))
            epoch_sum.zero_()
            epoch_count = 0
            epoch += 1
            view.epoch, view.iteration = epoch, 0
    finally:
        if bar is not None:
            bar.on_fit_end(view)
    seconds = time.perf_counter() - started
    last = epoch_train[-1]
    for k, i in enumerate(rows):
        final_train[i] = float(last[i])
        for n, t in {**params, **buffers}.items():
            final_state[n][i] = t[k].detach()
    val_loss = val_acc = None
    if val_source is not None:
        v_loss, v_acc = evaluate(template, params, buffers, val_source, loss_fn, loss_name, len(rows))
        for k, i in enumerate(rows):
            final_val[i] = float(v_loss[k])
            if v_acc is not None:
                final_acc[i] = float(v_acc[k])
        val_loss = [math.nan if d is not None else v for v, d in zip(final_val, diverged_at)]
        classify = source.task == "classification" and loss_name == "cross_entropy"
        val_acc = [math.nan if d is not None else a for a, d in zip(final_acc, diverged_at)] if classify else None
    train_loss = [math.nan if d is not None else v for v, d in zip(final_train, diverged_at)]
    return Population(
        seeds=seeds, hyper=members, params={k: v.cpu() for k, v in final_state.items()},
        template=copy.deepcopy(models[0]).cpu(), train_loss=train_loss, val_loss=val_loss, val_accuracy=val_acc,
        diverged_at=diverged_at, losses=torch.stack(step_losses) if step_losses else torch.zeros(0, M),
        epoch_train_loss=torch.stack(epoch_train), epoch_val_loss=torch.stack(epoch_val) if epoch_val else None,
        plan=plan, steps=step, seconds=seconds, task=source.task, optimizer=optimizer, pruned_at=pruned_at,
    )
