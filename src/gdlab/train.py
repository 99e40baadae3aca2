"""``fit``: the gradient-descent loop (lecture, point 3), with events, checkpoints and the run store.

The loop is the lecture's four steps, read top to bottom in :func:`fit`: (1) start from the initial parameters,
(2) evaluate the loss and its gradient on a batch, (3) update the parameters, (4) repeat for ``epochs`` or
``steps``. Callbacks observe and act through a short, declared list of events (:data:`EVENTS`); each receives
the :class:`LoopState` explicitly.

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> result = gdlab.fit(torch.nn.Linear(3, 1), (X, y), lr=0.1, epochs=30, progress=False)
    >>> result.final["train_loss"] < 1e-3
    True
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from gdlab import checkpoint as ckpt
from gdlab import optim
from gdlab.data import BatchPlan
from gdlab.data.source import Source
from gdlab.errors import InvalidParameter, StoreError, UnknownChoice
from gdlab.optim import schedules
from gdlab.optim.schedules import Schedule
from gdlab.problem import LossFn, Problem, check_budget, evaluate, match_output
from gdlab.records import History
from gdlab.store import Store

__all__ = ["EVENTS", "Callback", "LoopState", "Result", "fit"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")
"""The events of the loop, in the order they first fire."""

class Callback:
    """Base class for callbacks: override the events you need; each gets the :class:`LoopState`.

    Example:
        >>> class StopAtLoss(Callback):
        ...     def on_step_end(self, state):
        ...         if state.loss < 0.01:
        ...             state.stop("loss below 0.01")
    """

    def on_fit_start(self, state: LoopState) -> None:
        """Before the first step (also when resuming)."""

    def on_epoch_start(self, state: LoopState) -> None:
        """Before the first step of each epoch."""

    def on_step_start(self, state: LoopState) -> None:
        """Before each step's forward pass; ``state.batch`` is the step's batch."""

    def on_step_end(self, state: LoopState) -> None:
        """After each update; ``state.loss`` is the loss the step was computed on."""

    def on_epoch_end(self, state: LoopState) -> None:
        """After each epoch's record (train and validation loss) is in ``state.history.epochs``."""

    def on_fit_end(self, state: LoopState) -> None:
        """After the last step, whatever stopped the loop."""


@dataclass
class LoopState:
    """Everything the loop knows, handed to every callback. Steps and epochs count completed ones."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    history: History
    seed: int
    device: torch.device
    total_steps: int
    step: int = 0
    epoch: int = 0
    iteration: int = 0
    loss: float = math.nan
    stop_reason: str | None = None
    interrupted: bool = False
    run_id: str | None = None
    val_samples: int | None = None
    # running sums of the epoch in progress: sample-weighted loss, samples seen
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    seconds: float = 0.0
    # for instruments: the step's batch, the loss function and how outputs are matched to targets
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    loss_fn: LossFn | None = None
    match: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    sample: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None  # (n, seed) -> n training samples
    grad_norms: list[float] = field(default_factory=list)  # this step's gradient norm per parameter tensor
    mean_loss: bool = False  # the loss is a mean over the batch's samples (the built-in ones are)

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step, giving the reason."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group (NaN when the optimizer has none)."""
        return float(self.optimizer.param_groups[0].get("lr", math.nan))


@dataclass
class Result:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model (the same object that was passed in).
        history: per-step and per-epoch records.
        final: ``train_loss`` (mean over the last epoch's steps), ``val_loss``, and for classification
            ``val_accuracy``; None where there is no validation data.
        lr: the learning rate at the end (``param_groups[0]["lr"]``); NaN for an optimizer that shows none, such as
            a bare Transform (wrap it as ``gdlab.optim.inject(make, lr=...)`` to show it).
        run_id: the id in the run store, or None without a store.
        seconds: training time.
        plan: the batch plan.
        status: ``finished`` or ``stopped`` (interrupted).
        stop_reason: why the loop ended before its budget (converged, patience, diverged, interrupted), or None.
        findings: the doctor's :class:`~gdlab.doctor.Finding` list (empty with ``doctor=False``).
        remedies: what the doctor did during the run with ``remedy="auto"`` (each with ``step``, ``action``,
            ``params``, ``reason``).
        lr_selection: with ``lr="auto"``, the :class:`~gdlab.lr_select.LRSelection` (what was tried, why the
            winner won, the cost); else None.
    """

    model: nn.Module
    history: History
    final: dict[str, float | None]
    lr: float
    run_id: str | None
    seconds: float
    plan: BatchPlan
    status: str = "finished"
    stop_reason: str | None = None
    steps: int = 0
    findings: list[Any] = field(default_factory=list)
    lr_selection: Any = None
    remedies: list[Any] = field(default_factory=list)


def fit(
    model: nn.Module,
    train: Dataset | tuple[torch.Tensor, torch.Tensor],
    *,
    loss: str | LossFn = "auto",
    optimizer: optim.OptimizerSpec = "sgd",
    lr: float | str = 0.01,
    momentum: float | None = None,
    batch_size: int | str = 32,
    epochs: int | None = None,
    steps: int | None = None,
    val: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    callbacks: Sequence[Callback] = (),
    store: Store | str | Path | None = None,
    progress: bool = True,
    drop_last: bool = False,
    tol: float | None = None,
    patience: int | None = None,
    checkpoint_every: int | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    resume: str | None = None,
    schedule: str | Schedule | None = None,
    lr_select: str = "sweep",
    instruments: str | Sequence[Any] = "default",
    doctor: bool = True,
    remedy: str = "suggest",
    restarts: int = 0,
    model_fn: Callable[[], nn.Module] | None = None,
    **optimizer_options: Any,
) -> Result:
    """Train ``model`` on ``train`` by gradient descent.

    Args:
        model: any ``nn.Module``; trained in place.
        train: a ``Dataset`` or an ``(X, y)`` pair of tensors. In-memory data is batched by index on the
            device; any other Dataset goes through a DataLoader with the same index batches.
        loss: ``"auto"`` (cross-entropy for integer class targets, mean squared error otherwise), a name in
            ``LOSSES`` or a callable ``(output, target) -> loss``.
        optimizer: a name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``),
            a factory ``params -> Optimizer`` or a ``torch.optim.Optimizer``.
        lr: learning rate of a named optimizer, or ``"auto"``: chosen before training by a short parallel sweep
            (``lr_select="sweep"``, see :func:`gdlab.lr_select.select_lr`) or the range test
            (``lr_select="range-test"``); ``Result.lr_selection`` says what was tried and why the winner won.
        momentum: its momentum (None keeps the optimizer's default).
        batch_size: ``"full"`` (batch gradient descent), ``"stochastic"`` (one sample) or a positive integer.
        epochs, steps: the budget; the loop stops at whichever comes first (10 epochs when neither is given).
        val: validation data, evaluated at the end of every epoch.
        seed: seeds data order and the parameter-free randomness (dropout): the same seed gives the same run.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.
        callbacks: objects with methods named after :data:`EVENTS`.
        store: a :class:`Store` or its folder: the run, its metrics and checkpoints are recorded there.
        progress: show a progress bar (epoch, iteration, loss, speed) on stderr.
        drop_last: drop a short last batch each epoch.
        tol: stop when the epoch's train loss changes by less than ``tol``.
        patience: stop when the validation loss has not improved for ``patience`` epochs.
        checkpoint_every: steps between checkpoints (with a store); None checkpoints at every epoch's end.
        name: a name for the stored run. config: the settings to store with the run.
        resume: a stored run's id: continue it from its last checkpoint (needs ``store``).
        schedule: a learning-rate schedule: a function of the step, or text as ``--schedule`` takes it
            (``cosine``, ``step:EVERY:GAMMA``, ``one_cycle``, ``plateau``, ``warmup:N,cosine``...).
        instruments: ``"default"`` (cheap and periodic), ``"cheap"``, ``"full"`` (adds the expensive ones),
            ``"none"``, or a list of instruments (see :mod:`gdlab.instruments`).
        doctor: run the doctor's detectors at the end (``Result.findings``, see :mod:`gdlab.doctor`).
        remedy: ``"suggest"`` (findings carry a remedy), ``"auto"`` (the doctor acts during the run:
            ``Result.remedies``) or ``"off"``.
        restarts: with ``remedy="auto"``, when the doctor finds the run settled in a (perhaps local) minimum,
            train this many new initial points as one population with the same settings and keep the best if it
            beats the run (the model's parameters are replaced; ``Result.remedies`` says so). 0: only suggest.
        model_fn: builds a fresh model for the restarts (called after seeding torch); by default a copy of
            ``model`` whose modules re-draw their parameters with ``reset_parameters()``.
        **optimizer_options: ``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``nesterov``, ``clip_norm`` for a
            named optimizer.

    Returns:
        A :class:`Result`.
    """
    # -- check everything before anything is stored -------------------------------------------------------
    epochs, steps = check_budget(epochs, steps, 10)
    for key, value in (("tol", tol), ("patience", patience), ("checkpoint_every", checkpoint_every)):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise InvalidParameter(key, value, "a number > 0" if key == "tol" else "a positive integer")
    from gdlab.doctor import REMEDY_MODES, Doctor
    from gdlab.instruments import attach

    watching = attach(instruments)
    if remedy not in REMEDY_MODES:
        raise UnknownChoice("remedy", remedy, REMEDY_MODES)
    if not isinstance(doctor, bool):
        raise InvalidParameter("doctor", doctor, "True or False")
    physician = Doctor(remedy) if doctor or remedy == "auto" else None
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0 or restarts == 1:
        raise InvalidParameter("restarts", restarts, "0 (none) or a count >= 2")
    if restarts and remedy != "auto":
        raise InvalidParameter("restarts", restarts, 'remedy="auto" (restarts are a remedy the doctor applies)')
    problem = Problem.make(model, train, val=val, loss=loss, batch_size=batch_size, drop_last=drop_last,
                           device=device)
    dev, source, val_source, loss_fn, loss_name, plan = (problem.device, problem.source, problem.val, problem.loss_fn,
                                                         problem.loss_name, problem.plan)
    if patience is not None and val_source is None:
        raise InvalidParameter("patience", patience, "validation data to watch (val=..., or --val / --val-split)")
    total = problem.total_steps(epochs, steps)
    selection = None
    if isinstance(lr, str):
        lr, selection = _auto_lr(lr, lr_select, model, train, val, optimizer, momentum, int(total), batch_size,
                                 loss, seed, dev, progress, store, resume, optimizer_options)
    opt = optim.make(optimizer, model.parameters(), lr=lr, momentum=momentum, **optimizer_options)
    if isinstance(schedule, str):
        schedule = schedules.parse(schedule, lr, int(total))
    scheduler = _Scheduler(schedule) if schedule is not None else None
    db = store if isinstance(store, Store) or store is None else Store(store)
    if resume is not None and db is None:
        raise InvalidParameter("resume", resume, "a store holding the run (store=...)")

    state_meta = _meta(model, opt, source, plan)
    state = LoopState(model, opt, plan, History(), seed, dev, int(total))
    state.val_samples = len(val_source) if val_source is not None else None
    state.loss_fn = loss_fn
    state.match = problem.match
    state.sample = source.sample
    state.mean_loss = problem.mean_loss
    state.history.meta.update(state_meta)
    recorder = None
    if db is not None:
        if resume is not None:
            run = db.get(resume)
            if run.status == "running":
                raise StoreError(f"run {run.id} is still running in another process: stop it first (Ctrl-C), "
                                 "then resume it")
            recorder = _Recorder(db, run.id)
            recorder.restore(state, config)
        else:
            described = dict(config or _describe(model, optimizer, lr, momentum, batch_size, epochs, steps, seed,
                                                 loss_name))
            if selection is not None:
                described["lr_selection"] = selection.to_dict()
            described["doctor_meta"] = {k: v for k, v in state_meta.items() if k not in ("lr", "momentum")}
            recorder = _Recorder(db, db.create_run(described, plan.to_dict(), name=name))
        state.run_id = recorder.run_id
    if resume is None:
        torch.manual_seed(seed)  # parameter-free randomness (dropout) follows the seed

    hooks: list[Any] = [*([scheduler] if scheduler else []), *watching, *([physician] if physician else []),
                        *callbacks, *([recorder] if recorder else [])]
    if progress:
        from gdlab.progress import ProgressBar  # an edge: rich is imported only when a bar is wanted

        hooks.append(ProgressBar())

    handlers = {event: [getattr(hook, event) for hook in hooks if hasattr(hook, event)] for event in EVENTS}

    def emit(event: str) -> None:
        for handler in handlers[event]:
            handler(state)

    every = checkpoint_every or plan.iterations_per_epoch
    params = list(model.parameters())  # once: walking the module tree every step costs more than the norm
    started = time.perf_counter() - state.seconds
    model.train()
    with _graceful_interrupt(state):
        try:
            emit("on_fit_start")
            batch_iter: Iterator[tuple[torch.Tensor, ...]] | None = None
            while state.step < state.total_steps and state.stop_reason is None:
                if state.iteration == 0:
                    emit("on_epoch_start")
                if state.iteration == 0 or batch_iter is None:  # a new epoch, or a resumed one
                    batch_iter = source.batches(plan, seed, state.epoch, state.iteration)

                # (2) evaluate the loss and its gradient on one batch
                x, y = next(batch_iter)
                state.batch = (x, y)
                emit("on_step_start")
                output = model(x)
                batch_loss = loss_fn(match_output(output, y, loss_name), y)
                state.loss = batch_loss.item()
                if not math.isfinite(state.loss):
                    state.history.steps.append({"step": state.step + 1, "epoch": state.epoch + 1,
                                                "loss": state.loss, "lr": state.lr})
                    state.step += 1
                    if not any([getattr(hook, "on_diverge", _never)(state) for hook in hooks]):
                        state.stop(f"diverged: the loss became {state.loss} at step {state.step}; "
                                   "the learning rate is likely too large")
                        break
                    state.iteration += 1  # a remedy rolled back: the batch is spent, the run goes on
                else:
                    opt.zero_grad(set_to_none=True)
                    batch_loss.backward()
                    grad_norm = _grad_norm(params, state.grad_norms)

                    # (3) update the parameters
                    opt.step()

                    # (4) record, and repeat
                    state.step += 1
                    state.iteration += 1
                    state.epoch_loss_sum += state.loss * len(y)
                    state.epoch_samples += len(y)
                    state.history.steps.append({"step": state.step, "epoch": state.epoch + 1, "loss": state.loss,
                                                "lr": state.lr, "grad_norm": grad_norm})
                    emit("on_step_end")
                if state.iteration == plan.iterations_per_epoch:
                    _end_epoch(state, val_source, loss_fn, loss_name, tol, patience, started)
                    emit("on_epoch_end")
                    state.epoch += 1
                    state.iteration = state.epoch_samples = 0
                    state.epoch_loss_sum = 0.0
                if state.interrupted:
                    state.stop("interrupted")
                if recorder and (state.step % every == 0 or state.stop_reason):
                    state.seconds = time.perf_counter() - started
                    recorder.checkpoint(state)

            if state.epoch_samples:  # a budget in steps can end mid-epoch: record the part done
                _end_epoch(state, val_source, loss_fn, loss_name, None, None, started)
            state.seconds = time.perf_counter() - started
            if recorder:
                recorder.checkpoint(state)
            emit("on_fit_end")
        except BaseException as error:
            for hook in hooks:
                close = getattr(hook, "close", None)  # the progress bar must not leave the terminal live
                if close is not None:
                    close()
            if recorder:
                recorder.fail(state, error, time.perf_counter() - started)
            raise

    final = _final(state, val_source is not None, source.task)
    status = "stopped" if state.interrupted else "finished"
    if physician and restarts and not state.interrupted and \
            any(f.code == "local_minimum" for f in physician.findings):
        # the lr the run ended with (the doctor's, if it changed it)
        final = _restart(physician, state, final, train, val, restarts, model_fn, optimizer, state.lr,
                         optimizer_options, loss, dev, progress, recorder, schedule)
    findings = physician.findings if physician and doctor else []
    remedies = physician.remedies if physician else []
    if recorder and (findings or remedies):
        recorder.store.add_findings(recorder.run_id, [f.to_dict() for f in findings])
        recorder.store.add_remedies(recorder.run_id, [r.to_dict() for r in remedies])
    if recorder:
        recorder.store.finish(recorder.run_id, status, final=final, lr=state.lr, seconds=state.seconds,
                              steps=state.step, stop_reason=state.stop_reason)
    return Result(model, state.history, final, state.lr, state.run_id, state.seconds, plan, status,
                  state.stop_reason, state.step, findings=list(findings), lr_selection=selection,
                  remedies=list(remedies))


def _meta(model: nn.Module, opt: torch.optim.Optimizer, source: Source, plan: BatchPlan) -> dict[str, Any]:
    """What the doctor reads besides the numbers: settings, the task and the scale of each input feature (the
    95th percentile of its absolute value, on up to 10,000 samples)."""
    group = opt.param_groups[0]
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    linear_only = len(owners) == 1 and isinstance(owners[0], nn.Linear)  # one linear layer: a convex loss
    meta: dict[str, Any] = {"lr": group.get("lr"), "momentum": group.get("momentum"), "batch_size": plan.batch_size,
                            "samples": plan.samples, "task": source.task, "num_classes": source.num_classes,
                            "convex": linear_only}
    if source.tensors is not None:
        from gdlab.doctor import input_scales

        meta["feature_scales"] = input_scales(source.tensors.X)
    return meta


def _auto_lr(lr: str, method: str, model: nn.Module, train: Any, val: Any, optimizer: Any, momentum: float | None,
             total: int, batch_size: Any, loss: Any, seed: int, dev: torch.device, progress: bool, store: Any,
             resume: str | None, options: dict[str, Any]) -> tuple[float, Any]:
    """``lr="auto"``: the chosen learning rate and the record of the choice (a resumed run keeps its own)."""
    if lr != "auto":
        raise InvalidParameter("lr", lr, 'a finite number > 0, or "auto"')
    if not isinstance(optimizer, str):
        raise InvalidParameter("lr", "auto", "a named optimizer (lr='auto' tunes gdlab's optimizers by name)")
    if method not in ("sweep", "range-test"):
        raise InvalidParameter("lr_select", method, "sweep or range-test")
    if resume is not None and store is not None:
        db = store if isinstance(store, Store) else Store(store)
        chosen = (db.get(resume).config.get("lr_selection") or {}).get("lr")
        if chosen is not None:
            return float(chosen), None
    from gdlab.lr_select import select_lr

    extra = {k: v for k, v in {**options, "momentum": momentum}.items() if v is not None and k != "clip_norm"}
    selection = select_lr(model, train, optimizer=optimizer, method=method, total_steps=total,
                          batch_size=batch_size, val=val, loss=loss, seed=seed, device=dev, progress=progress,
                          **extra)
    return selection.lr, selection


def _never(state: LoopState) -> bool:
    return False


def _end_epoch(state: LoopState, val: Source | None, loss_fn: LossFn, loss_name: str, tol: float | None,
               patience: int | None, started: float) -> None:
    """Record the epoch (train loss, validation loss and accuracy) and apply the stopping rules."""
    row: dict[str, float] = {"epoch": state.epoch + 1, "step": state.step,
                             "train_loss": state.epoch_loss_sum / max(state.epoch_samples, 1)}
    if val is not None:
        row.update({f"val_{k}": v for k, v in evaluate(state.model, val, loss_fn, loss_name).items()})
    row["seconds"] = time.perf_counter() - started
    previous = state.history.epochs.last("train_loss")
    state.history.epochs.append(row)
    if tol is not None and abs(previous - row["train_loss"]) < tol:
        state.stop(f"converged: the train loss changed by less than tol={tol:g}")
    if patience is not None:
        if row["val_loss"] < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = row["val_loss"], 0
        else:
            state.bad_epochs += 1
            if state.bad_epochs >= patience:
                state.stop(f"early stop: no better validation loss for {patience} epochs")


def _grad_norm(params: Sequence[torch.Tensor], per_tensor: list[float] | None = None) -> float:
    """The global gradient norm: sqrt of the sum over parameters of |g|^2. With ``per_tensor``, each parameter's
    gradient norm is written there too (0 where it has none), from the same one host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if per_tensor is None:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
    norms = iter(torch.stack(torch._foreach_norm(grads)).tolist())
    per_tensor[:] = [next(norms) if p.grad is not None else 0.0 for p in params]
    return math.sqrt(sum(v * v for v in per_tensor))


def _restart(physician: Any, state: LoopState, final: dict[str, float | None], train: Any, val: Any,
             restarts: int, model_fn: Callable[[], nn.Module] | None, optimizer: Any, lr: float,
             options: dict[str, Any], loss: Any, dev: torch.device, progress: bool,
             recorder: _Recorder | None, schedule: Any) -> dict[str, float | None]:
    """The ``local_minimum`` remedy: restarts as one population; the best replaces the model if it beats it."""
    from gdlab.doctor import restart_remedy

    score = final["val_loss"] if val is not None else final["train_loss"]
    group = state.optimizer.param_groups[0]
    hyper = {"lr": lr, **options}
    if group.get("momentum") is not None:  # the optimizers that take momentum keep it in their group
        hyper["momentum"] = group["momentum"]
    record, best = restart_remedy(score if score is not None else math.inf, state.model, train, restarts=restarts,
                                  seed=state.seed, model_fn=model_fn, optimizer=optimizer, hyper=hyper,
                                  batch_size=state.plan.batch_size, steps=state.step, loss=loss, val=val,
                                  device=dev, progress=progress, step=state.step, schedule=schedule)
    physician.remedies.append(record)
    if best is None:
        return final
    state.model.load_state_dict(best.state_dict())
    if recorder:
        recorder.checkpoint(state)  # the stored model is the one kept
    kept = dict(final)
    if val is not None:
        kept.update({f"val_{k}": v for k, v in evaluate(state.model, val, loss).items()})
    kept["train_loss"] = evaluate(state.model, train, loss)["loss"]
    return kept


def _final(state: LoopState, has_val: bool, task: str) -> dict[str, float | None]:
    epochs = state.history.epochs
    final: dict[str, float | None] = {"train_loss": epochs.last("train_loss", state.loss)}
    final["val_loss"] = epochs.last("val_loss") if has_val else None
    if task == "classification" and has_val:
        final["val_accuracy"] = epochs.last("val_accuracy")
    return {k: (None if v is not None and math.isnan(v) else v) for k, v in final.items()}


def _describe(model: nn.Module, optimizer: Any, lr: float, momentum: float | None, batch_size: Any,
              epochs: int | None, steps: int | None, seed: int, loss: str) -> dict[str, Any]:
    return {"model": type(model).__name__, "optimizer": optimizer if isinstance(optimizer, str) else
            type(optimizer).__name__, "lr": lr, "momentum": momentum, "batch_size": batch_size, "epochs": epochs,
            "steps": steps, "seed": seed, "loss": loss}


_POSITION = ("step", "epoch", "iteration", "epoch_loss_sum", "epoch_samples", "best_val_loss", "bad_epochs",
             "seconds")


class _Scheduler(Callback):
    """Sets the learning rate (and one-cycle's momentum) before every step; feeds a plateau schedule the
    validation loss (or the train loss) at every epoch's end."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def _set(self, state: LoopState) -> None:
        for group in state.optimizer.param_groups:
            group["lr"] = self.schedule(state.step)
            if isinstance(self.schedule, schedules.OneCycle):
                if "momentum" in group:
                    group["momentum"] = self.schedule.momentum(state.step)
                elif "betas" in group:
                    group["betas"] = (self.schedule.momentum(state.step), group["betas"][1])

    on_fit_start = _set
    on_step_end = _set

    def on_epoch_end(self, state: LoopState) -> None:
        if isinstance(self.schedule, schedules.ReduceOnPlateau):
            epochs = state.history.epochs
            self.schedule.step(epochs.last("val_loss") if "val_loss" in epochs else epochs.last("train_loss"))
            self._set(state)


class _Recorder(Callback):
    """Keeps a run's store record: metric rows at each epoch's end, checkpoints, resume and failure.

    The store holds the history; a checkpoint holds the rest (model, optimizer, RNG, position), so its size
    does not grow with the run.
    """

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.path = store.run_dir(run_id) / "checkpoint.pt"
        self.steps_written = self.epochs_written = 0

    def flush(self, state: LoopState) -> None:
        """Write the step and epoch rows recorded since the last flush."""
        self.store.add_steps(self.run_id, state.history.steps.rows(self.steps_written))
        self.store.add_epochs(self.run_id, state.history.epochs.rows(self.epochs_written))
        self.steps_written, self.epochs_written = len(state.history.steps), len(state.history.epochs)

    on_epoch_end = flush
    on_fit_end = flush

    def checkpoint(self, state: LoopState) -> None:
        """Flush, then save everything but the history, atomically."""
        self.flush(state)
        ckpt.save(self.path, {
            "format": 1,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "rng": ckpt.rng_state(),
            "position": {key: getattr(state, key) for key in _POSITION},
        })

    def restore(self, state: LoopState, config: dict[str, Any] | None) -> None:
        """Load the last checkpoint and the history up to it; the run is ``running`` again."""
        saved = ckpt.load(self.path)
        done = saved["position"]["step"]
        if done > state.total_steps:
            raise InvalidParameter("epochs/steps", f"{state.total_steps} steps", f"at least the {done} steps run "
                                   f"{self.run_id} has already trained; give a larger --epochs or --steps")
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        ckpt.set_rng_state(saved["rng"])
        for key in _POSITION:
            setattr(state, key, saved["position"][key])
        # rows after the checkpoint (and the record of a partly done epoch) are dropped: they will be redone
        self.store.reopen(self.run_id, step=state.step, epochs=state.epoch)
        if config is not None:
            self.store.update_config(self.run_id, config)
        state.history = self.store.history(self.run_id)
        state.loss = state.history.steps.last("loss")
        self.steps_written, self.epochs_written = len(state.history.steps), len(state.history.epochs)

    def fail(self, state: LoopState, error: BaseException, seconds: float) -> None:
        """Keep what was recorded and mark the run ``stopped`` (Ctrl-C) or ``failed``."""
        self.flush(state)
        stopped = isinstance(error, KeyboardInterrupt)
        self.store.finish(self.run_id, "stopped" if stopped else "failed", steps=state.step, seconds=seconds,
                          lr=state.lr, error=None if stopped else f"{type(error).__name__}: {error}",
                          stop_reason="interrupted" if stopped else None)


@contextmanager
def _graceful_interrupt(state: LoopState) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM): finish the step, checkpoint, stop. A second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if state.interrupted:
            raise KeyboardInterrupt
        state.interrupted = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

