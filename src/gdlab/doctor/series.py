"""What the detectors and the remedy rules read from a run's columns: a column or nothing, the smoothed loss, the
starting loss, the latest per-layer values, and gradient-norm spikes.

Each reads a column in time linear in its length (a long run read back from the store has tens of thousands of
rows, an old store's millions): no per-row slicing of windows.

Example:
    >>> from gdlab.records import History
    >>> h = History()
    >>> for s in range(1, 4): h.steps.append({"step": s, "loss": 1.0 / s})
    >>> column(h.steps, "loss")[-1], column(h.steps, "grad_norm")
    (0.3333333333333333, [])
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gdlab.records import History, Table, ema, finite, layer_key

__all__ = ["column", "smooth_loss", "start_loss", "step_at", "latest", "readings", "corroborated", "depth_ratio",
           "depth_readings", "first_measured", "last_lr", "warmup_steps", "spike_window", "find_spike",
           "rolling_max", "later_min", "peaks", "point_noise", "ema_noise", "window_means", "peak_lr",
           "noise_dominated", "late_readings", "ema_noise_by_row"]


def column(table: Table, key: str) -> list[float]:
    """The column ``key``, or an empty list when the run did not record it (a detector then says nothing).

    Example:
        >>> column(Table({"loss": [1.0]}), "loss"), column(Table(), "loss")
        ([1.0], [])
    """
    return table[key] if key in table else []


def peaks(table: Table, key: str) -> list[float]:
    """The column ``key`` with each row of merged steps at its largest value (``max:<key>``) instead of its mean: a
    long run read back from the store holds its older steps merged into buckets (:meth:`gdlab.store.Store.
    add_steps`), and a spike among them stays a spike. The column itself where nothing was merged.

    Example:
        >>> peaks(Table({"grad_norm": [1.5, 2.0], "max:grad_norm": [40.0, math.nan]}), "grad_norm")
        [40.0, 2.0]
    """
    values, top = column(table, key), column(table, "max:" + key)
    return [v if math.isnan(t) else t for v, t in zip(values, top)] if top else values


def smooth_loss(h: History) -> list[float]:
    """The per-step loss's moving average: the instruments' ``loss_ema`` when recorded, else computed (beta 0.9).

    Example:
        >>> h = History()
        >>> for v in (1.0, 3.0): h.steps.append({"loss": v})
        >>> smooth_loss(h)
        [1.0, 2.0526315789473686]
    """
    smoothed = column(h.steps, "loss_ema")
    return smoothed if smoothed and any(math.isfinite(v) for v in smoothed) else ema(column(h.steps, "loss"))


def start_loss(h: History) -> float:
    """The mean finite loss over the opening steps (a tenth of them, 1 to 10), NaN when there is none.

    Example:
        >>> h = History()
        >>> for v in range(20): h.steps.append({"loss": float(v)})
        >>> start_loss(h)
        0.5
    """
    losses = finite(column(h.steps, "loss"))
    return statistics.fmean(losses[: max(1, min(10, len(losses) // 10))]) if losses else math.nan


def step_at(h: History, i: int) -> int:
    """The step number recorded in row ``i`` (``i + 1`` when the run recorded none there).

    Example:
        >>> h = History()
        >>> h.steps.append({"step": 7, "loss": 1.0})
        >>> step_at(h, 0), step_at(h, 5)
        (7, 6)
    """
    steps = column(h.steps, "step")
    return int(steps[i]) if 0 <= i < len(steps) else i + 1


def latest(h: History, prefix: str) -> dict[str, float]:
    """The latest finite value of every ``prefix/<layer>`` column, layers first to last.

    Example:
        >>> h = History()
        >>> h.steps.append({"dead_share/10": 0.5, "dead_share/2": 0.1})
        >>> latest(h, "dead_share")
        {'2': 0.1, '10': 0.5}
    """
    out = {}
    for key, values in h.steps.columns.items():
        if key.startswith(prefix + "/"):
            measured = finite(values)
            if measured:
                out[key.split("/", 1)[1]] = measured[-1]
    return {k: out[k] for k in sorted(out, key=layer_key)}


def readings(h: History, prefix: str) -> dict[str, list[float]]:
    """Every finite ``prefix/<layer>`` value, per layer in recorded order, layers first to last.

    Example:
        >>> h = History()
        >>> for v in (0.2, math.nan, 0.7): h.steps.append({"dead_share/0": v})
        >>> readings(h, "dead_share")
        {'0': [0.2, 0.7]}
    """
    out = {key.split("/", 1)[1]: finite(values) for key, values in h.steps.columns.items()
           if key.startswith(prefix + "/")}
    return {k: out[k] for k in sorted(out, key=layer_key) if out[k]}


def corroborated(h: History, prefix: str, test: Callable[[float], bool], times: int = 2) -> dict[str, float]:
    """The layers whose last ``times`` readings of ``prefix/<layer>`` all pass ``test``, with their latest value: a
    single reading, which may catch the run at an odd moment (the first step, one unlucky sub-batch), is not
    enough on its own.

    Example:
        >>> h = History()
        >>> for a, b in ((0.9, 0.9), (0.8, 0.1)): h.steps.append({"dead_share/0": a, "dead_share/2": b})
        >>> corroborated(h, "dead_share", lambda v: v > 0.5)
        {'0': 0.8}
    """
    return {k: v[-1] for k, v in readings(h, prefix).items() if len(v) >= times and all(map(test, v[-times:]))}


def depth_ratio(h: History) -> tuple[dict[str, float], float] | None:
    """The gradient arriving at each layer's output (``grad_out/*``), and the first layer's over the last's;
    None when fewer than two layers were measured or the last one's is zero.

    Example:
        >>> h = History()
        >>> h.steps.append({"grad_out/0": 1e-4, "grad_out/2": 1.0})
        >>> depth_ratio(h)
        ({'0': 0.0001, '2': 1.0}, 0.0001)
    """
    arriving = latest(h, "grad_out")
    if len(arriving) < 2:
        return None
    last = list(arriving.values())[-1]
    return (arriving, list(arriving.values())[0] / last) if last > 0 else None


def depth_readings(h: History) -> list[tuple[int, dict[str, float], float]]:
    """Each reading of the gradient arriving at the layers' outputs (``grad_out/*``) that measured at least two
    layers with the last one's above zero: (its row, the values by layer, the first layer's over the last's).

    Example:
        >>> h = History()
        >>> for a in (1e-4, 2e-4): h.steps.append({"grad_out/0": a, "grad_out/2": 1.0})
        >>> [(row, ratio) for row, _, ratio in depth_readings(h)]
        [(0, 0.0001), (1, 0.0002)]
    """
    columns = {key.split("/", 1)[1]: values for key, values in h.steps.columns.items()
               if key.startswith("grad_out/")}
    names = sorted(columns, key=layer_key)
    if len(names) < 2:
        return []
    measured = np.isfinite(np.array([columns[k] for k in names], dtype=float))  # [layers, rows]
    out = []
    for i in np.flatnonzero(measured.sum(axis=0) >= 2).tolist():  # the rows a reading was taken in
        arriving = {k: columns[k][i] for k in names if math.isfinite(columns[k][i])}
        values = list(arriving.values())
        if values[-1] > 0:
            out.append((i, arriving, values[0] / values[-1]))
    return out


def first_measured(h: History, prefix: str, test: Callable[[float], bool]) -> int | None:
    """The step of the first finite ``prefix/<layer>`` value passing ``test`` (columns in recorded order).

    Example:
        >>> h = History()
        >>> for s, v in ((1, 0.2), (2, 0.7)): h.steps.append({"step": s, "dead_share/0": v})
        >>> first_measured(h, "dead_share", lambda v: v > 0.5)
        2
    """
    steps = column(h.steps, "step")
    for key, values in h.steps.columns.items():
        if key.startswith(prefix + "/"):
            for i, v in enumerate(values):
                if math.isfinite(v) and test(v):
                    return int(steps[i]) if i < len(steps) else i + 1
    return None


def last_lr(h: History) -> float:
    """The latest learning rate recorded per step, else the run's (``meta["lr"]``), else NaN.

    Example:
        >>> h = History()
        >>> h.meta["lr"] = 0.1
        >>> last_lr(h)
        0.1
    """
    lrs = finite(column(h.steps, "lr"))
    return lrs[-1] if lrs else float(h.meta.get("lr") or math.nan)


def warmup_steps(h: History) -> int:
    """The opening steps whose curvature readings are not judged: the first 20, or the first 5% of a longer run.
    At initialisation the loss surface can be far sharper than a few steps later (a normalised network's sharpness
    falls several-fold in its first tens of steps), so a reading there says little about the learning rate.

    Example:
        >>> h = History()
        >>> for s in range(1, 1001): h.steps.append({"step": s})
        >>> warmup_steps(h), warmup_steps(History())
        (50, 20)
    """
    return max(20, len(h.steps) // 20)


def spike_window(batch_size: Any) -> int:
    """The steps a gradient spike is measured against: 20, or enough to span 256 samples (with small batches
    the norms are heavy-tailed: one badly fitted sample's gradient is far above the well-fitted ones').

    Example:
        >>> spike_window(32), spike_window(4), spike_window("full")
        (20, 64, 20)
    """
    batch = batch_size if isinstance(batch_size, int) and batch_size > 0 else 32
    return max(20, -(-256 // batch))


def find_spike(grads: list[float], window: int, start: int = 0,
               opening: float | None = None) -> tuple[float, float] | None:
    """The largest jump in gradient norm.

    Args:
        grads: finite gradient norms, one per step.
        window: how many norms before a jump it is measured against.
        start: the first index a jump may be at (and never within the first ``window``).
        opening: the largest norm of the run's opening ``window`` steps (else of ``grads``' first ``window``).

    Returns:
        (the jump's norm, the mean of the ``window`` norms before it) for the largest jump above 100x that mean and
        above a tenth of the opening's largest; None when there is none.

    Example:
        >>> find_spike([1.0] * 30 + [500.0] + [1.0] * 5, window=20)
        (500.0, 1.0)
    """
    start = max(start, window)
    if len(grads) <= start:
        return None
    # a jump must matter at the run's scale: a settled run's near-zero gradient jumps 100x on rounding alone
    floor = 0.1 * (opening if opening is not None else max(grads[:window]))
    tail = grads[start - window :]  # only what the steps from ``start`` on are measured against
    sums = [0.0, *itertools.accumulate(tail)]  # sums[k] = tail[0] + ... + tail[k - 1]
    best: tuple[float, float, float] | None = None  # (ratio, norm, mean before)
    for k in range(window, len(tail)):
        before = (sums[k] - sums[k - window]) / window
        if tail[k] > floor and before > 0 and tail[k] > 100 * before:
            ratio = tail[k] / before
            if best is None or ratio > best[0]:
                best = (ratio, tail[k], before)
    return (best[1], best[2]) if best is not None else None


def rolling_max(values: Sequence[float], width: int, default: float = math.nan) -> list[float]:
    """The largest finite value in each window of ``width`` values ending at each index (the opening windows are
    shorter), ``default`` where a window holds none; in time linear in ``len(values)`` whatever the width (the
    van Herk-Gil-Werman blocks: a running max forwards and backwards within blocks of ``width``).

    Example:
        >>> rolling_max([1.0, 3.0, float("nan"), 2.0, 0.5], 2)
        [1.0, 3.0, 3.0, 2.0, 2.0]
        >>> rolling_max([float("nan")], 3, default=0.0)
        [0.0]
    """
    a = np.asarray(values, dtype=float)
    n = len(a)
    if n == 0:
        return []
    a = np.where(np.isfinite(a), a, -np.inf)
    w = max(1, min(width, n))
    blocks = np.concatenate([a, np.full(-n % w, -np.inf)]).reshape(-1, w)
    forward = np.maximum.accumulate(blocks, axis=1).ravel()  # max from the block's start to each index
    backward = np.maximum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()  # max from each index to its end
    out = np.empty(n)
    out[: w - 1] = np.maximum.accumulate(a[: w - 1])
    ends = np.arange(w - 1, n)
    out[w - 1 :] = np.maximum(backward[ends - w + 1], forward[ends])
    out[out == -np.inf] = default
    return out.tolist()


def later_min(values: Sequence[float]) -> list[float]:
    """The smallest finite value from each index to the end (NaN where none follows), in one pass.

    Example:
        >>> later_min([3.0, 1.0, float("nan"), 2.0, float("inf")])
        [1.0, 1.0, 2.0, 2.0, nan]
    """
    a = np.asarray(values, dtype=float)
    if not len(a):
        return []
    out = np.minimum.accumulate(np.where(np.isfinite(a), a, np.inf)[::-1])[::-1]
    out[out == np.inf] = np.nan
    return out.tolist()


def point_noise(values: Sequence[float]) -> float:
    """The noise of one point of a series, from the series itself: the spread of its point-to-point differences
    around their median (the mean absolute deviation x sqrt(pi / 2), a standard deviation for normal noise), over
    sqrt(2). A steady trend moves every difference alike and is not counted as noise; NaN with fewer than 3 finite
    values.

    Example:
        >>> round(point_noise([1.0, 1.1, 1.0, 1.1, 1.0, 1.1]), 3), point_noise([1.0, 2.0, 3.0, 4.0])
        (0.071, 0.0)
    """
    a = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(a) < 3:
        return math.nan
    d = np.diff(a)
    return float(math.sqrt(math.pi / 2) * np.mean(np.abs(d - np.median(d))) / math.sqrt(2))


def ema_noise(h: History) -> float:
    """The noise left in the smoothed loss (:func:`smooth_loss`): the per-step loss's noise around its moving
    average (the robust spread of the residuals), times the share an average over about 19 steps keeps of it
    (sqrt((1 - beta) / (1 + beta)) for beta 0.9); NaN when the loss has fewer than 3 finite steps.

    Example:
        >>> h = History()
        >>> for s in range(200): h.steps.append({"loss": 1.0 + (0.1 if s % 2 else -0.1)})
        >>> 0.01 < ema_noise(h) < 0.05
        True
    """
    raw, smoothed = np.asarray(column(h.steps, "loss"), dtype=float), np.asarray(smooth_loss(h), dtype=float)
    if len(raw) != len(smoothed):
        return math.nan
    ok = np.isfinite(raw) & np.isfinite(smoothed)
    if ok.sum() < 3:
        return math.nan
    r = raw[ok] - smoothed[ok]
    return float(1.4826 * np.median(np.abs(r - np.median(r))) * math.sqrt(0.1 / 1.9))


def ema_noise_by_row(h: History) -> list[float]:
    """The noise of the smoothed loss at each row: :func:`ema_noise` once the moving average (beta 0.9, its start
    bias corrected) has its fill of steps, more at the start, where it averages only the first k losses (the
    per-step noise at the first row): ``ema_noise x sqrt((1 + beta^k) / (1 - beta^k))``. A level read at row 1 is
    one batch's loss, as noisy as any; NaN where :func:`ema_noise` is.

    Example:
        >>> h = History()
        >>> for s in range(200): h.steps.append({"loss": 1.0 + (0.1 if s % 2 else -0.1)})
        >>> by_row = ema_noise_by_row(h)
        >>> round(by_row[0] / by_row[-1], 2), round(by_row[-1] / ema_noise(h), 2)
        (4.36, 1.0)
    """
    noise, n = ema_noise(h), len(smooth_loss(h))
    k = np.arange(1, n + 1, dtype=float)
    with np.errstate(over="ignore", under="ignore"):
        grown = 0.9 ** k
    return (noise * np.sqrt((1 + grown) / (1 - grown))).tolist()


def window_means(values: Sequence[float], width: int) -> list[float]:
    """The mean of each run of ``width`` consecutive values (``len(values) - width + 1`` of them).

    Example:
        >>> window_means([1.0, 2.0, 3.0, 4.0], 2)
        [1.5, 2.5, 3.5]
    """
    a = np.asarray(values, dtype=float)
    if width < 1 or len(a) < width:
        return []
    sums = np.concatenate([[0.0], np.cumsum(a)])
    return ((sums[width:] - sums[:-width]) / width).tolist()


def peak_lr(h: History) -> float:
    """The largest learning rate recorded per step (a schedule's peak, never its decayed end), else the run's
    (``meta["lr"]``), else NaN.

    Example:
        >>> h = History()
        >>> for lr in (0.1, 0.5, 0.01): h.steps.append({"lr": lr})
        >>> peak_lr(h)
        0.5
    """
    lrs = finite(column(h.steps, "lr"))
    return max(lrs) if lrs else float(h.meta.get("lr") or math.nan)


def noise_dominated(h: History) -> float | None:
    """The median gradient noise scale (B_simple, ``noise_scale``) over the run's late readings
    (:func:`late_readings`) when it, and two readings at least, are above ten times the batch size: each step's
    gradient is mostly the noise of its few samples, not the slope of the loss (then a noisy, rising loss is the
    batch's doing before the learning rate's); else None.

    Example:
        >>> h = History()
        >>> h.meta["batch_size"] = 1
        >>> for s in range(10): h.steps.append({"noise_scale": 40.0})
        >>> noise_dominated(h)
        40.0
    """
    batch = h.meta.get("batch_size")
    scales = late_readings(h, "noise_scale")
    if not isinstance(batch, int) or batch < 1 or not scales:
        return None
    median = statistics.median(scales)
    # the median, and two readings at least (two that disagree are no evidence either way)
    return median if median > 10 * batch and sum(v > 10 * batch for v in scales) >= 2 else None


def late_readings(h: History, key: str) -> list[float]:
    """The finite readings of the periodic per-step column ``key`` in the run's second half, and never fewer than
    its last two (a one-epoch run may hold only two); empty with fewer than two readings: one reading is no
    evidence.

    Example:
        >>> h = History()
        >>> for v in (0.5, 0.04, 0.03): h.steps.append({"grad_snr": v})
        >>> late_readings(h, "grad_snr"), late_readings(h, "noise_scale")
        ([0.04, 0.03], [])
    """
    values = finite(column(h.steps, key))
    if len(values) < 2:
        return []
    return values[min(len(values) // 2, len(values) - 2):]
