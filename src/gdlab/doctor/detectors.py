"""The detectors: pure functions ``History -> list[Finding]``, one registered per finding code (see
:data:`~gdlab.doctor.findings.DETECTORS`). Each reads the per-step and per-epoch columns the loop and the instruments
write (``loss``, ``loss_ema``, ``grad_norm``, ``update_ratio``, ``noise_scale``, ``grad_snr``, ``dead_share/*``,
``saturated/*``, ``grad_out/*``, ``sharpness``, ``val_loss``...) and ``History.meta`` (learning rate, momentum,
batch size, task, classes, input scales); a detector whose columns are missing says nothing. None touches a model.

No single reading of an instrument raises a finding on its own: a per-layer measurement (dead or saturated
units, the gradient arriving at each layer) must show the problem in its last two readings, and the sharpness
must exceed the stability limit in at least two readings past the opening steps (:func:`~gdlab.doctor.series.
warmup_steps`), at least half of those taken there. The loss and gradient norm, read every step, are judged over
many steps.

Example:
    >>> from gdlab.doctor import DETECTORS
    >>> from gdlab.records import History
    >>> h = History()
    >>> for s in range(1, 101): h.steps.append({"step": s, "loss": 2.3})
    >>> [f.code for f in DETECTORS["not_learning"](h)]
    ['not_learning']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from gdlab.doctor.findings import Finding, detector
from gdlab.doctor.series import (
    column,
    corroborated,
    depth_readings,
    ema_noise,
    ema_noise_by_row,
    find_spike,
    last_lr,
    late_readings,
    later_min,
    noise_dominated,
    peak_lr,
    peaks,
    point_noise,
    readings,
    rolling_max,
    smooth_loss,
    spike_window,
    start_loss,
    step_at,
    warmup_steps,
    window_means,
)
from gdlab.problem import NON_FINITE_SOURCES
from gdlab.records import ILL_CONDITIONED, History, finite, scale_ratio

__all__: list[str] = []  # the detectors are reached through DETECTORS, by finding code


@detector("non_finite")
def _nonfinite(h: History) -> list[Finding]:
    flag, grad = peaks(h.steps, "non_finite"), column(h.steps, "grad_norm")
    # set by the loop where the diverging step's non-finite loss did not come from the learning rate: its batch held
    # NaN or inf (inputs, targets), or its starting point did (parameters), or the model's output or the loss was not
    # finite for finite inputs (gdlab.problem.NON_FINITE_SOURCES)
    data = column(h.steps, "bad_data")
    for i, value in enumerate(data):
        found = _source(h, i, value)
        if found is not None:
            return [found]
    # a run that measured the gradient norm every k-th step (gdlab.watch) leaves NaN in the rows between: there a
    # non-finite norm reads inf, and NaN means "not measured"
    sparse = (h.meta.get("grad_norm_every") or 1) > 1
    losses = column(h.steps, "loss")
    # the usual run, told in a few passes in C: every loss finite (their sum is), no measured norm infinite, no
    # flag up
    if math.isfinite(sum(losses)) and not (grad and (math.inf in grad if sparse else not math.isfinite(sum(grad)))) \
            and not (flag and 1.0 in flag):
        return []
    for i, loss in enumerate(losses):
        bad_grad = grad and (math.isinf(grad[i]) if sparse else not math.isfinite(grad[i]))
        bad = "loss" if not math.isfinite(loss) else ("gradients" if bad_grad else
                                                       "parameters" if flag and flag[i] == 1 else None)
        if bad:
            lr = last_lr(h)
            return [Finding("non_finite", "error", step_at(h, i), {"quantity": bad, "loss": loss, "lr": lr},
                            f"the {bad} became infinite or NaN at step {step_at(h, i)}: the steps grew until the "
                            "numbers overflowed, most often because the learning rate is too large",
                            _lr_remedy(h, 0.1, rollback=True))]
    return []


def _source(h: History, i: int, value: float) -> Finding | None:
    """The ``non_finite`` finding of row ``i`` whose ``bad_data`` column says where its non-finite loss came from
    (None for a value that names no source)."""
    sources = {code: what for what, code in NON_FINITE_SOURCES.items()}
    what = sources.get(value)
    if what is None:
        return None
    step = step_at(h, i)
    counts, scales = column(h.steps, "bad_data_count"), column(h.steps, "bad_data_scale")
    count = int(counts[i]) if counts and math.isfinite(counts[i]) else None
    scale = scales[i] if scales and math.isfinite(scales[i]) else None
    if what in ("inputs", "targets"):
        return Finding("non_finite", "error", step, {"quantity": what, "count": count, "source": "data"},
                       f"the batch of step {step} has {count} NaN or inf values in its {what}: the data is at fault, "
                       "not the learning rate", {"action": "check_data", "where": what})
    if what == "parameters":
        return Finding("non_finite", "error", step, {"quantity": what, "count": count, "source": "starting point"},
                       f"the model's parameters held {count} NaN or inf values at step {step}, before its update: the "
                       "run started from a point that is not finite (the initialisation, or the checkpoint it resumed "
                       "from); the data was finite, and no learning rate can help",
                       {"action": "check_model", "where": what})
    if what == "output":
        return Finding("non_finite", "error", step, {"quantity": what, "count": count, "source": "model"},
                       f"the model returned {count} NaN or inf values at step {step} for finite inputs, targets and "
                       "parameters: its forward pass is at fault (a log or division by 0, an overflow), not the "
                       "learning rate", {"action": "check_model", "where": what})
    cause = (f": it overflowed on targets that reach {scale:.3g}; scale them (standardize the targets)"
             if scale is not None else ": the loss function is at fault")
    return Finding("non_finite", "error", step, {"quantity": "loss", "target_scale": scale, "source": "loss"},
                   f"the loss became infinite or NaN at step {step} although the inputs, targets and model outputs "
                   f"were finite{cause}, not the learning rate",
                   {"action": "scale_targets", "target_scale": scale} if scale is not None else
                   {"action": "check_loss"})


@detector("lr_too_high")
def _lr_too_high(h: History) -> list[Finding]:
    found = []
    sharp, limit = column(h.steps, "sharpness"), column(h.steps, "stability_limit")
    # the readings past the opening steps (at initialisation the surface can be far sharper than it stays)
    warm = warmup_steps(h)
    judged = [(i, s, lim) for i, (s, lim) in enumerate(zip(sharp, limit))
              if math.isfinite(s) and math.isfinite(lim) and step_at(h, i) > warm]
    over = [(i, s, lim) for i, s, lim in judged if s > 1.1 * lim]
    if len(over) >= 2 and 2 * len(over) >= len(judged):  # corroborated: two readings, and most of them
        i, s, lim = over[-1]
        lr = last_lr(h)
        found.append(Finding("lr_too_high", "warning", step_at(h, i),
                             {"sharpness": s, "stability_limit": lim, "lr": lr, "readings_over": len(over),
                              "readings": len(judged), "after_step": warm, "since_step": step_at(h, over[0][0])},
                             f"the loss surface's sharpness ({s:.3g}) is above the stability limit of this "
                             f"learning rate ({lim:.3g}) in {len(over)} of the {len(judged)} readings after step "
                             f"{warm}: gradient descent overshoots along that direction",
                             _lr_remedy(h, lim / s / 2)))  # half the lr at which it would be stable
    if not found and noise_dominated(h) is None:  # a noise-dominated run's ups and downs are the batch's
        found.extend(_loss_rose(h))
    if not found:
        found.extend(_units_pushed_out(h))
    return found


def _fall(h: History) -> tuple[float, float, float] | None:
    """The run's starting loss, its smoothed end, and the noise a fall between them must beat (the start's mean over
    its opening steps and the smoothed end, each with its own noise; 0 where it cannot be read); None with fewer
    than 10 finite losses."""
    losses = finite(column(h.steps, "loss"))
    ema = finite(smooth_loss(h))
    if len(losses) < 10 or not ema:
        return None
    opening = max(1, min(10, len(losses) // 10))
    noise = math.hypot(point_noise(losses) / math.sqrt(opening), ema_noise(h))
    return start_loss(h), ema[-1], noise if math.isfinite(noise) else 0.0


def _learned_nothing(h: History) -> dict[str, Any] | None:
    """The evidence that a run learned nothing: its smoothed loss ended no lower than its start beyond their noise
    (5% at least), or (a classifier) at the loss of guessing, ln of the classes; None when it learned."""
    fall = _fall(h)
    if fall is None:
        return None
    start, end, noise = fall
    chance = _chance_accuracy(h)
    guess = math.log(1 / chance) if chance is not None else None
    evidence = {"loss_start": start, "loss_end": end, "noise": noise, "chance_loss": guess}
    if start - end < max(0.05 * abs(start), 3 * noise):
        return {**evidence, "at_chance": False}
    if guess is not None and abs(end - guess) <= max(0.05 * guess, 3 * noise):
        return {**evidence, "at_chance": True}
    return None


def _units_pushed_out(h: History) -> list[Finding]:
    """``lr_too_high`` from units the steps put out of action: a layer whose units responded at its first reading
    (under half dead, or saturated) and no longer do (over half, in its last two readings), in a run that learned
    nothing (:func:`_learned_nothing`). The init did not do it (they responded at the start), the loss did not
    fall for it: the updates did, and each update is the learning rate's size (the update-to-weight ratio at the
    first reading is given; around 1e-3 is usual). The remedy is computed from the peak lr."""
    for prefix, what in (("dead_share", "died (output 0 for every sample)"),
                         ("saturated", "saturated (stuck at the flat ends of the activation)")):
        out = corroborated(h, prefix, lambda v: v > 0.5)
        starts = {layer: values[0] for layer, values in readings(h, prefix).items() if layer in out}
        pushed = {layer: share for layer, share in out.items() if starts[layer] < 0.5}
        if not pushed:
            continue
        learned = _learned_nothing(h)
        if learned is None:
            return []
        layer, share = max(pushed.items(), key=lambda kv: kv[1])
        step, since = _layer_evidence(h, prefix, layer, lambda v: v > 0.5)
        first = step_at(h, next(i for i, v in enumerate(column(h.steps, f"{prefix}/{layer}")) if math.isfinite(v)))
        ratios = finite(column(h.steps, "update_ratio"))
        lr = peak_lr(h)
        evidence = {"layer": layer, "share_start": starts[layer], "share": share, "since_step": since,
                    "first_step": first, "update_ratio_first": ratios[0] if ratios else None, "lr": lr, **learned}
        moved = f"; the first measured update moved the weights by {ratios[0]:.2g} of their size" if ratios else ""
        ended = (f"ended at the loss of guessing ({learned['chance_loss']:.3g})" if learned["at_chance"] else
                 "did not fall beyond its noise")
        return [Finding("lr_too_high", "warning", since, evidence,
                        f"the units of {layer!r} {what}: {starts[layer]:.0%} at the first reading (step {first}), "
                        f"{share:.0%} from step {since} on, while the loss went from {learned['loss_start']:.3g} to "
                        f"{learned['loss_end']:.3g} (noise {learned['noise']:.2g}) and {ended}{moved}: the steps of "
                        f"the learning rate (peak {lr:.3g}) put them out of action, and the run learned nothing",
                        _lr_remedy(h, 0.1))]
    return []


def _clipped_share(h: History, first: int, last: int) -> tuple[float, float] | None:
    """The clip value (``meta["clip_norm"]``) and the share of the measured steps in rows ``first..last`` whose
    gradient norm (before clipping) reached it; None when the run did not clip or measured no norm there."""
    clip = h.meta.get("clip_norm")
    grads = [g for g in column(h.steps, "grad_norm")[first : last + 1] if math.isfinite(g)]
    if not isinstance(clip, (int, float)) or clip <= 0 or not grads:
        return None
    return float(clip), sum(g >= 0.999 * clip for g in grads) / len(grads)


def _risen_rows(h: History) -> tuple[np.ndarray, np.ndarray, float, np.ndarray] | None:
    """The smoothed loss (an array), its lowest level so far at each row, its noise, and the rows where it sat well
    above that level when they make a stretch: a steep rise (above 1.5x the level and its noise x3) over ten steps
    or 2% of the run, else a held one (above the level by 5% and by 6x the noise of the difference) over ten steps
    or a tenth of the run whose mean is 5x that noise above the level (a loss that climbed back up part of the way
    it fell, and stayed there while the learning rate was high: the run ends worse than its faster start promised).
    The noise of the difference counts the level's own: a level read in the opening rows averages few batches
    (:func:`~gdlab.doctor.series.ema_noise_by_row`). None otherwise.
    """
    ema = smooth_loss(h)
    n = len(ema)
    if sum(math.isfinite(v) for v in ema) < 20:
        return None
    noise = ema_noise(h)
    noise = noise if math.isfinite(noise) else 0.0
    a = np.asarray(ema, dtype=float)
    low_so_far = np.minimum.accumulate(np.where(np.isfinite(a), a, np.inf))
    with np.errstate(invalid="ignore"):
        above = np.isfinite(a) & (low_so_far > 0)
        steep = above & (a > 1.5 * low_so_far) & (a - low_so_far > 3 * noise)
    if steep.sum() >= max(10, n // 50):  # a stretch, not a blip: ten steps, or 2% of the run
        return a, low_so_far, noise, np.flatnonzero(steep)
    by_row = np.nan_to_num(np.asarray(ema_noise_by_row(h), dtype=float))
    # the row of the lowest level so far, and the noise of the difference between a row and that level
    at_low = np.maximum.accumulate(np.where(np.isfinite(a) & (a == low_so_far), np.arange(n), 0))
    spread = np.hypot(by_row, by_row[at_low])
    with np.errstate(invalid="ignore"):
        held = above & (a - low_so_far > np.maximum(6 * spread, 0.05 * low_so_far))
    rows = np.flatnonzero(held)
    if len(rows) >= max(10, n // 10) and float((a[rows] - low_so_far[rows]).mean()) > 5 * float(spread[rows].mean()):
        return a, low_so_far, noise, rows
    return None


def _loss_rose(h: History) -> list[Finding]:
    """``lr_too_high`` from the loss curve: the smoothed loss rose well above its lowest level so far (see
    :func:`_risen_rows`: steeply, or held for a tenth of the run, each against its own noise, and on average over
    the stretch by a fifth of the progress made from the start to that level) over a stretch of steps, whether it
    came back down or not."""
    risen = _risen_rows(h)
    if risen is None:
        return []
    a, low_so_far, noise, rows = risen
    first, last = int(rows[0]), int(rows[-1])
    low = float(low_so_far[first])
    i_low = int(np.flatnonzero(a[:first + 1] == low)[0]) if (a[:first + 1] == low).any() else 0
    stretch = a[first : last + 1][np.isfinite(a[first : last + 1])]
    mean, peak, end = float(stretch.mean()), float(stretch.max()), float(a[np.isfinite(a)][-1])
    if mean - low < 0.2 * abs(start_loss(h) - low):
        return []  # the run gave back under a fifth of the progress it had made: near its floor, a wobble
    recovered = end < 1.5 * low or end - low <= 3 * noise
    clipped = _clipped_share(h, first, last)
    evidence = {"loss_min": low, "loss_rise_mean": mean, "loss_peak": peak, "loss_end": end, "noise": noise,
                "from_step": step_at(h, first), "to_step": step_at(h, last), "recovered": recovered,
                "lr": peak_lr(h)}
    pinned = ""
    if clipped is not None:
        evidence.update(clip_norm=clipped[0], clipped_share=clipped[1])
        if clipped[1] >= 0.5:
            pinned = f"; the gradient norm sat at the clip value ({clipped[0]:.3g}) in {clipped[1]:.0%} of those steps"
    top, lrs = peak_lr(h), finite(column(h.steps, "lr"))
    decayed = f" as the learning rate fell from {top:.3g} to {lrs[-1]:.3g}" if lrs and lrs[-1] < 0.5 * top else ""
    how = (f"then came back to {end:.3g}{decayed}: the run survived a divergence, and lost the steps it spent there"
           if recovered and peak > 1.5 * low else
           f"then came back to {end:.3g}{decayed}: the steps were too large to hold the level the run had reached, "
           "and it lost the steps it spent above it" if recovered else
           f"and ended at {end:.3g}: the steps are too large to settle")
    return [Finding("lr_too_high", "warning", step_at(h, first), evidence,
                    f"the smoothed training loss rose from {low:.3g} (step {step_at(h, i_low)}) to a mean of {mean:.3g}"
                    f" (peak {peak:.3g}) from step {step_at(h, first)} to {step_at(h, last)}, against a noise of "
                    f"{noise:.2g}{pinned}, {how}",
                    _lr_remedy(h, 0.3))]


@detector("lr_too_low")
def _lr_too_low(h: History) -> list[Finding]:
    ratios = finite(column(h.steps, "update_ratio"))
    losses = finite(column(h.steps, "loss"))
    if len(ratios) < 2 or len(losses) < 10:  # the ratio is measured every 20th step
        return []
    median = statistics.median(ratios)
    start, end = start_loss(h), finite(smooth_loss(h))[-1]
    drop = (start - end) / abs(start) if start else 0.0
    if median < 5e-4 and drop < 0.5:
        lr = last_lr(h)
        factor = min(100.0, max(3.0, 1e-3 / max(median, 1e-12)))
        return [Finding("lr_too_low", "warning", step_at(h, 0),
                        {"update_ratio_median": median, "loss_drop": drop, "lr": lr},
                        f"each step changes the weights by a fraction {median:.2g} of their size (around 1e-3 is "
                        f"usual) and the loss fell by only {drop:.0%}: the learning rate is too small",
                        _lr_remedy(h, factor))]
    return []


def _flat_windows(ema: list[float], grads: list[float], min_len: int) -> list[tuple[int, int]]:
    """Stretches of at least ``min_len`` steps where the smoothed loss changes by under 2% and the gradient is
    below a fifth of its peak."""
    g = np.asarray(grads, dtype=float)
    measured = g[np.isfinite(g)]
    peak = float(measured.max()) if len(measured) else math.nan
    n = len(ema)
    flat = np.zeros(n + 2, dtype=bool)  # row i at flat[i + 1], False on both sides: each stretch has two edges
    if n > min_len:
        now, then = np.asarray(ema[min_len:], dtype=float), np.asarray(ema[:-min_len], dtype=float)
        with np.errstate(invalid="ignore"):  # inf - inf: the rows are not finite, hence not flat, anyway
            level = np.isfinite(now) & np.isfinite(then) & (np.abs(now - then) <= 0.02 * np.abs(then))
        if grads and math.isfinite(peak):
            reach = rolling_max(grads, min_len + 1, default=0.0)  # the largest gradient in grads[j : i + 1]
            level &= np.asarray(reach[min_len:]) < 0.2 * peak
        flat[min_len + 1 : n + 1] = level
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # a stretch's first row, then the row after its last
    return [(int(first) - min_len, int(after) - 1) for first, after in zip(edges[::2], edges[1::2])]


def _near_floor(h: History, loss: float) -> bool:
    """The loss is at its floor, not on a plateau: under 2% of its start, or (a classifier) under 5% of the
    chance level's, where almost every sample is classified with confidence."""
    start = start_loss(h)
    if math.isfinite(start) and start > 0 and loss <= 0.02 * start:
        return True
    classes = h.meta.get("num_classes")
    return h.meta.get("task") == "classification" and isinstance(classes, int) and classes > 1 and \
        loss <= 0.05 * math.log(classes)


def _val_at_best(h: History, first: int, last: int) -> bool:
    """The validation loss (or accuracy) measured between steps ``first`` and ``last`` is at the run's best (within
    10% of its lowest loss, or half a point of its highest accuracy): the model was as good as it got on held-out
    data, so a flat training loss there is no plateau to cross."""
    steps = column(h.epochs, "step")
    if not steps:
        return False
    inside = [i for i, s in enumerate(steps) if first <= s <= last]
    val, acc = column(h.epochs, "val_loss"), column(h.epochs, "val_accuracy")
    if val and finite(val) and any(math.isfinite(val[i]) and val[i] <= 1.1 * min(finite(val)) for i in inside):
        return True
    return bool(acc and finite(acc) and any(math.isfinite(acc[i]) and acc[i] >= max(finite(acc)) - 0.005
                                            for i in inside))


@detector("plateau")
def _plateau(h: History) -> list[Finding]:
    ema, grads = smooth_loss(h), column(h.steps, "grad_norm")
    n = len(ema)
    if n < 50:
        return []
    lowest = later_min(ema)  # the lowest finite smoothed loss from each row on
    noise = ema_noise(h)
    noise = noise if math.isfinite(noise) else 0.0
    for a, b in _flat_windows(ema, grads, max(20, n // 5)):
        after = lowest[b]
        # the later fall: by 30%, and by 3x the smoothed loss's own noise (a dip of a noisy loss is no escape)
        if not (b < n - 1 and math.isfinite(after) and after < 0.7 * ema[b] and ema[b] - after > 3 * noise):
            continue
        if _near_floor(h, ema[b]) or _val_at_best(h, step_at(h, a), step_at(h, b)):
            continue  # a converged run's loss: flat at its floor, its small ups and downs are no escape
        if _fell_on_a_lower_lr(h, ema, b):
            continue  # the steps' noise floor, which a smaller learning rate lowered: no plateau to cross faster
        return [Finding("plateau", "warning", step_at(h, a),
                        {"from_step": step_at(h, a), "to_step": step_at(h, b), "loss": ema[b],
                         "loss_after": after, "noise": noise},
                        f"the loss stayed at {ema[b]:.3g} with a small gradient from step {step_at(h, a)} to "
                        f"{step_at(h, b)} before falling to {after:.3g} (its noise {noise:.2g}): a plateau, crossed "
                        "slowly",
                        _plateau_remedy(h))]
    return []


def _fell_on_a_lower_lr(h: History, ema: list[float], b: int) -> bool:
    """The loss fell below 70% of its level at row ``b`` only after the learning rate was lowered (by a schedule,
    or by the doctor's rollback)."""
    lrs = column(h.steps, "lr")
    k = next((i for i in range(b, len(ema)) if math.isfinite(ema[i]) and ema[i] < 0.7 * ema[b]), None)
    if k is None or not lrs or k >= len(lrs) or not (math.isfinite(lrs[b]) and math.isfinite(lrs[k])):
        return False
    return lrs[k] < 0.9 * lrs[b]


def _lr_remedy(h: History, factor: float, **extra: object) -> dict[str, object]:
    """``set_lr`` to ``factor`` times the run's peak learning rate (:func:`~gdlab.doctor.series.peak_lr`: a
    schedule's peak, never its decayed end, which under a decay to 0 prescribed ``lr 0``); under a schedule (the
    recorded lr varied) ``peak_lr`` says the new value is a peak. With no positive lr recorded, the factor alone
    (``scale_lr``), never a value computed from nothing.

    Example:
        >>> h = History()
        >>> for lr in (0.1, 0.05, 0.0): h.steps.append({"lr": lr})
        >>> _lr_remedy(h, 0.5)
        {'action': 'set_lr', 'lr': 0.05, 'peak_lr': 0.1}
    """
    peak = peak_lr(h)
    if not (math.isfinite(peak) and peak > 0):
        return {"action": "scale_lr", "factor": factor, **extra}
    remedy: dict[str, object] = {"action": "set_lr", "lr": peak * factor, **extra}
    lrs = finite(column(h.steps, "lr"))
    if lrs and min(lrs) < 0.99 * peak:
        remedy["peak_lr"] = peak
    return remedy


def _plateau_remedy(h: History) -> dict[str, object]:
    """Momentum 0.9 for an optimizer that has a momentum and runs at 0; else a larger learning rate (never the
    momentum a run already has, nor one whose momentum is unknown)."""
    momentum = h.meta.get("momentum")
    if isinstance(momentum, (int, float)) and momentum == 0:
        return {"action": "set_momentum", "momentum": 0.9}
    return _lr_remedy(h, 3.0)


@detector("local_minimum")
def _local_minimum(h: History) -> list[Finding]:
    """A network that settled at a loss well above what its data allows, on three pieces of evidence: the
    gradient is at rest (against its noise: the mini-batch gradient's signal-to-noise ratio stays under 0.1 in its
    late readings; with none measured, a full-batch run, the gradient under 1% of its peak over the last quarter),
    the smoothed loss is flat over the last quarter (within 1%, or three times its noise), and the loss is far
    above its floor (between a quarter and 90% of its start; not at a classifier's floor; above a quarter of a
    regression's target variance, R^2 under 0.75)."""
    ema, grads = smooth_loss(h), finite(column(h.steps, "grad_norm"))
    n = len(ema)
    if n < 50 or not grads or h.meta.get("convex"):
        return []
    start, end = start_loss(h), ema[-1]
    tail = ema[int(0.75 * n):]
    if not (math.isfinite(end) and math.isfinite(start) and tail and math.isfinite(tail[0])):
        return []
    noise = ema_noise(h)
    noise = noise if math.isfinite(noise) else 0.0
    flat = abs(tail[-1] - tail[0]) <= max(0.01 * abs(tail[0]), 3 * noise)
    snr = late_readings(h, "grad_snr")
    late_grad = statistics.fmean(grads[int(0.75 * len(grads)):])
    at_rest = max(snr) < 0.1 if snr else late_grad < 0.01 * max(grads)
    std = h.meta.get("target_std")
    var = std ** 2 if h.meta.get("task") == "regression" and isinstance(std, (int, float)) and std > 0 else None
    above = 0.25 * start < end < 0.9 * start and not _near_floor(h, end) and (var is None or end > 0.25 * var)
    if flat and at_rest and above:
        rest = (f"its signal-to-noise ratio {max(snr):.2g} at most in its late readings" if snr else
                f"{late_grad:.2g} on average over the last quarter, {late_grad / max(grads):.1%} of its peak")
        return [Finding("local_minimum", "warning", step_at(h, int(0.75 * n)),
                        {"loss": end, "start_loss": start, "grad_norm": grads[-1], "grad_norm_peak": max(grads),
                         "grad_snr": max(snr) if snr else None, "noise": noise, "target_var": var},
                        f"training settled: the gradient is at rest ({rest}) and the smoothed loss stayed flat over "
                        f"the last quarter (noise {noise:.2g}) at {end:.3g}, still {end / start:.0%} of the start: a "
                        "minimum, perhaps a local one; other initial points may find lower ones",
                        {"action": "restarts", "seeds": 8})]
    return []


def _depth(h: History, test: Callable[[float], bool]) -> tuple[dict[str, float], float, int, int] | None:
    """The latest depth reading (values by layer, first over last), its step, and the step where the unbroken run
    of readings passing ``test`` that ends with it began, when the latest two readings pass ``test``; else None."""
    found = depth_readings(h)
    if len(found) < 2 or not all(test(ratio) for _, _, ratio in found[-2:]):
        return None
    since = len(found) - 1
    while since > 0 and test(found[since - 1][2]):
        since -= 1
    row, arriving, ratio = found[-1]
    return arriving, ratio, step_at(h, row), step_at(h, found[since][0])


def _activations(h: History) -> set[str] | None:
    """The activations the model uses (``meta["activations"]``, by the names of ``gdlab.models.ACTIVATIONS``: its
    modules', and the functions its forward pass called where it was traced, ``meta["activations_traced"]``); None
    when unknown (none among its modules, and its forward pass not traced: ``F.relu`` in ``forward`` is not seen)."""
    acts = set(h.meta.get("activations") or ())
    return acts if acts or h.meta.get("activations_traced") else None


_SATURATING = {"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid"}
_STRUCTURAL = "add normalisation (BatchNorm/LayerNorm) or residual connections"


def _vanishing_remedy(h: History) -> dict[str, object]:
    """A change to the model that it does not have already: a non-saturating activation (relu) for a network whose
    activations all saturate (sigmoid, tanh); for a ReLU one (whose units may be dead, passing no gradient back)
    a leaky ReLU; and the init, normalisation or residual connections in any case. Where the activations are unknown
    the remedy says so rather than guess one the model may have already."""
    acts = _activations(h)
    if acts is None:
        return {"action": "change_model", "init": "kaiming", "activation": "unknown (none among the model's modules, "
                "and its forward pass was not traced): if it saturates (sigmoid, tanh), a non-saturating one",
                "or": _STRUCTURAL}
    if acts & _SATURATING and not acts - _SATURATING:
        return {"action": "change_model", "activation": "relu", "init": "kaiming", "or": _STRUCTURAL}
    if "relu" in acts and "leaky_relu" not in acts:
        return {"action": "change_model", "activation": "leaky_relu", "init": "kaiming",
                "or": _STRUCTURAL + "; a lower learning rate if the units died after large steps"}
    # already non-saturating (or no activation at all), with no dead units to revive
    return {"action": "change_model", "init": "kaiming", "or": _STRUCTURAL}


@detector("vanishing_gradients")
def _vanishing(h: History) -> list[Finding]:
    depth = _depth(h, lambda ratio: ratio < 1e-3)
    if depth is not None:
        arriving, ratio, step, since = depth
        return [Finding("vanishing_gradients", "warning", step,
                        {"grad_out": arriving, "first_over_last": ratio, "since_step": since},
                        f"the gradient reaching the first layer is {ratio:.1e} of the one at the last (step {step}, "
                        f"and at every reading since step {since}): it shrinks on its way back, so the early layers "
                        "barely learn",
                        _vanishing_remedy(h))]
    return []


def _clip_remedy(h: History, max_norm: float) -> dict[str, object]:
    """Clip the gradient's norm at ``max_norm``, unless the run clips there or tighter already
    (``meta["clip_norm"]``): then the steps are bounded and too large still, and the peak lr comes down (x0.3).

    Example:
        >>> h = History()
        >>> h.meta.update(lr=0.1, clip_norm=1.0)
        >>> _clip_remedy(h, 5.0)["action"], _clip_remedy(h, 0.5)
        ('set_lr', {'action': 'clip_norm', 'max_norm': 0.5})
    """
    clip = h.meta.get("clip_norm")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and 0 < clip <= max_norm:
        return _lr_remedy(h, 0.3, clip_norm=f"on already at {clip:.3g}")
    return {"action": "clip_norm", "max_norm": max_norm}


def _saturated_remedy(h: History) -> dict[str, object]:
    """Standardise the inputs, unless they are on a unit scale already (every feature's 95th percentile of its
    absolute value within 3, ``meta["feature_scales"]``): then a xavier init or normalisation."""
    scales = h.meta.get("feature_scales") or []
    standard = bool(scales) and all(isinstance(v, (int, float)) and v <= 3.0 for v in scales)
    if standard:
        return {"action": "change_model", "init": "xavier",
                "or": "normalisation (BatchNorm/LayerNorm) before the activation, or a lower learning rate"}
    return {"action": "standardize", "init": "xavier", "or": "smaller inputs or weights, normalisation"}


@detector("exploding_gradients")
def _exploding(h: History) -> list[Finding]:
    grads = finite(peaks(h.steps, "grad_norm"))  # a spike among a long run's merged steps is its bucket's max
    depth = _depth(h, lambda ratio: ratio > 1e3)
    if depth is not None:
        arriving, ratio, step, since = depth
        return [Finding("exploding_gradients", "warning", step,
                        {"grad_out": arriving, "first_over_last": ratio, "since_step": since},
                        f"the gradient grows {ratio:.1e}x on its way back to the first layer (step {step}, and at "
                        f"every reading since step {since})",
                        _clip_remedy(h, statistics.median(grads) if grads else 1.0))]
    window = spike_window(h.meta.get("batch_size"))
    spike = find_spike(grads, window)
    if spike is not None:
        peak, before = spike
        i = peaks(h.steps, "grad_norm").index(peak)
        return [Finding("exploding_gradients", "warning", step_at(h, i),
                        {"grad_norm_peak": peak, "grad_norm_before": before, "window": window},
                        f"the gradient norm jumped to {peak:.3g}, {peak / before:.0f}x its mean over the {window} "
                        "steps before: a few steps are far larger than the rest",
                        _clip_remedy(h, 2 * before))]
    return []


def _layer_evidence(h: History, prefix: str, layer: str, test: Callable[[float], bool]) -> tuple[int, int]:
    """The step of ``prefix/<layer>``'s latest finite reading, and the step where the unbroken run of its readings
    passing ``test`` that ends there began."""
    values = column(h.steps, f"{prefix}/{layer}")
    rows = [i for i, v in enumerate(values) if math.isfinite(v)]
    since = len(rows) - 1
    while since > 0 and test(values[rows[since - 1]]):
        since -= 1
    return step_at(h, rows[-1]), step_at(h, rows[since])


@detector("dead_relu")
def _dead_relu(h: History) -> list[Finding]:
    dead = corroborated(h, "dead_share", lambda v: v > 0.5)
    if dead:
        layer, share = max(dead.items(), key=lambda kv: kv[1])
        step, since = _layer_evidence(h, "dead_share", layer, lambda v: v > 0.5)
        remedy: dict[str, object] = {"action": "change_model", "activation": "leaky_relu", "init": "kaiming",
                                     "lr": "lower it if the units died after large steps"}
        if "leaky_relu" in (_activations(h) or ()):  # some of its layers have it already: the rest could too
            remedy["activation"] = "leaky_relu in every layer"
        return [Finding("dead_relu", "warning", step, {"dead_share": dead, "since_step": since},
                        f"{share:.0%} of the units after ReLU {layer!r} output zero for every sample (step {step}, "
                        f"and at every reading since step {since}): they get no gradient and have stopped learning",
                        remedy)]
    return []


@detector("saturated_activations")
def _saturated(h: History) -> list[Finding]:
    saturated = corroborated(h, "saturated", lambda v: v > 0.5)
    if saturated:
        layer, share = max(saturated.items(), key=lambda kv: kv[1])
        step, since = _layer_evidence(h, "saturated", layer, lambda v: v > 0.5)
        return [Finding("saturated_activations", "warning", step, {"saturated": saturated, "since_step": since},
                        f"{share:.0%} of the outputs of {layer!r} sit at the flat ends of the activation, where "
                        f"its derivative is nearly zero (step {step}, and at every reading since step {since})",
                        _saturated_remedy(h))]
    return []


@detector("gradient_noise")
def _gradient_noise(h: History) -> list[Finding]:
    # the late readings (the second half, at least the last two: a one-epoch run at batch 1 may hold only two)
    half, scale = late_readings(h, "grad_snr"), late_readings(h, "noise_scale")
    ema = finite(smooth_loss(h))
    if not half or len(ema) < 20:
        return []
    start = start_loss(h)
    # the second half's loss did not fall beyond its noise (5% at least): the means of its first and last quarters,
    # each with the noise of a mean over that many steps; it stalled, or rose in the noise
    losses = finite(column(h.steps, "loss"))
    width = max(1, len(losses) // 8)
    first, end = statistics.fmean(losses[len(losses) // 2:][:width]), statistics.fmean(losses[-width:])
    spread = point_noise(losses)
    noise = math.sqrt(2) * spread / math.sqrt(width) if math.isfinite(spread) else 0.0
    stalled = first - end <= max(0.05 * abs(first), 3 * noise)
    # the signal-to-noise ratio low in most late readings and in two at least (two that disagree say nothing)
    noisy = (statistics.median(half) < 0.1 and sum(v < 0.1 for v in half) >= 2) or noise_dominated(h) is not None
    if noisy and stalled and end > 0.2 * start:
        batch = int(h.meta.get("batch_size") or 1)
        samples = int(h.meta.get("samples") or batch)
        target = int(min(samples, max(2 * batch, statistics.median(scale) if scale else 2 * batch)))
        return [Finding("gradient_noise", "warning", step_at(h, len(ema) // 2),
                        {"grad_snr": statistics.median(half), "noise_scale": statistics.median(scale) if scale else
                         None, "batch_size": batch, "loss": end, "loss_fall": first - end, "noise": noise},
                        f"noise dominates the steps: the mini-batch gradient's signal-to-noise ratio is "
                        f"{statistics.median(half):.2g} and the loss stalled at {end:.3g} over the second half (it "
                        f"fell by {first - end:.2g}, against a noise of {noise:.2g}); the batch is too small "
                        "for the learning rate",
                        {"action": "set_batch_size", "batch_size": target, "or": "decay the learning rate"})]
    return []


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


def _epoch_losses(h: History) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The epoch rows with a finite validation and training loss, and those two losses there."""
    val, train = column(h.epochs, "val_loss"), column(h.epochs, "train_loss")
    rows = [i for i, (v, t) in enumerate(zip(val, train)) if math.isfinite(v) and math.isfinite(t)]
    return rows, np.asarray([val[i] for i in rows], dtype=float), np.asarray([train[i] for i in rows], dtype=float)


def _epoch_at(h: History, row: int) -> tuple[int, int | None]:
    """The epoch number and step recorded in epoch row ``row``."""
    epochs, steps = column(h.epochs, "epoch"), column(h.epochs, "step")
    return (int(epochs[row]) if epochs else row + 1), (int(steps[row]) if steps else None)


def _val_samples(h: History) -> int | None:
    """The validation samples behind each validation point (``meta["val_samples"]``), None when unknown."""
    m = h.meta.get("val_samples")
    return m if isinstance(m, int) and not isinstance(m, bool) and m > 0 else None


def _rise_noise(h: History, val: np.ndarray, width: int, level: float) -> float:
    """The noise of the difference between two means of ``width`` validation losses: the series' own noise
    (:func:`~gdlab.doctor.series.point_noise`) and, with the validation size known, the sampling noise of a mean
    loss over that many samples (``level / sqrt(samples)``: per-sample losses spread about as wide as their
    mean), which no number of epochs averages away."""
    point = point_noise(val.tolist())
    samples = _val_samples(h)
    sampling = level / math.sqrt(samples) if samples else 0.0
    return math.sqrt(2 * (point if math.isfinite(point) else 0.0) ** 2 / width + sampling ** 2)


@detector("overfitting")
def _overfitting(h: History) -> list[Finding]:
    if _memorised(h) is not None:
        return []  # labels with nothing to learn: named as such (labels_do_not_fit)
    rows, val, train = _epoch_losses(h)
    n = len(rows)
    if n < 6:
        return []
    width = max(2, n // 5)  # the smoothed levels: means of a fifth of the epochs
    means = window_means(val.tolist(), width)
    earlier = means[: n - 2 * width + 1]  # the windows that end before the last one starts
    j = int(np.argmin(earlier))
    best, end = earlier[j], means[-1]
    train_best, train_end = float(train[j : j + width].mean()), float(train[-width:].mean())
    noise = _rise_noise(h, val, width, best)
    if end - best > 3 * noise and end > 1.2 * best and train_end < 0.9 * train_best:
        epoch, step = _epoch_at(h, rows[j])
        last_epoch, _ = _epoch_at(h, rows[-1])
        return [Finding("overfitting", "warning", step,
                        {"best_val_loss": best, "best_epoch": epoch, "val_loss": end, "train_loss": train_end,
                         "rise": end - best, "noise": noise, "epochs_averaged": width,
                         "val_samples": _val_samples(h)},
                        f"the validation loss, averaged over {width} epochs, rose from {best:.3g} (from epoch {epoch})"
                        f" to {end:.3g} (to epoch {last_epoch}), a rise of {end - best:.3g} against a noise of "
                        f"{noise:.2g}, while the training loss fell from {train_best:.3g} to {train_end:.3g}: the "
                        "model memorises the training data",
                        {"action": "early_stop", "patience": 3, "or": "weight_decay 1e-4, more data, a smaller model"})]
    return []


def _chance_accuracy(h: History) -> float | None:
    """The validation accuracy of guessing (1 / classes) for a classifier, else None."""
    classes = h.meta.get("num_classes")
    if h.meta.get("task") != "classification" or not isinstance(classes, int) or classes < 2:
        return None
    return 1.0 / classes


def _memorised(h: History) -> dict[str, Any] | None:
    """The evidence that the training loss fell on labels the inputs do not predict: the training loss fell by a
    fifth, ending below the validation loss (and, for a classifier, below 0.8 of the loss of guessing, log of the
    classes: it fits its training labels), while the validation accuracy never rose beyond the noise of chance
    (three binomial standard errors over the validation samples, or 5 points when their number is unknown), or (no
    accuracy) the validation loss was lowest at the first epoch and rose beyond its noise; None otherwise."""
    rows, val, train = _epoch_losses(h)
    n = len(rows)
    if n < 4 or not train[0] > 0 or not train[-1] < 0.8 * train[0] or not val[-1] > train[-1]:
        return None
    evidence: dict[str, Any] = {"train_loss_start": float(train[0]), "train_loss": float(train[-1]),
                                "val_loss_start": float(val[0]), "val_loss": float(val[-1]),
                                "gap": float(val[-1] - train[-1]), "val_samples": _val_samples(h)}
    chance = _chance_accuracy(h)
    acc = [a for a in column(h.epochs, "val_accuracy") if math.isfinite(a)]
    if chance is not None and len(acc) >= 4:
        # memorised: the training loss went well below guessing's (log of the classes), not only back down from
        # a spike (a run thrown off by a large lr sits at chance on both sides)
        guess = math.log(1 / chance)
        if not train[-1] < 0.8 * guess:
            return None
        evidence["guess_loss"] = guess
        samples = _val_samples(h)
        margin = 3 * math.sqrt(chance * (1 - chance) / samples) if samples else 0.05
        if max(acc) <= chance + margin:
            return {**evidence, "val_accuracy": acc[-1], "val_accuracy_best": max(acc), "chance_accuracy": chance,
                    "margin": margin}
        return None
    if chance is None and "val_r2" in h.epochs:
        r2 = [v for v in column(h.epochs, "val_r2") if math.isfinite(v)]
        if len(r2) < 4 or max(r2) > 0.05:
            return None
    width = max(2, n // 5)
    noise = _rise_noise(h, val, width, float(val[0]))
    if int(np.argmin(val)) == 0 and float(val[-width:].mean()) - float(val[0]) > 3 * noise:
        return {**evidence, "rise": float(val[-width:].mean() - val[0]), "noise": noise}
    return None


@detector("labels_do_not_fit")
def _labels_do_not_fit(h: History) -> list[Finding]:
    found = _memorised(h)
    if found is None:
        return []
    rows, _, _ = _epoch_losses(h)
    _, step = _epoch_at(h, rows[-1])
    if "chance_accuracy" in found:
        held = (f"the validation accuracy stayed at chance ({found['val_accuracy']:.1%}, best "
                f"{found['val_accuracy_best']:.1%}, chance {found['chance_accuracy']:.1%} give or take "
                f"{found['margin']:.1%})")
    else:
        held = (f"the validation loss rose from its first epoch ({found['val_loss_start']:.3g}) to "
                f"{found['val_loss']:.3g}, beyond its noise ({found['noise']:.2g})")
    return [Finding("labels_do_not_fit", "error", step, found,
                    f"the training loss fell from {found['train_loss_start']:.3g} to {found['train_loss']:.3g} while "
                    f"{held}: a train/validation gap of {found['gap']:.3g}. The model memorises labels its inputs do "
                    "not predict (shuffled or wrong labels, targets misaligned with their inputs)",
                    {"action": "check_data", "where": "targets",
                     "or": "check that each label belongs to its input (no shuffle of one without the other)"})]


@detector("not_learning")
def _not_learning(h: History) -> list[Finding]:
    losses = finite(column(h.steps, "loss"))
    fall = _fall(h)  # a fall within the noise of the start's mean and of the smoothed end is no fall
    if fall is None:
        return _regression_failed(h)
    start, end, noise = fall
    classes = h.meta.get("num_classes")
    chance = math.log(classes) if h.meta.get("task") == "classification" and classes and classes > 1 else None
    at_chance = chance is not None and abs(end - chance) <= max(0.05 * chance, 3 * noise) and start <= 1.1 * chance
    if start - end < max(0.05 * abs(start), 3 * noise) or at_chance:
        unscaled = _unscaled_target(h)
        if unscaled is not None:  # a regression whose targets are out of scale: their scale is the cause
            return [_unscaled_finding(h, f"the loss stayed at its start ({start:.3g}), ending at {end:.3g} (its "
                                         f"noise {noise:.2g})", {"start_loss": start, "loss": end, "noise": noise},
                                      *unscaled)]
        lr = last_lr(h)
        level = f"chance level (ln {classes} = {chance:.3g})" if at_chance else f"its start ({start:.3g})"
        return [Finding("not_learning", "error", step_at(h, len(losses) - 1),
                        {"start_loss": start, "loss": end, "chance_loss": chance, "lr": lr, "noise": noise},
                        f"the loss stayed at {level}, ending at {end:.3g} (its noise {noise:.2g}): the model is not "
                        "learning",
                        {"action": "lr_find", "or": "check the data, the labels and the learning rate"})]
    return _regression_failed(h)


TARGET_SCALE = 100.0
"""A regression target whose spread or mean is this large (or its inverse small) is out of scale for the usual
initialisations and learning rates (outputs start near 0 with a spread near 1)."""


def _unscaled_target(h: History) -> tuple[float, float] | None:
    """The mean and spread of a regression's targets (``meta["target_mean"]``, ``meta["target_std"]``) when they
    are out of scale (either beyond :data:`TARGET_SCALE`, or the spread below its inverse) and the run did not
    standardise them (``meta["standardize_target"]``); else None.

    Example:
        >>> h = History()
        >>> h.meta.update(task="regression", target_mean=3e5, target_std=4e4)
        >>> _unscaled_target(h)
        (300000.0, 40000.0)
    """
    std, mean = h.meta.get("target_std"), h.meta.get("target_mean")
    if h.meta.get("task") != "regression" or h.meta.get("standardize_target") or \
            not isinstance(std, (int, float)) or not math.isfinite(std):
        return None
    mean = float(mean) if isinstance(mean, (int, float)) and math.isfinite(mean) else 0.0
    size = max(abs(mean), float(std))
    return None if 1 / TARGET_SCALE <= size <= TARGET_SCALE else (mean, float(std))


def _unscaled_finding(h: History, said: str, evidence: dict[str, Any], mean: float, std: float) -> Finding:
    """``not_learning`` blamed on targets out of scale: ``said`` (what the loss or R^2 did), their mean and spread,
    and the remedy that standardises them."""
    return Finding("not_learning", "error", step_at(h, len(h.steps) - 1),
                   {**evidence, "target_mean": mean, "target_std": std, "target_scale": max(abs(mean), std)},
                   f"{said}: the targets are out of scale (mean {mean:.3g}, spread {std:.3g}), so the model's "
                   "outputs, which start near 0, must grow by that much and the loss's gradient is as large; "
                   "standardise the targets (predictions are mapped back to their units)",
                   {"action": "standardize_target", "flag": "--standardize-target",
                    "fit": "fit(standardize_target=True)"})


def _regression_failed(h: History) -> list[Finding]:
    """``not_learning`` for a regression that learned nothing useful: its validation R^2 ended at or below 0 (no
    better than predicting the mean), or its loss ended orders of magnitude (100x) above the targets' variance.
    With targets out of scale (:func:`_unscaled_target`) it names their scale and prescribes standardising them."""
    if h.meta.get("task") != "regression":
        return []
    r2 = [v for v in column(h.epochs, "val_r2") if math.isfinite(v)]
    std, mean = h.meta.get("target_std"), h.meta.get("target_mean")
    losses = finite(smooth_loss(h))
    var = std ** 2 if isinstance(std, (int, float)) and std > 0 else None
    huge = bool(var and losses and losses[-1] > 100 * var)
    if not (r2 and r2[-1] <= 0) and not huge:
        return []
    evidence = {"val_r2": r2[-1] if r2 else None, "loss": losses[-1] if losses else None, "target_var": var,
                "target_mean": mean, "target_std": std}
    said = f"the validation R^2 ended at {r2[-1]:.3g}, no better than predicting the mean" if r2 and r2[-1] <= 0 \
        else f"the loss ended at {losses[-1]:.3g}, over 100x the targets' variance ({var:.3g})"
    unscaled = _unscaled_target(h)
    if unscaled is not None:
        return [_unscaled_finding(h, said, evidence, *unscaled)]
    return [Finding("not_learning", "error", step_at(h, len(h.steps) - 1), evidence,
                    f"{said}: the model is not learning",
                    {"action": "lr_find", "or": "check the data, the targets and the learning rate"})]


@detector("grads_not_zeroed")
def _grads_not_zeroed(h: History) -> list[Finding]:
    """A bug in the loop, seen by watch at its first updates (:mod:`gdlab.watching.invariants`, in
    ``meta["grads_not_zeroed"]``): the backward pass after an update added to the gradient that update used."""
    found = h.meta.get("grads_not_zeroed")
    if not isinstance(found, dict):
        return []
    update, name = int(found.get("update", 1)), str(found.get("parameter", "?"))
    return [Finding("grads_not_zeroed", "error", update + 1, {"update": update, "parameter": name},
                    f"the gradients are not zeroed between updates: the backward pass of step {update + 1} added to "
                    f"the gradient update {update} had used ('{name}' watched), so every step's gradient piles onto "
                    "the ones before it and the updates grow as if the learning rate were far too large",
                    {"action": "zero_grad", "fix": "call optimizer.zero_grad() before loss.backward() (or after "
                     "optimizer.step())"})]


def _names(found: dict[str, Any], key: str) -> str:
    """The few names a setup finding's evidence lists, quoted, with how many more there are."""
    names = [str(n) for n in found.get(key) or []]
    more = int(found.get("count", found.get("with_grads", len(names))) or 0) - len(names)
    return ", ".join(f"'{n}'" for n in names) + (f" and {more} more" if more > 0 else "")


def _loop_bug(code: str, severity: str, step: str, explain: Callable[[dict[str, Any]], str],
              remedy: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    """Register the detector of a bug in the loop that watch saw at its first check (:mod:`gdlab.watching.invariants`,
    :mod:`gdlab.watching.datachecks`): its evidence is ``meta[code]`` (a dict; its ``step`` key names where), told by
    ``explain`` and fixed by ``remedy``."""

    def read(h: History) -> list[Finding]:
        found = h.meta.get(code)
        if not isinstance(found, dict):
            return []
        return [Finding(code, severity, int(found.get(step, 1)), dict(found), explain(found), remedy(found))]

    read.__doc__ = f"The loop bug ``{code}``, from ``meta[{code!r}]`` (see :func:`_loop_bug`)."
    detector(code)(read)


# the optimizer holds no parameter that requires a gradient (SetupCheck, at the first update)
_loop_bug(
    "optimizer_has_no_trainable_params", "error", "update",
    lambda found: (f"the optimizer holds no parameter that requires a gradient ({found.get('held', 0)} held, all "
                   "frozen)" + (f" (the parameters that do get gradients, {_names(found, 'parameters')}, are in none "
                                "of its param groups)" if found.get("parameters") else "")
                   + ": step() changes nothing and the model cannot learn, whatever the learning rate"),
    lambda found: {"action": "optimizer_params", "fix": "pass the trainable parameters to the optimizer: "
                   f"torch.optim.{found.get('optimizer') or 'SGD'}(p for p in model.parameters() if p.requires_grad)"})

# parameters with requires_grad=True got gradients but are in no param group (frozen ones, never)
_loop_bug(
    "grads_in_no_param_group", "error", "update",
    lambda found: (f"{found.get('count', 0)} parameters get gradients but are in no param group of the optimizer "
                   f"({_names(found, 'parameters')}): they never change, and the layers they belong to stay where "
                   "they started"),
    lambda found: {"action": "optimizer_params", "fix": "pass model.parameters() to the optimizer"})

# the model took its first update in eval() mode, its dropout or batch-norm modules included
_loop_bug(
    "training_in_eval_mode", "error", "update",
    lambda found: ("the model is trained in eval() mode: its dropout and batch-norm modules "
                   f"({_names(found, 'modules')}) act as at inference (no dropout, the running statistics instead "
                   "of the batch's, which never update)"),
    lambda found: {"action": "train_mode", "fix": "call model.train() before the training loop"})

# a cross-entropy fed the model's probabilities (a softmax before the loss, which applies its own)
_loop_bug(
    "loss_given_probabilities", "error", "step",
    lambda found: (f"the cross-entropy is given probabilities (the model's output {found.get('output_shape')} is rows "
                   "in [0, 1] summing to 1): it applies its own softmax on top, so the loss can barely fall and its "
                   "gradient is squashed, as if the learning rate were far too low"),
    lambda found: {"action": "loss_on_logits", "fix": "give CrossEntropyLoss the logits: remove the softmax at the "
                   "end of the model"})

# an output [N, 1] and a target [N] (or the reverse) that the loss broadcasts into [N, N] pairs
_loop_bug(
    "target_shape_broadcasts", "error", "step",
    lambda found: (f"the model's output {found.get('output_shape')} and the target {found.get('target_shape')} "
                   f"broadcast into {found.get('pairs')} pairs: the loss compares every prediction with every "
                   "target, and its best is predicting the mean"),
    lambda found: {"action": "target_shape", "fix": "target.view(-1, 1) (or output.squeeze(-1))"})

# the same inputs and targets served at every one of the first batches
_loop_bug(
    "same_batch_every_step", "warning", "step",
    lambda found: (f"the first {found.get('batches')} steps were given the same batch (the same inputs and targets): "
                   "the model fits that one batch and learns nothing of the rest of the data (meant as a test of "
                   "the model? then ignore this)"),
    lambda found: {"action": "new_batch", "fix": "draw a new batch each step"})

# each of the first batches holds a single class of a task with several: sorted by label, never shuffled
_loop_bug(
    "labels_sorted", "error", "step",
    lambda found: (f"each of the first {found.get('batches')} batches holds a single class (labels "
                   f"{found.get('labels')}): the data is sorted by label and not shuffled, so each run of batches "
                   "pulls the model toward one class and the next undoes it"),
    lambda found: {"action": "shuffle", "fix": "shuffle: DataLoader(..., shuffle=True)"})

# the first updates moved nothing they had gradients for, or the optimizer holds none of the model's parameters
_loop_bug(
    "update_changes_nothing", "error", "update",
    lambda found: (f"the update changes nothing: {found.get('seen_by')} ({_names(found, 'parameters')}"
                   + (f"; the optimizer holds {found.get('held')} other tensors" if found.get("held") else "")
                   + f", over the first {found.get('update')} update(s)): the model's parameters never move, "
                   "whatever the learning rate"),
    lambda found: {"action": "optimizer_params", "fix": "build the optimizer after wrapping the model, over the "
                   "parameters the loop trains: optimizer = torch.optim."
                   f"{found.get('optimizer') or 'SGD'}(model.parameters())"} if found.get("held") else
    {"action": "param_dtype", "fix": "keep the parameters in float32 (mixed precision with torch.autocast, not "
     "model.half()): updates this small vanish in " + str(found.get("dtype"))}
    if found.get("dtype") in ("float16", "bfloat16") else
    {"action": "step_in_place", "fix": "change the parameters in place in step(): p.add_(p.grad, alpha=-lr), not "
     "p = p - lr * p.grad"})

# the learning rate near zero long before the plan ends: a scheduler built per epoch, stepped per batch
_loop_bug(
    "schedule_ends_early", "error", "step",
    lambda found: (f"the learning rate reached {float(found.get('lr') or 0):.3g} (from "
                   f"{float(found.get('peak') or 0):.3g}) at step {found.get('step')}, within {found.get('of')} "
                   f"({found.get('planned')} steps), and the loop went on: the schedule ended early, as a "
                   "scheduler built per epoch but stepped per batch does, and every later step barely moves"),
    lambda found: {"action": "schedule_per_epoch", "fix": "call scheduler.step() once per epoch, after the epoch's "
                   "batches (or build it over every step: T_max = epochs * len(loader))"})

# validation run with dropout or batch norm in training mode (a no_grad pass of several batches)
_loop_bug(
    "validation_in_train_mode", "warning", "step",
    lambda found: (f"validation ran in train() mode: {found.get('passes')} forward passes without gradients at step "
                   f"{found.get('step')}, with the dropout or batch-norm modules {_names(found, 'modules')} in "
                   "training mode: dropout drops units and batch norm normalises by the batch and updates its running "
                   "statistics from the validation data, so the validation loss is noisier and worse than the model"),
    lambda found: {"action": "eval_mode", "fix": "call model.eval() before validating (and model.train() after)"})

# the model's forward still drops units with every module in eval(): F.dropout called with training=True
_loop_bug(
    "dropout_in_eval", "error", "step",
    lambda found: (f"dropout stays active in eval(): with every module in eval mode, the model's forward still called "
                   f"dropout {found.get('calls')} time(s) (rate {', '.join(f'{r:g}' for r in found.get('rates') or [])}"
                   ") with training=True, so validation and predictions are random and worse than the model"),
    lambda found: {"action": "dropout_training_flag", "fix": "call F.dropout(x, p, training=self.training) in the "
                   "model's forward (its default is training=True), or use an nn.Dropout module"})

# the data-parallel replicas' parameters differ: one rank changed outside the all-reduce, or gradients not averaged
_loop_bug(
    "replicas_out_of_step", "error", "step",
    lambda found: (f"the replicas are out of step: rank {found.get('rank')}'s parameters differ from rank 0's "
                   f"({found.get('count')} of them, first '{found.get('parameter')}', by "
                   f"{float(found.get('relative') or 0):.2g} of its size) at step {found.get('step')}: each rank now "
                   "trains its own model, and what rank 0 records is one of them"),
    lambda found: {"action": "sync_replicas", "fix": "move the model to its device before wrapping it in "
                   "DistributedDataParallel, and change parameters only through the optimizer (the same way on "
                   "every rank)"})
