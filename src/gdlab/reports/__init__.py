"""Reports: a run, several runs or a sweep as one self-contained HTML page (an edge, like :mod:`gdlab.plots`).

The page carries everything inside it: the chart library (uPlot, MIT, in ``assets/``), its own script and styles,
and the run's data as JSON in a ``<script type="application/json">`` block. It opens from disk, offline. Every
text read from the store reaches the page as JSON and is put into the document as text, never as markup.

- :func:`report`: one run (settings, batch plan, losses, learning rate, the instruments' panels, the doctor's
  findings as cards and as markers on the charts at their steps, the remedies applied as a timeline), several runs
  on the same axes with their settings side by side, or a sweep / restarts (its table, the final loss against lr
  or seed); with ``all_runs=True`` an index page of every run in the store, sortable, each linked to its own page.
- :func:`downsample`: a long series cut to about :data:`POINTS` points, each bucket keeping its first, minimum,
  maximum and last value, so that spikes survive.

Example:
    >>> import tempfile, pathlib
    >>> from gdlab.store import Store
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> store = Store(root)
    >>> run_id = store.create_run({"data": "seed"}, {"samples": 3, "batch_size": 2}, name="demo")
    >>> store.add_steps(run_id, [{"step": s, "loss": 1 / s} for s in range(1, 11)])
    >>> store.finish(run_id, "finished", final={"train_loss": 0.1})
    >>> page = report("demo", root / "demo.html", store=root)
    >>> page.name, "uPlot" in page.read_text()
    ('demo.html', True)
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from gdlab import __version__
from gdlab.doctor.story import explain
from gdlab.errors import InvalidParameter, RunNotFound
from gdlab.guard import check_out
from gdlab.records import History, ema
from gdlab.store import DEFAULT_STORE, Run, Store

__all__ = ["report", "downsample", "run_data", "runs_data", "sweep_data", "index_data", "page", "POINTS"]

POINTS = 2000
"""The most points a report draws per series; a longer series is downsampled (:func:`downsample`)."""

HIDDEN_SETTINGS = ("doctor_meta", "lr_selection")
"""Config keys the settings table leaves out (what the doctor read; the lr choice has its own line)."""

RESULT_KEYS = ("member", "train_loss", "val_loss", "metric", "diverged", "curve", "cluster")
"""The columns of a sweep's row that are its results, not its settings."""

LEGEND_SERIES = 12
"""A chart with more series than this gets a legend of groups (a sweep's members by lr, by seed...), each a
toggle, instead of one entry per series."""

CURVES = 512
"""The most members whose training curves a sweep's page draws."""

METRICS = ("val_accuracy", "val_subset_accuracy", "val_mae", "val_r2")
"""The validation metrics drawn per epoch (besides the losses), in this order."""


def report(runs: str | Sequence[str] | None = None, out: str | Path | None = None, *,
           store: str | Path | Store = DEFAULT_STORE, all_runs: bool = False, force: bool = False) -> Path:
    """Write one self-contained HTML page of a run, of several runs, or of a sweep or restarts.

    Args:
        runs: a run (id, id prefix, name or ``last``), a sweep or restarts (its id or name), or several runs.
        out: the HTML file [default: the run's folder/report.html for one run, else ``report.html``]; with
            ``all_runs``, the folder that gets ``index.html`` and one page per run and sweep [default:
            ``<store>/report``].
        store: the run store (a folder or a :class:`~gdlab.store.Store`).
        all_runs: write the index of every run and sweep in the store, and their pages, instead.
        force: write over an existing file that is not a gdlab page (refused otherwise). Never the store's own
            files (``--out gdlab.db`` is refused, as is any path not ending in ``.html``), never a folder.

    Returns:
        The page written (``index.html`` with ``all_runs``).

    Example:
        >>> report(None, store=".")
        Traceback (most recent call last):
        gdlab.errors.InvalidParameter: invalid runs None: expected one or more runs, or --all (all_runs=True)
    """
    refs = [runs] if isinstance(runs, str) else list(runs or [])
    if all_runs and refs:
        raise InvalidParameter("runs", " ".join(refs), "no runs with --all (the index covers every run)")
    if not all_runs and not refs:
        raise InvalidParameter("runs", runs, "one or more runs, or --all (all_runs=True)")
    if out is not None:  # checked before the store is read: nothing is written over what gdlab did not make
        out = check_out(out, "--out", () if all_runs else (".html",), force=force, folder=all_runs)
    db = store if isinstance(store, Store) else Store(store, create=False)
    if all_runs:
        return _write_index(db, Path(out) if out is not None else check_out(db.root / "report", "--out", (),
                                                                             folder=True), force=force)
    found: list[Run] = []
    sweeps: list[dict[str, Any]] = []
    for ref in refs:
        try:
            found.append(db.get(ref))
        except RunNotFound as missing:
            if "ambiguous" in str(missing):
                raise
            try:
                sweeps.append(db.get_sweep(ref))
            except RunNotFound:
                raise RunNotFound(f"unknown run or sweep {ref!r} in store '{db.root}': expected a run or sweep id, "
                                  "id prefix or name (see gdlab runs)") from None
    if sweeps and len(refs) > 1:
        raise InvalidParameter("runs", " ".join(refs), "one sweep (or restarts) alone, or one or more runs")
    if sweeps:
        data = sweep_data(sweeps[0])
    elif len(found) == 1:
        data = run_data(db, found[0])
    else:
        data = runs_data(db, found)
    target = Path(out) if out is not None else check_out(
        found[0].dir / "report.html" if len(found) == 1 and not sweeps else Path("report.html"), "--out", (".html",),
        force=force)
    return _write(target, page(data), "--out")


# -- data ------------------------------------------------------------------------------------------------------


def downsample(x: Sequence[float], y: Sequence[float], points: int = POINTS) -> tuple[list[float], list[float]]:
    """The finite points of ``(x, y)``, cut to at most ``points``: when there are more, they are split into
    ``points // 4`` runs of consecutive points and each keeps its first, minimum, maximum and last point (in their
    order), so that a spike stays at its height and place.

    Example:
        >>> xs = list(range(10_000))
        >>> ys = [1.0] * 10_000
        >>> ys[7777] = 50.0
        >>> dx, dy = downsample(xs, ys, 400)
        >>> len(dx) <= 400, max(dy), dx[dy.index(50.0)]
        (True, 50.0, 7777)
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 4:
        raise InvalidParameter("points", points, "an integer of at least 4 (a bucket keeps up to 4 points)")
    pairs = [(a, b) for a, b in zip(x, y) if b is not None and math.isfinite(b)]
    if len(pairs) <= points:
        return [p[0] for p in pairs], [p[1] for p in pairs]
    buckets = max(1, points // 4)
    keep: list[int] = []
    n = len(pairs)
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        values = [pairs[i][1] for i in range(lo, hi)]
        low = lo + values.index(min(values))
        high = lo + values.index(max(values))
        keep.extend(sorted({lo, low, high, hi - 1}))
    return [pairs[i][0] for i in keep], [pairs[i][1] for i in keep]


def _num(v: Any) -> Any:
    """A JSON-ready number: 6 significant digits, NaN and infinities as None (JSON has neither)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return int(v) if v.is_integer() and abs(v) < 2**53 else float(f"{v:.6g}")
    return v


def _clean(value: Any) -> Any:
    """Store values made JSON-ready: numbers as :func:`_num`, containers walked."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _num(value)


def _series(label: str, x: Sequence[float], y: Sequence[float], *, run: int = 0, style: str = "line",
            points: int = POINTS) -> dict[str, Any]:
    dx, dy = downsample(x, y, points)
    return {"label": label, "run": run, "style": style, "x": [_num(v) for v in dx], "y": [_num(v) for v in dy],
            "recorded": sum(1 for v in y if v is not None and math.isfinite(v))}


def _log_scale(series: list[dict[str, Any]]) -> bool:
    values = [v for s in series for v in s["y"] if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def _chart(chart_id: str, title: str, ylabel: str, series: list[dict[str, Any]], *, x: str = "step",
           reference: float | None = None, markers: bool = True, xlog: bool = False,
           extent: list[Any] | None = None, smooth: bool = False, groups: Sequence[str] = (),
           note: str | None = None) -> dict[str, Any] | None:
    """A chart's spec. ``smooth``: the page's smoothing slider applies to its series (the comparison page);
    ``groups``: the keys of each series' ``group`` that its legend groups the series by (a sweep's members by lr
    and seed), instead of listing each; ``note``: a line under the title (why a series stops early)."""
    series = [s for s in series if s["y"]]
    if not series:
        return None
    return {"id": chart_id, "title": title, "ylabel": ylabel, "x": x, "log": _log_scale(series), "xlog": xlog,
            "reference": reference, "markers": markers, "series": series, "extent": extent, "smooth": smooth,
            "groups": list(groups), "note": note}


def _extent(summaries: Sequence[dict[str, Any]], histories: Sequence[History]) -> list[Any] | None:
    """The steps every step chart of a page spans: from the first recorded step to the last step reached (and any
    finding or remedy after it), so that the charts line up and each one shows every marker."""
    steps = [v for h in histories for v in (_step_x(h)[:1] + _step_x(h)[-1:])]
    steps += [s["steps"] for s in summaries if s["steps"] is not None]
    steps += [m["step"] for s in summaries for m in (*s["findings"], *s["remedies"]) if m.get("step") is not None]
    return [_num(min(steps)), _num(max(steps))] if steps else None


def _plan_text(plan: dict[str, Any] | None) -> str | None:
    if not plan:
        return None
    try:
        from gdlab.data import BatchPlan

        return BatchPlan(**{k: plan[k] for k in BatchPlan.__dataclass_fields__ if k in plan}).describe()
    except (TypeError, ValueError, KeyError):  # an old or partial plan: say what is there
        return ", ".join(f"{k} {v}" for k, v in plan.items())


def _run_summary(run: Run, history: History) -> dict[str, Any]:
    """What the page says about a run besides its charts."""
    config = run.config or {}
    selection = config.get("lr_selection") if isinstance(config.get("lr_selection"), dict) else None
    asked, chosen = _lr_asked_chosen(config)
    return {
        "id": run.id, "name": run.name, "label": run.name or run.id, "status": run.status, "created": run.created,
        "stop_reason": run.stop_reason, "error": run.error, "seconds": _num(run.seconds),
        "steps": run.steps if run.steps is not None else (int(history.steps["step"][-1]) if len(history.steps)
                                                          else None),
        "recorded_steps": len(history.steps), "epochs": len(history.epochs), "lr": _num(run.lr),
        "lr_asked": asked, "lr_chosen": chosen,
        "plan": _plan_text(run.plan), "lr_selection": _clean(selection),
        "settings": {k: _clean(v) for k, v in config.items()
                     if k not in HIDDEN_SETTINGS and v not in (None, {}, [], False, "")},
        "final": _clean(run.final or {}),
        "findings": [_clean(f) for f in run.findings],
        "remedies": [_clean(r) for r in run.remedies],
        # the doctor's story of the findings (gdlab.doctor.explain, as the CLI prints it): causes, consequences nested
        "diagnosis": _clean(explain(run.findings, run_id=run.id, remedies=run.remedies, steps=run.steps).to_dict()),
    }


def _lr_asked_chosen(config: dict[str, Any]) -> tuple[Any, Any]:
    """The learning rate a run was given (a number, or ``"auto"``) and the one it started with (``lr="auto"``'s
    choice, from its ``lr_selection``; else the number given). The final lr is the run's own (after a schedule)."""
    asked = config.get("lr")
    selection = config.get("lr_selection")
    chosen = selection.get("lr") if isinstance(selection, dict) else None
    if chosen is None and isinstance(asked, (int, float)) and not isinstance(asked, bool):
        chosen = asked
    return (asked if isinstance(asked, str) else _num(asked)), _num(chosen)


def _clock(history: History, run: Run, steps: int | None) -> dict[str, Any]:
    """What turns a run's steps into its other x axes on the comparison page: where each epoch ended (in steps)
    and when (seconds from the start), and the run's length (the share of the run is step / total)."""
    epochs = history.epochs
    at = _epoch_x(history, run) if len(epochs) else []
    seconds = list(epochs["seconds"]) if "seconds" in epochs else []
    pairs = [(s, e, t) for s, e, t in zip(at, epochs["epoch"] if len(epochs) else [], seconds or [math.nan] * len(at))
             if math.isfinite(s)]
    return {"steps": [0] + [_num(s) for s, _, _ in pairs], "epochs": [0] + [_num(e) for _, e, _ in pairs],
            "seconds": ([0] + [_num(t) for _, _, t in pairs]) if seconds else None,
            "per_epoch": (run.plan or {}).get("iterations_per_epoch"), "total": steps,
            "run_seconds": _num(run.seconds)}


def _step_x(history: History) -> list[float]:
    steps = history.steps
    return steps["step"] if "step" in steps else [float(i) for i in range(1, len(steps) + 1)]


def _epoch_x(history: History, run: Run) -> list[float]:
    """Where each epoch ends, in steps (so that epoch values sit on the same axis as the findings)."""
    epochs = history.epochs
    if "step" in epochs and all(math.isfinite(v) for v in epochs["step"]):
        return epochs["step"]
    per_epoch = (run.plan or {}).get("iterations_per_epoch") or 1
    return [e * per_epoch for e in epochs["epoch"]]


def _loss_series(history: History, run: int, label: str = "") -> list[dict[str, Any]]:
    steps, x = history.steps, _step_x(history)
    if "loss" not in steps:
        return []
    prefix = f"{label}: " if label else ""
    found = [_series(f"{prefix}loss per step", x, steps["loss"], run=run, style="raw"),
             _series(f"{prefix}moving average", x, ema(steps["loss"]), run=run, style="smooth")]
    return found + _spread(f"{prefix}max of merged steps", f"{prefix}min of merged steps", x, steps, "loss", 0, run)


def _spread(high: str, low: str, x: Sequence[float], steps: Any, key: str, of: int, run: int = 0
            ) -> list[dict[str, Any]]:
    """Where the store merged a long run's old steps into buckets, their max and min of ``key`` (a band about the
    series at index ``of`` of its chart), so that a spike among them still shows."""
    if f"max:{key}" not in steps:
        return []
    return [{**_series(label, x, steps[f"{bound}:{key}"], run=run, style="spread"), "of": of}
            for label, bound in ((high, "max"), (low, "min"))]


def _panel_series(keys: Sequence[str], x: Sequence[float], steps: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for key in keys:
        of = len(found)
        found.append(_series(key, x, steps[key]))
        found += _spread(f"{key}: max of merged steps", f"{key}: min of merged steps", x, steps, key, of)
    return found


def run_data(store: Store, run: Run) -> dict[str, Any]:
    """The page data of one run: its summary and charts (losses, validation metrics, learning rate, the
    instruments' panels), with the findings and remedies the charts mark."""
    from gdlab.plots import instrument_panels, panel_note

    history = store.history(run.id)
    summary = _run_summary(run, history)
    charts: list[dict[str, Any] | None] = []
    steps, epochs = history.steps, history.epochs
    x = _step_x(history)
    span = _extent([summary], [history])
    charts.append(_chart("loss", "training loss per step", "loss", _loss_series(history, 0), extent=span))
    if len(epochs):
        ex = _epoch_x(history, run)
        charts.append(_chart("epochs", "loss per epoch (at each epoch's last step)", "loss",
                             [_series(label, ex, epochs[key]) for key, label in (("train_loss", "train"),
                                                                                 ("val_loss", "validation"))
                              if key in epochs], extent=span))
        charts.append(_chart("metrics", "validation metrics per epoch", "metric",
                             [_series(key.removeprefix("val_").replace("_", " "), ex, epochs[key])
                              for key in METRICS if key in epochs], extent=span))
    if "lr" in steps:
        charts.append(_chart("lr", "learning rate", "lr", [_series("lr", x, steps["lr"])], extent=span))
    for name, keys, ylabel, reference in instrument_panels(history):
        if name == "loss":
            continue  # drawn above
        chart_id = "panel-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
        charts.append(_chart(chart_id, name, ylabel, _panel_series(keys, x, steps), reference=reference, extent=span,
                             note=panel_note(history, keys)))
    return {"kind": "run", "title": f"run {run.name or run.id}", "runs": [summary],
            "charts": [c for c in charts if c is not None], **_stamp()}


def runs_data(store: Store, runs: Sequence[Run]) -> dict[str, Any]:
    """The page data of several runs on the same axes: each run's loss per step, validation loss and metrics per
    epoch and learning rate, and their settings and final metrics side by side. The page smooths the first three
    (its slider) and draws them against the step, the epoch, the share of each run or the wall time (each run's
    ``clock``)."""
    summaries, histories, loss, val, metric, lrs = [], [], [], [], [], []
    for i, run in enumerate(runs):
        history = store.history(run.id)
        summary = _run_summary(run, history)
        summaries.append(summary)
        histories.append(history)
        label = summary["label"] if sum(r.name == run.name for r in runs) == 1 and run.name else run.id
        summary["label"] = label
        steps, epochs, x = history.steps, history.epochs, _step_x(history)
        summary["clock"] = _clock(history, run, summary["steps"])
        if "loss" in steps:
            loss.append(_series(label, x, steps["loss"], run=i))  # smoothed on the page (its slider)
        if len(epochs):
            ex = _epoch_x(history, run)
            key = "val_loss" if "val_loss" in epochs else "train_loss" if "train_loss" in epochs else None
            if key:
                val.append(_series(label, ex, epochs[key], run=i))
            if "val_accuracy" in epochs:
                metric.append(_series(label, ex, epochs["val_accuracy"], run=i))
        if "lr" in steps:
            lrs.append(_series(label, x, steps["lr"], run=i))
    span = _extent(summaries, histories)
    charts = [_chart("loss", "training loss per step", "loss", loss, extent=span, smooth=True),
              _chart("epochs", "validation loss per epoch (training loss where none)", "loss", val, extent=span,
                     smooth=True),
              _chart("metrics", "validation accuracy per epoch", "accuracy", metric, extent=span, smooth=True),
              _chart("lr", "learning rate", "lr", lrs, extent=span)]
    title = "runs " + ", ".join(s["label"] for s in summaries)
    return {"kind": "runs", "title": title, "runs": summaries, "charts": [c for c in charts if c is not None],
            **_stamp()}


def sweep_data(stored: dict[str, Any]) -> dict[str, Any]:
    """The page data of a stored sweep or restarts: its table, the final loss against lr (or the swept setting,
    or the seed), and each member's training loss per epoch."""
    rows = stored.get("rows") or []
    config = stored.get("config") or {}
    key = "val_loss" if any(r.get("val_loss") is not None for r in rows) else "train_loss"
    varying = [k for k in (rows[0] if rows else {}) if k not in RESULT_KEYS and not k.startswith("val_")
               and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
               and len({r[k] for r in rows}) > 1]
    x_key = ("lr" if "lr" in varying else next((k for k in varying if k != "seed"), None)
             or ("seed" if "seed" in varying else "member"))
    others = [k for k in varying if k not in (x_key, "seed")]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{k} {r.get(k)}" for k in ("seed", *others) if k != x_key and k in varying) or key
        groups.setdefault(label, []).append(r)
    series: list[dict[str, Any]] = []
    line_keys = [k for k in ("seed", *others) if k != x_key and k in varying]
    for n, (label, members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda r: (r.get(x_key) is None, r.get(x_key) or 0))
        members = [r for r in members if isinstance(r.get(x_key), (int, float))]
        series.append({"label": label, "run": n, "style": "dots" if x_key in ("seed", "member") else "points",
                       "x": [_num(r[x_key]) for r in members],
                       "y": [None if r.get("diverged") else _num(r.get(key)) for r in members],
                       "recorded": len(members),
                       "group": {k: _num(members[0].get(k)) for k in line_keys} if members else {}})
    xs = [v for s in series for v in s["x"] if v is not None]
    charts = [_chart("final", f"final {key.replace('_', ' ')} against {x_key}", key.replace("_", " "), series,
                     x=x_key, markers=False, xlog=x_key == "lr" and bool(xs) and min(xs) > 0,
                     groups=line_keys if len(series) > LEGEND_SERIES else ())]
    with_curve = [r for r in rows if r.get("curve")]
    curves = with_curve[:CURVES]
    if curves:
        member_keys = [k for k in (x_key, *line_keys) if k in varying]
        charts.append(_chart("curves", "each member's training loss per epoch", "train loss",
                             [{"label": f"member {r.get('member')}", "run": i, "style": "thin",
                               "x": list(range(1, len(r["curve"]) + 1)), "y": [_num(v) for v in r["curve"]],
                               "recorded": len(r["curve"]), "group": {k: _num(r.get(k)) for k in member_keys}}
                              for i, r in enumerate(curves)],
                             x="epoch", markers=False, groups=member_keys if len(curves) > LEGEND_SERIES else (),
                             note=(f"the first {len(curves)} of {len(with_curve)} members"
                                   if len(with_curve) > len(curves) else None)))
    table = [{k: _clean(v) for k, v in r.items() if k != "curve"} for r in rows]
    keys = list(dict.fromkeys(k for r in table for k in r))
    settings = [k for k in keys if k not in RESULT_KEYS and not k.startswith("val_")]
    results = ["train_loss", "val_loss", "metric", *(k for k in keys if k.startswith("val_") and k != "val_loss"),
               "diverged"]
    columns = ["member", *sorted(settings, key=lambda k: (k != "lr", k != "seed", k)), *results]
    columns = [k for k in dict.fromkeys(columns) if k in keys]
    return {"kind": "sweep", "title": f"{stored.get('kind', 'sweep')} {stored.get('name') or stored.get('id')}",
            "sweep": {"id": stored.get("id"), "name": stored.get("name"), "kind": stored.get("kind"),
                      "created": stored.get("created"), "seconds": _num(stored.get("seconds")),
                      "steps": stored.get("steps"), "members": len(rows),
                      "config": {k: _clean(v) for k, v in config.items() if v not in (None, {}, [], "")},
                      "summary": _clean(stored.get("summary") or {}), "key": key, "x": x_key},
            "table": table, "columns": columns, "charts": [c for c in charts if c is not None], **_stamp()}


def index_data(store: Store, links: dict[str, str]) -> dict[str, Any]:
    """The page data of the index: every run (status, the lr asked for (a number or ``"auto"``), chosen and final,
    final metrics, finding codes) and sweep, each with the link to its page from ``links`` (id -> relative
    path)."""
    runs = []
    for run in store.runs():
        full = store.get(run.id)
        c, f = full.config or {}, full.final or {}
        asked, chosen = _lr_asked_chosen(c)
        runs.append({"id": run.id, "href": links.get(run.id), "name": run.name, "status": run.status,
                     "created": run.created, "data": c.get("data"), "model": c.get("model"),
                     "optimizer": c.get("optimizer"), "lr_asked": asked, "lr_chosen": chosen,
                     "lr_final": _num(run.lr),
                     "steps": run.steps, "train_loss": _num(f.get("train_loss")), "val_loss": _num(f.get("val_loss")),
                     "val_accuracy": _num(f.get("val_accuracy")), "stop_reason": run.stop_reason,
                     "findings": sorted({x["code"] for x in full.findings}),
                     "remedies": len(full.remedies)})
    sweeps = [{"id": s["id"], "href": links.get(s["id"]), "name": s["name"], "kind": s["kind"],
               "created": s["created"], "members": s["members"], "steps": s["steps"], "seconds": _num(s["seconds"])}
              for s in store.sweeps()]
    return {"kind": "index", "title": f"runs in {store.root}", "index": runs, "sweeps": sweeps, **_stamp()}


def _stamp() -> dict[str, Any]:
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "version": __version__}


# -- the page --------------------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("gdlab.reports").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>`` and no ``<!--``)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "connect-src 'none'; form-action 'none'; base-uri 'none'")
"""The page's Content-Security-Policy: nothing is fetched from anywhere; only its own inline scripts run."""


def page(data: dict[str, Any]) -> str:
    """The HTML page of ``data`` (from :func:`run_data`, :func:`runs_data`, :func:`sweep_data` or
    :func:`index_data`): uPlot, the report's script and styles, and the data, all inline."""
    title = html.escape(str(data.get("title", "gdlab report")))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta name=\"generator\" content=\"gdlab {html.escape(__version__)}\">"
        f"<title>{title} - gdlab</title>\n"
        f"<style>\n{_asset('uPlot.min.css')}\n{_asset('report.css')}\n</style></head>\n<body>\n"
        "<noscript>This report draws its charts with JavaScript; the data is in the page.</noscript>\n"
        "<main id=\"report\"></main>\n"
        f"<script type=\"application/json\" id=\"gdlab-data\">{_script_json(data)}</script>\n"
        f"<script>\n{_asset('uPlot.iife.min.js')}\n</script>\n"
        f"<script>\n{_asset('report.js')}\n</script>\n</body></html>\n"
    )


def _write(target: Path, text: str, flag: str) -> Path:
    """Write ``text`` to ``target`` whole (a temporary file beside it, then renamed), or raise InvalidParameter."""
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(temporary, 0o666 & ~_umask())  # as open() would make it (mkstemp's is 0600)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as e:
        reason = e.strerror or str(e)
        raise InvalidParameter(flag, str(target), f"a writable .html file path ({reason})") from None
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_index(store: Store, folder: Path, *, force: bool = False) -> Path:
    """Each run's and sweep's page into ``folder`` (``<id>.html``), then ``index.html`` linking them. The ids are
    the store's, checked (:meth:`Store.run_dir`), and each page is checked as ``--out`` is (:func:`check_out`)
    before anything is written."""
    if folder.exists() and not folder.is_dir():
        raise InvalidParameter("--out", str(folder), "a folder for the index and the run pages (this is a file)")
    runs, sweeps = store.runs(), store.sweeps()  # a damaged store fails here, before a page is written
    pages = [folder / f"{item}.html" for item in [r.id for r in runs] + [s["id"] for s in sweeps] + ["index"]]
    for target in pages:
        check_out(target, "--out", (".html",), force=force)
    links: dict[str, str] = {}
    for run in runs:
        links[run.id] = _write(folder / f"{run.id}.html", page(run_data(store, store.get(run.id))), "--out").name
    for stored in sweeps:
        links[stored["id"]] = _write(folder / f"{stored['id']}.html", page(sweep_data(store.get_sweep(stored["id"]))),
                                     "--out").name
    return _write(folder / "index.html", page(index_data(store, links)), "--out")
