"""Progress bars (an edge: the home of rich outside ``cli/``, imported only when a bar is shown).

:class:`ProgressBar` shows epoch, iteration within the epoch, the latest loss read and speed on stderr. It redraws
from the loop's own thread at most four times a second (rich's refresh thread is off: its renders hold the GIL and
slow a small model's steps), so a fast loop pays a clock read per step and a render every quarter second.
:class:`TaskBar` is a bar over some other work (the range test, a landscape's grid).

A bar's text is printed as text: its control characters escaped (:func:`gdlab.guard.printable`) and its columns
read without Rich markup, so a description or a line of text that holds ``[bold]`` or an escape sequence shows it.

In a Jupyter notebook (rich's own detection, ``Console.is_jupyter``) a bar given no console is one HTML line in the
cell's output, updated in place through IPython's ``display_id`` (:class:`NotebookLine`): no widgets needed, and
the notebook keeps the last state. Its text is HTML-escaped.
"""

from __future__ import annotations

import io  # noqa: F401  (the doctest's console)
import time
from html import escape
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gdlab.guard import printable

__all__ = ["ProgressBar", "TaskBar", "NotebookLine", "in_notebook"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (rich's test: IPython's ZMQ shell, Colab, Databricks)."""
    return Console().is_jupyter


class NotebookLine:
    """A bar in a notebook cell: ``<progress>`` and a line of text as one HTML output, replaced in place at each
    :meth:`show` (``IPython.display``'s ``display_id``: works in Jupyter, VS Code and under nbclient, without
    ipywidgets); ``transient`` clears it at :meth:`close`.

    Example:
        >>> NotebookLine.html(5, 10, "epoch 1/2", "loss <0.5>")
        '<div class="gdlab-bar"><b>epoch 1/2</b> <progress value="5" max="10"></progress> loss &lt;0.5&gt;</div>'
    """

    def __init__(self, *, transient: bool = False) -> None:
        from IPython.display import HTML, display

        self.transient, self._html = transient, HTML
        self._handle = display(HTML(""), display_id=True)

    @staticmethod
    def html(done: float, total: float, description: str, text: str) -> str:
        """The line: the description in bold, the bar at ``done`` of ``total``, the text (all escaped)."""
        return (f'<div class="gdlab-bar"><b>{escape(description)}</b> <progress value="{done:g}" max="{total:g}">'
                f"</progress> {escape(text)}</div>")

    def show(self, done: float, total: float, description: str, text: str) -> None:
        self._handle.update(self._html(self.html(done, total, description, text)))

    def close(self) -> None:
        if self.transient:
            self._handle.update(self._html(""))


class ProgressBar:
    """A callback drawing one bar over the run's total steps."""

    def __init__(self, console: Console | None = None, interval: float = 0.25) -> None:
        self.console = console or Console(stderr=True)
        self.interval = interval
        self._notebook = console is None and self.console.is_jupyter
        self._line: NotebookLine | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        self._next = 0.0
        self._start_step = 0
        self._start_time = 0.0

    def on_fit_start(self, state: Any) -> None:
        self._start_step, self._start_time = state.step, time.perf_counter()
        if self._notebook:
            self._line = NotebookLine()
            self._draw(state, self._start_time)
            return
        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.fields[iteration]}", markup=False),
            TextColumn("loss [cyan]{task.fields[loss]}"),  # a number of ours
            TextColumn("{task.fields[speed]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            auto_refresh=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self._epoch(state), total=state.total_steps, completed=state.step,
                                             iteration="", loss="-", speed="")

    def on_step_end(self, state: Any) -> None:
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + self.interval
            self._draw(state, now)

    def on_fit_end(self, state: Any) -> None:
        self._draw(state, time.perf_counter())
        self.close()

    def close(self) -> None:
        """Stop drawing (also called when the run fails, so the terminal is left clean)."""
        self._line = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _draw(self, state: Any, now: float) -> None:
        if self._progress is None and self._line is None:
            return
        rate = (state.step - self._start_step) / max(now - self._start_time, 1e-9)
        iteration = f"it {state.iteration or (state.plan.iterations_per_epoch if state.step else 0)}" \
                    f"/{state.plan.iterations_per_epoch}"
        loss = f"{state.last_loss:.4g}"  # the latest value read: no wait for the device
        speed = f"{rate:,.0f} it/s"
        if self._line is not None:
            text = f"{iteration}  loss {loss}  {speed}  {now - self._start_time:.1f} s"
            self._line.show(state.step, state.total_steps, self._epoch(state), text)
            return
        assert self._progress is not None
        self._progress.update(self._task, completed=state.step, description=self._epoch(state), iteration=iteration,
                              loss=loss, speed=speed)
        self._progress.refresh()

    @staticmethod
    def _epoch(state: Any) -> str:
        total = -(-state.total_steps // state.plan.iterations_per_epoch)  # ceil
        current = state.epoch if state.step and not state.iteration else state.epoch + 1  # an epoch just ended
        return f"epoch {min(current, total)}/{total}"


class TaskBar:
    """A bar over ``total`` units of some work (the range test, a landscape's grid), with a line of text.

    Example:
        >>> bar = TaskBar("lr range test", 10, console=Console(file=io.StringIO()))
        >>> bar.update(5, "lr 1e-3  loss 0.5"); bar.close()
    """

    def __init__(self, title: str, total: int, *, console: Console | None = None, transient: bool = False,
                 every: int = 5) -> None:
        self.every = every
        self.title, self.total = printable(title), total
        self._line: NotebookLine | None = None
        self._progress: Progress | None = None
        self._done, self._text = 0, ""
        if console is None and in_notebook():
            self._line = NotebookLine(transient=transient)
            return
        self._progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                                  TextColumn("{task.fields[text]}", markup=False),
                                  console=console or Console(stderr=True), auto_refresh=False, transient=transient)
        self._progress.start()
        self._task = self._progress.add_task(printable(title), total=total, text="")

    def update(self, done: int, text: str = "") -> None:
        """``done`` units of the total are done; redrawn every ``every`` units."""
        self._done, self._text = done, printable(text)
        if self._line is not None:
            if done % self.every == 0:
                self._line.show(done, self.total, self.title, self._text)
            return
        assert self._progress is not None
        self._progress.update(self._task, completed=done, text=self._text)
        if done % self.every == 0:
            self._progress.refresh()

    def close(self) -> None:
        """Draw the last state and stop."""
        if self._line is not None:
            self._line.show(self._done, self.total, self.title, self._text)
            self._line.close()
            return
        assert self._progress is not None
        self._progress.refresh()
        self._progress.stop()
