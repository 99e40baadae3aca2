"""gdlab's results in Jupyter (an edge, like :mod:`gdlab.plots`: loaded only when a notebook shows a result).

One home for every result's inline view: a run's :class:`~gdlab.loop.Result`, a sweep's table
(:class:`~gdlab.sweeps.SweepResult`, :class:`~gdlab.sweeps.RestartsResult`), the range test
(:class:`~gdlab.lr_select.LRFindResult`), the lab's walks (:class:`~gdlab.lab.walks.LabResult`) and a loss
landscape (:class:`~gdlab.lab.landscape.Landscape`). Each class's ``_repr_html_`` calls the function here for it;
each view is a small HTML block: the numbers as a table, the figure :mod:`gdlab.plots` draws for a file inlined as
a PNG (``data:`` URL, so the notebook holds it), and for a run the doctor's story (findings, evidence, remedy) as
:func:`gdlab.doctor.story_lines` prints it. Text from a run (ids, stop reasons, findings) is HTML-escaped.

Example:
    >>> table_html([{"loss": 0.123456789, "note": "<b>"}])[-65:]
    '<tbody><tr><td>0.1235</td><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["MAX_ROWS", "cell", "table_html", "image_html", "result_figure", "result_html", "sweep_html",
           "restarts_html", "lr_find_html", "lab_html", "landscape_html"]

MAX_ROWS = 20
"""The rows a table shows (a sweep's best first); a line under it says how many more there are."""

STYLE = ("<style>.gdlab-view{font-family:sans-serif;font-size:13px;max-width:1100px}"
         ".gdlab-view h4{margin:4px 0}.gdlab-view table.gdlab{border-collapse:collapse;margin:4px 0}"
         ".gdlab-view table.gdlab td,.gdlab-view table.gdlab th{border:1px solid #ccc;padding:2px 6px;"
         "text-align:right}.gdlab-view table.gdlab th{background:#f4f4f4}"
         ".gdlab-view pre.story{white-space:pre-wrap;background:#fafafa;border:1px solid #ddd;padding:6px}"
         ".gdlab-view .error{color:#b00}.gdlab-view .warning{color:#a60}.gdlab-view .info{color:#06a}"
         ".gdlab-view img{max-width:min(100%,900px)}</style>")


def cell(value: Any) -> str:
    """A table cell's text, escaped: a float in 4 significant digits (non-finite as ``nan``/``inf``), a list or
    tuple of numbers as ``(a, b)``, None as ``-``.

    Example:
        >>> cell(0.000123456), cell(None), cell([1.0, 2.5]), cell("a<b")
        ('0.0001235', '-', '(1, 2.5)', 'a&lt;b')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return "(" + ", ".join(cell(float(v)) for v in value) + ")"
    return escape(str(value))


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows (dicts) as an HTML table: ``columns`` (default: every key, in first-seen order), cells by :func:`cell`."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<table class="gdlab"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image_html(draw: Callable[[Path], Any], alt: str) -> str:
    """The PNG that ``draw(path)`` writes (one of :mod:`gdlab.plots`' functions) as an inline ``<img>``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _view(title: str, *parts: str) -> str:
    return f'{STYLE}<div class="gdlab-view"><h4>{escape(title)}</h4>{"".join(parts)}</div>'


def _pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of (name, value)."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in pairs)
    return f'<table class="gdlab"><tbody>{rows}</tbody></table>'


def result_figure(result: Any) -> Any:
    """The run's loss figure (:func:`gdlab.plots.loss_figure`: per epoch, and per step with its moving average),
    a matplotlib ``Figure`` detached from pyplot (shown once by Jupyter, kept by nobody else)."""
    from gdlab.plots import loss_figure

    fig = loss_figure(result.history, title=f"run {result.run_id}" if result.run_id else None)
    import matplotlib.pyplot as plt

    plt.close(fig)  # still drawable and savable; pyplot no longer holds it or shows it again at the cell's end
    return fig


def story_html(result: Any) -> str:
    """The doctor's story of a run (remedies applied, root causes with evidence and remedy, consequences), each
    line as :func:`gdlab.doctor.story_lines` prints it, a finding's line in its severity's colour."""
    from gdlab.doctor.story import of_result, story_lines

    lines = []
    for line in story_lines(of_result(result)):
        text = escape(line.text)
        lines.append(f'<span class="{escape(line.severity)}">{text}</span>' if line.severity else text)
    return '<pre class="story">' + "\n".join(lines) + "</pre>"


def result_html(result: Any) -> str:
    """A run (:class:`gdlab.loop.Result`): its settings and final metrics, the loss figure, the doctor's story."""
    steps = result.steps
    pairs: list[tuple[str, Any]] = [("status", result.status)]
    if result.stop_reason:
        pairs.append(("stopped", result.stop_reason))
    pairs += [("plan", result.plan.describe()), ("lr", result.lr),
              ("steps", f"{steps} ({steps / result.plan.iterations_per_epoch:.4g} epochs)"),
              ("seconds", result.seconds)]
    if result.lr_selection is not None:
        pairs.append(("lr auto", f"{result.lr_selection.lr:.4g}: {result.lr_selection.reason}"))
    pairs += [(k, v) for k, v in result.final.items() if v is not None]
    title = f"gdlab run {result.run_id}" if result.run_id else "gdlab run"
    figure = image_html(lambda path: _save(result_figure(result), path), "loss per epoch and per step") \
        if len(result.history.steps) else ""
    return _view(title, _pairs(pairs), figure, story_html(result))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=80)
    return path


def _ranked(rows: list[dict[str, Any]], scores: list[float]) -> list[dict[str, Any]]:
    """The rows best first by the population's own score (diverged members last), at most :data:`MAX_ROWS`."""
    order = sorted(range(len(rows)), key=lambda i: scores[i])
    return [rows[i] for i in order[:MAX_ROWS]]


def _more(rows: Sequence[Any]) -> str:
    hidden = len(rows) - MAX_ROWS
    return f"<p>{hidden} more (best {MAX_ROWS} shown; <code>.table</code> holds every row)</p>" if hidden > 0 else ""


def sweep_html(result: Any) -> str:
    """A sweep (:class:`gdlab.sweeps.SweepResult`): its members best first, and final loss against lr."""
    from gdlab.plots import plot_sweep

    rows = _ranked(result.table, result.population.score())
    columns = ["member", "seed", *[a for a in result.axes if a != "seed"], "train_loss", "val_loss", "metric",
               "diverged"]
    title = f"gdlab sweep{' ' + result.sweep_id if result.sweep_id else ''}: {len(result.table)} members, " \
        f"{result.optimizer}"
    figure = image_html(lambda path: plot_sweep(result, path), "final loss against the swept setting")
    return _view(title, table_html(rows, [c for c in dict.fromkeys(columns) if any(c in r for r in rows)]),
                 _more(result.table), figure)


def restarts_html(result: Any) -> str:
    """Restarts (:class:`gdlab.sweeps.RestartsResult`): how many end points, the spread of final losses, the plot."""
    from gdlab.plots import plot_restarts

    figure = image_html(lambda path: plot_restarts(result, path), "final losses of the restarts and their curves")
    return _view(f"gdlab restarts {result.restarts_id or ''}".strip(), _pairs(result.summary().items()), figure)


def lr_find_html(result: Any) -> str:
    """The range test (:class:`gdlab.lr_select.LRFindResult`): its suggestions, warnings and curve."""
    from gdlab.plots import plot_lr_find

    pairs: list[tuple[str, Any]] = [("optimizer", result.optimizer), ("steps", len(result.lrs)),
                                    ("stopped", result.stopped)]
    pairs += [(f"suggestion: {name}", lr) for name, lr in result.suggestions.items()]
    if result.probe is not None:
        pairs.append(("probe's best lr", result.probe.get("best")))
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in result.warnings)
    figure = image_html(lambda path: plot_lr_find(result, path), "loss against the learning rate")
    return _view("gdlab lr_find", _pairs(pairs), warnings, figure)


def lab_html(result: Any) -> str:
    """The lab's walks (:class:`gdlab.lab.walks.LabResult`): a row per optimizer, the paths over the contour (with
    restarts, each start coloured by the minimum it falls into)."""
    from gdlab.plots import plot_walks

    restarts = any("basins" in row for row in result.table)
    rows = [{k: v for k, v in row.items() if k != "basins"} for row in result.table]
    figure = image_html(lambda path: plot_walks(result, path, restarts=restarts), "the optimizers' paths")
    files = "".join(f"<p>{escape(k)}: <code>{escape(v)}</code></p>" for k, v in result.files.items())
    return _view(f"gdlab lab: {result.function.name}: {result.function.description}", table_html(rows), figure,
                 files)


def landscape_html(landscape: Any) -> str:
    """A loss landscape (:class:`gdlab.lab.landscape.Landscape`): its kind, the loss at the model and over the
    grid, the picture."""
    from gdlab.plots import plot_landscape

    losses = [v for v in landscape.losses.flatten().tolist() if math.isfinite(v)]
    kind = "line" if landscape.betas is None else "trajectory" if landscape.path is not None else "plane"
    pairs: list[tuple[str, Any]] = [("kind", kind), ("grid", "x".join(str(n) for n in landscape.losses.shape)),
                                    ("samples", landscape.samples), ("loss at the model", landscape.center_loss),
                                    ("lowest loss", min(losses) if losses else None),
                                    ("highest loss", max(losses) if losses else None)]
    if landscape.explained:
        pairs.append(("trajectory variance explained", sum(landscape.explained)))
    figure = image_html(lambda path: plot_landscape(landscape, path), "the loss around the model")
    return _view("gdlab landscape", _pairs(pairs), figure)
