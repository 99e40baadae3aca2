"""Populations: M members of one architecture trained at once, as one vectorised computation.

Members differ by initialisation seed, data order and any optimizer hyperparameter. Their parameters are stacked
along a leading ``[M]`` axis (``torch.func.stack_module_state``); the forward pass is ``vmap``-ed over members
(``functional_call`` on a template), one backward runs over the summed per-member losses (each member's
gradient depends on its own loss only), and gdlab's optimizer transforms step all members with ``[M]``-shaped
hyperparameters. A member with seed ``s`` is, to rounding, the run::

    torch.manual_seed(s); m = model_fn(); gdlab.fit(m, train, seed=s, ...)

A member whose loss or gradient stops being finite, or whose loss passes 1000x its first, is frozen (its learning
rate set to zero, its gradients to zero) and marked diverged; the others go on untouched.

Example:
    >>> import torch
    >>> X = torch.randn(64, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> pop = train(lambda: torch.nn.Linear(3, 1), (X, y), seeds=[0, 1], optimizer="sgd",
    ...             hyper={"lr": [0.1, 1e-4]}, steps=50, progress=False)
    >>> pop.train_loss[0] < pop.train_loss[1]      # the larger step size got further in 50 steps
    True
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from gdlab import optim
from gdlab.data import BatchPlan, epoch_order
from gdlab.data.source import Source
from gdlab.errors import InvalidParameter, ModelError
from gdlab.problem import LOSSES, LossFn, check_budget, check_model, match_output, resolve_device, resolve_loss
from gdlab.train import fit

__all__ = ["Population", "train", "member_hyperparams", "BLOWUP"]

BLOWUP = 1000.0
"""A member whose batch loss passes BLOWUP times its first batch loss is frozen as diverged."""

ModelFn = Callable[[], nn.Module]


@dataclass
class Population:
    """What :func:`train` returns: the trained members and their records.

    Attributes:
        seeds: each member's seed. hyper: each member's optimizer hyperparameters (plain numbers).
        params: the members' parameters and buffers, stacked: name -> ``[M, ...]`` tensor (CPU).
        train_loss: each member's mean batch loss over its last epoch (NaN when it diverged).
        val_loss, val_accuracy: on the validation data at the end (None without it; accuracy for classes).
        diverged_at: the step at which each member was frozen, or None.
        losses: ``[steps, M]`` batch losses (NaN after a member is frozen).
        epoch_train_loss, epoch_val_loss: ``[epochs, M]`` per-epoch means (val None without validation data).
        plan: the batch plan; steps: steps taken; seconds: training time; vectorized: False when the members
        were trained one by one (the notice says why).
        pruned_at: with ``halving``, the step at which each member was cut (its records are from then), or None.
    """

    seeds: list[int]
    hyper: list[dict[str, Any]]
    params: dict[str, Tensor]
    template: nn.Module
    train_loss: list[float]
    val_loss: list[float] | None
    val_accuracy: list[float] | None
    diverged_at: list[int | None]
    losses: Tensor
    epoch_train_loss: Tensor
    epoch_val_loss: Tensor | None
    plan: BatchPlan
    steps: int
    seconds: float
    task: str
    vectorized: bool = True
    notice: str | None = None
    optimizer: str = "momentum"
    pruned_at: list[int | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def member_steps(self) -> int:
        """The steps all members took together (a pruned member stops counting when it is cut)."""
        return sum(p if p is not None else self.steps for p in (self.pruned_at or [None] * len(self)))

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        diverged = sum(d is not None for d in self.diverged_at)
        how = "vectorized" if self.vectorized else "one by one"
        return (f"Population({len(self)} members, {self.steps} steps, {how}, {diverged} diverged, "
                f"{self.seconds:.2f} s)")

    @property
    def diverged(self) -> list[bool]:
        return [d is not None for d in self.diverged_at]

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary ``nn.Module`` (a copy; CPU)."""
        if not -len(self) <= i < len(self):
            raise InvalidParameter("member", i, f"an index in 0..{len(self) - 1}")
        model = copy.deepcopy(self.template)
        model.load_state_dict({k: v[i] for k, v in self.params.items()})
        return model

    def score(self) -> list[float]:
        """The number members are ranked by: validation loss where there is validation data, else train loss;
        inf for diverged members."""
        values = self.val_loss if self.val_loss is not None else self.train_loss
        return [math.inf if d is not None or not math.isfinite(v) else v for v, d in zip(values, self.diverged_at)]


def member_hyperparams(optimizer: str, members: int, hyper: Mapping[str, Any]) -> dict[str, Any]:
    """The alias's keyword arguments for ``members`` members: each value a number (shared) or one per member.

    Every member's values are checked as ``gdlab.optim.make`` checks them. In the result a value the members
    share stays a number and one that differs (and ``lr``, always) is a ``[members]`` float64 tensor.

    Example:
        >>> h = member_hyperparams("adam", 3, {"lr": [1e-3, 1e-2, 1e-1], "beta2": 0.99})
        >>> h["lr"].tolist(), h["betas"]                 # values all members share stay numbers
        ([0.001, 0.01, 0.1], (0.9, 0.99))
    """
    if optimizer not in optim.OPTIMIZERS:
        raise optim.UnknownChoice("optimizer", optimizer, optim.OPTIMIZERS)
    if "lr" not in hyper:
        raise InvalidParameter("lr", None, "a learning rate (one number, or one per member)")
    columns: dict[str, list[Any]] = {}
    for key, value in hyper.items():
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value] * members
        if len(values) != members:
            raise InvalidParameter(key, value, f"one value, or one per member ({members})")
        columns[key] = values
    per_member = []
    for i in range(members):
        row = {k: v[i] for k, v in columns.items()}
        lr = row.pop("lr")
        momentum = row.pop("momentum", None)
        per_member.append(optim.hyperparams(optimizer, lr=lr, momentum=momentum, **row))
    def column(values: list[Any], key: str) -> Any:
        # A value shared by all members stays a number (the foreach path; a zero leaves its transform out);
        # the learning rate is always per member (a diverging member is frozen by zeroing its own).
        if key != "lr" and len(set(values)) == 1:
            return values[0]
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    stacked: dict[str, Any] = {}
    for key, first in per_member[0].items():
        values = [h[key] for h in per_member]
        if isinstance(first, bool):
            if len(set(values)) > 1:
                raise InvalidParameter(key, values, "one value shared by all members")
            stacked[key] = first
        elif isinstance(first, tuple):
            stacked[key] = tuple(column([v[j] for v in values], key) for j in range(len(first)))
        else:
            stacked[key] = column(values, key)
    return stacked


def _plain(hyper: dict[str, Any], i: int) -> dict[str, Any]:
    """Member ``i``'s values as plain numbers (betas as a pair)."""
    out: dict[str, Any] = {}
    for key, value in hyper.items():
        if isinstance(value, tuple):
            out[key] = tuple(float(v[i]) if isinstance(v, Tensor) else v for v in value)
        elif isinstance(value, Tensor):
            out[key] = float(value[i])
        else:
            out[key] = value
    return out


def _fit_options(values: dict[str, Any]) -> dict[str, Any]:
    """Member values as ``fit`` keywords (betas back to beta1, beta2)."""
    out = dict(values)
    betas = out.pop("betas", None)
    if betas is not None:
        out["beta1"], out["beta2"] = betas
    return {k: v for k, v in out.items() if k in ("lr", "momentum") or k in optim.OPTIONS}


def train(
    model_fn: ModelFn,
    train: Any,
    *,
    seeds: Sequence[int],
    optimizer: str = "momentum",
    hyper: Mapping[str, Any] | None = None,
    batch_size: int | str = 32,
    epochs: int | None = None,
    steps: int | None = None,
    val: Any = None,
    loss: str | LossFn = "auto",
    device: str | torch.device = "auto",
    shared_order: bool = False,
    progress: bool = True,
    vectorize: bool | str = "auto",
    halving: Sequence[tuple[int, int]] = (),
) -> Population:
    """Train one member per entry of ``seeds`` at once.

    Args:
        model_fn: builds one member (called after ``torch.manual_seed(seed)``).
        train, val, loss, batch_size, epochs, steps, device: as for :func:`gdlab.fit`.
        seeds: one seed per member: its initialisation, its data order (unless ``shared_order``) and its
            dropout randomness.
        optimizer: a name in ``gdlab.optim.OPTIMIZERS``.
        hyper: the optimizer's hyperparameters (``lr`` required; ``momentum``, ``beta1``, ``beta2``, ``eps``,
            ``weight_decay``, ``nesterov``...), each one number or a list with one value per member.
        shared_order: every member sees the batches of ``seeds[0]``'s order.
        progress: a progress bar on stderr.
        vectorize: ``"auto"`` (vmap, or one by one with a notice where vmap cannot serve the model), True
            (vmap or an error), False (one by one).
        halving: successive halving (Jamieson & Talwalkar 2016): ``(step, keep)`` pairs; after ``step`` only the
            ``keep`` best members (lowest validation loss, else lowest mean batch loss over the last epoch's worth
            of steps) train on, and the others' records are those of that step (``pruned_at``). One-by-one
            training ignores it.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InvalidParameter("seeds", seeds, "at least one seed")
    hyper = dict(hyper or {"lr": 0.01})
    stacked = member_hyperparams(optimizer, len(seeds), hyper)
    epochs, steps = check_budget(epochs, steps, 10)
    dev = resolve_device(device)
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(model_fn().to(dev))
    if not isinstance(models[0], nn.Module):
        raise ModelError(f"model_fn returned {type(models[0]).__name__}: expected an nn.Module")
    dtype = next((p.dtype for p in models[0].parameters() if p.is_floating_point()), torch.get_default_dtype())
    source = Source(train, dev, dtype)
    val_source = Source(val, dev, dtype) if val is not None else None
    loss_fn, loss_name = resolve_loss(loss, source.task)
    plan = BatchPlan.make(len(source), batch_size)
    check_model(models[0], source, loss_name)
    if val_source is not None:
        check_model(models[0], val_source, loss_name, what="validation data")
    total = int(min(steps or math.inf, (epochs or math.inf) * plan.iterations_per_epoch))
    members = [_plain(stacked, i) for i in range(len(seeds))]

    reason = None if vectorize is False else _vmap_problem(models[0], source, loss_fn, loss_name)
    if vectorize is True and reason is not None:
        raise ModelError(f"vmap cannot train this model as a population: {reason}")
    if vectorize is False or reason is not None:
        if reason is not None:
            print(f"note: training the {len(seeds)} members one by one: vmap cannot serve this model ({reason})",
                  file=sys.stderr)
        return _one_by_one(model_fn, train, val, seeds, optimizer, members, batch_size, epochs, steps, loss, dev,
                           progress, plan, source.task, reason, shared_order)
    for at, keep in halving:
        if isinstance(at, bool) or not isinstance(at, int) or at < 1 or isinstance(keep, bool) or \
                not isinstance(keep, int) or keep < 1:
            raise InvalidParameter("halving", list(halving), "(step, keep) pairs of positive integers")
    return _vectorized(models, source, val_source, seeds, optimizer, stacked, members, loss_fn, loss_name, plan,
                       total, shared_order, progress, halving)


def _vmap_problem(model: nn.Module, source: Source, loss_fn: LossFn, loss_name: str) -> str | None:
    """Why vmap cannot train ``model`` (a probe forward and backward on two members), or None."""
    probe = [copy.deepcopy(model) for _ in range(2)]
    params, buffers = stack_module_state(probe)
    template = copy.deepcopy(model).to("meta")
    x, y = next(source.chunks(4))
    xs, ys = torch.stack([x, x]), torch.stack([y, y])  # batched as in training: data-dependent branches show
    try:
        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(match_output(functional_call(template, (p, b), (x,)), y, loss_name), y)

        vmap(one, randomness="different")(params, buffers, xs, ys).sum().backward()
    except Exception as error:  # any failure means the model needs the one-by-one path
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return text.split(". ")[0].rstrip(".")
    return None


class _View:
    """What the progress bar reads (duck-typed like LoopState)."""

    def __init__(self, plan: BatchPlan, total: int) -> None:
        self.plan, self.total_steps = plan, total
        self.step = self.epoch = self.iteration = 0
        self.last_loss = math.nan


def _take(tree: Any, keep: Tensor, m: int) -> Any:
    """``tree`` (an optimizer state, hyperparameters) with every ``[m, ...]`` tensor cut to the rows ``keep``."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, keep.to(tree.device)) if tree.dim() > 0 and tree.shape[0] == m else tree
    if isinstance(tree, dict):
        return {k: _take(v, keep, m) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        taken = [_take(v, keep, m) for v in tree]
        return type(tree)(*taken) if hasattr(tree, "_fields") else type(tree)(taken)  # a NamedTuple: by field
    return tree


def _vectorized(models: list[nn.Module], source: Source, val_source: Source | None, seeds: list[int],
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
    batched_loss = _member_losses(template, loss_fn, loss_name, shared_batch, M)
    X, Y = _in_memory(source)
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
        batched_loss = _member_losses(template, loss_fn, loss_name, shared_batch, len(rows))

    def halve(keep_count: int) -> None:
        """Successive halving: keep the ``keep_count`` best rows by validation loss (the last epoch's mean batch
        loss without validation data); record the rest as they stand."""
        m = len(rows)
        train_score = torch.stack(recent).mean(0) if recent else torch.full((m,), math.inf, dtype=torch.float64)
        val_score = acc = None
        if val_source is not None:
            val_score, acc = _evaluate(template, params, buffers, val_source, loss_fn, loss_name, m)
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
                    view.last_loss = float(finite.median()) if len(finite) else math.nan
                    bar.on_step_end(view)
                if step in milestones and milestones[step] < len(rows):
                    halve(milestones[step])
            # an epoch ends, or the budget ends mid-epoch: record the part done
            mean = epoch_sum / max(epoch_count, 1)
            epoch_train.append(full(torch.where(active, mean, torch.full_like(mean, math.nan))))
            if val_source is not None:
                epoch_val.append(full(_evaluate(template, params, buffers, val_source, loss_fn, loss_name,
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
        v_loss, v_acc = _evaluate(template, params, buffers, val_source, loss_fn, loss_name, len(rows))
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


def _member_losses(template: nn.Module, loss_fn: LossFn, loss_name: str, shared_batch: bool,
                   M: int) -> Callable[..., Tensor]:
    """``(params, buffers, x, y) -> [M]`` mean batch losses. The forward pass is vmapped; a built-in loss is then
    taken on all members' outputs at once (``reduction="none"``, one kernel instead of one per member)."""

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return match_output(functional_call(template, (p, b), (x,)), y, loss_name)

    def member_loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(forward(p, b, x, y), y)

    dims = (0, 0, None, None) if shared_batch else (0, 0, 0, 0)
    builtin = loss_name in LOSSES and loss_fn is LOSSES[loss_name]
    layers = _mlp_layers(template)
    if not builtin:
        return vmap(member_loss, in_dims=dims, randomness="different")
    outputs: Callable[..., Tensor]
    if layers is not None:
        def outputs(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = _mlp_forward(layers, p, x.expand(M, *x.shape) if shared_batch else x)
            target = y.shape if shared_batch else y.shape[1:]  # one member's targets
            if loss_name != "cross_entropy" and out.shape[1:] != target and out[0].numel() == target.numel():
                return out.reshape(M, *target)  # as _match does for one model
            return out
    else:
        outputs = vmap(forward, in_dims=dims, randomness="different")

    def losses(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = outputs(p, b, x, y)  # [M, batch, ...]
        target = y.expand(M, *y.shape) if shared_batch else y
        each = loss_fn(out.flatten(0, 1), target.flatten(0, 1), reduction="none")  # type: ignore[call-arg]
        return each.reshape(M, -1).mean(1)

    return losses


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
                nn.Dropout)


def _mlp_layers(template: nn.Module) -> list[tuple[str, Any]] | None:
    """For an ``nn.Sequential`` of Flatten, Linear and elementwise activations (gdlab's ``mlp``, ``linear`` and
    ``logistic``), its layers as ``("linear", name) | ("flatten", None) | ("apply", module)``; else None.

    Such a model runs as batched matrix products over members (``baddbmm``), about 1.5x faster on a CPU than the
    vmapped ``functional_call``, computing the same function (tests compare the two)."""
    if type(template) is not nn.Sequential:
        return None
    layers: list[tuple[str, Any]] = []
    for name, module in template.named_children():
        if type(module) is nn.Linear:
            layers.append(("linear", name))
        elif type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            layers.append(("flatten", None))
        elif type(module) in _ELEMENTWISE:
            layers.append(("apply", module))
        else:
            return None
    return layers


def _mlp_forward(layers: list[tuple[str, Any]], p: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x`` ``[M, batch, ...]`` through every member's layers: ``[M, batch, outputs]``."""
    for kind, what in layers:
        if kind == "flatten":
            x = x.flatten(2)
        elif kind == "apply":
            x = what(x)  # elementwise (dropout draws per element, so per member)
        else:
            weight, bias = p[f"{what}.weight"], p.get(f"{what}.bias")
            x = torch.bmm(x, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
                bias.unsqueeze(1), x, weight.transpose(1, 2))
    return x


def _in_memory(source: Source) -> tuple[Tensor, Tensor]:
    """The training data as two tensors on the device (a Dataset is read once, in order)."""
    if source.tensors is not None:
        return source.tensors.X, source.tensors.y
    xs, ys = zip(*source.chunks(4096))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def _evaluate(template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], source: Source,
              loss_fn: LossFn, loss_name: str, M: int, chunk: int = 4096) -> tuple[Tensor, Tensor | None]:
    """Each member's mean loss (and accuracy for classes) on ``source``, in eval mode: ``[M]`` float64 each."""
    template.eval()
    classify = source.task == "classification" and loss_name == "cross_entropy"

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(template, (p, b), (x,))
        correct = (out.argmax(-1) == y).sum() if classify else torch.zeros((), device=x.device)
        return loss_fn(match_output(out, y, loss_name), y), correct

    total = torch.zeros(M, dtype=torch.float64)
    correct = torch.zeros(M, dtype=torch.float64)
    count = 0
    for x, y in source.chunks(chunk):
        losses, right = vmap(one, in_dims=(0, 0, None, None))(params, buffers, x, y)
        total += losses.double().cpu() * len(y)
        correct += right.double().cpu()
        count += len(y)
    template.train()
    return total / max(count, 1), (correct / max(count, 1) if classify else None)


def _one_by_one(model_fn: ModelFn, train_data: Any, val: Any, seeds: list[int], optimizer: str,
                members: list[dict[str, Any]], batch_size: Any, epochs: int | None, steps: int | None,
                loss: Any, dev: torch.device, progress: bool, plan: BatchPlan, task: str, reason: str | None,
                shared_order: bool) -> Population:
    """The fallback: each member by ``gdlab.fit``, assembled into the same record."""
    started = time.perf_counter()
    results = []
    for s, values in zip(seeds, members):
        torch.manual_seed(s)
        model = model_fn()
        results.append(fit(model, train_data, optimizer=optimizer, batch_size=batch_size, epochs=epochs,
                           steps=steps, val=val, loss=loss, seed=seeds[0] if shared_order else s, device=dev,
                           progress=progress, **_fit_options(values)))
    M = len(seeds)
    longest = max(len(r.history.steps) for r in results)
    losses = torch.full((longest, M), math.nan, dtype=torch.float64)
    n_epochs = max(len(r.history.epochs) for r in results)
    ep_train = torch.full((n_epochs, M), math.nan, dtype=torch.float64)
    ep_val = torch.full((n_epochs, M), math.nan, dtype=torch.float64) if val is not None else None
    diverged_at: list[int | None] = []
    for i, r in enumerate(results):
        col = torch.tensor(r.history.steps["loss"], dtype=torch.float64)
        losses[: len(col), i] = col
        ep_train[: len(r.history.epochs), i] = torch.tensor(r.history.epochs["train_loss"], dtype=torch.float64)
        if ep_val is not None and "val_loss" in r.history.epochs:
            ep_val[: len(r.history.epochs), i] = torch.tensor(r.history.epochs["val_loss"], dtype=torch.float64)
        diverged = (r.stop_reason or "").startswith("diverged")
        diverged_at.append(r.steps if diverged else None)
        if diverged:
            losses[r.steps - 1 :, i] = math.nan
    state_dicts = [r.model.cpu().state_dict() for r in results]
    params = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    torch.manual_seed(seeds[0])
    template = model_fn().cpu()

    def final(key: str) -> list[float] | None:
        values = [r.final.get(key) for r in results]
        if all(v is None for v in values):
            return None
        return [math.nan if v is None or d is not None else float(v) for v, d in zip(values, diverged_at)]

    train_loss = final("train_loss") or [math.nan] * M
    return Population(
        seeds=seeds, hyper=members, params=params, template=template, train_loss=train_loss,
        val_loss=final("val_loss"), val_accuracy=final("val_accuracy"), diverged_at=diverged_at, losses=losses,
        epoch_train_loss=ep_train, epoch_val_loss=ep_val, plan=plan, steps=max(r.steps for r in results),
        seconds=time.perf_counter() - started, task=task, vectorized=False, notice=reason, optimizer=optimizer,
    )
