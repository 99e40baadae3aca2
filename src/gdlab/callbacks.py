"""Callbacks that ``fit`` composes: the learning-rate schedule, and the run's record in the store (metric rows,
checkpoints, resume, failure)."""

from __future__ import annotations

from typing import Any

from gdlab import checkpoint as ckpt
from gdlab import distributed
from gdlab.checkpoint import POSITION
from gdlab.errors import InvalidParameter, StoreError, shorten
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


class Recorder(Callback):
    """Keeps a run's store record: metric rows at each epoch's end, checkpoints, resume and failure.

    The store holds the history; a checkpoint holds the rest (model, optimizer, RNG, position), so its size
    does not grow with the run. The store keeps the newest ``step_rows`` steps as recorded and merges the older
    ones into buckets of their mean, min and max (0 keeps every step; see :meth:`Store.add_steps`).
    """

    def __init__(self, store: Store, run_id: str, *, step_rows: int = STEP_ROWS) -> None:
        self.store, self.run_id, self.step_rows = store, run_id, step_rows
        self.path = store.run_dir(run_id) / "checkpoint.pt"
        self.steps_written = self.epochs_written = 0

    def flush(self, state: LoopState) -> None:
        """Write the step and epoch rows recorded since the last flush."""
        self.store.add_steps(self.run_id, state.history.steps.rows(self.steps_written), step_rows=self.step_rows)
        self.store.add_epochs(self.run_id, state.history.epochs.rows(self.epochs_written))
        self.steps_written, self.epochs_written = len(state.history.steps), len(state.history.epochs)

    on_epoch_end = flush
    on_fit_end = flush

    def checkpoint(self, state: LoopState) -> None:
        """Flush, then save everything but the history, atomically."""
        self.flush(state)
        ckpt.save(self.path, {
            "format": ckpt.FORMAT,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "rng": ckpt.rng_state(),
            "position": {key: getattr(state, key) for key in POSITION},
        })

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
