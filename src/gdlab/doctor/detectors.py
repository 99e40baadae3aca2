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

import numpy as np

from gdlab.doctor.findings import Finding, detector
from gdlab.doctor.series import (
    column,
    corroborated,
    depth_readings,
    find_spike,
    last_lr,
    later_min,
    peaks,
    rolling_max,
    smooth_loss,
    spike_window,
    start_loss,
    step_at,
    warmup_steps,
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
                            {"action": "set_lr", "lr": lr * 0.1, "rollback": True})]
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
        new = lr * lim / s / 2  # half the lr at which this sharpness would be stable
        found.append(Finding("lr_too_high", "warning", step_at(h, i),
                             {"sharpness": s, "stability_limit": lim, "lr": lr, "readings_over": len(over),
                              "readings": len(judged), "after_step": warm, "since_step": step_at(h, over[0][0])},
                             f"the loss surface's sharpness ({s:.3g}) is above the stability limit of this "
                             f"learning rate ({lim:.3g}) in {len(over)} of the {len(judged)} readings after step "
                             f"{warm}: gradient descent overshoots along that direction",
                             {"action": "set_lr", "lr": new}))
    ema = smooth_loss(h)
    measured = [(i, v) for i, v in enumerate(ema) if math.isfinite(v)]
    if not found and len(measured) >= 20:
        i_min, low = min(measured, key=lambda t: t[1])
        end = measured[-1][1]
        if end > 2.0 * low and i_min < 0.8 * len(ema) and low > 0:
            lr = last_lr(h)
            found.append(Finding("lr_too_high", "warning", step_at(h, i_min),
                                 {"loss_min": low, "loss_end": end, "lr": lr},
                                 f"the training loss rose from {low:.3g} to {end:.3g} after step "
                                 f"{step_at(h, i_min)}: the steps are too large to settle",
                                 {"action": "set_lr", "lr": lr * 0.3}))
    return found


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
                        {"action": "set_lr", "lr": lr * factor})]
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
    for a, b in _flat_windows(ema, grads, max(20, n // 5)):
        after = lowest[b]
        if not (b < n - 1 and math.isfinite(after) and after < 0.7 * ema[b]):
            continue
        if _near_floor(h, ema[b]) or _val_at_best(h, step_at(h, a), step_at(h, b)):
            continue  # a converged run's loss: flat at its floor, its small ups and downs are no escape
        if _fell_on_a_lower_lr(h, ema, b):
            continue  # the steps' noise floor, which a smaller learning rate lowered: no plateau to cross faster
        return [Finding("plateau", "warning", step_at(h, a),
                        {"from_step": step_at(h, a), "to_step": step_at(h, b), "loss": ema[b],
                         "loss_after": after},
                        f"the loss stayed at {ema[b]:.3g} with a small gradient from step {step_at(h, a)} to "
                        f"{step_at(h, b)} before falling to {after:.3g}: a plateau, crossed slowly",
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


def _plateau_remedy(h: History) -> dict[str, object]:
    """Momentum 0.9 for an optimizer that has a momentum and runs at 0; else a larger learning rate (never the
    momentum a run already has, nor one whose momentum is unknown)."""
    momentum = h.meta.get("momentum")
    if isinstance(momentum, (int, float)) and momentum == 0:
        return {"action": "set_momentum", "momentum": 0.9}
    return {"action": "set_lr", "lr": last_lr(h) * 3}


@detector("local_minimum")
def _local_minimum(h: History) -> list[Finding]:
    ema, grads = smooth_loss(h), finite(column(h.steps, "grad_norm"))
    n = len(ema)
    if n < 50 or not grads or h.meta.get("convex"):
        return []
    start, end = start_loss(h), ema[-1]
    tail = ema[int(0.75 * n):]
    if not (math.isfinite(end) and math.isfinite(start) and tail and math.isfinite(tail[0])):
        return []
    settled = abs(tail[-1] - tail[0]) <= 0.01 * abs(tail[0]) and statistics.fmean(grads[int(0.75 * len(grads)):]) < \
        0.1 * max(grads)
    if settled and 0.25 * start < end < 0.9 * start:
        return [Finding("local_minimum", "warning", step_at(h, int(0.75 * n)),
                        {"loss": end, "start_loss": start, "grad_norm": grads[-1], "grad_norm_peak": max(grads)},
                        f"training settled (gradient {grads[-1]:.2g}, a tenth of its peak) at a loss still "
                        f"{end / start:.0%} of the start: a minimum, perhaps a local one; other initial points may "
                        "find lower ones", {"action": "restarts", "seeds": 8})]
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


def _activations(h: History) -> set[str]:
    """The activations the model uses (``meta["activations"]``, by the names of ``gdlab.models.ACTIVATIONS``);
    empty when unknown."""
    return set(h.meta.get("activations") or ())


def _vanishing_remedy(h: History) -> dict[str, object]:
    """A change to the model that it does not have already: a non-saturating activation for a sigmoid or tanh
    network; for a ReLU one (whose units may be dead, passing no gradient back) a leaky ReLU; and the init,
    normalisation or residual connections in any case."""
    acts = _activations(h)
    structural = "add normalisation (BatchNorm/LayerNorm) or residual connections"
    if acts & {"sigmoid", "tanh", "hardtanh", "softsign"}:
        return {"action": "change_model", "activation": "relu", "init": "kaiming", "or": structural}
    if "relu" in acts and "leaky_relu" not in acts:
        return {"action": "change_model", "activation": "leaky_relu", "init": "kaiming",
                "or": structural + "; a lower learning rate if the units died after large steps"}
    if acts:  # already non-saturating, with no dead units to revive
        return {"action": "change_model", "init": "kaiming", "or": structural}
    return {"action": "change_model", "init": "kaiming",
            "or": f"a non-saturating activation (relu) if it uses sigmoid or tanh; {structural}"}


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
                        {"action": "clip_norm", "max_norm": statistics.median(grads) if grads else 1.0})]
    window = spike_window(h.meta.get("batch_size"))
    spike = find_spike(grads, window)
    if spike is not None:
        peak, before = spike
        i = peaks(h.steps, "grad_norm").index(peak)
        return [Finding("exploding_gradients", "warning", step_at(h, i),
                        {"grad_norm_peak": peak, "grad_norm_before": before, "window": window},
                        f"the gradient norm jumped to {peak:.3g}, {peak / before:.0f}x its mean over the {window} "
                        "steps before: a few steps are far larger than the rest",
                        {"action": "clip_norm", "max_norm": 2 * before})]
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
        if "leaky_relu" in _activations(h):  # some of its layers have it already: the rest could too
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
                        {"action": "standardize", "init": "xavier", "or": "smaller inputs or weights, normalisation"})]
    return []


@detector("gradient_noise")
def _gradient_noise(h: History) -> list[Finding]:
    snr, scale = finite(column(h.steps, "grad_snr")), finite(column(h.steps, "noise_scale"))
    ema = finite(smooth_loss(h))
    if len(snr) < 3 or len(ema) < 20:
        return []
    half = snr[len(snr) // 2:]
    start, end = start_loss(h), ema[-1]
    tail = ema[len(ema) // 2:]
    stalled = abs(tail[-1] - tail[0]) <= 0.05 * abs(tail[0])
    if statistics.median(half) < 0.1 and stalled and end > 0.2 * start:
        batch = int(h.meta.get("batch_size") or 1)
        samples = int(h.meta.get("samples") or batch)
        target = int(min(samples, max(2 * batch, statistics.median(scale[len(scale) // 2:]) if scale else 2 * batch)))
        return [Finding("gradient_noise", "warning", step_at(h, len(ema) // 2),
                        {"grad_snr": statistics.median(half), "noise_scale": statistics.median(scale) if scale else
                         None, "batch_size": batch, "loss": end},
                        f"noise dominates the steps: the mini-batch gradient's signal-to-noise ratio is "
                        f"{statistics.median(half):.2g} and the loss stalled at {end:.3g}; the batch is too small "
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


@detector("overfitting")
def _overfitting(h: History) -> list[Finding]:
    val, train = column(h.epochs, "val_loss"), column(h.epochs, "train_loss")
    pairs = [(i, v, t) for i, (v, t) in enumerate(zip(val, train)) if math.isfinite(v) and math.isfinite(t)]
    if len(pairs) < 4:
        return []
    best_i, best_v, best_t = min(pairs, key=lambda p: p[1])
    last_i, last_v, last_t = pairs[-1]
    if last_i - best_i >= 3 and last_v > 1.2 * best_v and last_t < 0.9 * best_t:
        epoch = int(column(h.epochs, "epoch")[best_i]) if "epoch" in h.epochs else best_i + 1
        return [Finding("overfitting", "warning", int(column(h.epochs, "step")[best_i]) if "step" in h.epochs else None,
                        {"best_val_loss": best_v, "best_epoch": epoch, "val_loss": last_v, "train_loss": last_t},
                        f"the validation loss rose from {best_v:.3g} (epoch {epoch}) to {last_v:.3g} while the "
                        "training loss kept falling: the model memorises the training data",
                        {"action": "early_stop", "patience": 3, "or": "weight_decay 1e-4, more data, a smaller model"})]
    return []


@detector("not_learning")
def _not_learning(h: History) -> list[Finding]:
    losses = finite(column(h.steps, "loss"))
    if len(losses) < 10:
        return []
    start, end = start_loss(h), finite(smooth_loss(h))[-1]
    classes = h.meta.get("num_classes")
    chance = math.log(classes) if h.meta.get("task") == "classification" and classes and classes > 1 else None
    at_chance = chance is not None and abs(end - chance) <= 0.05 * chance and start <= 1.1 * chance
    if end >= 0.95 * start or at_chance:
        lr = last_lr(h)
        level = f"chance level (ln {classes} = {chance:.3g})" if at_chance else f"its start ({start:.3g})"
        return [Finding("not_learning", "error", step_at(h, len(losses) - 1),
                        {"start_loss": start, "loss": end, "chance_loss": chance, "lr": lr},
                        f"the loss stayed at {level}: the model is not learning",
                        {"action": "lr_find", "or": "check the data, the labels and the learning rate"})]
    return []
