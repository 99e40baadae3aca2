"""The front door: :func:`train` checks and builds the members, then trains them as one vectorised computation
(:mod:`~gdlab.population.vectorized`) or, where vmap cannot serve the model, one after another through the same
loop as ``fit`` (:func:`gdlab.loop.run`)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from gdlab import loop, optim
from gdlab.config import DEFAULT_EPOCHS
from gdlab.data import BatchPlan
from gdlab.errors import InvalidParameter, ModelError, check_int
from gdlab.population.forward import vmap_problem
from gdlab.population.members import ModelFn, Population, member_hyperparams, member_values
from gdlab.population.vectorized import train_vectorized
from gdlab.problem import LossFn, Problem, check_budget

__all__ = ["train"]


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
    epochs, steps = check_budget(epochs, steps, DEFAULT_EPOCHS)
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(model_fn())
        if not isinstance(models[-1], nn.Module):
            raise ModelError(f"model_fn returned {type(models[-1]).__name__}: expected an nn.Module")
    problem = Problem.make(models[0], train, val=val, loss=loss, batch_size=batch_size, device=device)
    dev, source, val_source, plan = problem.device, problem.source, problem.val, problem.plan
    loss_fn, loss_name = problem.loss_fn, problem.loss_name
    models = [m.to(dev) for m in models]
    total = problem.total_steps(epochs, steps)
    members = [member_values(stacked, i) for i in range(len(seeds))]

    reason = None if vectorize is False else vmap_problem(models[0], source, loss_fn, loss_name)
    if vectorize is True and reason is not None:
        raise ModelError(f"vmap cannot train this model as a population: {reason}")
    if vectorize is False or reason is not None:
        if reason is not None:
            print(f"note: training the {len(seeds)} members one by one: vmap cannot serve this model ({reason})",
                  file=sys.stderr)
        return _one_by_one(model_fn, train, val, seeds, optimizer, members, batch_size, epochs, steps, loss, dev,
                           progress, plan, source.task, reason, shared_order)
    for at, keep in halving:
        for value in (at, keep):
            check_int(value, "halving", expected="(step, keep) pairs of positive integers")
    return train_vectorized(models, source, val_source, seeds, optimizer, stacked, members, loss_fn, loss_name,
                            plan, total, shared_order, progress, halving)


def _one_by_one(model_fn: ModelFn, train_data: Any, val: Any, seeds: list[int], optimizer: str,
                members: list[dict[str, Any]], batch_size: Any, epochs: int | None, steps: int | None,
                loss: Any, dev: torch.device, progress: bool, plan: BatchPlan, task: str, reason: str | None,
                shared_order: bool) -> Population:
    """The fallback: each member trained alone by the loop ``fit`` runs (as ``fit(seed=s)`` with no instruments
    and no doctor would), assembled into the same record."""
    started = time.perf_counter()
    results = []
    for s, values in zip(seeds, members):
        torch.manual_seed(s)
        results.append(_alone(model_fn(), train_data, val, optimizer, values, batch_size, epochs, steps, loss, dev,
                              seeds[0] if shared_order else s, progress))
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


class _Alone(NamedTuple):
    """One member's run: what the assembly reads (as ``fit``'s Result has it)."""

    model: nn.Module
    history: Any
    final: dict[str, float | None]
    stop_reason: str | None
    steps: int


def _alone(model: nn.Module, train: Any, val: Any, optimizer: str, values: dict[str, Any], batch_size: Any,
           epochs: int | None, steps: int | None, loss: Any, dev: torch.device, seed: int, progress: bool) -> _Alone:
    """One member trained by the loop, as ``fit(model, train, seed=seed, instruments="none", doctor=False)``."""
    problem = Problem.make(model, train, val=val, loss=loss, batch_size=batch_size, device=dev)
    options = _fit_options(values)
    lr, momentum = options.pop("lr"), options.pop("momentum", None)
    opt = optim.make(optimizer, model.parameters(), lr=lr, momentum=momentum, **options)
    state = loop.LoopState.start(problem, opt, total_steps=problem.total_steps(epochs, steps), seed=seed)
    torch.manual_seed(seed)  # parameter-free randomness (dropout) follows the seed, as in fit
    hooks: list[Any] = []
    if progress:
        from gdlab.progress import ProgressBar  # an edge: rich only when a bar is wanted

        hooks.append(ProgressBar())
    loop.run(problem, state, hooks)
    return _Alone(model, state.history, loop.final_metrics(problem, state), state.stop_reason, state.step)


def _fit_options(values: dict[str, Any]) -> dict[str, Any]:
    """Member values as ``fit`` keywords (betas back to beta1, beta2)."""
    out = dict(values)
    betas = out.pop("betas", None)
    if betas is not None:
        out["beta1"], out["beta2"] = betas
    return {k: v for k, v in out.items() if k in ("lr", "momentum") or k in optim.OPTIONS}
