"""Pictures of a run (an edge: the only place matplotlib is imported, lazily, with the Agg backend).

Example:
    >>> from gdlab.records import History, layer_key
    >>> import tempfile, pathlib
    >>> h = History()
    >>> for s in range(1, 11): h.steps.append({"step": s, "loss": 1 / s})
    >>> h.epochs.append({"epoch": 1, "train_loss": 0.3, "val_loss": 0.4})
    >>> plot_losses(h, pathlib.Path(tempfile.mkdtemp()) / "loss.png").suffix
    '.png'
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from gdlab.records import History, layer_key
from gdlab.records import ema as moving_average  # the one moving average; re-exported under its old name

__all__ = ["plot_losses", "loss_figure", "plot_instruments", "plot_sweep", "plot_restarts", "plot_lr_find",
           "moving_average", "spans_decades", "INSTRUMENT_PANELS", "instrument_panels", "panel_note"]


def spans_decades(values: list[float], decades: float = 2.0) -> bool:
    """Whether the positive finite ``values`` span at least ``decades`` powers of ten (then plot in log)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) >= 10**decades


def plot_losses(history: History, path: str | Path, *, title: str | None = None) -> Path:
    """Two panels: train and validation loss per epoch; per-step loss with its moving average (and, over steps the
    store merged, the band from their min to their max).

    The loss axes turn logarithmic where the loss spans two decades or more. Returns the PNG's path.
    """
    return _save(loss_figure(history, title=title), path)


def loss_figure(history: History, *, title: str | None = None) -> Any:
    """The figure :func:`plot_losses` saves (a matplotlib ``Figure``, open: the caller saves or closes it)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    epochs = history.epochs
    legends: list[tuple[Any, list[Any]]] = []
    if len(epochs):
        for key, label, style in (("train_loss", "train", "o-"), ("val_loss", "validation", "s-")):
            if key in epochs and any(math.isfinite(v) for v in epochs[key]):
                left.plot(epochs["epoch"], epochs[key], style, markersize=3, label=label)
        if spans_decades([v for k in ("train_loss", "val_loss") if k in epochs for v in epochs[k]]):
            left.set_yscale("log")
        handles = left.get_lines()[:]
        twins = []
        if "val_accuracy" in epochs and any(math.isfinite(v) for v in epochs["val_accuracy"]):
            accuracy = left.twinx()
            handles += accuracy.plot(epochs["epoch"], epochs["val_accuracy"], ":", color="tab:green",
                                     label="val accuracy")
            accuracy.set_ylabel("validation accuracy", color="tab:green")
            accuracy.set_ylim(0, 1.01)
            twins.append(accuracy)
        if handles:  # one legend for both axes, where neither's lines are
            legends.append((left.legend(handles, [h.get_label() for h in handles]), twins))
    else:
        left.text(0.5, 0.5, "no completed epoch", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("loss per epoch")

    steps = history.steps
    if len(steps):
        right.plot(steps["step"], steps["loss"], color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
        _spread(right, steps, steps["step"], "loss", "tab:blue", "min to max of merged steps")
        right.plot(steps["step"], moving_average(steps["loss"]), color="tab:blue", label="moving average")
        if spans_decades(steps["loss"]):
            right.set_yscale("log")
        legends.append((right.legend(), []))
    right.set_xlabel("step")
    right.set_ylabel("loss")
    right.set_title("loss per step")
    if title:
        fig.suptitle(title, wrap=True)
    place_legends(fig, legends)
    return fig


def _spread(ax: Any, steps: Any, x: Any, key: str, colour: str, label: str | None = None) -> None:
    """Shade between ``min:key`` and ``max:key`` where the store merged steps into buckets (a long run's older
    steps; see :meth:`gdlab.store.Store.add_steps`), so that a spike among them still shows."""
    if f"max:{key}" in steps:
        ax.fill_between(x, steps[f"min:{key}"], steps[f"max:{key}"], color=colour, alpha=0.2, linewidth=0,
                        label=label)


LEGEND_PLACES = ("upper right", "upper left", "lower left", "lower right", "center right", "center left",
                 "upper center", "lower center")
"""Where :func:`place_legends` tries a legend inside its axes, in this order, before putting it below them."""


def data_segments(*axes: Any) -> Any:
    """Every line of ``axes`` (and every filled band's outline) as segments in display pixels: an array
    ``[n, 2, 2]`` (markers-only lines as zero-length segments), what a legend must not cover."""
    import numpy as np
    from matplotlib.contour import ContourSet

    parts = []
    for ax in axes:
        for line in ax.get_lines():
            xy = np.asarray(line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float)))
            xy = xy[np.isfinite(xy).all(axis=1)]
            if not len(xy) or not line.get_visible():
                continue
            if line.get_linestyle() in ("None", "none", " ", ""):
                parts.append(np.stack([xy, xy], axis=1))
            else:
                parts.append(np.stack([xy[:-1], xy[1:]], axis=1) if len(xy) > 1 else np.stack([xy, xy], axis=1))
        for collection in ax.collections:
            if isinstance(collection, ContourSet):
                continue  # a background (the function, the landscape), not data a legend hides
            for path in collection.get_paths():
                xy = collection.get_transform().transform(path.vertices)
                xy = xy[np.isfinite(xy).all(axis=1)]
                if len(xy) > 1:
                    parts.append(np.stack([xy[:-1], xy[1:]], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2, 2))


def covers(box: Any, segments: Any) -> bool:
    """Whether any segment (``[n, 2, 2]`` display pixels) enters ``box`` (a matplotlib ``Bbox``): Liang-Barsky
    clipping, so a line crossing the box between two of its points counts."""
    import numpy as np

    if not len(segments):
        return False
    p0, d = segments[:, 0], segments[:, 1] - segments[:, 0]
    low, high = np.zeros(len(d)), np.ones(len(d))
    inside = np.ones(len(d), dtype=bool)
    for axis, (lo, hi) in enumerate(((box.x0, box.x1), (box.y0, box.y1))):
        for q, bound in ((-d[:, axis], p0[:, axis] - lo), (d[:, axis], hi - p0[:, axis])):
            parallel = q == 0
            inside &= ~(parallel & (bound < 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(parallel, 0.0, bound / np.where(parallel, 1.0, q))
            low = np.where(~parallel & (q < 0), np.maximum(low, t), low)
            high = np.where(~parallel & (q > 0), np.minimum(high, t), high)
    return bool((inside & (low <= high)).any())


def place_legends(fig: Any, legends: list[tuple[Any, list[Any]]]) -> None:
    """Move each legend (with the other axes whose data it must not cover, a twin's) to the first of
    :data:`LEGEND_PLACES` where it covers none of its axes' lines, once the figure's layout is done; where none is
    free, below the axes and their labels, outside the data."""
    if not legends:
        return
    fig.canvas.draw()  # the layout (constrained) is done: the boxes are where the file will have them
    renderer = fig.canvas.get_renderer()
    below = []
    for legend, others in legends:
        segments = data_segments(legend.axes, *others)
        for place in LEGEND_PLACES:
            legend.set_loc(place)
            if not covers(legend.get_window_extent(renderer), segments):
                break
        else:
            below.append(legend)
    for legend in below:
        ax = legend.axes
        drop = ax.bbox.y0 - ax.get_tightbbox(renderer).y0  # the tick labels and the x label, in pixels
        legend.set_loc("upper center")
        legend.set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes)
        legend.borderaxespad = (drop + 4) / (legend.prop.get_size_in_points() * fig.dpi / 72)
    if below:
        fig.canvas.draw()  # the layout again, with room for them


def _pyplot() -> Any:
    import matplotlib

    if "inline" not in str(getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: None)()):
        matplotlib.use("Agg")  # files only; Jupyter's inline backend is kept, so a notebook's own figures still show
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_sweep(result: Any, path: str | Path) -> Path:
    """A sweep's final loss against the learning rate, one line per seed (and per value of a second axis);
    with two swept settings, also a heatmap of the loss (mean over seeds). Diverged members are marked x."""
    plt = _pyplot()
    rows = result.table
    key = "val_loss" if any(r["val_loss"] is not None for r in rows) else "train_loss"
    others = [a for a in result.axes if a not in ("lr", "seed")]
    second = others[0] if others else None
    heat = second is not None and "lr" in result.axes
    fig, axes = plt.subplots(1, 2 if heat else 1, figsize=(12 if heat else 7, 4.5), constrained_layout=True,
                             squeeze=False)
    ax = axes[0][0]
    x_key = "lr" if "lr" in result.axes else (second or "seed")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["seed"], r.get(second) if second and x_key != second else None), []).append(r)
    finite = [r[key] for r in rows if r[key] is not None]
    ceiling = max(finite) if finite else 1.0
    for (seed, other), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        members = sorted(members, key=lambda r: r[x_key])
        label = f"seed {seed}" + (f", {second} {other:g}" if other is not None else "")
        ax.plot([r[x_key] for r in members], [r[key] if r[key] is not None else math.nan for r in members],
                "o-", markersize=4, label=label)
        gone = [r for r in members if r["diverged"]]
        if gone:
            ax.plot([r[x_key] for r in gone], [ceiling] * len(gone), "x", color="red", markersize=8)
    if any(r["diverged"] for r in rows):
        ax.plot([], [], "x", color="red", label="diverged")
    if x_key == "lr":
        ax.set_xscale("log")
    if spans_decades(finite):
        ax.set_yscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"final {key.replace('_', ' ')}")
    ax.set_title(f"{result.optimizer}: final loss against {x_key}")
    if len(groups) <= 12:
        ax.legend(fontsize=8)
    if heat:
        assert second is not None
        lrs, values = sorted(set(r["lr"] for r in rows)), sorted(set(r[second] for r in rows))
        grid = [[math.nan] * len(lrs) for _ in values]
        for j, v in enumerate(values):
            for i, lr in enumerate(lrs):
                cell = [r[key] for r in rows if r["lr"] == lr and r[second] == v and r[key] is not None]
                grid[j][i] = sum(cell) / len(cell) if cell else math.nan
        hm = axes[0][1]
        image = hm.imshow(grid, aspect="auto", origin="lower", cmap="viridis_r")
        hm.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], rotation=45, fontsize=7)
        hm.set_yticks(range(len(values)), [f"{v:g}" for v in values], fontsize=8)
        hm.set_xlabel("lr")
        hm.set_ylabel(second)
        hm.set_title(f"final {key.replace('_', ' ')} (mean over seeds; blank: diverged)")
        fig.colorbar(image, ax=hm)
    return _save(fig, path)


def plot_restarts(result: Any, path: str | Path) -> Path:
    """The distribution of the restarts' final losses (a histogram, coloured by end point) and each restart's
    loss curve."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    clusters = sorted(set(c for c in result.clusters if c >= 0))
    finite = [v for v in result.losses if math.isfinite(v)]
    bins = 20 if len(finite) > 20 else max(len(finite), 1)
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high <= low:
        high = low + 1e-9
    stack = [[v for v, c in zip(result.losses, result.clusters) if c == k] for k in clusters]
    left.hist(stack, bins=bins, range=(low, high), stacked=True,
              label=[f"end point {k + 1} ({len(s)})" for k, s in zip(clusters, stack)])
    left.axvline(result.best * (1 + result.tol), color="black", linestyle=":", label=f"best + {result.tol:.0%}")
    left.set_xlabel("final loss")
    left.set_ylabel("restarts")
    left.set_title(f"{len(result.losses)} restarts: {result.distinct} end points, "
                   f"{result.within_tol:.0%} within {result.tol:.0%} of the best")
    if len(clusters) <= 10:
        left.legend(fontsize=8)
    pop = result.sweep.population
    curves = pop.epoch_train_loss
    colours = plt.get_cmap("tab10")
    for i in range(curves.shape[1]):
        c = result.clusters[i]
        right.plot(range(1, curves.shape[0] + 1), curves[:, i].tolist(), color=colours(c % 10) if c >= 0 else "red",
                   alpha=0.6, linewidth=1)
    if spans_decades([v for v in curves.flatten().tolist() if math.isfinite(v)]):
        right.set_yscale("log")
    right.set_xlabel("epoch")
    right.set_ylabel("train loss")
    right.set_title("each restart's training loss (colour: end point)")
    return _save(fig, path)


def plot_lr_find(result: Any, path: str | Path) -> Path:
    """The range test's loss (raw and smoothed) against the learning rate, with the suggestions marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed")
    colours = {"steepest": "tab:orange", "valley": "tab:green", "min/10": "tab:purple"}
    for name, lr in result.suggestions.items():
        ax.axvline(lr, color=colours.get(name, "gray"), linestyle="--", label=f"{name}: {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        top = max(finite[0], min(finite) * 4)
        ax.set_ylim(min(finite) - 0.05 * abs(top - min(finite)), top * 1.05 if top > 0 else top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"learning-rate range test ({result.optimizer})"
                 + ("\n" + result.warnings[0][:90] if result.warnings else ""), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


INSTRUMENT_PANELS = (
    ("loss", ["loss", "loss_ema"], "loss (per step, and its moving average)", None),
    ("gradient norm per layer", ["grad_norm/"], "gradient norm", None),
    ("update / weight per layer", ["update_ratio/"], "|update| / |weight|  (about 1e-3 is usual)", 1e-3),
    ("gradient arriving at each layer's output", ["grad_out/"], "norm", None),
    ("gradient noise scale", ["noise_scale"], "B_simple (a batch size)", None),
    ("gradient signal-to-noise", ["grad_snr"], "|mean gradient|^2 / its noise", None),
    ("activations", ["dead_share/", "zero_share/", "saturated/"], "share of units", None),
    ("sharpness", ["sharpness", "stability_limit"], "largest Hessian eigenvalue; 2(1+beta)/lr", None),
)
"""The panels of the instruments' dashboard: (title, the keys or key prefixes (ending in ``/``) it draws, its
y-axis label, a reference level or None). ``gdlab plot --instruments`` and the HTML report draw the same ones."""


def instrument_panels(history: History) -> list[tuple[str, list[str], str, float | None]]:
    """The :data:`INSTRUMENT_PANELS` that have data in ``history``, each with the step columns it draws."""
    steps = history.steps
    panels = []
    for name, prefixes, ylabel, reference in INSTRUMENT_PANELS:
        keys = [k for k in steps.columns if any(k == p or (p.endswith("/") and k.startswith(p)) for p in prefixes)]
        keys = [k for k in keys if any(math.isfinite(v) for v in steps[k])]
        if keys:
            panels.append((name, keys, ylabel, reference))
    return panels


def panel_note(history: History, keys: list[str]) -> str | None:
    """Why a panel's readings stop before the run's end, or None: the instruments space their readings (every
    ``every`` steps, then farther apart) to stay within their share of the training time, so a reading that would
    cost too much is skipped, and the last one can come well before the last step. Said when a reading was due
    (the panel's smallest spacing after its last one) before the run ended.

    Example:
        >>> h = History()
        >>> for s in range(1, 101): h.steps.append({"step": s, "update_ratio/0": 0.01 if s in (20, 40) else math.nan})
        >>> panel_note(h, ["update_ratio/0"]).split(":")[0]
        'last reading at step 40 of 100 (2 readings, 20+ steps apart)'
    """
    steps = history.steps
    if not len(steps) or "step" not in steps:
        return None
    end = max(steps["step"])
    read = sorted({s for k in keys if k in steps for s, v in zip(steps["step"], steps[k]) if math.isfinite(v)})
    if len(read) < 2 or len(read) == len(steps):
        return None
    gaps = [b - a for a, b in zip(read, read[1:])]
    gap = max(reversed(gaps), key=gaps.count)  # the usual spacing (the latest where none is usual: it grows)
    if read[-1] + gap > end:
        return None
    return (f"last reading at step {read[-1]:.0f} of {end:.0f} ({len(read)} readings, {min(gaps):.0f}+ steps "
            "apart): readings that would cost more than the instruments' time budget are skipped")


def plot_instruments(history: History, path: str | Path, *, findings: list[dict[str, Any]] | None = None,
                     title: str | None = None) -> Path:
    """A dashboard of the instruments over the steps (the panels with data), each finding marked at the step where
    its evidence is (its step)."""
    plt = _pyplot()
    steps = history.steps
    x = steps["step"] if "step" in steps else list(range(1, len(steps) + 1))
    panels = instrument_panels(history)
    rows = max(1, -(-len(panels) // 2))
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.2 * rows), constrained_layout=True, squeeze=False)
    colours = {"error": "red", "warning": "orange", "info": "gray"}
    legends: list[tuple[Any, list[Any]]] = []
    span = (min(x), max(x)) if len(x) and min(x) < max(x) else None
    for ax, (name, keys, ylabel, reference) in zip(axes.flat, panels):
        for key in keys:
            points = [(s, v) for s, v in zip(x, steps[key]) if math.isfinite(v)]
            style = "-" if len(points) > 20 else "o-"
            line = ax.plot([p[0] for p in points], [p[1] for p in points], style, markersize=3, linewidth=1,
                           label=key)
            _spread(ax, steps, x, key, line[0].get_color())
        values = [v for k in keys for v in steps[k] if math.isfinite(v)]
        if spans_decades(values) and min(values) > 0:
            ax.set_yscale("log")
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle=":", linewidth=1)
        for f in findings or []:
            if f.get("step"):
                ax.axvline(f["step"], color=colours.get(f["severity"], "gray"), linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        note = panel_note(history, keys)
        ax.set_xlabel("\n".join(["step", *textwrap.wrap(note or "", 80)]), fontsize=8)
        if span:
            ax.set_xlim(*span)  # every panel spans the run's steps: a series that stops early shows it
        if len(keys) <= 8:
            legends.append((ax.legend(fontsize=7), []))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if findings:
        marked = "; ".join(f"{f['code']} (step {f['step']})" for f in findings if f.get("step"))
        fig.suptitle((title + "\n" if title else "") + f"findings: {marked}"[:160], fontsize=10, wrap=True)
    elif title:
        fig.suptitle(title, wrap=True)
    place_legends(fig, legends)
    return _save(fig, path)


def _contour(ax: Any, function: Any, resolution: int = 200) -> None:
    import torch

    (x0, x1), (y0, y1) = function.domain
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    z = function(grid)
    low = float(z.min())
    shifted = (z - low + 1e-3).log10()  # log levels show the valleys' floors as well as the walls
    ax.contourf(xs.numpy(), ys.numpy(), shifted.numpy(), levels=30, cmap="Greys_r", alpha=0.6)
    ax.contour(xs.numpy(), ys.numpy(), shifted.numpy(), levels=15, colors="white", linewidths=0.4, alpha=0.6)
    for m in function.minima:
        ax.plot(*m, marker="*", color="gold", markersize=14, markeredgecolor="black", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def _background(ax: Any, function: Any, resolution: int = 150) -> None:
    import torch

    (x0, x1), (y0, y1) = function.domain
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    z = function(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1))
    shifted = (z - float(z.min()) + 1e-3).log10()
    ax.imshow(shifted.numpy(), origin="lower", extent=(x0, x1, y0, y1), cmap="Greys_r", alpha=0.7, aspect="auto")
    for m in function.minima:
        ax.plot(*m, marker="*", color="gold", markersize=12, markeredgecolor="black", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def plot_walks(result: Any, path: str | Path, *, restarts: bool = False) -> Path:
    """The contour of the function with every optimizer's path (the minima as stars); with restarts, one panel per
    optimizer, each start coloured by the global minimum it fell into (grey: none)."""
    plt = _pyplot()
    f = result.function
    colours = plt.get_cmap("tab10")
    if not restarts:
        fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
        _contour(ax, f)
        for i, (w, row) in enumerate(zip(result.walks, result.table)):
            p = w.path[:, 0, :].numpy()
            ax.plot(p[:, 0], p[:, 1], "-", color=colours(i), linewidth=1.5,
                    label=f"{w.optimizer} (lr {row['lr']:.3g}): loss {row['loss']:.3g}")
            ax.plot(p[-1, 0], p[-1, 1], "o", color=colours(i), markersize=5)
        ax.plot(*result.walks[0].path[0, 0].tolist(), "s", color="black", markersize=6, label="start")
        ax.set_title(f"{f.name}: {f.description}", fontsize=9, wrap=True)
        place_legends(fig, [(ax.legend(fontsize=8), [])])
        return _save(fig, path)
    n = len(result.walks)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), constrained_layout=True, squeeze=False)
    for ax, w, row in zip(axes[0], result.walks, result.table):
        _contour(ax, f)
        starts = w.path[0].numpy()
        ends = w.path[-1].numpy()
        for k, basin in enumerate(row["basins"]):
            colour = colours(basin) if basin >= 0 else "lightgrey"
            ax.plot(starts[k, 0], starts[k, 1], "o", color=colour, markersize=4, markeredgecolor="black",
                    markeredgewidth=0.3)
            ax.plot([starts[k, 0], ends[k, 0]], [starts[k, 1], ends[k, 1]], "-", color=colour, alpha=0.15,
                    linewidth=0.6)
        ax.set_title(f"{w.optimizer} (lr {row['lr']:.3g}): {row['reached_global']:.0%} reach a global minimum",
                     fontsize=9, wrap=True)
    fig.suptitle(f"{f.name}: {len(result.walks[0].path[0])} random starts, coloured by the minimum they reach",
                 wrap=True)  # one optimizer's panel is narrower than this line
    return _save(fig, path)


def animate_walks(result: Any, path: str | Path, *, frames: int = 30) -> Path:
    """An animated GIF of the descent: every optimizer's points moving over the contour."""
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, ax, draw, shown = descent_figure(result, frames=frames)
    animation = FuncAnimation(fig, draw, frames=shown, blit=False)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    animation.save(target, writer=PillowWriter(fps=10), dpi=GIF_DPI)
    plt.close(fig)
    return target


GIF_SIZE = (7.2, 5.0)
"""The lab GIF's size in inches, at :data:`GIF_DPI`: 720 x 500 pixels, its legend's text 9 pixels high or more."""

GIF_DPI = 100


def descent_figure(result: Any, *, frames: int = 30) -> tuple[Any, Any, Any, list[int]]:
    """The lab GIF's figure: the function as an image, each optimizer's trail and point, the legend outside the
    axes (to their right: the points move everywhere in them). Returns ``(fig, ax, draw(frame), frames shown)``."""
    plt = _pyplot()
    f = result.function
    fig, ax = plt.subplots(figsize=GIF_SIZE)  # no constrained layout: it would be solved again every frame
    _background(ax, f)  # an image, drawn fast in every frame (contour sets are slow to redraw)
    colours = plt.get_cmap("tab10")
    steps = result.walks[0].path.shape[0]
    shown = sorted({round(i * (steps - 1) / (frames - 1)) for i in range(frames)}) if steps > frames else \
        list(range(steps))
    lines = []
    for i, w in enumerate(result.walks):
        (line,) = ax.plot([], [], "-", color=colours(i), linewidth=1.2, label=w.optimizer)
        (dots,) = ax.plot([], [], "o", color=colours(i), markersize=4)
        lines.append((w, line, dots))
    if result.walks[0].path.shape[1] == 1:
        ax.plot(*result.walks[0].path[0, 0].tolist(), "s", color="black", markersize=5, label="start")
    ax.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    title = ax.set_title(" ", fontsize=11)
    fig.tight_layout()  # makes room for the legend beside the axes

    def draw(t: int) -> list[Any]:
        for w, line, dots in lines:
            trail = w.path[: t + 1, 0, :].numpy() if w.path.shape[1] == 1 else w.path[t].numpy()
            if w.path.shape[1] == 1:
                line.set_data(trail[:, 0], trail[:, 1])
                dots.set_data([trail[-1, 0]], [trail[-1, 1]])
            else:
                dots.set_data(trail[:, 0], trail[:, 1])
        title.set_text(f"{f.name}: step {t}")
        return [title] + [x for _, line, dots in lines for x in (line, dots)]

    return fig, ax, draw, shown


def plot_graph(graph: Any, path: str | Path) -> Path:
    """The expression's computation graph, inputs on the left, the output on the right: each node with its value
    and global gradient; each edge with the local gradient and the global gradient it carries back."""
    plt = _pyplot()
    nodes = graph.nodes
    depth = [0] * len(nodes)
    for n in nodes:
        depth[n.index] = 1 + max((depth[i] for i in n.inputs), default=-1)
    columns: dict[int, list[int]] = {}
    for n in nodes:
        columns.setdefault(depth[n.index], []).append(n.index)
    position = {}
    for d, members in columns.items():
        for k, i in enumerate(members):
            position[i] = (d * 3.0, (len(members) - 1) / 2 - k * 1.6)
    width = 3.0 * (max(columns) + 1) + 1
    height = 1.6 * max(len(m) for m in columns.values()) + 1.5
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * width), max(3.5, 1.1 * height)), constrained_layout=True)
    for n in nodes:
        x1, y1 = position[n.index]
        for i, local in zip(n.inputs, n.local):
            x0, y0 = position[i]
            ax.annotate("", xy=(x1 - 0.55, y1), xytext=(x0 + 0.55, y0),
                        arrowprops={"arrowstyle": "->", "color": "gray", "lw": 1})
            # the label near the arrow's head, where edges into one node do not cross
            lx, ly = x0 + 0.7 * (x1 - x0), y0 + 0.7 * (y1 - y0)
            ax.text(lx, ly + 0.12, f"local {local:.3g}\nglobal {n.grad * local:.3g}", ha="center", va="bottom",
                    fontsize=7, color="tab:red")
    colours = {"variable": "#cde7ff", "constant": "#eeeeee", "operation": "#fff2c6", "function": "#d9f2d0"}
    for n in nodes:
        x, y = position[n.index]
        ax.text(x, y, f"{n.label}\nvalue {n.value:.4g}\ngrad {n.grad:.4g}", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.4", "facecolor": colours.get(n.kind, "white"), "edgecolor": "black"})
    ax.set_xlim(-1.2, width - 0.8)
    ys = [p[1] for p in position.values()]
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    ax.axis("off")
    ax.set_title(f"{graph.expression}   at " + ", ".join(f"{k}={v:g}" for k, v in graph.values.items())
                 + "\nglobal gradient = the one arriving from the output x the local gradient (chain rule)",
                 fontsize=9)
    return _save(fig, path)


def plot_gradflow(history: History, path: str | Path, *, title: str | None = None) -> Path:
    """Gradient flow: each layer's own gradient norm over the steps, the gradient arriving at each layer's output
    over the steps, and both per layer (first to last) at the last measurement, on a log scale: vanishing
    gradients fall toward the first layer, exploding ones grow."""
    plt = _pyplot()
    steps = history.steps
    x = steps["step"] if "step" in steps else list(range(1, len(steps) + 1))
    def natural(key: str) -> list[Any]:
        return layer_key(key.split("/", 1)[1])

    own = sorted((k for k in steps.columns if k.startswith("grad_norm/")), key=natural)
    arriving = sorted((k for k in steps.columns if k.startswith("grad_out/")), key=natural)
    if not own and not arriving:
        raise ValueError("no per-layer gradients recorded: train with instruments (--instruments cheap or more)")
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, keys, name in ((a, own, "each layer's own gradient norm"),
                           (b, arriving, "gradient arriving at each layer's output")):
        for key in keys:
            points = [(s, v) for s, v in zip(x, steps[key]) if math.isfinite(v) and v > 0]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "-" if len(points) > 20 else "o-",
                        markersize=3, linewidth=1, label=key.split("/", 1)[1])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        if keys and len(keys) <= 12:
            ax.legend(fontsize=7, title="layer", title_fontsize=7)

    def last(key: str) -> float:
        finite = [v for v in steps[key] if math.isfinite(v)]
        return finite[-1] if finite else math.nan

    layers = sorted({k.split("/", 1)[1] for k in own + arriving}, key=lambda name: natural("/" + name))
    for prefix, label, offset in (("grad_norm/", "own gradient", -0.2), ("grad_out/", "arriving gradient", 0.2)):
        heights = [last(prefix + name) if prefix + name in steps else math.nan for name in layers]
        if any(math.isfinite(h) for h in heights):
            c.bar([i + offset for i in range(len(layers))], heights, width=0.4, label=label)
    c.set_xticks(range(len(layers)), layers, fontsize=8)
    c.set_yscale("log")
    c.set_xlabel("layer (first to last)")
    c.set_title("at the last measurement", fontsize=10)
    c.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_landscape(landscape: Any, path: str | Path, *, title: str | None = None) -> Path:
    """A line as a curve; a plane as filled contours (log-scaled) and a 3-D surface, the model at the centre."""
    plt = _pyplot()
    losses = landscape.losses
    if landscape.betas is None:
        fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
        ax.plot(landscape.alphas.numpy(), losses.numpy(), "o-", markersize=3)
        ax.set_xlabel("step along the direction")
        ax.set_ylabel("loss")
        if spans_decades([v for v in losses.tolist() if math.isfinite(v)]):
            ax.set_yscale("log")
    else:
        fig = plt.figure(figsize=(12, 5), constrained_layout=True)
        ax = fig.add_subplot(1, 2, 1)
        a, b = landscape.alphas.numpy(), landscape.betas.numpy()
        shown = losses.clamp(min=1e-12).log10().numpy()
        filled = ax.contourf(a, b, shown, levels=30, cmap="viridis")
        ax.contour(a, b, shown, levels=15, colors="white", linewidths=0.4)
        if landscape.path is not None:
            share = sum(landscape.explained or [])
            ax.plot(landscape.path[:, 0].numpy(), landscape.path[:, 1].numpy(), "o-", color="white", markersize=3,
                    linewidth=1.2, label=f"training path ({share:.0%} of its variance)")
            ax.plot(*landscape.path[0].tolist(), "s", color="white", markersize=6, markeredgecolor="black")
        ax.plot(0, 0, "r*", markersize=12, label="the model")
        fig.colorbar(filled, ax=ax, label="log10 loss")
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.legend(fontsize=8)
        surface = fig.add_subplot(1, 2, 2, projection="3d")
        import numpy as np

        A, B = np.meshgrid(a, b)
        surface.plot_surface(A, B, shown, cmap="viridis", linewidth=0, antialiased=True)
        from matplotlib.ticker import MaxNLocator

        for side, label in ((surface.xaxis, "direction 1"), (surface.yaxis, "direction 2"), (surface.zaxis,
                                                                                          "log10 loss")):
            side.set_major_locator(MaxNLocator(4))  # a 3-D axis is short on screen: few ticks, so none touch
            side.set_tick_params(labelsize=8, pad=1)
            side.set_label_text(label, fontsize=9)
    fig.suptitle(title or f"loss landscape ({landscape.samples} samples, filter-normalised directions)")
    return _save(fig, path)
