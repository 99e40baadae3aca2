"""The front door: :func:`train` checks and builds the members, then trains them as one vectorised computation
(:mod:`~gdlab.population.vectorized`) or, where vmap cannot serve the model, one after another through the same
loop as ``fit`` (:func:`gdlab.loop.run`, bare: no instruments), with the same successive halving."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gdlab import distributed, loop, optim
from gdlab.config import DEFAULT_EPOCHS
from gdlab.data import BatchPlan
from gdlab.errors import InvalidParameter, ModelError, check_int, check_seed
from gdlab.population.forward import vmap_problem
from gdlab.population.members import (
    HALVING_WINDOW,
    ModelFn,
    Population,
    halving_score,
    member_hyperparams,
    member_values,
)
from gdlab.population.vectorized import Cut, train_vectorized
from gdlab.problem import LossFn, Problem, check_budget, evaluate
from gdlab.resources import check_fits
from gdlab.threads import ThreadChooser, restored
from gdlab.threads import use as use_threads

__all__ = ["MAX_MEMBERS", "check_members", "train"]


MAX_MEMBERS = 10_000
"""The most members one population (a sweep, restarts) trains."""


def check_members(count: int, what: str = "members") -> int:
    """``count`` if a population may have that many members (1 to :data:`MAX_MEMBERS`), else one line."""
    if not 1 <= count <= MAX_MEMBERS:
        raise InvalidParameter(what, count, f"1 to {MAX_MEMBERS:,} members in one population (a sweep's grid of "
                               "values x seeds)")
    return count


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
    target_key: str | None = None,
    workers: int = 1,
    threads: int | str = "auto",
) -> Population:
    """Train one member per entry of ``seeds`` at once.

    Args:
        model_fn: builds one member (called after ``torch.manual_seed(seed)``).
        train, val, loss, batch_size, epochs, steps, device: as for :func:`gdlab.fit`.
        seeds: one seed per member: its initialisation, its data order (unless ``shared_order``) and, one by
            one, its dropout randomness as ``fit(seed=s)`` draws it (vectorised, the members' masks are drawn at
            once from ``seeds[0]``'s generator: statistically the same, not the same masks).
        optimizer: a name in ``gdlab.optim.OPTIMIZERS``.
        hyper: the optimizer's hyperparameters (``lr`` required; ``momentum``, ``beta1``, ``beta2``, ``eps``,
            ``weight_decay``, ``nesterov``...), each one number or a list with one value per member.
        shared_order: every member sees the batches of ``seeds[0]``'s order.
        progress: a progress bar on stderr.
        vectorize: ``"auto"`` (vmap, or one by one with a notice where vmap cannot serve the model), True
            (vmap or an error), False (one by one).
        halving: successive halving (Jamieson & Talwalkar 2016): ``(step, keep)`` pairs; after ``step`` only the
            ``keep`` best members (lowest validation loss, else lowest mean batch loss over the last epoch's worth
            of steps) train on, and the others' records are those of that step (``pruned_at``). One by one, each
            member trains to the step, the best are kept and resume where they stood (the same cuts).
        target_key: the target's key in dict samples (as for :func:`gdlab.fit`).
        workers: the ranks the members are spread over, under ``torchrun`` (the number of ranks): each rank trains
            a contiguous share of them as one population, and every rank gets the whole population back, as one
            process would have trained it (to float tolerance).
        threads: torch's CPU threads, as for :func:`gdlab.fit`: ``"auto"`` times the population's first steps at
            1 thread and at torch's count and keeps the faster (:class:`gdlab.threads.ThreadChooser`; again after
            each cut of ``halving``), or a count. torch's count is put back when training ends.
    """
    rest = dict(optimizer=optimizer, batch_size=batch_size, epochs=epochs, steps=steps, val=val, loss=loss,
                device=device, progress=progress, vectorize=vectorize, target_key=target_key, threads=threads)
    if workers != 1:
        return _over_ranks(workers, model_fn, train, seeds, hyper, halving, shared_order, rest)
    return _train(model_fn, train, seeds, hyper, halving, shared_order, **rest)


class _NotSpread(Exception):
    """Successive halving over ranks met a model vmap cannot serve: the population is trained whole instead."""


@restored  # torch's thread count is put back as it was
def _train(model_fn: ModelFn, train: Any, seeds: Sequence[int], hyper: Mapping[str, Any] | None,
           halving: Sequence[tuple[int, int]], shared_order: bool, *, optimizer: str, batch_size: int | str,
           epochs: int | None, steps: int | None, val: Any, loss: str | LossFn, device: str | torch.device,
           progress: bool, vectorize: bool | str, target_key: str | None, threads: int | str = "auto",
           cut: Cut | None = None) -> Population:
    """:func:`train` in this process (``cut``: this is a rank's share, cut together with the others')."""
    check_members(len(seeds))
    seeds = [check_seed(s, "seeds") for s in seeds]
    if not seeds:
        raise InvalidParameter("seeds", seeds, "at least one seed")
    hyper = dict(hyper or {"lr": 0.01})
    stacked = member_hyperparams(optimizer, len(seeds), hyper)
    epochs, steps = check_budget(epochs, steps, DEFAULT_EPOCHS)
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(model_fn())
        if not isinstance(models[-1], nn.Module):
            raise ModelError(f"model_fn returned {type(models[-1]).__name__}: expected an nn.Module")
        if len(models) == 1:  # every member alike: their weights, gradients and optimizer states must fit
            size = sum(p.numel() * p.element_size() for p in models[0].parameters())
            check_fits(f"a population of {len(seeds):,} members", 4 * size * len(seeds), hint="fewer members")
    problem = Problem.make(models[0], train, val=val, loss=loss, batch_size=batch_size, device=device,
                           target_key=target_key)
    dev, source, val_source, plan = problem.device, problem.source, problem.val, problem.plan
    loss_fn, loss_name = problem.loss_fn, problem.loss_name
    models = [m.to(dev) for m in models]
    chooser = use_threads(threads, device=dev)
    total = problem.total_steps(epochs, steps)
    members = [member_values(stacked, i) for i in range(len(seeds))]

    for at, keep in halving:
        for value in (at, keep):
            check_int(value, "halving", expected="(step, keep) pairs of positive integers")
    reason = None if vectorize is False else vmap_problem(models[0], source, loss_fn, loss_name)
    if vectorize is True and reason is not None:
        raise ModelError(f"vmap cannot train this model as a population: {reason}")
    if vectorize is False or reason is not None:
        if cut is not None and halving:
            raise _NotSpread(reason or "vectorize=False")
        if reason is not None:
            print(f"note: training the {len(seeds)} members one by one: vmap cannot serve this model ({reason})",
                  file=sys.stderr)
        trained = _one_by_one(model_fn, models, train, val, seeds, optimizer, members, batch_size, loss, dev, total,
                              progress, plan, source.task, reason, shared_order, halving, source.target_key, chooser)
    else:
        trained = train_vectorized(models, source, val_source, seeds, optimizer, stacked, members, loss_fn,
                                   loss_name, plan, total, shared_order, progress, halving, cut, chooser)
    if chooser is not None:  # what threads="auto" kept (after the last cut) and why
        trained.extra["threads"] = chooser.describe()
    return trained


def _over_ranks(workers: int, model_fn: ModelFn, train_data: Any, seeds: Sequence[int],
                hyper: Mapping[str, Any] | None, halving: Sequence[tuple[int, int]], shared_order: bool,
                rest: dict[str, Any]) -> Population:
    """``workers`` ranks each train their share of the members; the shares are gathered on every rank."""
    check_int(workers, "workers")
    ranks = distributed.setup()
    world = ranks.world if ranks is not None else 1
    if workers != world:
        raise InvalidParameter("workers", workers, f"the number of ranks this runs on ({world})", f"launch with "
                               f"torchrun --nproc-per-node {workers} (gdlab sweep --nproc {workers})")
    assert ranks is not None
    check_members(len(seeds))
    if len(seeds) < world:
        raise InvalidParameter("workers", workers, f"at most {len(seeds)}, the members to spread (one or more each)")
    if shared_order and len(set(seeds)) > 1:
        raise InvalidParameter("shared_order", True, "one seed for every member with workers (each rank's share "
                               "would follow its own first seed's order)")
    bounds = [len(seeds) * r // world for r in range(world + 1)]
    low, high = bounds[ranks.rank], bounds[ranks.rank + 1]
    share = {k: list(v)[low:high] if isinstance(v, (list, tuple)) and len(v) == len(seeds) else v
             for k, v in (hyper or {"lr": 0.01}).items()}
    rest["progress"] = rest["progress"] and ranks.main

    def cut(scores: torch.Tensor, rows: list[int], keep: int) -> list[int]:
        """A cut of successive halving over the ranks: every rank's scores gathered, the ``keep`` best members of
        all kept (ties to the member first in order, as in one process); the positions of this rank's kept."""
        mine = [(float(score), low + row) for score, row in zip(scores.tolist(), rows)]
        everyone: list[Any] = [None] * world
        torch.distributed.all_gather_object(everyone, mine)
        best = {member for _, member in sorted(entry for part in everyone for entry in part)[:keep]}
        return [k for k, row in enumerate(rows) if low + row in best]

    try:
        mine = _train(model_fn, train_data, list(seeds)[low:high], share, halving, shared_order, cut=cut, **rest)
    except _NotSpread as why:  # successive halving one member at a time: every rank trains the whole population
        if ranks.main:
            print(f"note: the members are not spread over the ranks: successive halving needs vmap ({why})",
                  file=sys.stderr)
        return _train(model_fn, train_data, seeds, hyper, halving, shared_order, **rest)
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    return _joined(parts)


def _joined(parts: list[Population]) -> Population:
    """The populations of the ranks' shares as one, members in order."""
    first = parts[0]

    def cat(values: list[Any], dim: int = 0) -> Any:
        return None if any(v is None for v in values) else torch.cat(values, dim)

    def listed(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else [x for v in values for x in v]

    return Population(
        seeds=listed([p.seeds for p in parts]), hyper=listed([p.hyper for p in parts]),
        params={k: torch.cat([p.params[k] for p in parts]) for k in first.params}, template=first.template,
        train_loss=listed([p.train_loss for p in parts]), val_loss=listed([p.val_loss for p in parts]),
        val_accuracy=listed([p.val_accuracy for p in parts]), diverged_at=listed([p.diverged_at for p in parts]),
        losses=cat([p.losses for p in parts], 1), epoch_train_loss=cat([p.epoch_train_loss for p in parts], 1),
        epoch_val_loss=cat([p.epoch_val_loss for p in parts], 1), plan=first.plan, steps=first.steps,
        seconds=max(p.seconds for p in parts), task=first.task, vectorized=all(p.vectorized for p in parts),
        notice=next((p.notice for p in parts if p.notice), None), optimizer=first.optimizer,
        pruned_at=listed([p.pruned_at or [None] * len(p) for p in parts]),
        val_metrics={k: listed([p.val_metrics.get(k) for p in parts]) for k in first.val_metrics},
        extra=first.extra)


def _one_by_one(model_fn: ModelFn, models: list[nn.Module], train_data: Any, val: Any, seeds: list[int],
                optimizer: str, members: list[dict[str, Any]], batch_size: Any, loss: Any, dev: torch.device,
                total: int, progress: bool, plan: BatchPlan, task: str, reason: str | None, shared_order: bool,
                halving: Sequence[tuple[int, int]], target_key: str | None = None,
                chooser: ThreadChooser | None = None) -> Population:
    """The fallback: each member trained alone by the loop ``fit`` runs (as ``fit(seed=s, instruments="none",
    doctor=False)`` would), assembled into the same record; ``chooser`` (``threads="auto"``) times the first
    members' first steps, as it would one run's (every member's step is the same work).

    With ``halving`` the budget is cut into segments at its steps: every member still in trains to the next
    cut, one after another (its model, optimizer, loop state and random stream kept), the ``keep`` best go on
    and the others are recorded as they stood, as the vectorised engine cuts its rows.
    """
    started = time.perf_counter()
    M = len(seeds)
    runs = [_Member.start(model, train_data, val, optimizer, values, batch_size, loss, dev, total,
                          seeds[0] if shared_order else s, target_key)
            for model, s, values in zip(models, seeds, members)]
    cuts = sorted((at, keep) for at, keep in dict(halving).items() if at < total)
    tally = _Tally(_planned(M, cuts, total), M) if progress else None
    # dispatched by the loop's one dispatcher; the chooser first, so that it times the step and not the bar
    hooks = loop.Hooks([h for h in (chooser, tally) if h is not None])
    live = list(range(M))
    pruned_at: list[int | None] = [None] * M
    finals: list[dict[str, float | None] | None] = [None] * M
    try:
        for at, keep in [*cuts, (total, M)]:
            for i in live:
                if tally is not None:
                    tally.member = i
                runs[i].train_to(at, hooks)
            if keep >= len(live):
                continue
            window = plan.iterations_per_epoch
            standing = {i: runs[i].standing(window) for i in live}
            ranked = sorted(live, key=lambda i: standing[i].score)  # stable: ties keep the members' order
            for i in ranked[keep:]:
                pruned_at[i] = at
                finals[i] = standing[i].final
            live = sorted(ranked[:keep])
    finally:
        if tally is not None:
            tally.close()
    for i in live:
        finals[i] = loop.final_metrics(runs[i].state, loop.val_metrics(runs[i].problem))
    return _assemble(model_fn, runs, finals, pruned_at, seeds, members, val is not None, plan, task, reason,
                     optimizer, time.perf_counter() - started)


def _assemble(model_fn: ModelFn, runs: list[_Member], finals: list[dict[str, float | None] | None],
              pruned_at: list[int | None], seeds: list[int], members: list[dict[str, Any]], with_val: bool,
              plan: BatchPlan, task: str, reason: str | None, optimizer: str, seconds: float) -> Population:
    """The members' runs as one record: ``[steps, M]`` losses and ``[epochs, M]`` means, NaN where a member had
    stopped; ``finals`` are their records at the end (or at the cut)."""
    M = len(runs)
    states = [r.state for r in runs]
    longest = max(len(s.history.steps) for s in states)
    losses = torch.full((longest, M), math.nan, dtype=torch.float64)
    n_epochs = max(len(s.history.epochs) for s in states)
    ep_train = torch.full((n_epochs, M), math.nan, dtype=torch.float64)
    ep_val = torch.full((n_epochs, M), math.nan, dtype=torch.float64) if with_val else None
    diverged_at: list[int | None] = []
    for i, s in enumerate(states):
        col = torch.tensor(s.history.steps["loss"], dtype=torch.float64)
        losses[: len(col), i] = col
        ep_train[: len(s.history.epochs), i] = torch.tensor(s.history.epochs["train_loss"], dtype=torch.float64)
        if ep_val is not None and "val_loss" in s.history.epochs:
            ep_val[: len(s.history.epochs), i] = torch.tensor(s.history.epochs["val_loss"], dtype=torch.float64)
        diverged = runs[i].diverged
        diverged_at.append(s.step if diverged else None)
        if diverged:
            losses[s.step - 1 :, i] = math.nan
    state_dicts = [s.model.cpu().state_dict() for s in states]
    params = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    torch.manual_seed(seeds[0])
    template = model_fn().cpu()

    def final(key: str) -> list[float] | None:
        values = [(f or {}).get(key) for f in finals]
        if all(v is None for v in values):
            return None
        return [math.nan if v is None or d is not None else float(v) for v, d in zip(values, diverged_at)]

    train_loss = final("train_loss") or [math.nan] * M
    metrics = {key[4:]: values for key in sorted({k for f in finals for k in (f or {}) if k.startswith("val_")})
               if key != "val_loss" and (values := final(key)) is not None}
    return Population(
        seeds=seeds, hyper=members, params=params, template=template, train_loss=train_loss,
        val_loss=final("val_loss"), val_accuracy=final("val_accuracy"), diverged_at=diverged_at, losses=losses,
        epoch_train_loss=ep_train, epoch_val_loss=ep_val, plan=plan, steps=max(s.step for s in states),
        seconds=seconds, task=task, vectorized=False, notice=reason, optimizer=optimizer,
        pruned_at=pruned_at, val_metrics=metrics,
    )


class _Standing(NamedTuple):
    """A member at a cut: the number it is ranked by (inf once diverged) and its record if it is cut there."""

    score: float
    final: dict[str, float | None]


@dataclass
class _Member:
    """One member of the fallback, trained by the loop in segments: its problem (its model on the data), its loop
    state (optimizer, position, history) and its random stream (dropout) between segments."""

    problem: Problem
    state: loop.LoopState
    rng: tuple[Tensor, Tensor | None]
    measured: dict[str, float] = field(default_factory=dict)  # the loop's validation at the segment's end

    @classmethod
    def start(cls, model: nn.Module, train: Any, val: Any, optimizer: str, values: dict[str, Any],
              batch_size: Any, loss: Any, dev: torch.device, total: int, seed: int,
              target_key: str | None = None) -> _Member:
        """Step 0 of ``model`` trained as ``fit(model, train, seed=seed, ...)`` would train it."""
        problem = Problem.make(model, train, val=val, loss=loss, batch_size=batch_size, device=dev,
                               target_key=target_key)
        options = _fit_options(values)
        lr, momentum = options.pop("lr"), options.pop("momentum", None)
        opt = optim.make(optimizer, model.parameters(), lr=lr, momentum=momentum, **options)
        state = loop.LoopState.start(problem, opt, total_steps=total, seed=seed)
        torch.manual_seed(seed)  # parameter-free randomness (dropout) follows the seed, as in fit
        return cls(problem, state, _rng_state(problem.device))

    @property
    def diverged(self) -> bool:
        return (self.state.stop_reason or "").startswith("diverged")

    def train_to(self, step: int, hooks: loop.Hooks) -> None:
        """Train on to ``step`` (a bare loop: no instruments, no gradient norms); a stopped member stays."""
        state = self.state
        if state.stop_reason is not None or state.step >= step:
            return
        _set_rng(self.problem.device, self.rng)
        total, state.total_steps = state.total_steps, step
        try:
            loop.run(self.problem, state, hooks, grad_norms=False)
        finally:
            state.total_steps = total
            self.rng = _rng_state(self.problem.device)
        if state.interrupted:  # the loop finished its step on Ctrl-C: the population stops, as a vectorised one
            raise KeyboardInterrupt
        epochs = state.history.epochs
        self.measured = {}
        if len(epochs) and epochs.last("step") == state.step:  # the loop measured the validation data here
            self.measured = {k: epochs.last(k) for k in ("val_loss", "val_accuracy") if k in epochs}
        if state.iteration and step < total and not self.diverged:
            # the loop records a budget that ends mid-epoch as an epoch; the member goes on with this epoch, so
            # the record is dropped (its sums are kept), and the epoch is recorded whole at its end
            epochs.truncate(len(epochs) - 1)

    def standing(self, window: int) -> _Standing:
        """Where the member stands at a cut, as the vectorised engine ranks its rows: the validation loss
        (:func:`~gdlab.population.members.halving_score` over it and those of the epochs before), else the mean
        batch loss over the last ``window`` steps; inf once diverged."""
        state, problem = self.state, self.problem
        steps = state.history.steps["loss"][-window:]
        train = sum(steps) / len(steps) if steps else math.nan
        final: dict[str, float | None] = {"train_loss": train, "val_loss": None}
        if problem.val is not None:
            if "val_loss" not in self.measured:
                measured = evaluate(state.model, problem.val, problem.loss_fn, problem.loss_name)
                self.measured = {f"val_{k}": v for k, v in measured.items()}
            final["val_loss"] = self.measured["val_loss"]
            if problem.task == "classification":
                final["val_accuracy"] = self.measured.get("val_accuracy")
        score = final["val_loss"] if problem.val is not None else train
        if score is not None and problem.val is not None:  # the epochs before the cut (not one measured at it)
            epochs = state.history.epochs
            earlier = [v for v, s in zip(epochs["val_loss"], epochs["step"]) if s < state.step] \
                if "val_loss" in epochs else []
            score = float(halving_score(torch.tensor([*earlier[-(HALVING_WINDOW - 1):], score],
                                                     dtype=torch.float64)[:, None])[0])
        if self.diverged or score is None or not math.isfinite(score):
            return _Standing(math.inf, final)
        return _Standing(score, final)


class _Tally(loop.Callback):
    """The fallback's progress: one bar over the member steps planned (the loop's ``on_step_end`` counts)."""

    def __init__(self, planned: int, members: int, interval: float = 0.25) -> None:
        from gdlab.progress import TaskBar  # an edge: rich only when a bar is wanted

        self.bar = TaskBar("members one by one", planned, every=1)
        self.members, self.member, self.done = members, 0, 0
        self.interval, self.next = interval, 0.0

    def on_step_end(self, state: loop.LoopState) -> None:
        self.done += 1
        now = time.perf_counter()
        if now >= self.next:
            self.next = now + self.interval
            self.bar.update(self.done, f"member {self.member + 1}/{self.members}  step {state.step}")

    def close(self) -> None:
        self.bar.update(self.done, f"{self.done} member steps")
        self.bar.close()


def _planned(members: int, cuts: list[tuple[int, int]], total: int) -> int:
    """The member steps a run of ``members`` cut at ``cuts`` takes when none diverges."""
    planned, live, at = 0, members, 0
    for step, keep in cuts:
        planned += live * (step - at)
        live, at = min(live, keep), step
    return planned + live * (total - at)


def _rng_state(dev: torch.device) -> tuple[Tensor, Tensor | None]:
    """The torch generators' states a member's dropout draws from: the CPU's and the device's."""
    if dev.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(dev)
    if dev.type == "mps":
        return torch.get_rng_state(), torch.mps.get_rng_state()
    return torch.get_rng_state(), None


def _set_rng(dev: torch.device, states: tuple[Tensor, Tensor | None]) -> None:
    cpu, device = states
    torch.set_rng_state(cpu)
    if device is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(device, dev)
    elif device is not None and dev.type == "mps":
        torch.mps.set_rng_state(device)


def _fit_options(values: dict[str, Any]) -> dict[str, Any]:
    """Member values as ``fit`` keywords (betas back to beta1, beta2)."""
    out = dict(values)
    betas = out.pop("betas", None)
    if betas is not None:
        out["beta1"], out["beta2"] = betas
    return {k: v for k, v in out.items() if k in ("lr", "momentum") or k in optim.OPTIONS}
