"""The doctor: names what goes wrong in training, shows the numbers behind it, and prescribes (or applies) a remedy.

Detectors are pure functions ``History -> list[Finding]``, registered by code with :func:`detector`. They read the
per-step and per-epoch columns the loop and the instruments write (``loss``, ``loss_ema``, ``grad_norm``,
``update_ratio``, ``noise_scale``, ``grad_snr``, ``dead_share/*``, ``saturated/*``, ``grad_out/*``, ``sharpness``,
``val_loss``...) and ``History.meta`` (learning rate, momentum, batch size, task, classes, input scales). A detector
whose columns are missing says nothing.

:class:`Doctor` is the callback ``fit`` attaches: it runs the detectors when the run ends and, with
``remedy="auto"``, acts during the run (rollback and a lower learning rate on divergence, a higher one when the
steps are too small, momentum on a plateau, a lower one when noise dominates, clipping for exploding gradients).

Example:
    >>> from gdlab.records import History
    >>> h = History()
    >>> for s in range(1, 101): h.steps.append({"step": s, "loss": 2.3})
    >>> h.meta.update(lr=1e-6, task="classification", num_classes=10)
    >>> [f.code for f in diagnose(h)]
    ['not_learning']
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gdlab.records import History, Table, layer_key

__all__ = ["Finding", "Remedy", "CODES", "DETECTORS", "detector", "diagnose", "Doctor", "REMEDY_MODES"]

CODES = ("non_finite", "lr_too_high", "lr_too_low", "plateau", "local_minimum", "vanishing_gradients",
         "exploding_gradients", "dead_relu", "saturated_activations", "gradient_noise", "ill_conditioned_inputs",
         "overfitting", "not_learning")
SEVERITIES = ("info", "warning", "error")
REMEDY_MODES = ("off", "suggest", "auto")


@dataclass
class Finding:
    """A named problem: ``code`` (one of :data:`CODES`), ``severity`` (info, warning, error), ``step`` (first
    seen), ``evidence`` (the numbers), a one-sentence ``explanation`` and a ``remedy`` (an action with its
    parameters, e.g. ``{"action": "set_lr", "lr": 0.008}``)."""

    code: str
    severity: str
    step: int | None
    evidence: dict[str, Any]
    explanation: str
    remedy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Remedy:
    """An action the doctor took during a run (``remedy="auto"``)."""

    step: int
    action: str
    params: dict[str, Any]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Detector = Callable[[History], list[Finding]]
DETECTORS: dict[str, Detector] = {}


def detector(code: str) -> Callable[[Detector], Detector]:
    """Register a detector for ``code``."""
    if code not in CODES:
        raise ValueError(f"unknown finding code {code!r}")

    def register(fn: Detector) -> Detector:
        DETECTORS[code] = fn
        return fn

    return register


def diagnose(history: History, codes: tuple[str, ...] | None = None) -> list[Finding]:
    """Run the detectors (all, or ``codes``) on ``history``; findings sorted by severity, then step."""
    found: list[Finding] = []
    for code, fn in DETECTORS.items():
        if codes is None or code in codes:
            found.extend(fn(history))
    codes_found = {f.code for f in found}
    # a finding that explains another: dead units make the steps small; a blown-up run is not "not learning"
    explained = {"lr_too_low"} if "dead_relu" in codes_found else set()
    if "non_finite" in codes_found or "lr_too_high" in codes_found:
        explained |= {"not_learning", "lr_too_low"}
    found = [f for f in found if f.code not in explained]
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(found, key=lambda f: (rank[f.severity], f.step or 0))


# -- series helpers ----------------------------------------------------------------------------------------------


def _col(table: Table, key: str) -> list[float]:
    return table[key] if key in table else []


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _ema(values: list[float], beta: float = 0.9) -> list[float]:
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg, weight = beta * avg + (1 - beta) * v, beta * weight + (1 - beta)
        out.append(avg / weight if weight else math.nan)
    return out


def _smooth_loss(h: History) -> list[float]:
    ema = _col(h.steps, "loss_ema")
    return ema if ema and any(math.isfinite(v) for v in ema) else _ema(_col(h.steps, "loss"))


def _start_loss(h: History) -> float:
    losses = _finite(_col(h.steps, "loss"))
    return statistics.fmean(losses[: max(1, min(10, len(losses) // 10))]) if losses else math.nan


def _step_at(h: History, i: int) -> int:
    steps = _col(h.steps, "step")
    return int(steps[i]) if 0 <= i < len(steps) else i + 1


def _latest(h: History, prefix: str) -> dict[str, float]:
    """The latest finite value of every ``prefix/<layer>`` column, layers first to last."""
    out = {}
    for key, column in h.steps.columns.items():
        if key.startswith(prefix + "/"):
            finite = _finite(column)
            if finite:
                out[key.split("/", 1)[1]] = finite[-1]
    return {k: out[k] for k in sorted(out, key=layer_key)}


def _depth_ratio(h: History) -> tuple[dict[str, float], float] | None:
    """The gradient arriving at each layer's output, and the first layer's over the last's (None if unknown)."""
    arriving = _latest(h, "grad_out")
    if len(arriving) < 2:
        return None
    last = list(arriving.values())[-1]
    return (arriving, list(arriving.values())[0] / last) if last > 0 else None


def _first_measured(h: History, prefix: str, test: Callable[[float], bool]) -> int | None:
    steps = _col(h.steps, "step")
    for key, column in h.steps.columns.items():
        if key.startswith(prefix + "/"):
            for i, v in enumerate(column):
                if math.isfinite(v) and test(v):
                    return int(steps[i]) if i < len(steps) else i + 1
    return None


def _lr(h: History) -> float:
    lrs = _finite(_col(h.steps, "lr"))
    return lrs[-1] if lrs else float(h.meta.get("lr") or math.nan)


# -- detectors ---------------------------------------------------------------------------------------------------


@detector("non_finite")
def _non_finite(h: History) -> list[Finding]:
    flag, grad = _col(h.steps, "non_finite"), _col(h.steps, "grad_norm")
    for i, loss in enumerate(_col(h.steps, "loss")):
        bad = "loss" if not math.isfinite(loss) else ("gradients" if grad and not math.isfinite(grad[i]) else
                                                       "parameters" if flag and flag[i] == 1 else None)
        if bad:
            lr = _lr(h)
            return [Finding("non_finite", "error", _step_at(h, i), {"quantity": bad, "loss": loss, "lr": lr},
                            f"the {bad} became infinite or NaN at step {_step_at(h, i)}: the steps grew until the "
                            "numbers overflowed, most often because the learning rate is too large",
                            {"action": "set_lr", "lr": lr * 0.1, "rollback": True})]
    return []


@detector("lr_too_high")
def _lr_too_high(h: History) -> list[Finding]:
    found = []
    sharp, limit = _col(h.steps, "sharpness"), _col(h.steps, "stability_limit")
    for i, (s, lim) in enumerate(zip(sharp, limit)):
        if math.isfinite(s) and math.isfinite(lim) and s > 1.1 * lim:
            lr = _lr(h)
            new = lr * lim / s / 2  # half the lr at which this sharpness would be stable
            found.append(Finding("lr_too_high", "warning", _step_at(h, i),
                                 {"sharpness": s, "stability_limit": lim, "lr": lr},
                                 f"the loss surface's sharpness ({s:.3g}) is above the stability limit of this "
                                 f"learning rate ({lim:.3g}): gradient descent overshoots along that direction",
                                 {"action": "set_lr", "lr": new}))
            break
    ema = _smooth_loss(h)
    finite = [(i, v) for i, v in enumerate(ema) if math.isfinite(v)]
    if not found and len(finite) >= 20:
        i_min, low = min(finite, key=lambda t: t[1])
        end = finite[-1][1]
        if end > 2.0 * low and i_min < 0.8 * len(ema) and low > 0:
            lr = _lr(h)
            found.append(Finding("lr_too_high", "warning", _step_at(h, i_min),
                                 {"loss_min": low, "loss_end": end, "lr": lr},
                                 f"the training loss rose from {low:.3g} to {end:.3g} after step "
                                 f"{_step_at(h, i_min)}: the steps are too large to settle",
                                 {"action": "set_lr", "lr": lr * 0.3}))
    return found


@detector("lr_too_low")
def _lr_too_low(h: History) -> list[Finding]:
    ratios = _finite(_col(h.steps, "update_ratio"))
    losses = _finite(_col(h.steps, "loss"))
    if len(ratios) < 2 or len(losses) < 10:  # the ratio is measured every 20th step
        return []
    median = statistics.median(ratios)
    start, end = _start_loss(h), _finite(_smooth_loss(h))[-1]
    drop = (start - end) / abs(start) if start else 0.0
    if median < 5e-4 and drop < 0.5:
        lr = _lr(h)
        factor = min(100.0, max(3.0, 1e-3 / max(median, 1e-12)))
        return [Finding("lr_too_low", "warning", _step_at(h, 0),
                        {"update_ratio_median": median, "loss_drop": drop, "lr": lr},
                        f"each step changes the weights by a fraction {median:.2g} of their size (around 1e-3 is "
                        f"usual) and the loss fell by only {drop:.0%}: the learning rate is too small",
                        {"action": "set_lr", "lr": lr * factor})]
    return []


def _flat_windows(ema: list[float], grads: list[float], min_len: int) -> list[tuple[int, int]]:
    """Stretches of at least ``min_len`` steps where the smoothed loss changes by under 2% and the gradient is
    below a fifth of its peak."""
    peak = max(_finite(grads), default=math.nan)
    windows, start = [], None
    for i in range(len(ema)):
        j = i - min_len
        flat = (j >= 0 and math.isfinite(ema[i]) and math.isfinite(ema[j]) and
                abs(ema[i] - ema[j]) <= 0.02 * abs(ema[j]) and
                (not grads or not math.isfinite(peak) or max(_finite(grads[j : i + 1]) or [0.0]) < 0.2 * peak))
        if flat and start is None:
            start = j
        elif not flat and start is not None:
            windows.append((start, i - 1))
            start = None
    if start is not None:
        windows.append((start, len(ema) - 1))
    return windows


@detector("plateau")
def _plateau(h: History) -> list[Finding]:
    ema, grads = _smooth_loss(h), _col(h.steps, "grad_norm")
    n = len(ema)
    if n < 50:
        return []
    for a, b in _flat_windows(ema, grads, max(20, n // 5)):
        after = _finite(ema[b:])
        if b < n - 1 and after and min(after) < 0.7 * ema[b]:
            momentum = float(h.meta.get("momentum") or 0.0)
            remedy = ({"action": "set_momentum", "momentum": 0.9} if momentum == 0 else
                      {"action": "set_lr", "lr": _lr(h) * 3})
            return [Finding("plateau", "warning", _step_at(h, a),
                            {"from_step": _step_at(h, a), "to_step": _step_at(h, b), "loss": ema[b],
                             "loss_after": min(after)},
                            f"the loss stayed at {ema[b]:.3g} with a small gradient from step {_step_at(h, a)} to "
                            f"{_step_at(h, b)} before falling to {min(after):.3g}: a plateau, crossed slowly",
                            remedy)]
    return []


@detector("local_minimum")
def _local_minimum(h: History) -> list[Finding]:
    ema, grads = _smooth_loss(h), _finite(_col(h.steps, "grad_norm"))
    n = len(ema)
    if n < 50 or not grads or h.meta.get("convex"):
        return []
    start, end = _start_loss(h), ema[-1]
    tail = ema[int(0.75 * n):]
    if not (math.isfinite(end) and math.isfinite(start) and tail and math.isfinite(tail[0])):
        return []
    settled = abs(tail[-1] - tail[0]) <= 0.01 * abs(tail[0]) and statistics.fmean(grads[int(0.75 * len(grads)):]) < \
        0.1 * max(grads)
    if settled and 0.25 * start < end < 0.9 * start:
        return [Finding("local_minimum", "warning", _step_at(h, int(0.75 * n)),
                        {"loss": end, "start_loss": start, "grad_norm": grads[-1], "grad_norm_peak": max(grads)},
                        f"training settled (gradient {grads[-1]:.2g}, a tenth of its peak) at a loss still "
                        f"{end / start:.0%} of the start: a minimum, perhaps a local one; other initial points may "
                        "find lower ones", {"action": "restarts", "seeds": 8})]
    return []


@detector("vanishing_gradients")
def _vanishing(h: History) -> list[Finding]:
    depth = _depth_ratio(h)
    if depth is not None and depth[1] < 1e-3:
        arriving, ratio = depth
        return [Finding("vanishing_gradients", "warning", _first_measured(h, "grad_out", lambda v: True),
                        {"grad_out": arriving, "first_over_last": ratio},
                        f"the gradient reaching the first layer is {ratio:.1e} of the one at the last: it "
                        "shrinks on its way back, so the early layers barely learn",
                        {"action": "change_model", "activation": "relu", "init": "kaiming",
                         "or": "add normalisation (BatchNorm/LayerNorm) or residual connections"})]
    return []


@detector("exploding_gradients")
def _exploding(h: History) -> list[Finding]:
    grads = _finite(_col(h.steps, "grad_norm"))
    depth = _depth_ratio(h)
    if depth is not None and depth[1] > 1e3:
        arriving, ratio = depth
        return [Finding("exploding_gradients", "warning", _first_measured(h, "grad_out", lambda v: True),
                        {"grad_out": arriving, "first_over_last": ratio},
                        f"the gradient grows {ratio:.1e}x on its way back to the first layer",
                        {"action": "clip_norm", "max_norm": statistics.median(grads) if grads else 1.0})]
    window = spike_window(h.meta.get("batch_size"))
    spike = _spike(grads, window)
    if spike is not None:
        peak, before = spike
        i = _col(h.steps, "grad_norm").index(peak)
        return [Finding("exploding_gradients", "warning", _step_at(h, i),
                        {"grad_norm_peak": peak, "grad_norm_before": before, "window": window},
                        f"the gradient norm jumped to {peak:.3g}, {peak / before:.0f}x its mean over the {window} "
                        "steps before: a few steps are far larger than the rest",
                        {"action": "clip_norm", "max_norm": 2 * before})]
    return []


def spike_window(batch_size: Any) -> int:
    """The steps a gradient spike is measured against: 20, or enough to span 256 samples (with small batches
    the norms are heavy-tailed: one badly fitted sample's gradient is far above the well-fitted ones')."""
    batch = batch_size if isinstance(batch_size, int) and batch_size > 0 else 32
    return max(20, -(-256 // batch))


def _spike(grads: list[float], window: int, start: int = 0, opening: float | None = None) -> tuple[float, float] | None:
    """The largest jump at index >= ``start`` (and after the first ``window``): (its norm, the mean of the
    ``window`` norms before it) when it is above 100x that mean and above a tenth of the opening ``window``'s
    largest (a settled run's near-zero gradient is no yardstick)."""
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


@detector("dead_relu")
def _dead_relu(h: History) -> list[Finding]:
    dead = {k: v for k, v in _latest(h, "dead_share").items() if v > 0.5}
    if dead:
        layer, share = max(dead.items(), key=lambda kv: kv[1])
        return [Finding("dead_relu", "warning", _first_measured(h, "dead_share", lambda v: v > 0.5),
                        {"dead_share": dead},
                        f"{share:.0%} of the units after ReLU {layer!r} output zero for every sample: they get no "
                        "gradient and have stopped learning",
                        {"action": "change_model", "activation": "leaky_relu", "init": "kaiming",
                         "lr": "lower it if the units died after large steps"})]
    return []


@detector("saturated_activations")
def _saturated(h: History) -> list[Finding]:
    saturated = {k: v for k, v in _latest(h, "saturated").items() if v > 0.5}
    if saturated:
        layer, share = max(saturated.items(), key=lambda kv: kv[1])
        return [Finding("saturated_activations", "warning", _first_measured(h, "saturated", lambda v: v > 0.5),
                        {"saturated": saturated},
                        f"{share:.0%} of the outputs of {layer!r} sit at the flat ends of the activation, where "
                        "its derivative is nearly zero",
                        {"action": "standardize", "init": "xavier", "or": "smaller inputs or weights, normalisation"})]
    return []


@detector("gradient_noise")
def _gradient_noise(h: History) -> list[Finding]:
    snr, scale = _finite(_col(h.steps, "grad_snr")), _finite(_col(h.steps, "noise_scale"))
    ema = _finite(_smooth_loss(h))
    if len(snr) < 3 or len(ema) < 20:
        return []
    half = snr[len(snr) // 2:]
    start, end = _start_loss(h), ema[-1]
    tail = ema[len(ema) // 2:]
    stalled = abs(tail[-1] - tail[0]) <= 0.05 * abs(tail[0])
    if statistics.median(half) < 0.1 and stalled and end > 0.2 * start:
        batch = int(h.meta.get("batch_size") or 1)
        samples = int(h.meta.get("samples") or batch)
        target = int(min(samples, max(2 * batch, statistics.median(scale[len(scale) // 2:]) if scale else 2 * batch)))
        return [Finding("gradient_noise", "warning", _step_at(h, len(ema) // 2),
                        {"grad_snr": statistics.median(half), "noise_scale": statistics.median(scale) if scale else
                         None, "batch_size": batch, "loss": end},
                        f"noise dominates the steps: the mini-batch gradient's signal-to-noise ratio is "
                        f"{statistics.median(half):.2g} and the loss stalled at {end:.3g}; the batch is too small "
                        "for the learning rate",
                        {"action": "set_batch_size", "batch_size": target, "or": "decay the learning rate"})]
    return []


def input_scales(X: torch.Tensor) -> list[float] | None:
    """Each input feature's scale: the 95th percentile of its absolute value (on up to 10,000 samples; a feature
    that is mostly zero, like a rarely inked pixel, gets scale 0 and is left out of comparisons)."""
    if X.dim() != 2 or not len(X) or X.shape[1] > 4096:
        return None
    # torch.quantile's linear interpolation between the two order statistics around rank 0.95 (n - 1), from the
    # top 5% alone (a partial sort: several times faster than quantile's full one)
    A = X[:10_000].detach().abs()
    n = len(A)
    rank = 0.95 * (n - 1)
    low = int(rank)
    top = A.topk(n - low, dim=0, sorted=True).values.double()  # descending: [-1] is rank low, [-2] is low + 1
    below, above = top[-1], top[-2] if n - low >= 2 else top[-1]
    return (below + (rank - low) * (above - below)).tolist()


def scale_ratio(scales: list[float] | None) -> float:
    """The largest over the smallest non-zero feature scale (1 when there is nothing to compare)."""
    nonzero = [s for s in scales or [] if s > 1e-12]
    return max(nonzero) / min(nonzero) if len(nonzero) >= 2 else 1.0


ILL_CONDITIONED = 100.0
"""Feature scales differing more than this many-fold make ``ill_conditioned_inputs``."""


@detector("ill_conditioned_inputs")
def _ill_conditioned(h: History) -> list[Finding]:
    scales = h.meta.get("feature_scales")
    nonzero = [s for s in scales or [] if s > 1e-12]
    if scale_ratio(scales) > ILL_CONDITIONED:
        ratio = scale_ratio(scales)
        return [Finding("ill_conditioned_inputs", "warning", 0,
                        {"largest_scale": max(nonzero), "smallest_scale": min(nonzero), "ratio": ratio},
                        f"the input features' scales differ {ratio:.0f}-fold: the loss surface is a long narrow "
                        "valley, and one learning rate cannot suit every direction",
                        {"action": "standardize"})]
    return []


@detector("overfitting")
def _overfitting(h: History) -> list[Finding]:
    val, train = _col(h.epochs, "val_loss"), _col(h.epochs, "train_loss")
    pairs = [(i, v, t) for i, (v, t) in enumerate(zip(val, train)) if math.isfinite(v) and math.isfinite(t)]
    if len(pairs) < 4:
        return []
    best_i, best_v, best_t = min(pairs, key=lambda p: p[1])
    last_i, last_v, last_t = pairs[-1]
    if last_i - best_i >= 3 and last_v > 1.2 * best_v and last_t < 0.9 * best_t:
        epoch = int(_col(h.epochs, "epoch")[best_i]) if "epoch" in h.epochs else best_i + 1
        return [Finding("overfitting", "warning", int(_col(h.epochs, "step")[best_i]) if "step" in h.epochs else None,
                        {"best_val_loss": best_v, "best_epoch": epoch, "val_loss": last_v, "train_loss": last_t},
                        f"the validation loss rose from {best_v:.3g} (epoch {epoch}) to {last_v:.3g} while the "
                        "training loss kept falling: the model memorises the training data",
                        {"action": "early_stop", "patience": 3, "or": "weight_decay 1e-4, more data, a smaller model"})]
    return []


@detector("not_learning")
def _not_learning(h: History) -> list[Finding]:
    losses = _finite(_col(h.steps, "loss"))
    if len(losses) < 10:
        return []
    start, end = _start_loss(h), _finite(_smooth_loss(h))[-1]
    classes = h.meta.get("num_classes")
    chance = math.log(classes) if h.meta.get("task") == "classification" and classes and classes > 1 else None
    at_chance = chance is not None and abs(end - chance) <= 0.05 * chance and start <= 1.1 * chance
    if end >= 0.95 * start or at_chance:
        lr = _lr(h)
        level = f"chance level (ln {classes} = {chance:.3g})" if at_chance else f"its start ({start:.3g})"
        return [Finding("not_learning", "error", _step_at(h, len(losses) - 1),
                        {"start_loss": start, "loss": end, "chance_loss": chance, "lr": lr},
                        f"the loss stayed at {level}: the model is not learning",
                        {"action": "lr_find", "or": "check the data, the labels and the learning rate"})]
    return []


# -- the callback ------------------------------------------------------------------------------------------------


class Doctor:
    """The callback ``fit`` attaches: findings at the end; with ``mode="auto"``, remedies during the run.

    Args:
        mode: ``off`` (findings only), ``suggest`` (findings with their remedies; the default) or ``auto``.
        max_rollbacks: how often a divergence may be rolled back before the run stops.
        lr_ceiling: how far ``auto`` may raise the learning rate (a multiple of the starting one).
    """

    def __init__(self, mode: str = "suggest", *, max_rollbacks: int = 10, lr_ceiling: float = 1e4) -> None:
        if mode not in REMEDY_MODES:
            from gdlab.errors import UnknownChoice

            raise UnknownChoice("remedy", mode, REMEDY_MODES)
        self.mode = mode
        self.max_rollbacks = max_rollbacks
        self.lr_ceiling = lr_ceiling
        self.findings: list[Finding] = []
        self.remedies: list[Remedy] = []
        self._snapshot: dict[str, Any] | None = None
        self._rollbacks = 0
        self._start_lr = math.nan
        self._raised_at: float | None = None  # the mean loss before the last raise, for its guard
        self._avg = self._weight = 0.0
        self._best = math.inf
        self._first: float | None = None  # the mean loss over the opening window
        self._opening: list[float] = []
        self._origin: dict[str, Any] | None = None
        self._window_start = self._window_step = 0
        self._previous: float | None = None
        self._ceiling = math.inf  # a raise that failed caps the later ones
        self._last_rollback = -math.inf
        self._best_window = math.inf
        self._clip: tuple[Any, Any] | None = None
        self._dead = 0.0  # the latest share of dead ReLU units measured
        self._peak_grad = -math.inf
        self._opening_grad: float | None = None  # the largest gradient norm of the first steps

    # snapshots: the last good point, in memory
    def _take_snapshot(self, state: Any) -> None:
        self._snapshot = {"model": copy.deepcopy(state.model.state_dict()),
                          "optimizer": copy.deepcopy(state.optimizer.state_dict())}

    def _restore(self, state: Any) -> None:
        assert self._snapshot is not None
        lrs = [g.get("lr") for g in state.optimizer.param_groups]
        state.model.load_state_dict(self._snapshot["model"])
        state.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optimizer"]))
        for g, lr in zip(state.optimizer.param_groups, lrs):
            g["lr"] = lr

    def _set(self, state: Any, key: str, value: float) -> bool:
        changed = False
        for g in state.optimizer.param_groups:
            if key in g:
                g[key] = value
                changed = True
        return changed

    def _act(self, state: Any, action: str, params: dict[str, Any], reason: str) -> None:
        self.remedies.append(Remedy(state.step, action, params, reason))

    def on_fit_start(self, state: Any) -> None:
        self._start_lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        if self.mode == "auto":
            self._take_snapshot(state)
            self._origin = copy.deepcopy(self._snapshot)

    def on_step_end(self, state: Any) -> None:
        """With ``auto``: a loss blowing up (the smoothed loss above 4x its best, or 5x its start) is a divergence
        too. The smoothing spans about 256 samples, so one sample's large loss (batch 1) is not mistaken for it."""
        if self.mode != "auto" or not math.isfinite(state.loss):
            return
        window = max(10, 256 // max(state.plan.batch_size, 1))
        if self._first is None:
            # the starting loss: the first batch's when batches are large enough to trust one, else the mean over
            # the opening ~256 samples
            self._opening.append(state.loss)
            if state.plan.batch_size >= 16 or len(self._opening) >= window:
                self._first = statistics.fmean(self._opening)
        beta = 1 - 1 / window
        self._avg = beta * self._avg + (1 - beta) * state.loss
        self._weight = beta * self._weight + (1 - beta)
        smooth = self._avg / self._weight
        since = state.step - max(self._last_rollback, 0)
        if since >= window:
            self._best = min(self._best, smooth)
        first = self._first if self._first is not None else statistics.fmean(self._opening)
        blown = (since >= 2 * window and smooth > 4 * self._best) or (since >= 5 and smooth > 5 * first)
        if blown:
            reference = min(self._best, first)
            if self.on_diverge(state, why=f"the smoothed loss blew up to {smooth:.3g}, {smooth / reference:.3g}x "
                                          "its best"):
                self._avg = self._weight = 0.0
                self._window_start, self._window_step = len(state.history.steps), state.step
            return
        if state.step - self._window_step >= self._cadence(state):
            self._window_step = state.step
            self._check(state)

    @staticmethod
    def _cadence(state: Any) -> int:
        return max(10, state.plan.iterations_per_epoch // 2)

    def on_diverge(self, state: Any, why: str | None = None) -> bool:
        """The loss became non-finite: with ``auto``, roll back and lower the learning rate; True if it did."""
        if self.mode != "auto" or self._snapshot is None or self._rollbacks >= self.max_rollbacks:
            return False
        lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        sharp = _finite(_col(state.history.steps, "sharpness"))
        limit = _finite(_col(state.history.steps, "stability_limit"))
        soon = state.step - self._last_rollback <= 5  # diverged again right after a rollback: step down faster
        new = lr * (limit[-1] / sharp[-1]) / 2 if sharp and limit and sharp[-1] > 0 else lr * (0.01 if soon else 0.1)
        new = min(new, lr * 0.5)
        self._last_rollback = state.step
        self._restore(state)
        self._set(state, "lr", new)
        self._rollbacks += 1
        self._act(state, "rollback_and_set_lr", {"lr": new, "from_lr": lr},
                  f"{why or f'the loss became {state.loss}'} at step {state.step}: rolled back to the last good "
                  f"point and lowered the learning rate {lr:.3g} -> {new:.3g}")
        return True

    def _check(self, state: Any) -> None:
        """With ``auto``, every half epoch (at least 10 steps): act on what the last window shows."""
        h = state.history
        rows = list(h.steps.rows(self._window_start))
        self._window_start = len(h.steps)
        losses = _finite([r.get("loss", math.nan) for r in rows])
        if not losses or self._first is None:
            return
        mean_loss = statistics.fmean(losses)
        previous, self._previous = self._previous, mean_loss
        first = self._first
        lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        # the guard of a raise: if the window after it is worse, undo it
        if self._raised_at is not None:
            before, self._raised_at = self._raised_at, None
            if mean_loss > 1.02 * before:  # worse beyond the window-to-window noise
                self._restore(state)
                self._set(state, "lr", lr / 3)
                self._ceiling = lr / 3
                self._act(state, "rollback_and_set_lr", {"lr": lr / 3, "from_lr": lr},
                          f"the steps after raising the learning rate did worse ({mean_loss:.3g} > {before:.3g}): "
                          "rolled back and lowered it again")
                return
        best_window, self._best_window = self._best_window, min(self._best_window, mean_loss)
        if mean_loss > 1.5 * best_window and self._snapshot is not None and self._rollbacks < self.max_rollbacks:
            # the loss climbs back up: the steps are too large to settle
            self._restore(state)
            self._set(state, "lr", lr * 0.3)
            self._rollbacks += 1
            self._act(state, "rollback_and_set_lr", {"lr": lr * 0.3, "from_lr": lr},
                      f"the loss rose from {best_window:.3g} to {mean_loss:.3g}: rolled back to the last good point "
                      f"and lowered the learning rate {lr:.3g} -> {lr * 0.3:.3g}")
            return
        ratios = _finite([r.get("update_ratio", math.nan) for r in rows])
        snr = _finite([r.get("grad_snr", math.nan) for r in rows])
        # running values, so a check costs its window, not the whole run
        for r in reversed(rows):
            shares = [v for k, v in r.items() if k.startswith("dead_share/") and math.isfinite(v)]
            if shares:
                self._dead = max(shares)
                break
        dead = self._dead
        grads = _finite([r.get("grad_norm", math.nan) for r in rows])
        window = spike_window(state.plan.batch_size)
        if self._opening_grad is None and len(h.steps) >= window:
            self._opening_grad = max(_finite(_col(h.steps, "grad_norm")[:window]), default=0.0)
        peak_grad = self._peak_grad = max(self._peak_grad, max(grads, default=-math.inf))
        stuck = mean_loss >= 0.95 * first
        moving = bool(ratios) and statistics.median(ratios) >= 1e-3  # the steps are not small: large, and useless
        if stuck and (dead > 0.5 or (self._rollbacks and moving)) and self._origin is not None and \
                self._rollbacks < self.max_rollbacks:
            # not learning after large steps (units killed, or a rollback not enough): start over, smaller
            self._snapshot = copy.deepcopy(self._origin)
            self._restore(state)
            self._set(state, "lr", lr * 0.1)
            self._rollbacks += 1
            why = f"{dead:.0%} of the ReLU units are dead" if dead > 0.5 else "after lowering the learning rate"
            self._act(state, "rollback_and_set_lr", {"lr": lr * 0.1, "from_lr": lr},
                      f"the loss is still at its start ({mean_loss:.3g}), {why}: back to the initial point, "
                      f"learning rate {lr:.3g} -> {lr * 0.1:.3g}")
            return
        noisy = bool(snr) and statistics.median(snr) < 0.5  # then larger steps would only add noise
        # settled: the gradient fell to a few percent of its peak (a minimum, where small steps are right)
        settled = bool(grads) and statistics.median(grads) < 0.05 * peak_grad
        if ratios and statistics.median(ratios) < 1e-3 and mean_loss > 0.2 * first and not noisy and \
                not settled and lr * 3 <= min(self.lr_ceiling * self._start_lr, self._ceiling):
            self._take_snapshot(state)
            self._set(state, "lr", lr * 3)
            self._raised_at = mean_loss
            self._act(state, "set_lr", {"lr": lr * 3, "from_lr": lr},
                      f"the steps change the weights by {statistics.median(ratios):.2g} of their size (about 1e-3 "
                      f"is usual): raised the learning rate {lr:.3g} -> {lr * 3:.3g}")
            return
        stalled = previous is not None and mean_loss > 0.97 * previous
        if snr and statistics.median(snr) < 0.5 and stalled and mean_loss > 0.2 * first:
            self._set(state, "lr", lr * 0.5)
            self._act(state, "set_lr", {"lr": lr * 0.5, "from_lr": lr},
                      f"noise dominates the steps (gradient SNR {statistics.median(snr):.2g}) and the loss "
                      f"stalled at {mean_loss:.3g}: halved the learning rate {lr:.3g} -> {lr * 0.5:.3g}")
            return
        recent = _finite(_col(h.steps, "grad_norm")[-(len(rows) + window):])
        spike = _spike(recent, window, len(recent) - len(grads), self._opening_grad) \
            if self._clip is None and grads and self._opening_grad is not None else None
        if spike is not None:
            peak, before = spike
            self._install_clipping(state, 2 * before)
            self._act(state, "clip_norm", {"max_norm": 2 * before},
                      f"the gradient norm jumped to {peak:.3g}, {peak / before:.0f}x its mean over the {window} "
                      f"steps before: clipping it to {2 * before:.3g} from now on")
            return
        peak = peak_grad if math.isfinite(peak_grad) else math.nan
        flat = previous is not None and abs(previous - mean_loss) <= 0.01 * abs(previous)
        if flat and grads and max(grads) < 0.2 * peak and mean_loss > 0.5 * first and dead <= 0.5:
            group = state.optimizer.param_groups[0]
            if "momentum" in group and not group["momentum"]:
                self._set(state, "momentum", 0.9)
                self._act(state, "set_momentum", {"momentum": 0.9},
                          "a plateau (the loss flat, the gradient small): added momentum 0.9 to cross it faster")
                return
        if all(math.isfinite(v) for v in losses) and mean_loss <= 1.5 * min(self._best, first):
            self._take_snapshot(state)  # the last good point

    def _install_clipping(self, state: Any, max_norm: float) -> None:
        """Clip the gradient's global norm before every later step: the optimizer's ``step`` is wrapped (the
        model and the optimizer's own chain are left as they are)."""
        optimizer = state.optimizer
        params = [p for g in optimizer.param_groups for p in g["params"]]
        original = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return original(*args, **kwargs)

        optimizer.step = step
        self._clip = (optimizer, original)

    def on_fit_end(self, state: Any) -> None:
        if self._clip is not None:  # the optimizer is the caller's again, unwrapped
            optimizer, original = self._clip
            optimizer.step = original
            self._clip = None
        self.findings = diagnose(state.history)
        if self.mode == "off":
            for f in self.findings:
                f.remedy = None


def fresh_models(model: torch.nn.Module) -> tuple[Callable[[], torch.nn.Module] | None, str]:
    """A factory of copies of ``model`` with new initial parameters: each module holding trained parameters
    re-draws them with its ``reset_parameters`` (from torch's global generator); frozen parameters (pretrained
    layers) keep their values. Or None and the reason it cannot be made."""
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    missing = sorted({type(m).__name__ for m in owners if not callable(getattr(m, "reset_parameters", None))})
    if missing:
        return None, f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no reset_parameters()"
    template = copy.deepcopy(model).cpu()

    def make() -> torch.nn.Module:
        fresh = copy.deepcopy(template)
        for m in fresh.modules():
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                m.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            for p, kept in zip(fresh.parameters(), template.parameters()):
                if not kept.requires_grad:
                    p.copy_(kept)
        return fresh

    return make, ""


def restart_remedy(result_score: float, model: torch.nn.Module, train: Any, *, restarts: int, seed: int,
                   model_fn: Callable[[], torch.nn.Module] | None, optimizer: Any, hyper: dict[str, Any],
                   batch_size: Any, steps: int, loss: Any, val: Any, device: Any, progress: bool,
                   step: int, schedule: Any = None) -> tuple[Remedy, torch.nn.Module | None]:
    """``local_minimum`` with ``remedy="auto"`` and restarts asked for: train ``restarts`` new initial points as
    one population (seeds ``seed + 1`` on, the same optimizer, settings and number of steps) and return the
    record and the best restart's model when it beats the run's ``result_score`` (validation loss where there
    is validation data, else the last epoch's train loss), else None."""
    from gdlab import population

    seeds = [seed + 1 + i for i in range(restarts)]
    make: Callable[[], torch.nn.Module] | None = None
    if not isinstance(optimizer, str):
        why = "a restart needs a named optimizer"
    elif schedule is not None:
        why = "the run has a learning-rate schedule, which populations do not follow: restarts would not train " \
              "as it did (run gdlab restarts to compare without it)"
    else:
        make, why = (model_fn, "") if model_fn is not None else fresh_models(model)
    if make is None:
        return Remedy(step, "restarts", {"restarts": 0, "kept": False},
                      f"the run settled at a minimum, but restarts could not be made: {why}"), None
    assert make is not None
    try:
        pop = population.train(make, train, seeds=seeds, optimizer=optimizer, hyper=hyper, batch_size=batch_size,
                               steps=steps, val=val, loss=loss, device=device, progress=progress)
    except (Exception, KeyboardInterrupt) as error:  # the run itself is done: keep it, say what happened
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
        return Remedy(step, "restarts", {"restarts": restarts, "seeds": seeds, "kept": False},
                      f"the run settled at a minimum; the restarts were {what}; the run's model is kept"), None
    scores = pop.score()
    best = min(range(len(scores)), key=lambda i: scores[i])
    kept = scores[best] < result_score
    params = {"restarts": restarts, "seeds": seeds, "best_seed": seeds[best], "loss": scores[best],
              "from_loss": result_score, "losses": scores, "kept": kept}
    what = "validation loss" if val is not None else "train loss"
    outcome = (f"kept the best restart (seed {seeds[best]}, {what} {scores[best]:.4g})" if kept else
               f"kept the run: the best restart reached {scores[best]:.4g}")
    reason = (f"the run settled at a minimum ({what} {result_score:.4g}); {restarts} restarts trained as one "
              f"population: {outcome}")
    return Remedy(step, "restarts", params, reason), (pop.member(best) if kept else None)
