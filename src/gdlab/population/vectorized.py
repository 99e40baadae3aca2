"""The vectorised engine: the members' parameters stacked along a leading ``[m]`` axis, trained in one loop.

Each step reads as the lecture's: a batch for each member, the forward pass and each member's loss, one gradient
of their sum, the checks (a diverging member is frozen), the update, and the record. Three objects carry what
the loop needs: :class:`Setup` (fixed for the run: template, data, plan, loss), :class:`Live` (the rows still
training: parameters, optimizer state, hyperparameters, masks; successive halving cuts them together) and
:class:`Records` (every member's record by its index in ``seeds``, final for a member once it is cut).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from gdlab import optim
from gdlab.data import BatchPlan, epoch_order, structure
from gdlab.data.source import Source
from gdlab.optim.transforms import Transform
from gdlab.population.forward import evaluate, in_memory, member_losses, trainable
from gdlab.population.members import BLOWUP, HALVING_WINDOW, Population, halving_score
from gdlab.problem import LossFn
from gdlab.threads import ThreadChooser

__all__ = ["Live", "Records", "Setup", "train_vectorized"]


def train_vectorized(models: list[nn.Module], source: Source, val_source: Source | None, seeds: list[int],
                     optimizer: str, stacked: dict[str, Any], members: list[dict[str, Any]], loss_fn: LossFn,
                     loss_name: str, plan: BatchPlan, total: int, shared_order: bool, progress: bool,
                     halving: Sequence[tuple[int, int]] = (), cut: Cut | None = None,
                     chooser: ThreadChooser | None = None) -> Population:
    """Train ``models`` (one per seed, on the device) as one population for ``total`` steps.

    ``stacked`` is :func:`~gdlab.population.member_hyperparams`' result and ``members`` the same values per
    member; ``halving`` holds checked ``(step, keep)`` pairs. The arguments are otherwise those of
    :func:`gdlab.population.train`, resolved. ``cut``, when these members are a rank's share of a population
    spread over ranks: called at every cut of ``halving`` with the rows' scores, their members and how many to keep
    in all, it returns the positions of the rows kept (the ranks rank every member together); a rank left with no
    row goes on through the steps, recording NaN, to take part in the later cuts. ``chooser`` (``threads="auto"``)
    times the first steps and sets the thread count, and measures again after each cut (fewer rows: less work).
    """
    setup = Setup.make(models[0], source, val_source, seeds, optimizer, loss_fn, loss_name, plan, shared_order)
    live = Live.stack(models, setup, stacked)
    records = Records.start(live)
    cuts = dict(halving)  # step -> how many rows train on after it
    view = _View(plan, total)
    bar = None
    if progress:
        from gdlab.progress import ProgressBar  # an edge: imported only when a bar is asked for

        bar = ProgressBar()
        bar.on_fit_start(view)
    torch.manual_seed(seeds[0])  # dropout draws per member from this generator
    setup.template.train()
    started = time.perf_counter()
    step = epoch = 0
    try:
        while step < total:
            if live.rows:
                live.order = setup.epoch_order(live.rows, epoch)  # [samples], or [m, samples] per member
            for it in range(min(plan.iterations_per_epoch, total - step)):
                if not live.rows:  # every member of this rank's share was cut: only the later cuts to join
                    step += 1
                    records.losses.append(records.full([], torch.zeros(0)))
                    if step in cuts and cut is not None:
                        live = _halve(setup, live, records, cuts[step], step, cut)
                    continue
                if chooser is not None:
                    chooser.before_step()
                # 1. a batch for each member: [m, batch, ...], or [batch, ...] shared by all
                xb, yb = setup.batch(live.order, it)
                # 2. forward: each row's mean batch loss, [m]
                losses = live.losses(live.params, live.buffers, xb, yb)
                # 3. gradient: one [m, ...] per parameter, row i's from its own loss only
                grads = _gradients(losses, live.plist)
                # 4. checks: [m] float64 losses and gradient sums, the step's one host sync; diverged rows frozen
                batch_loss, grad_sum = _to_host(losses, grads)
                step += 1
                if step == 1:
                    live.first_loss = batch_loss.abs().clamp(min=1e-12)
                for k in live.freeze_diverged(batch_loss, grad_sum):
                    records.diverged_at[live.rows[k]] = step
                # 5. update: every row through the transform chain's own step
                live.update(grads)
                # 6. record: [m] losses, NaN for frozen rows; halving cuts rows after its step
                shown = records.step(live, batch_loss)
                live.tally(batch_loss, shown, len(yb if setup.shared_batch else yb[0]), plan.iterations_per_epoch)
                if chooser is not None:
                    chooser.after_step()
                view.show(bar, step, it + 1, epoch, shown)
                if cuts.get(step, len(live.rows)) < len(live.rows) or (cut is not None and step in cuts):
                    live = _halve(setup, live, records, cuts[step], step, cut)
                    if chooser is not None:
                        chooser.restart()
            # an epoch ends, or the budget ends mid-epoch: record the part done
            _end_epoch(setup, live, records)
            epoch += 1
            view.epoch, view.iteration = epoch, 0
    finally:
        if bar is not None:
            bar.on_fit_end(view)
    seconds = time.perf_counter() - started
    return _finish(setup, live, records, members, copy.deepcopy(models[0]).cpu(), step, seconds)


Cut = Callable[[Tensor, list[int], int], list[int]]
"""Successive halving over ranks: ``(scores [m], members of the rows, how many to keep in all) -> positions kept``."""


@dataclass
class Setup:
    """What stays fixed through the run: the template, the data, the batch plan, the loss and the optimizer."""

    template: nn.Module  # on the meta device: the structure functional_call fills with each member's tensors
    X: Any  # [samples, ...] on the device: a tensor, or a structure of them (several inputs, dicts)
    Y: Tensor  # [samples, ...] on the device
    val_source: Source | None
    seeds: list[int]
    optimizer: str
    loss_fn: LossFn
    loss_name: str
    plan: BatchPlan
    shared_batch: bool  # one [batch, ...] for all members (full batch, or shared_order)
    task: str
    target_key: str | None = None  # the target's name in dict samples (a model computing its own loss takes it)

    @classmethod
    def make(cls, model: nn.Module, source: Source, val_source: Source | None, seeds: list[int], optimizer: str,
             loss_fn: LossFn, loss_name: str, plan: BatchPlan, shared_order: bool) -> Setup:
        """The setup for members shaped like ``model`` (one of them) trained on ``source``."""
        X, Y = in_memory(source)
        return cls(copy.deepcopy(model).to("meta"), X, Y, val_source, seeds, optimizer, loss_fn, loss_name, plan,
                   plan.mode == "full" or shared_order, source.task, source.target_key)

    def losses(self, m: int) -> Callable[..., Tensor]:
        """``(params, buffers, x, y) -> [m]`` mean batch losses of ``m`` rows."""
        return member_losses(self.template, self.loss_fn, self.loss_name, self.shared_batch, m, self.target_key)

    def transform(self, hyper: dict[str, Any], lr: Tensor) -> Transform:
        """The optimizer's alias with the rows' hyperparameters and their (zeroable) ``[m]`` learning rates."""
        return optim.OPTIMIZERS[self.optimizer].alias(**{**hyper, "lr": lr})

    def epoch_order(self, rows: list[int], epoch: int) -> Tensor:
        """This epoch's sample order: ``[samples]`` shared, else ``[m, samples]``, each member's as ``fit`` draws it."""
        if self.shared_batch:
            return epoch_order(self.plan, self.seeds[0], epoch).to(self.Y.device)
        return torch.stack([epoch_order(self.plan, self.seeds[i], epoch) for i in rows]).to(self.Y.device)

    def batch(self, order: Tensor, it: int) -> tuple[Any, Tensor]:
        """Batch ``it`` of the epoch: ``[batch, ...]`` shared, else ``[m, batch, ...]`` (one gather for all)."""
        lo, hi = it * self.plan.batch_size, (it + 1) * self.plan.batch_size
        if self.shared_batch:
            index = order[lo:hi]
            return structure.take(self.X, index), self.Y.index_select(0, index)
        index = order[:, lo:hi]  # [m, batch]
        m, size = index.shape
        flat = index.reshape(-1)

        def gather(t: Tensor) -> Tensor:
            return t.index_select(0, flat).reshape(m, size, *t.shape[1:])

        return structure.tree_map(gather, self.X), gather(self.Y)

    def evaluate(self, live: Live) -> tuple[Tensor, dict[str, Tensor]]:
        """The rows' validation loss and metrics by name (:mod:`gdlab.metrics`): ``[m]`` float64 each (needs
        ``val_source``)."""
        assert self.val_source is not None
        return evaluate(self.template, live.params, live.buffers, self.val_source, self.loss_fn, self.loss_name,
                        len(live.rows))


@dataclass
class Live:
    """The members still training, one row each: what a step reads and updates. Halving cuts it as a whole."""

    rows: list[int]  # each row's member: its index in seeds
    params: dict[str, Tensor]  # name -> [m, ...], requiring grad
    buffers: dict[str, Tensor]  # name -> [m, ...]
    hyper: dict[str, Any]  # the alias's keywords: numbers shared by all, or [m] tensors on the device
    lr: Tensor  # [m] on the device: the transform reads it every step, so a frozen row's is zeroed in place
    transform: Transform
    opt_state: Any
    losses: Callable[..., Tensor]  # (params, buffers, x, y) -> [m] mean batch losses
    active: Tensor  # [m] bool, on the CPU beside the losses it is checked against: not frozen
    first_loss: Tensor  # [m] float64: each row's first batch loss (NaN before the first step)
    epoch_sum: Tensor  # [m] float64: this epoch's batch losses times their samples
    epoch_count: int = 0  # samples behind epoch_sum
    recent: list[Tensor] = field(default_factory=list)  # the last epoch's worth of [m] shown losses
    order: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # this epoch's sample order
    plist: list[Tensor] = field(init=False)  # params' values, in order: what the gradient is taken against
    detached: list[Tensor] = field(init=False)  # the same tensors without autograd: what the optimizer steps
    inactive: Tensor = field(init=False)  # [m] bool on the device: ~active, to mask gradients

    def __post_init__(self) -> None:
        self.plist = list(self.params.values())
        self.detached = [p.detach() for p in self.plist]
        self.inactive = (~self.active).to(self.lr.device)

    @classmethod
    def stack(cls, models: list[nn.Module], setup: Setup, stacked: dict[str, Any]) -> Live:
        """All members as rows: parameters and buffers stacked, hyperparameters on the device, a fresh state."""
        M = len(models)
        params, buffers = trainable(*stack_module_state(models))  # name -> [M, ...]; frozen ones among buffers
        first = next(iter(params.values()))
        hyper = {k: _to_device(v, first.device, first.dtype) for k, v in stacked.items()}
        lr = hyper["lr"].clone()  # [M]: zeroed for frozen members, leaving hyper["lr"] as given
        transform = setup.transform(hyper, lr)
        with torch.no_grad():
            opt_state = transform.init([p.detach() for p in params.values()])
        return cls(list(range(M)), params, buffers, hyper, lr, transform, opt_state, setup.losses(M),
                   active=torch.ones(M, dtype=torch.bool),
                   first_loss=torch.full((M,), math.nan, dtype=torch.float64),
                   epoch_sum=torch.zeros(M, dtype=torch.float64))

    def freeze_diverged(self, batch_loss: Tensor, grad_sum: Tensor) -> list[int]:
        """The checks: freeze the active rows whose loss or gradient is not finite, or whose loss passed
        ``BLOWUP`` times its first (learning rate zeroed); their positions."""
        bad = self.active & ~(torch.isfinite(batch_loss) & torch.isfinite(grad_sum)
                              & (batch_loss <= BLOWUP * self.first_loss))  # [m]
        if not bool(bad.any()):
            return []
        self.active &= ~bad
        self.inactive = (~self.active).to(self.lr.device)
        self.lr.mul_(self.active.to(self.lr.device, self.lr.dtype))
        return bad.nonzero().flatten().tolist()

    @torch.no_grad()
    def update(self, grads: list[Tensor]) -> None:
        """The optimizer step of every row, a frozen row's gradient zeroed first (its learning rate is zero too)."""
        if not bool(self.active.all()):
            for g in grads:
                g.masked_fill_(self.inactive.reshape(-1, *([1] * (g.dim() - 1))), 0.0)
        assert self.transform.step is not None
        stepped = self.transform.step(self.detached, grads, self.opt_state)
        assert stepped is not None  # member values: the chain's own step, which always serves
        self.opt_state = stepped

    def tally(self, batch_loss: Tensor, shown: Tensor, samples: int, window: int) -> None:
        """Add a step's ``[m]`` losses to the epoch's sums and to the last ``window`` steps (the halving score)."""
        self.recent = [*self.recent[-(window - 1):], shown] if window > 1 else [shown]
        self.epoch_sum += torch.nan_to_num(batch_loss, nan=0.0) * samples
        self.epoch_count += samples

    def keep(self, positions: list[int], setup: Setup) -> Live:
        """The rows at ``positions`` alone: every ``[m, ...]`` tensor (state included) cut to them."""
        m = len(self.rows)
        index = torch.tensor(positions, dtype=torch.long)
        on_device = index.to(self.lr.device)
        with torch.no_grad():
            params = {n: p.detach().index_select(0, on_device).requires_grad_() for n, p in self.params.items()}
            buffers = {n: b.index_select(0, on_device) for n, b in self.buffers.items()}
        hyper, lr = _take(self.hyper, index, m), _take(self.lr, index, m)
        order = self.order if setup.shared_batch else self.order.index_select(0, on_device)
        return Live([self.rows[k] for k in positions], params, buffers, hyper, lr, setup.transform(hyper, lr),
                    _take(self.opt_state, index, m), setup.losses(len(positions)), active=self.active[index],
                    first_loss=self.first_loss[index], epoch_sum=self.epoch_sum[index],
                    epoch_count=self.epoch_count, recent=[r[index] for r in self.recent], order=order)


@dataclass
class Records:
    """Every member's record, by its index in ``seeds``; a member's entries are final once it is cut."""

    state: dict[str, Tensor]  # name -> [M, ...]: parameters and buffers
    train_loss: list[float]
    val_loss: list[float]
    val_metrics: dict[str, list[float]]  # name -> per member (only the metrics the outputs gave)
    diverged_at: list[int | None]
    pruned_at: list[int | None]
    losses: list[Tensor] = field(default_factory=list)  # per step: [M] float64, NaN where frozen or cut
    epoch_train: list[Tensor] = field(default_factory=list)  # per epoch: [M] float64
    epoch_val: list[Tensor] = field(default_factory=list)  # per epoch: [M] float64

    @classmethod
    def start(cls, live: Live) -> Records:
        """Empty records for the rows of ``live`` (all members)."""
        M = len(live.rows)
        state = {k: v.detach().clone() for k, v in {**live.params, **live.buffers}.items()}
        return cls(state, [math.nan] * M, [math.nan] * M, {}, [None] * M, [None] * M)

    def full(self, rows: list[int], values: Tensor) -> Tensor:
        """``[m]`` values of ``rows`` as ``[M]`` float64 on the CPU, NaN for the members cut."""
        out = torch.full((len(self.train_loss),), math.nan, dtype=torch.float64)
        out[rows] = values.double().cpu()
        return out

    def step(self, live: Live, batch_loss: Tensor) -> Tensor:
        """Record a step's ``[m]`` batch losses, NaN for frozen rows; what was recorded."""
        shown = torch.where(live.active, batch_loss, torch.full_like(batch_loss, math.nan))
        self.losses.append(self.full(live.rows, shown))
        return shown

    def settle(self, live: Live, k: int, train: float, val: float | None, metrics: dict[str, Tensor]) -> None:
        """Row ``k``'s member's final record: its tensors as they stand, the losses given and its row of the
        validation ``metrics`` (``[m]`` each)."""
        i = live.rows[k]
        self.train_loss[i] = train
        if val is not None:
            self.val_loss[i] = val
        for name, values in metrics.items():
            self.val_metrics.setdefault(name, [math.nan] * len(self.train_loss))[i] = float(values[k])
        for n, t in {**live.params, **live.buffers}.items():
            self.state[n][i] = t[k].detach()


def _gradients(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Each parameter's ``[m, ...]`` gradient of the summed ``[m]`` losses (row i's from its own loss only)."""
    # autograd.grad, not backward: no copy of each gradient into .grad
    found = torch.autograd.grad(losses.sum(), params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(found, params)]


@torch.no_grad()
def _to_host(losses: Tensor, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The ``[m]`` losses and gradient sums as float64 on the CPU, in one copy."""
    # a row's gradient sum is non-finite exactly when one of its entries is (or overflows)
    g_sum = torch.stack([g.sum(tuple(range(1, g.dim()))) if g.dim() > 1 else g for g in grads]).sum(0)  # [m]
    record = torch.stack([losses.detach().to(torch.float64), g_sum.to(torch.float64)]).cpu()  # [2, m]
    return record[0], record[1]


def _halve(setup: Setup, live: Live, records: Records, keep_count: int, step: int, cut: Cut | None = None) -> Live:
    """Successive halving: the ``keep_count`` best rows by validation loss (:func:`halving_score`: the median of the
    one at the cut and those of the last epochs; the last epoch's worth of batch losses without validation data)
    train on; the others are recorded as they stand. With ``cut``, the best of every rank's rows together (ties to
    the member first in order, as in one process)."""
    m = len(live.rows)
    train_score = torch.stack(live.recent).mean(0) if live.recent else torch.full((m,), math.inf,
                                                                                  dtype=torch.float64)  # [m]
    val_score: Tensor | None = None
    metrics: dict[str, Tensor] = {}
    if setup.val_source is not None and m:
        val_score, metrics = setup.evaluate(live)
    if val_score is not None:  # ranked by the level of the recent evaluations, not by the one at the cut alone
        earlier = [epoch[live.rows] for epoch in records.epoch_val[-(HALVING_WINDOW - 1):]]
        score = halving_score(torch.stack([*earlier, val_score.double().cpu()]))
    else:
        score = train_score.clone()
    score[~live.active | ~torch.isfinite(score)] = math.inf
    ranked = sorted(range(m), key=lambda k: float(score[k]))
    if cut is not None:  # over ranks: the rows kept are those among every rank's best
        kept = set(cut(score, live.rows, keep_count))
        ranked = [k for k in ranked if k in kept] + [k for k in ranked if k not in kept]
        keep_count = len(kept)
    for k in ranked[keep_count:]:
        records.pruned_at[live.rows[k]] = step
        records.settle(live, k, float(train_score[k]), None if val_score is None else float(val_score[k]), metrics)
    return live.keep(sorted(ranked[:keep_count]), setup)


def _end_epoch(setup: Setup, live: Live, records: Records) -> None:
    """Record the epoch's mean batch loss (NaN for frozen rows) and validation loss; start the next epoch's sums."""
    mean = live.epoch_sum / max(live.epoch_count, 1)  # [m]
    shown = torch.where(live.active, mean, torch.full_like(mean, math.nan))
    records.epoch_train.append(records.full(live.rows, shown))
    if setup.val_source is not None:
        records.epoch_val.append(records.full(live.rows, setup.evaluate(live)[0] if live.rows else torch.zeros(0)))
    live.epoch_sum.zero_()
    live.epoch_count = 0


def _finish(setup: Setup, live: Live, records: Records, members: list[dict[str, Any]], template: nn.Module,
            steps: int, seconds: float) -> Population:
    """Settle the rows still training (last epoch's loss, validation at the end) and assemble the Population."""
    last = records.epoch_train[-1]
    val_loss: Tensor | None = None
    metrics: dict[str, Tensor] = {}
    if setup.val_source is not None and live.rows:
        val_loss, metrics = setup.evaluate(live)
    for k, i in enumerate(live.rows):
        records.settle(live, k, float(last[i]), None if val_loss is None else float(val_loss[k]), metrics)
    diverged = records.diverged_at

    def unless_diverged(values: list[float]) -> list[float]:
        return [math.nan if d is not None else v for v, d in zip(values, diverged)]

    val_metrics = {k: unless_diverged(v) for k, v in records.val_metrics.items()}
    M = len(records.train_loss)
    return Population(
        seeds=setup.seeds, hyper=members, params={k: v.cpu() for k, v in records.state.items()}, template=template,
        train_loss=unless_diverged(records.train_loss),
        val_loss=unless_diverged(records.val_loss) if setup.val_source is not None else None,
        val_accuracy=val_metrics.get("accuracy"), val_metrics=val_metrics,
        diverged_at=diverged, losses=torch.stack(records.losses) if records.losses else torch.zeros(0, M),
        epoch_train_loss=torch.stack(records.epoch_train),
        epoch_val_loss=torch.stack(records.epoch_val) if records.epoch_val else None,
        plan=setup.plan, steps=steps, seconds=seconds, task=setup.task, optimizer=setup.optimizer,
        pruned_at=records.pruned_at,
    )


class _View:
    """What the progress bar reads (duck-typed like LoopState)."""

    def __init__(self, plan: BatchPlan, total: int) -> None:
        self.plan, self.total_steps = plan, total
        self.step = self.epoch = self.iteration = 0
        self.last_loss = math.nan

    def show(self, bar: Any, step: int, iteration: int, epoch: int, shown: Tensor) -> None:
        """Move to ``step``; a bar shows the median of the ``[m]`` finite losses."""
        self.step, self.iteration, self.epoch = step, iteration, epoch
        if bar is not None:
            finite = shown[torch.isfinite(shown)]
            self.last_loss = float(finite.median()) if len(finite) else math.nan
            bar.on_step_end(self)


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A hyperparameter's tensors (pairs too) on ``device`` in ``dtype``; numbers as they are."""
    if isinstance(value, tuple):
        return tuple(_to_device(v, device, dtype) for v in value)
    return value.to(device, dtype) if isinstance(value, Tensor) else value


def _take(tree: Any, keep: Tensor, m: int) -> Any:
    """``tree`` (an optimizer state, hyperparameters) with every ``[m, ...]`` tensor cut to the rows ``keep``.

    Dicts, lists, tuples and named tuples are rebuilt as their own type; anything else is kept as it is.
    """
    if isinstance(tree, Tensor):
        return tree.index_select(0, keep.to(tree.device)) if tree.dim() > 0 and tree.shape[0] == m else tree
    if isinstance(tree, dict):
        return {k: _take(v, keep, m) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple: its fields are positional
        return type(tree)(*(_take(v, keep, m) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(v, keep, m) for v in tree)
    return tree
