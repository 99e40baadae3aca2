"""The step tracker of :func:`gdlab.watch`: where the loop's step stands (one :class:`Phase`), what the model's
forward pre-hook and the optimizer's step hooks do, and how a step is filed (its row, ``on_step_end``, the reads).

A step goes IDLE -> STARTED (its forward pass or its update was seen: ``on_step_start`` emitted) -> UPDATED (the
update is taken; its loss comes with ``step()``) -> IDLE (filed). ``step()`` may also come before the update: the
step is then filed from STARTED.

Example:
    >>> [phase.name for phase in Phase]
    ['IDLE', 'STARTED', 'UPDATED']
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gdlab.data import infer_task, structure
from gdlab.doctor import run_settings, trace_activations
from gdlab.errors import DataError
from gdlab.loop import HeldBatches, settle_divergence
from gdlab.problem import non_finite
from gdlab.records import input_scales

__all__ = ["Phase", "StepTracker", "countable"]


class Phase(enum.Enum):
    """Where the step under way stands."""

    IDLE = "idle"  # between steps: the last one is filed
    STARTED = "started"  # its forward pass or update seen (on_step_start emitted), not yet updated
    UPDATED = "updated"  # the optimizer stepped; the step awaits its loss (step()) or the next step


class StepTracker:
    """The step's part of :class:`~gdlab.watching.Watch` (a mixin: the state is the watch's)."""

    _phase: Phase
    _update_first: bool | None
    _held: HeldBatches
    _zero_check: Any  # the watch's invariant check and hooks' handles (facade.py)
    _setup_check: Any = None  # the loop's setup, looked at once at the first update (invariants.SetupCheck)
    _batch_check: Any = None  # what the loss is fed and the first batches hold (datachecks.BatchCheck)
    _update_check: Any = None  # whether the first updates move anything (invariants.UpdateCheck)
    _schedule_check: Any = None  # whether the lr reaches ~0 inside the first epoch (invariants.ScheduleCheck)
    _mode_check: Any = None  # whether validation runs in train() mode (invariants.ModeCheck)
    _checks_hooked = False  # a check still has hooks on the optimizer or parameters (the lane asks _hooks_due)
    _forward_handle: Any
    _pre_handle: Any
    _post_handle: Any

    if TYPE_CHECKING:  # a part of Watch: the attributes it reads are Watch's (facade.py)
        def __getattr__(self, name: str) -> Any: ...

    def _learn_order(self, update_first: bool) -> None:
        """The loop's order, seen at its first update (the step post-hook, on till then): the update inside the step,
        before step() (the usual loop), or after step() ended the step. A loop that accumulates gradients over
        several step() calls before its first update is told by that update, not by its first step()."""
        self._update_first = update_first
        if update_first and self._opt_hooks:  # the pre-hook sees the updates coming
            for hook in self._befores:
                hook.keeps_before = True

    def _hold(self, step: int, x: Any, y: Any) -> None:
        """Keep step ``step``'s batch for the divergence check (:class:`gdlab.loop.HeldBatches`, as fit's loop)."""
        self._held.hold(step, x, y)

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

    # -- the hooks -----------------------------------------------------------------------------------------------
    def _on_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A forward pass of the model with gradients on: the next step starts (its batch is what the model got)."""
        if self._phase is Phase.STARTED or self._busy or self._closed or not torch.is_grad_enabled():
            return
        if self._phase is Phase.UPDATED:  # the last update's step got no step() call: the optimizer's hooks end steps
            self._auto = True
            self._finish(None, None)
        if self._phase is Phase.IDLE:
            self._inputs = args[0] if len(args) == 1 and not kwargs else (dict(kwargs) if not args else args)
            self._begin(self._inputs)

    def _before_update(self) -> None:
        """The optimizer's step pre-hook: the gradient norms, before the update changes anything."""
        if self._busy:
            return
        if self._phase is Phase.UPDATED:
            self._auto = True
            self._finish(None, None)
        if self._manual and self._phase is Phase.IDLE and not self._update_first:
            return  # step() came before this update and ended the step: these gradients are filed already
        # a step under way (with step() after the update, one whose forward pass had no hook: its norms are read
        # here, before the loop may zero the gradients)
        self._begin(None)
        if self.grad_norms and not self._normed:
            self._take_norms()

    def _after_update(self) -> None:
        """The optimizer's step post-hook: the step is taken; its loss comes with step(), if it is called."""
        if self._busy or self._phase is Phase.IDLE:
            return  # step() came before the update and ended the step
        if self._auto:
            self._finish(None, None)
        else:  # step() ends it, or (the first step, when step() never comes) the next forward pass or update
            self._phase = Phase.UPDATED

    # -- the step ------------------------------------------------------------------------------------------------
    def _begin(self, inputs: Any) -> None:
        """Emit ``on_step_start`` once per step (the periodic instruments arm their hooks on the forward pass)."""
        if self._phase is not Phase.IDLE:
            return
        self._phase = Phase.STARTED
        if self._quiet:  # no forward hook this step: no instrument measures it, none needs telling
            return
        state = self.state
        if self._handlers["on_step_start"] and state.stop_reason is None:  # diverged: nothing more is measured
            state.batch = (inputs, None) if inputs is not None and countable(inputs) else None
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
        if self._phase is Phase.IDLE:
            self._begin(None)
        if state.stop_reason is not None:  # diverged, unrepaired: nothing more is recorded
            self._phase, self._normed = Phase.IDLE, False
            self._inputs = None
            return
        if not self._normed and self.grad_norms:
            self._take_norms()
        if batch is None:
            x, y = self._inputs, None
            if isinstance(x, Tensor) and x.dim():  # the common case, without walking a tree
                state.batch, samples = (x, None), x.shape[0]
            else:
                state.batch = (x, None) if x is not None and countable(x) else None
                samples = structure.count(x) if state.batch is not None else self._planned_size(state.iteration)
        else:
            x, y = structure.split(batch, self.target_key)
            if y is not None:
                x = structure.tree_map(lambda t: t.to(state.device), x)
                y = y.to(state.device)
            state.batch = (x, y) if x is not None and countable(x) else None
            samples = len(y) if y is not None else structure.count(x) if state.batch is not None else \
                state.plan.batch_size
        if not self._learned and state.batch is not None:
            self._learn(x, y, samples)
        if self._batch_check is not None:  # the first steps' loss and batch: device work only
            self._batch_check.see(loss, x, y)
        state.step += 1
        state.iteration += 1
        if batch is not None:  # held (a reference) till its loss is read: the divergence check tests it
            self._hold(state.step, x, y)
        self.log.record(loss.detach() if isinstance(loss, Tensor) else None, samples)
        self._emit("on_step_end")
        self._phase, self._normed = Phase.IDLE, False
        self._inputs = None
        if state.step % self.log_every == 0 or self.log.diverged_at is not None:
            self._check()
        state.batch = None

    def _check(self) -> None:
        """Read the pending values; a non-finite loss is settled as :func:`gdlab.fit` settles it
        (:func:`gdlab.loop.settle_divergence`): the diverging step's batch holding NaN or inf names the data (with
        the count), else the doctor may act (a rollback with ``rollback=True``), else the run is marked diverged
        (``stop_reason``) with the learning rate named."""
        log, state = self.log, self.state
        log.fetch()
        held = self._held.let_go()  # every step up to here is read: its batch let go
        self._note_invariants()
        if log.diverged_at is None:
            return
        row, log.diverged_at = log.diverged_at, None
        steps = state.history.steps
        loss, step = steps["loss"][row], int(steps["step"][row])
        cause = HeldBatches.cause(held, step)  # the diverging step's batch, as its forward pass or step() saw it
        if cause is None and state.stop_reason is not None:
            return
        if settle_divergence(state, row, self._dispatch, cause):
            return  # a hook acted (the doctor's remedy): the run goes on, its record kept
        # stopped: the record ends at the first non-finite loss, as fit's does (the steps after it say nothing
        # more), and later steps are not recorded; the loop may break on stop_reason
        steps.truncate(row + 1)
        state.step, state.last_loss = step, loss

    def _note_invariants(self, read: bool = True) -> None:
        """What the loop's invariant checks found, into the history's meta (the doctor's detectors read it).
        ``read``: at one of the loop's reads (the checks that read the device decide there); else host-side only."""
        meta = self.state.history.meta
        update = self._update_check
        if update is not None:
            if update.collected and update.hooked:
                update.unhook()  # the first updates seen: its hooks off now, its marks read at the next read
            if read:
                update.note()  # once, after its first updates: one small read
            if update.found is not None:
                meta.setdefault("update_changes_nothing", update.found)
            if update.done:
                update.close()
                self._update_check = None
        schedule = self._schedule_check
        if schedule is not None and read and self._epoch_steps is not None:  # the first epoch's length known (a
            schedule.planned = self._epoch_steps  # loader's, given, or learned): till then nothing is walked
            steps = self.state.history.steps  # the rows' lr since the last look, as written (no filler run here)
            schedule.note(steps.peek("lr", schedule.seen, len(steps)))
            if schedule.found is not None:
                meta["schedule_ends_early"] = schedule.found
            if schedule.done:
                self._schedule_check = None
        mode = self._mode_check
        if mode is not None and mode.found is not None:
            meta["validation_in_train_mode"] = mode.found
        if mode is not None and mode.done:
            self._mode_check = None
        check = self._zero_check
        if check is not None and check.found is not None:
            self.state.history.meta["grads_not_zeroed"] = check.found
        if check is not None and check.done:
            check.close()
            self._zero_check = None
        setup = self._setup_check
        if setup is not None and setup.done:
            self.state.history.meta.update(setup.found)  # one key per finding's code (its detector reads it)
            setup.close()
            self._setup_check = None
        batches = self._batch_check
        if batches is not None and read:
            batches.note()  # decided once, at the first read after its steps: one small read
            self.state.history.meta.update(batches.found)  # one key per finding's code (its detector reads it)
            if batches.done:
                self._batch_check = None
        self._checks_hooked = self._setup_check is not None or self._zero_check is not None or \
            (self._update_check is not None and self._update_check.hooked)

    def _hooks_due(self) -> bool:
        """Whether a check's hooks come off now (called by step(): host-side, no read): the setup's after the first
        update, the zeroing's and the update's once decided or seen."""
        update = self._update_check
        return self._setup_check is not None or (self._zero_check is not None and self._zero_check.done) or \
            (update is not None and update.collected and update.hooked)

    def _unhook(self) -> None:
        self._closed = True
        self._note_invariants()
        if self._zero_check is not None:
            self._zero_check.close()
        if self._setup_check is not None:
            self._setup_check.close()
        if self._batch_check is not None:
            self._batch_check.close()
        if self._update_check is not None:
            self._update_check.close()
        self._held.let_go()
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
        self._dispatch.close()
        if self.physician is not None:  # the doctor's clipping comes off the optimizer
            try:
                self.physician.on_fit_end(self.state)
            except Exception:
                pass
        if self.run is not None:  # the stored run marked failed, the board written (gdlab.run.Run, as fit's)
            self.run.fail(error, time.perf_counter() - self._began_at)

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
        if self._phase is Phase.UPDATED:
            self._finish(None, None)

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
        if self.physician is not None and x is not None:  # the activations called as functions too (F.relu), as
            self._busy = True  # fit reads them: one forward pass on 2 samples, once (not a step of the loop)
            try:
                few = structure.tree_map(lambda t: t[:2] if isinstance(t, Tensor) and t.dim() else t, x)
                trace_activations(self.model, lambda: structure.call(self.model, few, None, self.target_key))
            finally:
                self._busy = False
            settings = run_settings(self.model, self.optimizer)
            meta.update(activations=settings["activations"], activations_traced=settings["activations_traced"])
            if settings.get("dropout_in_eval"):  # the traced pass (every module in eval) still dropped units
                meta["dropout_in_eval"] = settings["dropout_in_eval"]



def countable(inputs: Any) -> bool:
    """Whether ``inputs`` hold a batch of samples (a tensor with a first dimension among its leaves)."""
    if isinstance(inputs, Tensor):
        return inputs.dim() > 0
    first = next(iter(structure.leaves(inputs)), None)
    return first is not None and first.dim() > 0


