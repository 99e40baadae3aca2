"""Pictures of a run (an edge: the only place matplotlib is imported, lazily, with the Agg backend).

Example:
    >>> from gdlab.history import History
    >>> import tempfile, pathlib
    >>> h = History()
    >>> for s in range(1, 11): h.steps.append({"step": s, "loss": 1 / s})
    >>> h.epochs.append({"epoch": 1, "train_loss": 0.3, "val_loss": 0.4})
    >>> plot_losses(h, pathlib.Path(tempfile.mkdtemp()) / "loss.png").suffix
    '.png'
"""

from __future__ import annotations

import math
from pathlib import Path

from gdlab.history import History

__all__ = ["plot_losses", "moving_average", "spans_decades"]


def moving_average(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as Adam corrects its first moment)."""
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = beta * avg + (1 - beta) * v
            weight = beta * weight + (1 - beta)
        out.append(avg / weight if weight else math.nan)
    return out


def spans_decades(values: list[float], decades: float = 2.0) -> bool:
    """Whether the positive finite ``values`` span at least ``decades`` powers of ten (then plot in log)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) >= 10**decades


def plot_losses(history: History, path: str | Path, *, title: str | None = None) -> Path:
    """Two panels: train and validation loss per epoch; per-step loss with its moving average.

    The loss axes turn logarithmic where the loss spans two decades or more. Returns the PNG's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    epochs = history.epochs
    if len(epochs):
        for key, label, style in (("train_loss", "train", "o-"), ("val_loss", "validation", "s-")):
            if key in epochs and any(math.isfinite(v) for v in epochs[key]):
                left.plot(epochs["epoch"], epochs[key], style, markersize=3, label=label)
        left.legend()
        if spans_decades([v for k in ("train_loss", "val_loss") if k in epochs for v in epochs[k]]):
            left.set_yscale("log")
        if "val_accuracy" in epochs and any(math.isfinite(v) for v in epochs["val_accuracy"]):
            accuracy = left.twinx()
            accuracy.plot(epochs["epoch"], epochs["val_accuracy"], ":", color="tab:green", label="val accuracy")
            accuracy.set_ylabel("validation accuracy", color="tab:green")
            accuracy.set_ylim(0, 1.01)
    else:
        left.text(0.5, 0.5, "no completed epoch", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("loss per epoch")

    steps = history.steps
    if len(steps):
        right.plot(steps["step"], steps["loss"], color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
        right.plot(steps["step"], moving_average(steps["loss"]), color="tab:blue", label="moving average")
        right.legend()
        if spans_decades(steps["loss"]):
            right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("loss")
    right.set_title("loss per step")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
