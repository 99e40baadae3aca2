"""Callbacks that ``fit`` composes: the learning-rate schedule, and the run's record in the store (metric rows,
checkpoints, resume, failure)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from gdlab import checkpoint as ckpt
from gdlab import distributed
from gdlab.checkpoint import POSITION
from gdlab.errors import InvalidParameter, StoreError, shorten
from gdlab.instruments.budget import Budget
from gdlab.loop import Callback, LoopState
from gdlab.optim import schedules
from gdlab.optim.schedules import Schedule
from gdlab.store import STEP_ROWS, Store

__all__ = ["POSITION", "Recorder", "Scheduler"]  # POSITION: the checkpoint's (gdlab.checkpoint), named here too


class Scheduler(Callback):
    """Sets the learning rate (and one-cycle's momentum) before every step; feeds a plateau schedule the
    validation loss (or the train loss) at every epoch's end."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.ratios: list[float] | None = None  # each group's lr over the first's: kept as the schedule moves

    def _set(self, state: LoopState) -> None:
        groups = state.optimizer.param_groups
        if self.ratios is None:
            first = float(groups[0].get("lr", 0.0)) if groups else 0.0
            self.ratios = [float(g.get("lr", first)) / first if first > 0 else 1.0 for g in groups]
        for group, ratio in zip(groups, self.ratios):
            group["lr"] = self.schedule(state.step) * ratio
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


def _since(columns: dict[str, list[float]], start: int) -> dict[str, list[float]]:
    """The rows from ``start`` on, by column."""
    return {key: column[start:] for key, column in columns.items()}


class Recorder(Callback):
    """Keeps a run's store record: metric rows (at an epoch's end once a second at most, and before every checkpoint,
    at the end and on failure), checkpoints, resume and failure.

    The store holds the history; a checkpoint holds the rest (model, optimizer, RNG, position), so its size
    does not grow with the run. The store keeps the newest ``step_rows`` steps as recorded and merges the older
    ones into buckets of their mean, min and max (0 keeps every step; see :meth:`Store.add_steps`).
    """

    FLUSH_SECONDS = 1.0
    """At an epoch's end the rows are written when this long has passed since the last write (or
    :attr:`FLUSH_ROWS` steps wait): a run of one-step epochs does not pay a transaction per step. Before every
    checkpoint, at the end and on failure they are always written."""
    FLUSH_ROWS = 4096

    CHECKPOINT_SHARE = 0.02
    """The share of the run's time its checkpoints may take, where they are paced (``checkpoint_share``, a
    :class:`~gdlab.instruments.budget.Budget`): a checkpoint due sooner (every epoch of a run whose epochs are a
    step or two) is skipped until the time since pays for it; the first, the last and the one at a stop (Ctrl-C,
    a stopping rule) are always written. Meant for the checkpoints ``fit`` takes at each epoch's end
    (``checkpoint_every`` None); the ones a user spaces (``checkpoint_every``) are all written."""

    def __init__(self, store: Store, run_id: str, *, step_rows: int = STEP_ROWS,
                 checkpoint_share: float | None = None) -> None:
        self.store, self.run_id, self.step_rows = store, run_id, step_rows
        self.path = store.run_dir(run_id) / "checkpoint.pt"
        self.steps_written = self.epochs_written = 0
        self.flushed = time.monotonic()
        # checkpoint_share None: every checkpoint the loop asks for is written
        self.pace = Budget(checkpoint_share, free=1) if checkpoint_share is not None else None
        self.saved = self.skipped = 0  # checkpoints written, and skipped by the pace

    def flush(self, state: LoopState) -> None:
        """Write the step and epoch rows recorded since the last flush (one transaction, by column)."""
        steps, epochs = state.history.steps, state.history.epochs
        self.store.add_rows(self.run_id, steps=_since(steps.columns, self.steps_written),
                            epochs=_since(epochs.columns, self.epochs_written), step_rows=self.step_rows)
        self.steps_written, self.epochs_written = len(steps), len(epochs)
        self.flushed = time.monotonic()

    def on_epoch_end(self, state: LoopState) -> None:
        if (len(state.history.steps) - self.steps_written >= self.FLUSH_ROWS
                or time.monotonic() - self.flushed >= self.FLUSH_SECONDS):
            self.flush(state)

    on_fit_end = flush

    def checkpoint(self, state: LoopState) -> None:
        """Flush, then save everything but the history, atomically; paced by :attr:`CHECKPOINT_SHARE` of the
        run's time, except at the end of the budget and at a stop, which are always saved."""
        last = state.step >= state.total_steps or state.stop_reason is not None or state.interrupted
        if self.pace is not None and not last and not self.pace.allows(self.saved + 1):
            self.skipped += 1
            return
        with self.pace.measure() if self.pace is not None else contextlib.nullcontext():
            self.flush(state)
            ckpt.save(self.path, {
                "format": ckpt.FORMAT,
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "rng": ckpt.rng_state(),
                "position": {key: getattr(state, key) for key in POSITION},
            })
        self.saved += 1

    def restore(self, state: LoopState, config: dict[str, Any] | None) -> None:
        """Load the last checkpoint and the history up to it; the run is ``running`` again.

        Everything is checked before anything changes (the checkpoint's layout by :func:`gdlab.checkpoint.read`, its
        position against the budget and the plan, its weights against the model, its optimizer state against the
        optimizer): a checkpoint that does not fit is one :class:`~gdlab.errors.GdlabError` line, and the model,
        the RNG and the store are left as they were."""
        saved = ckpt.read(self.path)
        position = saved["position"]
        done, per_epoch = position["step"], state.plan.iterations_per_epoch
        if done > state.total_steps:
            raise InvalidParameter("epochs/steps", f"{state.total_steps} steps", f"at least the {done} steps run "
                                   f"{self.run_id} has already trained; give a larger --epochs or --steps")
        if position["iteration"] >= per_epoch:
            raise StoreError(f"checkpoint '{self.path}' is damaged or not this run's: its position is iteration "
                             f"{position['iteration']} of an epoch of {per_epoch} iterations; resume from another run "
                             "or train anew")
        what = f"the checkpoint of run {self.run_id}"
        ckpt.check_weights(state.model, saved["model"], what)  # before the optimizer changes
        try:
            state.optimizer.load_state_dict(saved["optimizer"])  # checked by torch before it changes anything
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise StoreError(f"{what} does not fit the optimizer ({shorten(str(e) or type(e).__name__, 120)}): "
                             "expected the optimizer it was trained with") from None
        ckpt.load_weights(state.model, saved["model"], what)
        ckpt.set_rng_state(saved["rng"])
        for key in POSITION:
            setattr(state, key, position[key])
        # rows after the checkpoint (and the record of a partly done epoch) are dropped: they will be redone
        self.store.reopen(self.run_id, step=state.step, epochs=state.epoch)
        if config is not None:
            self.store.update_config(self.run_id, config)
        state.history = self.store.history(self.run_id)
        state.loss = state.history.steps.last("loss")
        self.steps_written, self.epochs_written = len(state.history.steps), len(state.history.epochs)

    def finish(self, state: LoopState, status: str, final: dict[str, float | None], findings: list[Any],
              remedies: list[Any]) -> None:
        """Store the findings and remedies, and close the run as ``status`` with its final metrics."""
        if findings or remedies:
            self.store.add_findings(self.run_id, [f.to_dict() for f in findings])
            self.store.add_remedies(self.run_id, [r.to_dict() for r in remedies])
        self.store.finish(self.run_id, status, final=final, lr=state.lr, seconds=state.seconds, steps=state.step,
                          stop_reason=state.stop_reason)

    def fail(self, state: LoopState, error: BaseException, seconds: float) -> None:
        """Keep what was recorded and mark the run ``stopped`` (Ctrl-C) or ``failed``."""
        self.flush(state)
        stopped = isinstance(error, KeyboardInterrupt)
        self.store.finish(self.run_id, "stopped" if stopped else "failed", steps=state.step, seconds=seconds,
                          lr=state.lr, error=None if stopped else distributed.failure_text(error),
                          stop_reason="interrupted" if stopped else None)
