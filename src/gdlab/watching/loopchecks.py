"""The loop's own invariants under gdlab's loop (:func:`gdlab.fit`): the same check objects ``gdlab.watch`` runs
(invariants.py, datachecks.py), driven by the loop's hooks.

Under ``fit`` the loop zeroes the gradients, puts the model in ``train()`` and validates in ``eval()`` itself, so
the checks that apply are those a user's model, data or optimizer can still get wrong: what the loss is fed and
what the first batches hold (:class:`~gdlab.watching.datachecks.BatchCheck`), an optimizer object over the wrong
parameters (:class:`~gdlab.watching.invariants.SetupCheck`), updates that move nothing
(:class:`~gdlab.watching.invariants.UpdateCheck`) and a schedule that reaches zero before 20% of the planned steps
(:class:`~gdlab.watching.invariants.ScheduleCheck`). Device work on the first steps only; each decides at an
epoch's end or at the run's end, just after the loop has read its values, and puts its evidence in the history's
meta, where the doctor's detectors find it (the same keys as under ``watch``).

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 4); y = torch.randint(0, 3, (64,))
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))  # softmax, then cross-entropy
    >>> result = gdlab.fit(model, (X, y), lr=0.1, epochs=2, progress=False)
    >>> "loss_given_probabilities" in [f.code for f in result.findings]
    True
"""

from __future__ import annotations

from typing import Any

from gdlab.loop import Callback, LoopState
from gdlab.watching.datachecks import BATCHES, BatchCheck
from gdlab.watching.invariants import ScheduleCheck, SetupCheck, UpdateCheck

__all__ = ["LoopChecks"]


class LoopChecks(Callback):
    """The checks of the module's text, as one hook of ``fit``'s loop (put before the doctor, which reads what
    they find at the run's end)."""

    def on_fit_start(self, state: LoopState) -> None:
        model, optimizer = state.model, state.optimizer
        # full-batch descent serves the same batch every step by design
        self.batch: BatchCheck | None = BatchCheck(model, state.loss_name,
                                                   whole_data=state.plan.iterations_per_epoch == 1)
        self.setup: SetupCheck | None = SetupCheck(model, optimizer)
        self.update: UpdateCheck | None = UpdateCheck(model, optimizer)
        self.schedule: ScheduleCheck | None = ScheduleCheck(state.total_steps, share=0.2, of="the planned steps")

    def on_step_end(self, state: LoopState) -> None:
        """Host-side only: the first batches filed (device work), the hooks taken off once they have seen enough."""
        if self.batch is not None and self.batch.steps < BATCHES and state.batch is not None:
            x, y = state.batch
            self.batch.see(state.step_loss, x, y)
        if self.setup is not None and self.setup.done:  # looked at the first update: outside its hook now
            state.history.meta.update(self.setup.found)
            self.setup.close()
            self.setup = None
        if self.update is not None and self.update.collected and self.update.hooked:
            self.update.unhook()

    def on_epoch_end(self, state: LoopState) -> None:
        self._note(state, final=False)

    def on_fit_end(self, state: LoopState) -> None:
        self._note(state, final=True)

    def close(self) -> None:
        for check in (self.batch, self.setup, self.update):
            if check is not None:
                check.close()
        self.batch = self.setup = self.update = self.schedule = None

    def _note(self, state: LoopState, *, final: bool) -> None:
        """Decide what can be decided (a few values read once, just after the loop's own read)."""
        meta: dict[str, Any] = state.history.meta
        if self.batch is not None:
            self.batch.note()
            meta.update(self.batch.found)
            if self.batch.done or final:
                self.batch.close()
                self.batch = None
        if self.update is not None:
            self.update.note(final)
            if self.update.found is not None:
                meta.setdefault("update_changes_nothing", self.update.found)
            if self.update.done or final:
                self.update.close()
                self.update = None
        if self.schedule is not None:
            steps = state.history.steps
            self.schedule.note(steps.peek("lr", self.schedule.seen, len(steps)))
            if self.schedule.found is not None:
                meta["schedule_ends_early"] = self.schedule.found
            if self.schedule.done or final:
                self.schedule = None
        if final:
            self.close()
