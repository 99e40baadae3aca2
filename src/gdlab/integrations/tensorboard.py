"""TensorBoard: a run's history written as TensorBoard event files, live or after the fact.

:class:`TensorBoard` is a callback: at each epoch's end (and at the fit's end) it writes the step rows and epoch
rows recorded since its last write, one scalar per column (``step/loss``, ``step/lr``, ``step/grad_norm``, every
instrument's column; ``epoch/train_loss``, ``epoch/val_loss``, ``epoch/val_accuracy``...), at the run's global
step. Reading the history only at an epoch's end keeps the loop from waiting on the device at every step.
:meth:`TensorBoard.close` writes the doctor's findings (and remedies) as text events at their steps.
:func:`write_history` writes a stored run the same way (``gdlab export RUN --tensorboard DIR``).

It needs the ``tensorboard`` package (``pip install 'gdlab[tensorboard]'``); without it, opening a writer raises
:class:`~gdlab.errors.MissingExtra` naming that command.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gdlab.doctor.story import cause_lines, explain, finding_lines, story_lines
from gdlab.errors import MissingExtra
from gdlab.guard import check_out
from gdlab.loop import Callback, LoopState
from gdlab.records import History

__all__ = ["TensorBoard", "check_logdir", "require", "open_writer", "write_history", "finding_text", "STEP_PREFIX",
           "EPOCH_PREFIX"]

STEP_PREFIX = "step/"
EPOCH_PREFIX = "epoch/"
_POSITION = {"step", "epoch"}  # the x axis, not a scalar of its own


def check_logdir(logdir: str | Path, param: str = "tensorboard") -> str:
    """``logdir`` if event files may be written there: a folder (new or existing), never an existing file nor a
    run store's own folder (:func:`gdlab.guard.check_out`), else :class:`~gdlab.errors.InvalidParameter` naming
    ``param``. Needs no tensorboard package (``gdlab train --tensorboard`` checks it as it parses its flags)."""
    check_out(logdir, param, (), folder=True)
    return str(logdir)


def require(logdir: str | Path, param: str = "tensorboard") -> Any:
    """torch's ``SummaryWriter`` class, or :class:`MissingExtra` (one line naming the pip install) without the
    tensorboard package. ``logdir`` is checked here too, before any work (:func:`check_logdir`)."""
    check_logdir(logdir, param)
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it; say so before torch's own message)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtra(f"{param}={str(logdir)!r} needs the tensorboard package: "
                           "pip install 'gdlab[tensorboard]'") from None
    return SummaryWriter


def open_writer(logdir: str | Path, param: str = "tensorboard") -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``logdir`` (checked by :func:`require`)."""
    return require(logdir, param)(log_dir=str(logdir))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at(value: Any) -> int:
    """A finding's or remedy's step as TensorBoard's (0 when it has none)."""
    return int(value) if _finite(value) else 0


def _block(lines: Iterable[Any]) -> str:
    """Lines of the story as TensorBoard markdown: a fenced block, so they read as the CLI prints them."""
    return "```\n" + "\n".join(str(line) for line in lines) + "\n```"


def finding_text(finding: Any) -> str:
    """A finding (a :class:`~gdlab.doctor.Finding` or its dict) as TensorBoard's text: the story printer's lines of
    it (:func:`gdlab.doctor.story.finding_lines`)."""
    return _block(finding_lines(finding))


class TensorBoard(Callback):
    """Writes the run into TensorBoard event files under ``logdir`` as it trains (see the module's text).

    Example:
        >>> import tempfile, torch, gdlab                                         # doctest: +SKIP
        >>> gdlab.fit(torch.nn.Linear(2, 1), (torch.randn(8, 2), torch.randn(8, 1)), epochs=2,
        ...           tensorboard=tempfile.mkdtemp(), progress=False)           # doctest: +SKIP
    """

    def __init__(self, logdir: str | Path, *, writer: Any = None, param: str = "tensorboard") -> None:
        self.logdir = Path(logdir)
        self.writer = writer if writer is not None else open_writer(logdir, param)
        self.steps_written = self.epochs_written = 0

    def write(self, history: History) -> None:
        """Write the step and epoch rows recorded since the last write."""
        steps, epochs = history.steps, history.epochs
        self.steps_written = min(self.steps_written, len(steps))  # a rollback dropped rows: write them again
        for row in steps.rows(self.steps_written):
            step = row.get("step", math.nan)
            if not _finite(step):
                continue
            for key, value in row.items():
                if key not in _POSITION and _finite(value):
                    self.writer.add_scalar(STEP_PREFIX + key, value, int(step))
        self.epochs_written = min(self.epochs_written, len(epochs))
        for row in epochs.rows(self.epochs_written):
            at = row.get("step", math.nan)
            at = at if _finite(at) else row.get("epoch", math.nan)
            if not _finite(at):
                continue
            for key, value in row.items():
                if key not in _POSITION and _finite(value):
                    self.writer.add_scalar(EPOCH_PREFIX + key, value, int(at))
        self.steps_written, self.epochs_written = len(steps), len(epochs)
        self.writer.flush()

    def flush(self, state: LoopState) -> None:
        self.write(state.history)

    on_epoch_end = flush
    on_fit_end = flush

    def findings(self, findings: Iterable[Any], remedies: Iterable[Any] = ()) -> None:
        """Write the doctor's story (:func:`gdlab.doctor.story_lines`, the lines the CLI and the callbacks print) as
        the text event ``doctor/story``; each root cause as ``doctor/<code>`` at its step, with the consequences it
        explains; each consequence as ``doctor/<code>`` at its step, with its cause; each remedy applied as
        ``remedy/<action>``."""
        remedies = list(remedies)
        story = explain(findings, remedies=remedies)
        if story.causes:
            self.writer.add_text("doctor/story", _block(story_lines(story)), 0)
        for cause in story.causes:
            self.writer.add_text(f"doctor/{cause.code}", _block(cause_lines(cause)), _at(cause.finding.step))
            below = [(c, cause.finding) for c in cause.consequences]
            while below:
                c, parent = below.pop(0)
                at = f" (step {parent.step})" if _finite(parent.step) else ""
                lines = [*finding_lines(c.finding, remedy=False, because=c.because),
                         f"    explained by: {parent.code}{at}"]
                self.writer.add_text(f"doctor/{c.code}", _block(lines), _at(c.finding.step))
                below += [(k, c.finding) for k in c.consequences]
        for remedy in remedies:
            r = remedy.to_dict() if hasattr(remedy, "to_dict") else dict(remedy)
            text = f"**{r.get('action', '')}**: {r.get('reason', '')}"
            self.writer.add_text(f"remedy/{r.get('action', 'remedy')}", text, _at(r.get("step")))
        self.writer.flush()

    def close(self, findings: Iterable[Any] = (), remedies: Iterable[Any] = ()) -> None:
        """Write the findings and remedies, then close the event file."""
        self.findings(findings, remedies)
        self.writer.close()


def write_history(logdir: str | Path, history: History, findings: Iterable[Any] = (),
                  remedies: Iterable[Any] = (), *, param: str = "--tensorboard") -> TensorBoard:
    """Write a whole history (a stored run's) and its findings into ``logdir``, as the callback writes it live."""
    board = TensorBoard(logdir, param=param)
    board.write(history)
    board.close(findings, remedies)
    return board
