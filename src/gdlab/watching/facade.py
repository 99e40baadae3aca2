"""The facade of :func:`gdlab.watch`: :func:`watch`, and :class:`Watch`'s ``step``, ``epoch_end`` and ``close``
(the package's docstring tells the whole; the step's phase is tracker.py's, the lanes lanes.py's, the ranks
follower.py's)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gdlab import distributed, loop
from gdlab.config import check_settings
from gdlab.data import BatchPlan, structure
from gdlab.doctor import Doctor, explain
from gdlab.errors import InvalidParameter, check_int
from gdlab.instruments import attach, unwrap
from gdlab.loop import LoopState, Result, StepLog
from gdlab.problem import LOSSES, LossFn, batch_loss, resolve_loss
from gdlab.records import History
from gdlab.run import Run, describe, start_meta
from gdlab.store import Store
from gdlab.watching.datachecks import BatchCheck
from gdlab.watching.follower import RankFollower
from gdlab.watching.invariants import ModeCheck, ScheduleCheck, SetupCheck, UpdateCheck, ZeroGradCheck
from gdlab.watching.lanes import LanePlanner
from gdlab.watching.tracker import Phase, StepTracker

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

    def take_snapshot(self, state: LoopState) -> None:
        if self.rollback:
            super().take_snapshot(state)

    def roll_back(self, state: LoopState, lr: float, new: float, reason: str, *, counted: bool = True) -> None:
        if self.rollback:
            super().roll_back(state, lr, new, reason, counted=counted)
            return
        self.set_lr(state, new, f"{reason.split(':')[0]}: lowered the learning rate {lr:.3g} -> {new:.3g} (no "
                    "rollback: watch keeps no snapshot unless rollback=True)")


class Watch(StepTracker, LanePlanner):
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
        check_settings(remedy=remedy, doctor=doctor, ranks=ranks, rollback=rollback, log_every=log_every,
                       grad_norm_every=grad_norm_every)  # the one check of the settings (gdlab.config)
        # several processes (torchrun): rank zero watches, the others follow (unless told this process is alone)
        group = distributed.current() if ranks else None
        if rollback and group is not None:
            raise InvalidParameter("rollback", rollback, "one process (under several, a rollback would change rank "
                                   "zero's model alone; gdlab.fit rolls back on every rank)")
        self.log_every, self.grad_norm_every = log_every, grad_norm_every
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
        self.loss_fn, self.loss_name, mean = _loss_of(loss_fn)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        history = History()
        # the lane's steps (step()) reach the table before the log's filler reads it: a read sees every step
        history.steps.defer(self._fill_lane)
        self._init_lane()  # the lane's state (lanes.py): empty, shut
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
        self._ranks = RankFollower(group, optimizer, auto=remedy == "auto", log_every=self.log_every) \
            if group is not None else None
        self._follower = self._ranks is not None and not self._ranks.main
        # the inputs (and targets, given to step()) of the steps whose loss is still unread: references, no copy,
        # until the read that tests the diverging step's batch (loop.data_cause)
        self._held = loop.HeldBatches()
        self._began_at = time.perf_counter()
        self._zero_check: ZeroGradCheck | None = None
        self._batch_check: BatchCheck | None = None  # what the loss is fed, the first batches (datachecks.py)
        if self._follower:  # another rank: rank zero watches, records and diagnoses; this one follows its decisions
            self._follow()
            return
        self._open_record(remedy, rollback, store, name, config, batch_size, steps_per_epoch, tensorboard, callbacks)
        self.hooks: list[Any] = self.run.hooks if self.run is not None else []
        # the one dispatcher (gdlab.loop.Hooks): which hooks answer each hook, and their plan, decided here once
        self._dispatch = loop.Hooks(self.hooks)
        self._handlers, wants = self._dispatch.handlers, self._dispatch.plan
        self.log.keep_param_norms = wants.param_norms  # a hook reads them (Callback.reads_param_norms)
        # THE LANE: the steps that need no hook of ours and no hook's on_step_end one by one are filed by step() in
        # a few reads, and drained in blocks (their rows, each hook's on_steps_end). A hook with an on_step_end
        # opens it by saying which steps it needs (needs_step) and taking the others in blocks (on_steps_end);
        # one that does not (a user's callback, the expensive instruments) keeps every step on the full path
        self._lane_open, self._block_ends, self._needs = wants.lane, wants.block_ends, wants.needs
        # where every hook says the next step it needs in one call, the lane's length is a few sums (_lane_room)
        self._nexts = wants.nexts
        # hooks that keep something before an update (the cheap instrument's parameters before a measured step)
        # where the loop sees the update coming: the optimizer's step pre-hook, with step() after the update
        self._befores = wants.befores
        self._before_step = 0  # the step whose before_update calls are made
        self.grad_norms = bool(self.watching) or self.physician is not None
        # where the step stands: started (on_step_start emitted), norms taken, an update awaiting its loss
        self._phase, self._normed = Phase.IDLE, False
        self._manual = False  # step() has been called: it ends each step
        self._auto = False  # step() is never called: the optimizer's post-hook ends each step
        self._inputs: Any = None  # the step's inputs, as the model's forward pass saw them
        self._learned = False  # the first batch told the meta (batch size, task, input scales)
        self._closed = False
        self._busy = False  # inside a hook of ours: a forward pass or update there is not the loop's
        self.report: Result | None = None
        self._put_hooks(hooks)
        # instruments told at the start of each step whatever happens (an on_step_start without a schedule)
        self._unscheduled, self._schedules, self._next_forwards = wants.unscheduled, wants.schedules, \
            wants.next_forwards
        self._quiet = False  # step() ends the steps and the next one needs no on_step_start (_plan_hooks)
        self._emit("on_fit_start")
        self._emit("on_epoch_start")

    def _open_record(self, remedy: str, rollback: bool, store: Store | str | Path | None, name: str | None,
                     config: dict[str, Any] | None, batch_size: int | None, steps_per_epoch: int | None,
                     tensorboard: str | Path | None, callbacks: Sequence[Any]) -> None:
        """The watching rank's run (gdlab.run.Run, as fit's): the doctor, the board, the store's record, the hooks
        in their one order."""
        state = self.state
        # instruments that measure on some steps (the periodic ones: ``due``): those steps read the norms too
        self._wanting = [i for i in self.watching if loop.answers(i, "on_step_start")]
        self.physician = _WatchDoctor(remedy, rollback=rollback) if self.doctor_on or remedy == "auto" else None
        self.run: Run | None = Run(state, doctor=self.physician, diagnose=self.doctor_on, watching=self.watching,
                                   callbacks=callbacks, store=store, tensorboard=tensorboard)
        self.board, self.store = self.run.board, self.run.store
        self._config = dict(config or describe(self.model, self.optimizer, lr=state.lr,
                                               momentum=self.optimizer.param_groups[0].get("momentum"),
                                               batch_size=batch_size, loss=self.loss_name, loop="watch"))
        plan = state.plan.to_dict() if self._samples is not None and steps_per_epoch is not None else None
        self.run.record(self._config, plan=plan, name=name)
        self.recorder = self.run.recorder

    def _put_hooks(self, hooks: bool) -> None:
        """The model's forward pre-hook, the optimizer's step hooks (``hooks``) and the loop's invariant checks."""
        on_forward, before_update, after_update = _step_hooks(self)  # plain functions: see there
        self._before_update_hook = before_update
        self._forward_wanted = True  # the forward pre-hook's full work (the planner says on which steps)
        self._forward_handle: Any = self.model.register_forward_pre_hook(on_forward, with_kwargs=True)
        self._pre_handle: Any = None
        self._post_handle: Any = None
        # the loop's own invariants, checked at its first updates (invariants.py: a missing zero_grad()), their
        # evidence put in the history's meta at the next read, where the doctor finds it
        self._zero_check = ZeroGradCheck(self.model, self.optimizer) if self.doctor_on else None
        size = self._given[0]  # a loader of one batch, or a batch the data set's size: full-batch descent
        whole = self._epoch_steps == 1 or (size is not None and self._samples is not None and size >= self._samples)
        self._batch_check = BatchCheck(self.model, self.loss_name, whole_data=whole) if self.doctor_on else None
        self._setup_check = SetupCheck(self.model, self.optimizer) if self.doctor_on else None  # once, 1st update
        self._update_check = UpdateCheck(self.model, self.optimizer) if self.doctor_on else None  # 1st updates
        # the lr at ~0 inside the first epoch (the epoch's length as known: a loader's, given, or learned)
        self._schedule_check = ScheduleCheck(self._epoch_steps, share=1.0, of="the first epoch") \
            if self.doctor_on else None
        self._mode_check = ModeCheck(self.model) if self.doctor_on else None  # the passes without gradients
        self._checks_hooked = self.doctor_on
        self._opt_hooks = hooks and hasattr(self.optimizer, "register_step_post_hook")
        if self._opt_hooks:
            self._pre_handle = self.optimizer.register_step_pre_hook(before_update)
            self._post_handle = self.optimizer.register_step_post_hook(after_update)

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
            if self._checks_hooked and self._hooks_due():  # a check's hooks off at the step it is done with them,
                self._note_invariants(read=False)  # not at the lane's end (host-side: no read)
            if self._ranks is not None:
                self._ranks.count(self)
            return
        if self._closed:
            self._check_open()
        loss = _scalar_loss(loss)
        if self._follower:
            assert self._ranks is not None
            self._ranks.count(self)
            return
        self._drain()  # a step given its batch in the lane: the steps before it first
        self._room = 0
        if self._hooks_due():  # the checks' hooks off once they have seen what they need
            self._note_invariants(read=False)
        if self._lane_norms:  # the lane's pre-hook read this step's norms before the update (the loop may have
            own = self._lane_norms[0]  # zeroed the gradients since): they are its own
            self._lane_norms = []
            if own[0] == 0:
                self.log.use_norms(own[1], own[2])
                self._normed = True
        if self._update_first is None and (self._phase is Phase.UPDATED or not self._opt_hooks):
            self._learn_order(self._phase is Phase.UPDATED)  # did the update come before this call? (without the
        self._manual = True  # optimizer's hooks, the first call says: none seen, so step() before the update)
        if self._quiet and batch is None and self._phase is Phase.IDLE:
            self._quiet_step(loss)
        else:
            self._finish(loss, batch)  # after the update (pending), or before it: either way the step is this one
        self._plan_hooks()
        if self._ranks is not None:
            self._ranks.count(self)

    def inputs(self, batch: Any) -> None:
        """Say that a step starts, with ``batch`` (its inputs, or ``(inputs, target)``), where the loop's forward
        pass is not the watched module's own (a LightningModule whose ``training_step`` calls ``self.net(x)``): the
        step then starts as the module's forward pre-hook would start it, and the periodic instruments ride on it
        (the dead and saturated units, the gradient at each layer). Where the module's own forward pass runs too,
        the step has started already and this only holds the batch; held either way, it is what the divergence
        check tests (a NaN batch is named as the data). The Lightning callback calls it with each batch.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
            >>> w = watch(net, torch.optim.SGD(net.parameters(), lr=0.1), doctor=False)
            >>> x = torch.randn(4, 2)
            >>> w.inputs((x, torch.zeros(4))); net(x).sum().backward(); w.optimizer.step()
            >>> w.step(torch.tensor(1.0)); w.close().history.steps.last("step")
            1.0
        """
        if self._closed or self._follower or self._busy:
            return
        x, y = structure.split(batch, self.target_key)
        if self.state.stop_reason is None and torch.is_grad_enabled():  # held as the forward pre-hook holds it:
            self._hold(self.state.step + len(self._lane) + 1, x, y)  # the divergence check tests it (data_cause)
        if self._phase is Phase.STARTED or not self._forward_wanted:
            return
        if x is not None:
            self._on_forward((x,), {})


    def _follow(self) -> None:
        """This rank follows rank zero (several processes): no hooks, instruments, doctor, store or board; step()
        counts the calls and takes rank zero's decisions where the ranks agree."""
        self.watching, self._wanting, self.hooks, self.physician, self.board = [], [], [], None, None
        self._dispatch = loop.Hooks()
        self.store, self.recorder, self.run = None, None, None
        self._forward_handle = self._pre_handle = self._post_handle = None
        self._closed = False
        self.report = None
        self._started_at = time.perf_counter()

    def epoch_end(self, val_loss: float | None = None, **metrics: float) -> None:
        """Close an epoch: its record (``train_loss``, ``val_loss`` and any other ``val_...`` metrics given, as
        :func:`gdlab.fit` records them) lets the validation-based findings (overfitting) work."""
        self._check_open()
        if self._follower:  # rank zero records the epoch (pass it the validation over every rank's data)
            assert self._ranks is not None
            self._ranks.agree(self)
            return
        self._drain(check=False)
        # the next step on the full path (it reads its norms if due), then planned again in the new epoch
        self._room, self._quiet = 0, False
        self._flush_pending()
        self._check()
        if self._ranks is not None:
            self._ranks.agree(self)
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
        row["seconds"] = time.perf_counter() - self._began_at
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
            state.seconds = time.perf_counter() - self._began_at
            state.total_steps = state.step
            self._emit("on_fit_end")
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            self._unhook()
        epochs = state.history.epochs  # the validation values the loop gave epoch_end()
        given = [k[4:] for k in epochs.columns if k.startswith("val_") and k != "val_loss"]
        final = loop.final_metrics(state, given if given or "val_loss" in epochs else None)
        assert self.run is not None
        self.report = self.run.end(final, status, checkpoint=True, model=self.model,
                                   described={**self._config, "batch_size": state.plan.batch_size})
        findings, remedies = self.report.findings, self.report.remedies
        if self._ranks is not None:  # the other ranks get the report's findings, remedies and verdict
            self._ranks.agree(self)
            self._ranks.tell({"final": final, "lr": state.lr, "status": status, "steps": state.step,
                                   "stop_reason": state.stop_reason, "findings": list(findings),
                                   "remedies": list(remedies)})
        return self.report

    def _close_following(self, status: str) -> Result:
        """close() on a rank that follows: rank zero's report (its findings, remedies, final values and verdict),
        with this rank's model and an empty history (rank zero's is the record; its store has the run)."""
        assert self._ranks is not None
        self._ranks.agree(self)
        told = self._ranks.told()
        self._closed = True
        state = self.state
        self.report = Result(self.model, state.history, told["final"], told["lr"], None,
                             time.perf_counter() - self._began_at, state.plan, told["status"],
                             told["stop_reason"], told["steps"], findings=told["findings"],
                             remedies=told["remedies"],
                             diagnosis=explain(told["findings"], run_id=None, remedies=told["remedies"],
                                               steps=told["steps"]))
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
                                     else math.nan, "seconds": time.perf_counter() - self._began_at})

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
        return {**start_meta(self.model, self.optimizer), "batch_size": batch_size, "samples": self._samples}


def _step_hooks(watch: Watch) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    """``watch``'s model forward pre-hook and optimizer step pre- and post-hooks: plain functions, not bound methods:
    a deep copy of the model (the instruments make one) shares them instead of copying the watch, and they answer
    the user's model alone. They run on every step of the user's loop, so the usual case is decided in a few reads
    (docs/benchmarks.md: watch_overhead)."""
    def on_forward(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module is not watch.model:
            return
        if watch._busy:  # a pass of our own (an instrument's), not the loop's
            return
        if watch._forward_wanted and watch._phase is not Phase.STARTED:  # not a second pass
            watch._on_forward(args, kwargs)
        if torch.is_grad_enabled():  # the loop's step: its batch held for the divergence check (loop.HeldBatches)
            if watch.state.stop_reason is None:
                watch._held.hold(watch.state.step + len(watch._lane) + 1, (args, kwargs) if kwargs else args)
        elif watch._mode_check is not None:
            watch._mode_check.see(watch.state.step + len(watch._lane))  # a pass without gradients: validation?

    def before_update(opt: Any, args: Any, kwargs: Any) -> None:
        if watch._room:  # in the lane: the norms where due, before_update where wanted, else nothing
            if opt is watch.optimizer:
                place = len(watch._lane)
                if 0 <= watch._due <= place:  # due (past due: that step's update was skipped, as a
                    watch._lane_norm(place)  # GradScaler skips one on an overflow)
                if place in watch._before_places:
                    watch._pre_update(watch.state.step + place + 1)
            return
        if opt is not watch.optimizer or (watch._normed and watch._phase is not Phase.UPDATED):  # read already
            return
        if watch._keeps_before and watch._phase is not Phase.UPDATED and not watch._busy:
            watch._pre_update(watch.state.step + 1)
        if watch._phase is Phase.STARTED and not watch._busy:  # a step under way: its norms
            if watch.grad_norms:
                watch._take_norms()
        else:
            watch._before_update()

    def after_update(opt: Any, args: Any, kwargs: Any) -> None:
        if watch._update_first is None and opt is watch.optimizer and not watch._busy:
            watch._learn_order(watch._phase is not Phase.IDLE)  # the first update: in a step, or after step()
        if opt is watch.optimizer and watch._phase is not Phase.IDLE and not watch._busy:
            if watch._auto:
                watch._after_update()
            else:  # step() ends it, or (the first step, when step() never comes) the next forward or update
                watch._phase = Phase.UPDATED

    return on_forward, before_update, after_update


def _loss_of(loss_fn: str | LossFn | None) -> tuple[LossFn | None, str | None, bool]:
    """The loss the instruments' own passes take, its name, and whether it is a plain mean over the batch's samples
    (the per-sample instruments rely on it); (None, None, False) without one."""
    if loss_fn is None:
        return None, None, False
    fn, name = resolve_loss(loss_fn, "classification")
    mean = fn is LOSSES.get(name) or (isinstance(fn, _MEAN_LOSSES) and getattr(fn, "reduction", None) == "mean" and
                                      getattr(fn, "weight", None) is None)
    return fn, name, mean


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


def _maybe_len(value: Any) -> int | None:
    try:
        return len(value) if value is not None else None
    except TypeError:
        return None
