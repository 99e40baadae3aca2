"""``watch``: the instruments and the doctor in a training loop the user wrote.

::

    doctor = gdlab.watch(model, optimizer)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        doctor.step(loss)
    report = doctor.close()   # a Result: report.findings, report.remedies, report.history

The loop stays the user's; gdlab only listens. A forward pre-hook on the model starts each step (so the periodic
instruments' hooks ride on the step's own forward and backward pass, as in :func:`gdlab.fit`), the optimizer's step
pre-hook takes the gradient norms before the update (every ``grad_norm_every``-th step, 20, and on the periodic
instruments' steps; NaN between: docs/watch.md), and ``doctor.step(loss)`` files the step's loss on the device:
the host reads the values every ``log_every`` steps (60), never once a step. Once the loop calls ``doctor.step``,
each step gets only the hooks it needs (the forward pre-hook on the steps an instrument measures, the step pre-hook
where the norms are due), and the steps between those that need something are a lane: ``doctor.step`` files the
loss and the lr, and the lane's steps reach the history and the hooks as one block when it ends (docs/watch.md,
"The lane"). Without ``doctor.step`` at all, the optimizer's step hooks end each step themselves (no loss: no
loss-based findings). docs/watch.md says what each instrument needs, and which remedies need :func:`gdlab.fit`.
Under several processes (torchrun, a ``DistributedDataParallel`` model) rank zero watches and the other ranks
follow its decisions (docs/watch.md, "Several processes").

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(256, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> model = torch.nn.Linear(3, 1); optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> doctor = gdlab.watch(model, optimizer)
    >>> for epoch in range(5):
    ...     for i in range(0, 256, 32):
    ...         loss = torch.nn.functional.mse_loss(model(X[i:i + 32]), y[i:i + 32])
    ...         optimizer.zero_grad(); loss.backward(); optimizer.step()
    ...         doctor.step(loss)
    ...     doctor.epoch_end()
    >>> report = doctor.close()
    >>> report.steps, report.final["train_loss"] < 1e-3, [f.code for f in report.findings]
    (40, True, [])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gdlab import distributed, loop
from gdlab.callbacks import Recorder
from gdlab.data import BatchPlan, infer_task, structure
from gdlab.doctor import REMEDY_MODES, Doctor
from gdlab.doctor.remedies import clip_before_step
from gdlab.errors import DataError, InvalidParameter, UnknownChoice, check_int
from gdlab.instruments import attach, unwrap
from gdlab.loop import LoopState, Result, StepLog
from gdlab.problem import LOSSES, LossFn, batch_loss, non_finite, resolve_loss
from gdlab.records import History, input_scales
from gdlab.store import Store

__all__ = ["GRAD_NORM_EVERY", "LOG_EVERY", "Watch", "watch"]

GRAD_NORM_EVERY = 20
"""Steps between the gradient-norm readings of :func:`watch` (docs/watch.md: what a reading every k steps changes;
docs/benchmarks.md, watch_overhead: what it saves): the cheap instrument's movement readings' interval (every 20th
step), so that both fall where the lane of quiet steps ends anyway."""

LOG_EVERY = 3 * GRAD_NORM_EVERY
"""Steps between :func:`watch`'s host reads (60; :func:`gdlab.fit` reads every 50): a multiple of the norms'
interval, so that a read falls where a lane ends anyway (docs/watch.md, "The lane")."""

# torch's losses that are a plain mean over the batch's samples (the per-sample instruments rely on it), by class
_MEAN_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss,
                nn.BCELoss, nn.NLLLoss)


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, *, loss_fn: str | LossFn | None = None,
          instruments: str | Sequence[Any] = "default", doctor: bool = True, remedy: str = "suggest",
          rollback: bool = False, store: Store | str | Path | None = None, name: str | None = None,
          config: dict[str, Any] | None = None, loader: Any = None, batch_size: int | None = None,
          steps_per_epoch: int | None = None, target_key: str | None = None, log_every: int = LOG_EVERY,
          grad_norm_every: int = GRAD_NORM_EVERY, callbacks: Sequence[Any] = (), hooks: bool = True,
          tensorboard: str | Path | None = None, ranks: bool = True) -> Watch:
    """Watch a training loop the user wrote: the instruments measure each step, the doctor names what goes wrong.

    Args:
        model: the model the loop trains (hooks are put on it until :meth:`Watch.close`).
        optimizer: the loop's optimizer (``torch.optim`` or gdlab's); its step hooks take the gradient norms before
            each update and, where the loop never calls :meth:`Watch.step`, end each step.
        loss_fn: the loss ``(output, target) -> loss`` (or a name in ``LOSSES``, or ``"model"``): with batches
            given to :meth:`Watch.step`, the instruments that need a pass of their own (per-sample gradients for a
            custom loss or a small batch, the sharpness and alpha of ``instruments="full"``) use it; without it
            they skip quietly. A built-in mean loss (``F.cross_entropy``, ``nn.MSELoss()``...) also lets the
            gradient noise scale ride on the step's own backward pass.
        instruments: ``"default"``, ``"cheap"``, ``"full"``, ``"none"`` or a list, as :func:`gdlab.fit` takes.
        doctor: diagnose the run at :meth:`Watch.close` (``report.findings``).
        remedy: ``"suggest"``, ``"off"`` or ``"auto"``: the doctor changes the learning rate in the optimizer's
            ``param_groups`` and clips gradients during the run (``report.remedies``).
        rollback: with ``remedy="auto"``, let the doctor keep snapshots of the model and optimizer (in memory) and
            roll back to them (after a divergence, a loss climbing back up). Off by default: a rollback changes
            the model under the user's loop, which may hold state of its own (an EMA of the weights, a schedule).
            Refused under several processes.
        store: a :class:`~gdlab.store.Store` or its folder: the run is recorded there (``gdlab show``, ``gdlab
            doctor``, ``gdlab plot --instruments``). name, config: the stored run's name and settings.
        loader: the loop's DataLoader (optional): its length, batch size and data set's size plan the epoch.
        batch_size, steps_per_epoch: the same, given directly (else learned from the first batch and epoch).
        target_key: the target's key in dict batches.
        log_every: steps between host reads of the loss and gradient norms (60).
        grad_norm_every: steps between readings of the gradient norms (``grad_norm`` and ``grad_norm/<layer>``:
            the first step, every ``grad_norm_every``-th, and each step a periodic instrument measures; NaN, not
            measured, in the rows between). 1: every step, as :func:`gdlab.fit` reads them, at one more pass over
            the gradients per step. docs/watch.md says what a sparser reading changes.
        callbacks: objects with methods named after :data:`~gdlab.loop.EVENTS`, called as :func:`gdlab.fit` calls them.
        hooks: use the optimizer's step hooks (False: each step is :meth:`Watch.step` alone).
        tensorboard: a folder for TensorBoard event files: the history at each :meth:`~Watch.epoch_end` and at
            :meth:`~Watch.close`, the findings at close (as ``fit(tensorboard=...)``; ``pip install
            'gdlab[tensorboard]'``).
        ranks: under several processes (torchrun), rank zero watches and the other ranks follow its decisions
            (docs/watch.md, "Several processes"). False: this process watches alone, as in one process (the
            Lightning and Hugging Face callbacks, which watch on rank zero only and make the ranks agree through
            the trainer).

    Returns:
        A :class:`Watch`: call :meth:`~Watch.step` after each update, optionally :meth:`~Watch.epoch_end`, and
        :meth:`~Watch.close` at the end (or use it as a context manager).
    """
    return Watch(model, optimizer, loss_fn=loss_fn, instruments=instruments, doctor=doctor, remedy=remedy,
                 rollback=rollback, store=store, name=name, config=config, loader=loader, batch_size=batch_size,
                 steps_per_epoch=steps_per_epoch, target_key=target_key, log_every=log_every,
                 grad_norm_every=grad_norm_every, callbacks=callbacks, hooks=hooks, tensorboard=tensorboard,
                 ranks=ranks)


class _WatchDoctor(Doctor):
    """The doctor in a loop gdlab does not drive: without ``rollback`` it keeps no snapshots, so nothing is rolled
    back (the rules that roll back do not act), and a raise of the learning rate that did worse is undone by
    lowering it again, the parameters left as they are."""

    def __init__(self, mode: str, *, rollback: bool) -> None:
        super().__init__(mode)
        self.rollback = rollback

    def _take_snapshot(self, state: Any) -> None:
        if self.rollback:
            super()._take_snapshot(state)

    def _roll_back(self, state: Any, lr: float, new: float, reason: str, *, counted: bool = True) -> None:
        if self.rollback:
            super()._roll_back(state, lr, new, reason, counted=counted)
            return
        self._set(state, "lr", new)
        self._act(state, "set_lr", {"lr": new, "from_lr": lr},
                  f"{reason.split(':')[0]}: lowered the learning rate {lr:.3g} -> {new:.3g} (no rollback: watch "
                  "keeps no snapshot unless rollback=True)")


class Watch:
    """A loop the user wrote, watched: see :func:`watch`. ``history`` fills as the run goes (read it any time);
    ``stop_reason`` says when the run diverged and nothing could repair it (the loop may break on it)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, loss_fn: str | LossFn | None,
                 instruments: str | Sequence[Any], doctor: bool, remedy: str, rollback: bool,
                 store: Store | str | Path | None, name: str | None, config: dict[str, Any] | None, loader: Any,
                 batch_size: int | None, steps_per_epoch: int | None, target_key: str | None, log_every: int,
                 callbacks: Sequence[Any], hooks: bool, tensorboard: str | Path | None = None,
                 grad_norm_every: int = GRAD_NORM_EVERY, ranks: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameter("model", type(model).__name__, "an nn.Module")
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise InvalidParameter("optimizer", type(optimizer).__name__, "a torch.optim.Optimizer (or gdlab's)")
        if remedy not in REMEDY_MODES:
            raise UnknownChoice("remedy", remedy, REMEDY_MODES)
        for key, flag in (("doctor", doctor), ("ranks", ranks)):
            if not isinstance(flag, bool):
                raise InvalidParameter(key, flag, "True or False")
        if rollback and remedy != "auto":
            raise InvalidParameter("rollback", rollback, 'remedy="auto" (a rollback is a remedy the doctor applies)')
        # several processes (torchrun): rank zero watches, the others follow (unless told this process is alone)
        self._ranks = distributed.current() if ranks else None
        if rollback and self._ranks is not None:
            raise InvalidParameter("rollback", rollback, "one process (under several, a rollback would change rank "
                                   "zero's model alone; gdlab.fit rolls back on every rank)")
        self.log_every = check_int(log_every, "log_every")
        self.grad_norm_every = check_int(grad_norm_every, "grad_norm_every")
        for key, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch)):
            if value is not None:
                check_int(value, key)
        self.model, self.optimizer, self.target_key = model, optimizer, target_key
        self.doctor_on = doctor
        self._samples: int | None = None
        if loader is not None:  # a DataLoader plans the epoch: its length, batch size and data set
            steps_per_epoch = steps_per_epoch or _maybe_len(loader)
            batch_size = batch_size or getattr(loader, "batch_size", None)
            self._samples = _maybe_len(getattr(loader, "dataset", None))
        self._given = (batch_size, steps_per_epoch)
        self._epoch_steps = steps_per_epoch

        # the loss the instruments' own passes take (None: they skip)
        self.loss_fn: LossFn | None = None
        self.loss_name: str | None = None
        mean = False
        if loss_fn is not None:
            self.loss_fn, self.loss_name = resolve_loss(loss_fn, "classification")
            mean = self.loss_fn is LOSSES.get(self.loss_name) or (
                isinstance(self.loss_fn, _MEAN_LOSSES) and getattr(self.loss_fn, "reduction", None) == "mean" and
                getattr(self.loss_fn, "weight", None) is None)

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        history = History()
        # the lane's steps (step()) reach the table before the log's filler reads it: a read sees every step
        history.steps.defer(self._fill_lane)
        self._lane: list[Tensor] = []  # the lane's steps since it was last drained: their losses, their lrs
        self._lane_lrs: list[Any] = []
        self._room = 0  # how many more steps the lane takes (0: shut)
        # the lane's gradient norms, taken by the optimizer's step pre-hook: (the step's place in the lane, the
        # norms, which parameters had a gradient), and the place of the next step whose norms are due
        self._lane_norms: list[tuple[int, Any, Any]] = []
        self._due = -1
        self._before_places: set[int] = set()  # the lane's places where a hook wants before_update
        self._lane_needed = False  # the lane's last step needs each hook's on_step_end on its own
        # the lane's room left when the optimizer's step pre-hook next goes on or off (-1: no change in this lane),
        # and the later changes (on at the step before each run of places that use it, off after the run)
        self._switch_room = -1
        self._switches: list[int] = []
        self._update_first: bool | None = None  # the loop calls step() after optimizer.step() (seen at the first)
        # the instruments measure the model inside DistributedDataParallel and torch.compile's wrapper (the loop
        # calls the wrapper: its forward pass starts a step)
        inner = unwrap(model)
        self.state = state = LoopState(inner, optimizer, self._plan(batch_size or 1), history, 0, device,
                                       total_steps=0, forward=self._forward if self.loss_fn is not None else None,
                                       loss_fn=self.loss_fn, loss_name=self.loss_name, target_key=target_key,
                                       mean_loss=mean)
        self.log = state.log = StepLog(state, list(model.parameters()))
        state.history.meta.update(self._meta(batch_size))
        state.history.meta["grad_norm_every"] = self.grad_norm_every
        self.watching = attach(instruments)
        # several processes: the ranks agree every log_every step() calls (every call with remedy="auto", whose
        # changes reach every rank before the next update), at each epoch_end() and at close()
        self._calls = 0
        self._agree_each = remedy == "auto"
        self._follower = self._ranks is not None and not self._ranks.main
        self._clip_norm: float | None = None  # a follower's clip: rank zero's clip_norm remedy
        self._unclip: Any = None
        if self._follower:  # another rank: rank zero watches, records and diagnoses; this one follows its decisions
            self._follow()
            return
        # instruments that measure on some steps (the periodic ones: ``due``): those steps read the norms too
        self._wanting = [i for i in self.watching if hasattr(i, "on_step_start")]
        self.board: Any = None
        if tensorboard is not None:
            from gdlab.integrations.tensorboard import TensorBoard  # an edge: tensorboard only when asked

            self.board = TensorBoard(tensorboard)
        self.physician = _WatchDoctor(remedy, rollback=rollback) if doctor or remedy == "auto" else None

        self.store: Store | None = store if isinstance(store, Store) or store is None else Store(store)
        self.recorder: Recorder | None = None
        self._config = dict(config or {"model": type(model).__name__, "optimizer": type(optimizer).__name__,
                                       "lr": state.lr, "momentum": optimizer.param_groups[0].get("momentum"),
                                       "batch_size": batch_size, "loss": self.loss_name, "loop": "watch"})
        if self.store is not None:
            described = {**self._config, "doctor_meta": self._doctor_meta()}
            plan = state.plan.to_dict() if self._samples is not None and steps_per_epoch is not None else None
            self.recorder = Recorder(self.store, self.store.create_run(described, plan, name=name))
            state.run_id = self.recorder.run_id

        self.hooks: list[Any] = [*self.watching, *([self.physician] if self.physician else []), *callbacks,
                                 *([self.recorder] if self.recorder else []), *([self.board] if self.board else [])]
        self._handlers = {event: [getattr(h, event) for h in self.hooks if _answers(h, event)] for event in loop.EVENTS}
        # THE LANE: the steps that need no hook of ours and no hook's on_step_end one by one are filed by step() in
        # a few reads, and drained in blocks (their rows, each hook's on_steps_end). A hook with an on_step_end
        # opens it by saying which steps it needs (needs_step) and taking the others in blocks (on_steps_end);
        # one that does not (a user's callback, the expensive instruments) keeps every step on the full path
        ends = [h for h in self.hooks if _answers(h, "on_step_end")]
        self._lane_open = all(hasattr(h, "on_steps_end") and hasattr(h, "needs_step") for h in ends)
        self._block_ends = [h.on_steps_end for h in ends] if self._lane_open else []
        self._needs = [h.needs_step for h in ends] if self._lane_open else []
        # where every hook says the next step it needs in one call, the lane's length is a few sums (_lane_room)
        self._nexts = [h.next_needed for h in ends] if all(hasattr(h, "next_needed") for h in ends) else None
        # hooks that keep something before an update (the cheap instrument's parameters before a measured step)
        # where the loop sees the update coming: the optimizer's step pre-hook, with step() after the update
        self._befores = [h for h in self.hooks if hasattr(h, "before_update") and hasattr(h, "needs_before")]
        self._before_step = 0  # the step whose before_update calls are made
        self.grad_norms = bool(self.watching) or self.physician is not None
        # where the step stands: started (on_step_start emitted), norms taken, an update awaiting its loss
        self._started = self._normed = self._pending = False
        self._manual = False  # step() has been called: it ends each step
        self._auto = False  # step() is never called: the optimizer's post-hook ends each step
        self._inputs: Any = None  # the step's inputs, as the model's forward pass saw them
        self._learned = False  # the first batch told the meta (batch size, task, input scales)
        self._closed = False
        self._busy = False  # inside a hook of ours: a forward pass or update there is not the loop's
        self.report: Result | None = None
        self._started_at = time.perf_counter()

        # plain functions, not bound methods: a deep copy of the model (the instruments make one) shares them
        # instead of copying this watch, and they answer the user's model alone. They run on every step of the
        # user's loop, so the usual case is decided here in a few reads (docs/benchmarks.md: watch_overhead)
        def on_forward(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if module is self.model and not (self._started and not self._pending):  # not a second pass
                self._on_forward(args, kwargs)

        def before_update(opt: Any, args: Any, kwargs: Any) -> None:
            if self._room:  # in the lane: the norms where due, before_update where wanted, else nothing
                if opt is self.optimizer:
                    place = len(self._lane)
                    if 0 <= self._due <= place:  # due (past due: that step's update was skipped, as a
                        self._lane_norm(place)  # GradScaler skips one on an overflow)
                    if place in self._before_places:
                        self._pre_update(self.state.step + place + 1)
                return
            if opt is not self.optimizer or (self._normed and not self._pending):  # read already this step
                return
            if self._keeps_before and not self._pending and not self._busy:
                self._pre_update(self.state.step + 1)
            if self._started and not self._pending and not self._busy:  # a step under way: its norms
                if self.grad_norms:
                    self._take_norms()
            else:
                self._before_update()

        def after_update(opt: Any, args: Any, kwargs: Any) -> None:
            if self._update_first is None and opt is self.optimizer and not self._busy:
                self._learn_order(self._started)  # the first update: inside a step, or after step() ended it
            if opt is self.optimizer and self._started and not self._busy:
                if self._auto:
                    self._after_update()
                else:  # step() ends it, or (the first step, when step() never comes) the next forward or update
                    self._pending = True

        self._on_forward_hook, self._before_update_hook = on_forward, before_update
        self._forward_handle: Any = model.register_forward_pre_hook(on_forward, with_kwargs=True)
        self._pre_handle: Any = None
        self._post_handle: Any = None
        self._opt_hooks = hooks and hasattr(optimizer, "register_step_post_hook")
        if self._opt_hooks:
            self._pre_handle = optimizer.register_step_pre_hook(before_update)
            self._post_handle = optimizer.register_step_post_hook(after_update)
        # instruments told at the start of each step whatever happens (an on_step_start without a schedule)
        starts = [h for h in self.hooks if _answers(h, "on_step_start")]
        self._unscheduled = [h for h in starts if not hasattr(h, "scheduled")]
        self._schedules = [h.scheduled for h in starts if hasattr(h, "scheduled")]
        self._next_forwards = [h.next_scheduled for h in starts if hasattr(h, "next_scheduled")]
        if len(self._next_forwards) != len(self._schedules):  # a schedule without next_scheduled: scanned instead
            self._nexts = None
        self._quiet = False  # step() ends the steps and the next one needs no on_step_start (_plan_hooks)
        self._emit("on_fit_start")
        self._emit("on_epoch_start")

    # -- what the user calls -------------------------------------------------------------------------------------
    def step(self, loss: Tensor | float | None = None, *, batch: Any = None) -> None:
        """End the step the loop just took: file its ``loss`` (a scalar tensor, 0-dim or of one element, kept on
        the device; a number is taken too) and, optionally, its ``batch`` (``(inputs, target)``, ``(*inputs,
        target)`` or a dict with a target key) for the instruments that need one. Call it after
        ``optimizer.step()`` (before it works too)."""
        if self._room and batch is None and isinstance(loss, Tensor):  # the lane: filed in two appends; the rows
            self._lane.append(loss.detach())  # come when it is drained
            self._lane_lrs.append(self.optimizer.param_groups[0].get("lr", math.nan))
            room = self._room = self._room - 1
            if room == self._switch_room:  # the next step's update needs the pre-hook (its norms or before_update)
                self._switch_pre_hook()  # or, the last that needed it done, no longer
            if not room:
                self._drain(last_needed=self._lane_needed)
                self._plan_hooks()
            if self._ranks is not None:
                self._count_call()
            return
        if self._closed:
            self._check_open()
        loss = _scalar_loss(loss)
        if self._follower:
            self._count_call()
            return
        self._drain()  # a step given its batch in the lane: the steps before it first
        self._room = 0
        if self._lane_norms:  # the lane's pre-hook read this step's norms before the update (the loop may have
            own = self._lane_norms[0]  # zeroed the gradients since): they are its own
            self._lane_norms = []
            if own[0] == 0:
                self.log.use_norms(own[1], own[2])
                self._normed = True
        if self._update_first is None and (self._pending or not self._opt_hooks):
            self._learn_order(self._pending)  # did the update come before this call? (without the optimizer's
        self._manual = True  # hooks, the first call says: none seen, so step() before the update)
        if self._quiet and batch is None and not self._started:
            self._quiet_step(loss)
        else:
            self._finish(loss, batch)  # after the update (pending), or before it: either way the step is this one
        self._plan_hooks()
        if self._ranks is not None:
            self._count_call()

    def _count_call(self) -> None:
        """Several processes: a step() call; the ranks agree on every log_every-th (every one with auto)."""
        self._calls += 1
        if self._agree_each or self._calls % self.log_every == 0:
            self._agree()

    def _follow(self) -> None:
        """This rank follows rank zero (several processes): no hooks, instruments, doctor, store or board; step()
        counts the calls and takes rank zero's decisions where the ranks agree."""
        self.watching, self._wanting, self.hooks, self.physician, self.board = [], [], [], None, None
        self.store, self.recorder = None, None
        self._forward_handle = self._pre_handle = self._post_handle = None
        self._closed = False
        self.report = None
        self._started_at = time.perf_counter()

    def _agree(self) -> None:
        """Rank zero's decisions reach every rank: the stop after a divergence nothing repaired (``stop_reason``, so
        that every rank's loop can break at the same step) and, with ``remedy="auto"``, the optimizer's
        hyperparameters (the learning rate, the momentum the doctor set) and the norm its ``clip_norm`` remedy
        clips to. One broadcast."""
        decision: dict[str, Any] | None = None
        if not self._follower:
            auto = self._agree_each
            decision = {"stop": self.state.stop_reason, "clip": max_norm(self) if auto else None,
                        "groups": hyperparameters(self.optimizer) if auto else None}
        decision = distributed.broadcast(decision)
        if not self._follower or not isinstance(decision, dict):
            return
        if decision.get("stop") is not None:
            self.state.stop(decision["stop"])
        for group, values in zip(self.optimizer.param_groups, decision.get("groups") or ()):
            group.update(values)
        clip = decision.get("clip")
        if clip is not None and clip != self._clip_norm:
            self._clip_norm = clip
            if self._unclip is not None:
                self._unclip()
            self._unclip = clip_before_step(self.optimizer, clip)

    def _learn_order(self, update_first: bool) -> None:
        """The loop's order, seen at its first update (the step post-hook, on till then): the update inside the step,
        before step() (the usual loop), or after step() ended the step. A loop that accumulates gradients over
        several step() calls before its first update is told by that update, not by its first step()."""
        self._update_first = update_first
        if update_first and self._opt_hooks:  # the pre-hook sees the updates coming
            for hook in self._befores:
                hook.keeps_before = True

    def _quiet_step(self, loss: Tensor | None) -> None:
        """Most steps of a loop that calls step(): no hook of ours saw them (nothing measures them, no norms are
        due), so the step is its loss filed and its row: :meth:`_finish` without what such a step lacks."""
        state = self.state
        state.param_grad_norms = None  # the row has none (NaN: not measured)
        samples = self._planned_size(state.iteration)
        state.step += 1
        state.iteration += 1
        self.log.record(loss.detach() if isinstance(loss, Tensor) else None, samples)
        self._emit("on_step_end")
        if state.step % self.log_every == 0 or self.log.diverged_at is not None:
            self._check()

    def _plan_hooks(self) -> None:
        """With step() ending each step, put on only the hooks the next step needs (each hook torch dispatches
        costs microseconds on every step): the forward pre-hook where an instrument measures that step (its hooks
        ride on the forward pass), the optimizer's step pre-hook where the gradient norms are due (before the
        update; the loop may zero the gradients after it), and no step post-hook (step() ends the step)."""
        self._quiet, self._room = False, 0
        state = self.state
        if self._closed or state.stop_reason is not None:
            return
        step = state.step + 1
        forward, norms = self._wants(step, state.iteration)
        self._quiet = not forward and not norms
        if self._keeps_before and self._wants_before(step):
            norms = True  # the pre-hook is on for it (a step outside the lane)
        # the lane takes steps whose norms are due too where the optimizer's step pre-hook takes them before the
        # update and step() comes after it (as the loop usually runs)
        lane_norms = self._opt_hooks and bool(self._update_first)
        if self._lane_open and not forward and (lane_norms or not norms):
            # the lane: the steps from here up to the next read of the host (every log_every steps), ending at
            # the first that a hook needs on its own (its on_step_end comes after the others' block)
            limit = self.log_every - (step - 1) % self.log_every
            room, needed = self._lane_room(step, limit, lane_norms) if self._nexts is not None else (0, False)
            while self._nexts is None and room < limit and not needed:  # hooks that only say needs_step
                if room:
                    ahead, normed = self._wants(step + room, state.iteration + room)
                    if ahead or (normed and not lane_norms):
                        break
                needed = any(needs(step + room) for needs in self._needs)
                room += 1
            self._room, self._lane_needed, self._quiet = room, needed, True
            self._due = -1
            if self.grad_norms:  # the first place in the lane whose norms are due
                first = 0 if step == 1 else (-step) % self.grad_norm_every
                self._due = first if first < room else -1
            self._before_places = self._places_before(step, room) if self._keeps_before else set()
            uses = set(range(self._due, room, self.grad_norm_every)) if self._due >= 0 else set()
            uses |= self._before_places
            # the pre-hook is on where the lane uses it: put on at the step before each run of places that use it,
            # taken off after the run (a hook torch calls costs microseconds on each step it is on)
            switches = []
            for place in sorted(uses):
                if place - 1 not in uses and place:
                    switches.append(room - place)  # on, at the step() of the place before
                if place + 1 not in uses and place + 1 < room:
                    switches.append(room - place - 1)  # off, at its own step()
            self._switches = switches[::-1]
            self._switch_room = self._switches.pop() if self._switches else -1
            norms = bool(uses) and min(uses) == 0
        if forward != (self._forward_handle is not None):
            if forward:
                self._forward_handle = self.model.register_forward_pre_hook(self._on_forward_hook, with_kwargs=True)
            else:
                self._forward_handle.remove()
                self._forward_handle = None
        if not self._opt_hooks:
            return
        if self._post_handle is not None and self._update_first is not None:  # on till the loop's order is seen
            self._post_handle.remove()
            self._post_handle = None
        if norms != (self._pre_handle is not None):
            if norms:
                self._pre_handle = self.optimizer.register_step_pre_hook(self._before_update_hook)
            else:
                self._pre_handle.remove()
                self._pre_handle = None

    def _switch_pre_hook(self) -> None:
        """The lane reached a step where the optimizer's step pre-hook goes on (the next update uses it) or off."""
        if self._pre_handle is None:
            self._pre_handle = self.optimizer.register_step_pre_hook(self._before_update_hook)
        else:
            self._pre_handle.remove()
            self._pre_handle = None
        self._switch_room = self._switches.pop() if self._switches else -1

    def _lane_room(self, step: int, limit: int, lane_norms: bool) -> tuple[int, bool]:
        """The lane from ``step`` (whose own wants allow it), in a few sums: up to ``limit`` steps, short of the
        next step that wants the forward hook (or, unless ``lane_norms``, the norms), through the next a hook
        needs. Also whether its last step is one a hook needs."""
        assert self._nexts is not None
        state = self.state
        stop = step + limit  # the first step past the lane
        if self._unscheduled or not self._learned:  # the forward hook on every step
            return 1, bool(self._nexts) and any(ahead(step) == step for ahead in self._nexts)
        for ahead in self._next_forwards:
            stop = min(stop, max(ahead(step + 1), step + 1))
        if self._samples is None and self._epoch_steps is not None and state.iteration + 1 < self._epoch_steps:
            stop = min(stop, step + self._epoch_steps - 1 - state.iteration)  # an epoch's last step: batch unseen
        if not lane_norms and self.grad_norms:
            stop = min(stop, step + 1 + (-(step + 1)) % self.grad_norm_every)
        needed_at = min((int(ahead(step)) if ahead(step) != math.inf else stop for ahead in self._nexts),
                        default=stop)
        if needed_at < stop:
            return needed_at - step + 1, True
        return stop - step, False

    def _wants(self, step: int, iteration: int) -> tuple[bool, bool]:
        """What ``step`` (the ``iteration``-th of its epoch, from 0) needs of our hooks: the forward pre-hook (an
        instrument measures it; the first batch is unread; or it is an epoch's last step whose length is known
        but not its samples, so its batch may be short), and the gradient norms."""
        measures = any(scheduled(step) for scheduled in self._schedules)
        last = self._samples is None and self._epoch_steps is not None and iteration + 1 == self._epoch_steps
        # (on till the loop's order is seen at its first update, so that the step under way is known then)
        forward = measures or bool(self._unscheduled) or not self._learned or last or \
            (self._update_first is None and self._opt_hooks)
        return forward, self.grad_norms and (measures or step % self.grad_norm_every == 0 or step == 1)

    @property
    def _keeps_before(self) -> bool:
        return bool(self._befores) and self._befores[0].keeps_before

    def _wants_before(self, step: int) -> bool:
        return any(hook.keeps_before and hook.needs_before(step) for hook in self._befores)

    def _places_before(self, step: int, room: int) -> set[int]:
        """The places in a lane of ``room`` steps from ``step`` where a hook wants before_update (a hook that says
        its next such step, ``next_before``, is asked step to step; another, at every place)."""
        places: set[int] = set()
        for hook in self._befores:
            if not hook.keeps_before:
                continue
            ahead = getattr(hook, "next_before", None)
            if ahead is None:
                places.update(p for p in range(room) if hook.needs_before(step + p))
                continue
            at = ahead(step)
            while at < step + room:
                if hook.needs_before(at):
                    places.add(at - step)
                at = ahead(at + 1)
        return places

    def _pre_update(self, step: int) -> None:
        """Before ``step``'s update (the optimizer's step pre-hook): each hook's before_update where wanted, once."""
        if step == self._before_step:
            return
        self._before_step = step
        self._busy = True
        try:
            for hook in self._befores:
                if hook.keeps_before and hook.needs_before(step):
                    hook.before_update(self.state, step)
        finally:
            self._busy = False

    def _lane_norm(self, place: int) -> None:
        """The optimizer's step pre-hook in the lane, at the lane's ``place`` where norms are due: take them (on
        the device); the next due place is the first past it."""
        present = self.log.grad_norms()
        self._lane_norms.append((place, self.state.param_grad_norms, present))
        while self._due <= place:
            self._due += self.grad_norm_every
        if self._due >= len(self._lane) + self._room:
            self._due = -1

    def _drain(self, check: bool = True, last_needed: bool = False) -> None:
        """File the lane's steps: their rows in one pass, then each hook's on_steps_end with their rows (with
        ``last_needed``, the last step's on_step_end on its own instead); with ``check``, read the host where the
        last of them is due a read (every ``log_every`` steps)."""
        losses = self._lane
        if not losses:
            return
        state, n = self.state, len(losses)
        lrs, norms = self._lane_lrs, self._lane_norms
        self._lane, self._lane_lrs, self._lane_norms = [], [], []
        if norms and norms[-1][0] >= n:  # taken by the pre-hook for the step under way, which is not among them
            self._lane_norms = [(place - n, values, present) for place, values, present in norms if place >= n]
            norms = [entry for entry in norms if entry[0] < n]
        start = len(state.history.steps)
        state.param_grad_norms = None  # no norms in their rows (NaN: not measured)
        sizes = [state.plan.batch_size] * n
        last = (self._epoch_steps or 0) - 1 - state.iteration  # an epoch's last step among them: its batch may be short
        if 0 <= last < n:
            sizes[last] = self._planned_size(state.iteration + last)
        self.log.record_steps(losses, lrs, sizes, norms)
        state.step += n
        state.iteration += n
        rows = range(start, start + n - 1 if last_needed else start + n)
        self._busy = True
        try:
            if rows:
                for end in self._block_ends:
                    end(state, rows)
            if last_needed:  # its norms, if the lane took them, as on_step_end finds a step's
                state.param_grad_norms = norms[-1][1] if norms and norms[-1][0] == n - 1 else None
                for handler in self._handlers["on_step_end"]:
                    handler(state)
        finally:
            self._busy = False
        if check and (state.step % self.log_every == 0 or self.log.diverged_at is not None):
            self._check()

    def _fill_lane(self, table: Any) -> None:
        """The history's first filler: a read mid-lane drains it (and shuts it till the next step plans it
        again: the steps after the read are still to come)."""
        if self._lane:
            self._drain(check=False)
            self._room, self._quiet = 0, False  # the next step on the full path (it reads its norms if due)

    def epoch_end(self, val_loss: float | None = None, **metrics: float) -> None:
        """Close an epoch: its record (``train_loss``, ``val_loss`` and any other ``val_...`` metrics given, as
        :func:`gdlab.fit` records them) lets the validation-based findings (overfitting) work."""
        self._check_open()
        if self._follower:  # rank zero records the epoch (pass it the validation over every rank's data)
            self._agree()
            return
        self._drain(check=False)
        # the next step on the full path (it reads its norms if due), then planned again in the new epoch
        self._room, self._quiet = 0, False
        self._flush_pending()
        self._check()
        if self._ranks is not None:
            self._agree()
        state = self.state
        if state.stop_reason is not None:  # diverged: close() records the epoch's part before it, as fit does
            return
        if self._epoch_steps is None and state.iteration:  # the first epoch tells the epoch's length
            self._epoch_steps = state.iteration
            state.plan = self._plan(state.plan.batch_size)
        row: dict[str, float] = {"epoch": state.epoch + 1, "step": state.step,
                                 "train_loss": state.epoch_loss_sum / state.epoch_samples if state.epoch_samples
                                 else math.nan}
        if val_loss is not None:
            row["val_loss"] = float(val_loss)
        row.update({(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in metrics.items()})
        row["seconds"] = time.perf_counter() - self._started_at
        state.history.epochs.append(row)
        self._emit("on_epoch_end")
        state.epoch += 1
        state.iteration = state.epoch_samples = 0
        state.epoch_loss_sum = 0.0
        self._emit("on_epoch_start")

    def close(self, status: str = "finished") -> Result:
        """End the watch: the hooks come off the model and the optimizer, the doctor diagnoses the run, the store
        records it. Returns the report: a :class:`~gdlab.loop.Result` as :func:`gdlab.fit` returns it
        (``findings``, ``remedies``, ``history``, ``final``...). Closing again returns the same report."""
        if self.report is not None:
            return self.report
        if self._follower:
            return self._close_following(status)
        state = self.state
        try:
            self._drain(check=False)
            self._room = 0
            self._flush_pending()
            self._check()
            self.log.close()
            if state.epoch_samples:  # a part of an epoch after the last epoch_end(): recorded, as fit records it
                self._end_partial_epoch()
            state.seconds = time.perf_counter() - self._started_at
            state.total_steps = state.step
            self._emit("on_fit_end")
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            self._unhook()
        epochs = state.history.epochs
        final: dict[str, float | None] = {"train_loss": epochs.last("train_loss", state.last_loss)}
        final["val_loss"] = epochs.last("val_loss") if "val_loss" in epochs else None
        final.update({k: epochs.last(k) for k in epochs.columns if k.startswith("val_") and k != "val_loss"})
        final = {k: (None if v is not None and math.isnan(v) else v) for k, v in final.items()}
        findings = self.physician.findings if self.physician and self.doctor_on else []
        remedies = self.physician.remedies if self.physician else []
        if self.recorder is not None and self.store is not None:
            self.store.update_config(self.recorder.run_id, {**self._config, "batch_size": state.plan.batch_size,
                                                            "doctor_meta": self._doctor_meta()})
            self.recorder.checkpoint(state)
            self.recorder.finish(state, status, final, findings, remedies)
        if self.board is not None:
            self.board.close(findings, remedies)
        self.report = Result(self.model, state.history, final, state.lr, state.run_id, state.seconds, state.plan,
                             status, state.stop_reason, state.step, findings=list(findings),
                             remedies=list(remedies))
        if self._ranks is not None:  # the other ranks get the report's findings, remedies and verdict
            self._agree()
            distributed.broadcast({"final": final, "lr": state.lr, "status": status, "steps": state.step,
                                   "stop_reason": state.stop_reason, "findings": list(findings),
                                   "remedies": list(remedies)})
        return self.report

    def _close_following(self, status: str) -> Result:
        """close() on a rank that follows: rank zero's report (its findings, remedies, final values and verdict),
        with this rank's model and an empty history (rank zero's is the record; its store has the run)."""
        self._agree()
        told = distributed.broadcast(None)
        self._closed = True
        if self._unclip is not None:
            self._unclip()
            self._unclip = None
        state = self.state
        self.report = Result(self.model, state.history, told["final"], told["lr"], None,
                             time.perf_counter() - self._started_at, state.plan, told["status"],
                             told["stop_reason"], told["steps"], findings=told["findings"],
                             remedies=told["remedies"])
        return self.report

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is None:
            self.close()
        elif self.report is None:
            self._fail(error)

    @property
    def history(self) -> History:
        """What the run has recorded so far."""
        return self.state.history

    @property
    def stop_reason(self) -> str | None:
        """Why the run should stop (a divergence nothing repaired), as :func:`gdlab.fit` would have; else None."""
        return self.state.stop_reason

    @property
    def run_id(self) -> str | None:
        """The run's id in the store, or None without one."""
        return self.state.run_id

    # -- the hooks -----------------------------------------------------------------------------------------------
    def _on_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A forward pass of the model with gradients on: the next step starts (its batch is what the model got)."""
        if (self._started and not self._pending) or self._busy or self._closed or not torch.is_grad_enabled():
            return
        if self._pending:  # the last update's step got no step() call: the optimizer's hooks end the steps
            self._auto = True
            self._finish(None, None)
        if not self._started:
            self._inputs = args[0] if len(args) == 1 and not kwargs else (dict(kwargs) if not args else args)
            self._begin(self._inputs)

    def _before_update(self) -> None:
        """The optimizer's step pre-hook: the gradient norms, before the update changes anything."""
        if self._busy:
            return
        if self._pending:
            self._auto = True
            self._finish(None, None)
        if self._manual and not self._started and not self._update_first:
            return  # step() came before this update and ended the step: these gradients are filed already
        # a step under way (with step() after the update, one whose forward pass had no hook: its norms are read
        # here, before the loop may zero the gradients)
        self._begin(None)
        if self.grad_norms and not self._normed:
            self._take_norms()

    def _after_update(self) -> None:
        """The optimizer's step post-hook: the step is taken; its loss comes with step(), if it is called."""
        if self._busy or not self._started:
            return  # step() came before the update and ended the step
        if self._auto:
            self._finish(None, None)
        else:  # step() ends it, or (the first step, when step() never comes) the next forward pass or update
            self._pending = True

    # -- the step ------------------------------------------------------------------------------------------------
    def _begin(self, inputs: Any) -> None:
        """Emit ``on_step_start`` once per step (the periodic instruments arm their hooks on the forward pass)."""
        if self._started:
            return
        self._started = True
        if self._quiet:  # no forward hook this step: no instrument measures it, none needs telling
            return
        state = self.state
        if self._handlers["on_step_start"] and state.stop_reason is None:  # diverged: nothing more is measured
            state.batch = (inputs, None) if inputs is not None and _countable(inputs) else None
            self._emit("on_step_start")

    def _take_norms(self) -> None:
        """The gradient norms of this step, where they are due: the first step, every ``grad_norm_every``-th, and a
        step a periodic instrument measures (it reads the norm); else the row has none."""
        self._normed = True
        step = self.state.step + 1
        if step % self.grad_norm_every == 0 or step == 1 or \
                (self._wanting and any(getattr(i, "due", False) for i in self._wanting)):
            self.log.grad_norms()
        else:
            self.state.param_grad_norms = None  # the row has none (NaN: not measured)

    def _finish(self, loss: Tensor | None, batch: Any) -> None:
        """The step's record: norms (if the pre-hook did not take them), the row, ``on_step_end``, the reads."""
        state = self.state
        if not self._started:
            self._begin(None)
        if state.stop_reason is not None:  # diverged, unrepaired: nothing more is recorded
            self._started = self._normed = self._pending = False
            self._inputs = None
            return
        if not self._normed and self.grad_norms:
            self._take_norms()
        if batch is None:
            x, y = self._inputs, None
            if isinstance(x, Tensor) and x.dim():  # the common case, without walking a tree
                state.batch, samples = (x, None), x.shape[0]
            else:
                state.batch = (x, None) if x is not None and _countable(x) else None
                samples = structure.count(x) if state.batch is not None else self._planned_size(state.iteration)
        else:
            x, y = structure.split(batch, self.target_key)
            if y is not None:
                x = structure.tree_map(lambda t: t.to(state.device), x)
                y = y.to(state.device)
            state.batch = (x, y) if x is not None and _countable(x) else None
            samples = len(y) if y is not None else structure.count(x) if state.batch is not None else \
                state.plan.batch_size
        if not self._learned and state.batch is not None:
            self._learn(x, y, samples)
        state.step += 1
        state.iteration += 1
        self.log.record(loss.detach() if isinstance(loss, Tensor) else None, samples)
        self._emit("on_step_end")
        self._started = self._normed = self._pending = False
        self._inputs = None
        if state.step % self.log_every == 0 or self.log.diverged_at is not None:
            self._check()
        state.batch = None

    def _planned_size(self, iteration: int) -> int:
        """The batch size of the epoch's ``iteration``-th step (from 0) where its inputs went unseen (no forward
        hook on it): the plan's, the short last batch of an epoch where a loader told the data set's size."""
        plan = self.state.plan
        if self._samples is not None and self._epoch_steps is not None and iteration + 1 == self._epoch_steps:
            last = self._samples - (self._epoch_steps - 1) * plan.batch_size
            if 0 < last <= plan.batch_size:
                return last
        return plan.batch_size

    def _flush_pending(self) -> None:
        if self._pending:
            self._finish(None, None)

    def _check(self) -> None:
        """Read the pending values; a non-finite loss goes to the doctor (a rollback with ``rollback=True``), else
        the run is marked diverged (``stop_reason``), as :func:`gdlab.fit` marks it."""
        log, state = self.log, self.state
        log.fetch()
        if log.diverged_at is None:
            return
        row, log.diverged_at = log.diverged_at, None
        steps = state.history.steps
        loss, step = steps["loss"][row], int(steps["step"][row])
        if row == len(steps) - 1 and state.batch is not None:  # the diverging step's own batch is at hand
            for part, value, tree in (("inputs", 1.0, state.batch[0]), ("targets", 2.0, state.batch[1])):
                bad = non_finite(tree) if tree is not None else 0
                if bad:  # NaN or inf in the data: no learning rate helps, so no remedy is tried
                    steps.put("bad_data", row, value)
                    steps.put("bad_data_count", row, float(bad))
                    steps.truncate(row + 1)
                    state.step, state.last_loss = step, loss
                    state.stop(f"diverged: the batch of step {step} has {bad} NaN or inf values in its {part}: a "
                               "data problem, not the learning rate; clean or impute the data")
                    return
        if state.stop_reason is not None or any([getattr(h, "on_diverge", _never)(state) for h in self.hooks]):
            return
        # nothing repaired it: the record ends at the first non-finite loss, as fit's does (the steps after it
        # say nothing more), and later steps are not recorded; the loop may break on stop_reason
        steps.truncate(row + 1)
        state.step, state.last_loss = step, loss
        state.stop(f"diverged: the loss became {loss} at step {step}; the learning rate is likely too large")

    def _emit(self, event: str) -> None:
        """Call the hooks; their own passes (the instruments', the doctor's) are not steps of the loop."""
        self._busy = True
        try:
            for handler in self._handlers[event]:
                handler(self.state)
        finally:
            self._busy = False

    def _end_partial_epoch(self) -> None:
        state = self.state
        state.history.epochs.append({"epoch": state.epoch + 1, "step": state.step,
                                     "train_loss": state.epoch_loss_sum / state.epoch_samples if state.epoch_samples
                                     else math.nan, "seconds": time.perf_counter() - self._started_at})

    def _unhook(self) -> None:
        self._closed = True
        for handle in (self._forward_handle, self._pre_handle, self._post_handle):
            if handle is not None:
                handle.remove()
        self._forward_handle = self._pre_handle = self._post_handle = None

    def _fail(self, error: BaseException) -> None:
        """The loop failed: the hooks come off, what was measured is kept, the stored run is marked failed."""
        self._unhook()
        self._room = 0
        try:
            self._drain(check=False)
        except Exception:
            pass
        try:
            self.log.close()
        except Exception:
            pass
        for hook in self.hooks:
            close = getattr(hook, "close", None)
            if close is not None:
                close()
        if self.physician is not None:  # the doctor's clipping comes off the optimizer
            try:
                self.physician.on_fit_end(self.state)
            except Exception:
                pass
        if self.recorder is not None:
            self.recorder.fail(self.state, error, time.perf_counter() - self._started_at)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidParameter("watch", "closed", "an open watch (close() was called)")

    # -- what the doctor reads besides the numbers ---------------------------------------------------------------
    def _forward(self, model: Any, x: Any, y: Tensor) -> tuple[Tensor, Any]:
        assert self.loss_fn is not None and self.loss_name is not None
        return batch_loss(model, x, y, self.loss_fn, self.loss_name, self.target_key)

    def _plan(self, batch_size: int) -> BatchPlan:
        """The plan as known: the epoch's length as given or learned (else 20 steps: the doctor checks every 10)."""
        steps = self._epoch_steps or 20
        samples = self._samples or batch_size * steps
        return BatchPlan(samples, batch_size, steps, batch_size)

    def _meta(self, batch_size: int | None) -> dict[str, Any]:
        group = self.optimizer.param_groups[0]
        owners = [m for m in self.model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        return {"lr": group.get("lr"), "momentum": group.get("momentum"), "batch_size": batch_size,
                "samples": self._samples, "convex": len(owners) == 1 and isinstance(owners[0], nn.Linear)}

    def _doctor_meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.state.history.meta.items() if k not in ("lr", "momentum")}

    def _learn(self, x: Any, y: Tensor | None, samples: int) -> None:
        """From the first batch (read once): the batch size, the task and classes, the inputs' scales."""
        self._learned = True
        state, meta = self.state, self.state.history.meta
        for part, tree in (("inputs", x), ("targets", y)):  # the data checked first, as fit checks it
            bad = non_finite(tree) if tree is not None else 0
            if bad:
                plural = "s" if bad != 1 else ""
                error = DataError(f"the first batch has {bad:,} non-finite value{plural} in its {part} (NaN or inf): "
                                  "expected finite numbers; clean or impute them")
                self._fail(error)  # the hooks come off, a stored run is marked failed
                raise error
        size = self._given[0] or samples
        if state.plan.batch_size != size:
            state.plan = self._plan(size)
        meta["batch_size"] = size
        if meta.get("samples") is None:
            meta["samples"] = state.plan.samples
        if y is not None and len(y):
            task = infer_task(y)
            meta["task"] = task
            if task == "classification" and not y.is_floating_point():
                meta["num_classes"] = int(y.max()) + 1
        features = structure.float_features(x)
        if self.physician is not None and features is not None and len(features) > 1:
            meta["feature_scales"] = input_scales(features)


def hyperparameters(optimizer: Any) -> list[dict[str, float]]:
    """Each param group's numeric settings (``lr``, ``momentum``...): what the doctor's remedies change, and what
    rank zero's watch tells the other ranks with ``remedy="auto"``."""
    return [{k: v for k, v in group.items() if k != "params" and isinstance(v, (int, float))}
            for group in optimizer.param_groups]


def max_norm(watched: Watch) -> float | None:
    """The norm the doctor's latest ``clip_norm`` remedy clips the gradients to, or None."""
    remedies = watched.physician.remedies if watched.physician is not None else []
    for remedy in reversed(remedies):
        if remedy.action == "clip_norm":
            return float(remedy.params["max_norm"])
    return None


def _scalar_loss(loss: Any) -> Tensor | None:
    """The loss given to :meth:`Watch.step` as a scalar tensor (a number made one), or a one-line error."""
    if loss is None or (isinstance(loss, Tensor) and loss.numel() == 1):
        return loss
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return torch.tensor(float(loss))
    if isinstance(loss, Tensor):
        raise InvalidParameter("loss", f"a tensor of shape {list(loss.shape)}",
                               "the step's scalar loss (0-dim or one element): e.g. doctor.step(losses.mean())")
    raise InvalidParameter("loss", type(loss).__name__, "the step's loss, a scalar tensor or a number")


def _answers(hook: Any, event: str) -> bool:
    """Whether ``hook`` answers ``event``: it has the method, and not as :class:`~gdlab.loop.Callback`'s no-op."""
    return hasattr(hook, event) and getattr(type(hook), event, None) is not getattr(loop.Callback, event, None)


def _countable(inputs: Any) -> bool:
    """Whether ``inputs`` hold a batch of samples (a tensor with a first dimension among its leaves)."""
    if isinstance(inputs, Tensor):
        return inputs.dim() > 0
    first = next(iter(structure.leaves(inputs)), None)
    return first is not None and first.dim() > 0


def _maybe_len(value: Any) -> int | None:
    try:
        return len(value) if value is not None else None
    except TypeError:
        return None


def _never(state: Any) -> bool:
    return False
