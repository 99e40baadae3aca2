"""The doctor's callback: findings when a run ends and, with ``remedy="auto"``, remedies during it.

A divergence (a non-finite loss, or the smoothed loss blowing up) is met at once by :meth:`Doctor.on_diverge`:
roll back to the last good point and lower the learning rate. Every half epoch (at least 10 steps) the doctor
reads the steps since its last check into one :class:`Window` and tries the remedy rules of
:data:`REMEDY_RULES` in order; the first that acts ends the check. A rule is a function
``(doctor, state, window) -> bool`` (True when it acted); it acts through the doctor's public actions
(:meth:`Doctor.set_lr`, :meth:`Doctor.raise_lr`, :meth:`Doctor.roll_back`, :meth:`Doctor.restart`,
:meth:`Doctor.set_momentum`, :meth:`Doctor.clip_gradients`, :meth:`Doctor.take_snapshot`, :meth:`Doctor.probe`),
each of which records a :class:`~gdlab.doctor.findings.Remedy` (the snapshot excepted), and reads its counts and
limits from its public attributes.

Example:
    >>> [rule.__name__ for rule in REMEDY_RULES][:3]
    ['undo_failed_raise', 'rollback_when_loss_rises', 'restart_when_stuck']
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gdlab.config import check_settings
from gdlab.doctor.findings import Finding, Remedy, diagnose, run_settings
from gdlab.doctor.probe import Probe, probe_grid, probe_lr, probe_steps
from gdlab.doctor.series import column, find_spike, spike_window
from gdlab.doctor.story import Diagnosis, explain
from gdlab.loop import Callback, LoopState, Snapshot
from gdlab.optim import OPTIMIZERS
from gdlab.records import EMA, finite

__all__ = ["Doctor", "Window", "Rule", "REMEDY_RULES", "clip_before_step", "undo_failed_raise",
           "rollback_when_loss_rises", "restart_when_stuck", "raise_small_steps", "halve_when_noisy", "clip_spikes",
           "add_momentum_on_plateau", "keep_good_point"]


@dataclass(frozen=True)
class Window:
    """What one check reads from the steps since the last one, computed once for every rule.

    The medians are NaN over an empty list, so a comparison with them is False (nothing measured, no action).
    """

    size: int  # the steps (rows) in the window
    mean_loss: float  # over the window's finite losses
    previous: float | None  # the previous window's mean loss
    best_before: float  # the best window mean loss before this one
    raised_from: float | None  # the mean loss before a raise of the learning rate that this window judges
    first: float  # the mean loss of the run's opening steps
    lr: float  # the learning rate now (the first parameter group's)
    median_ratio: float  # of the update ratios |step| / |weights|
    median_snr: float  # of the mini-batch gradient's signal-to-noise ratios
    grads: list[float]  # the finite gradient norms
    median_grad: float
    peak_grad: float  # the largest gradient norm so far, this window's included (-inf before any)
    dead: float  # the latest share of dead ReLU units measured: this window's, else an earlier one's
    opening_grad: float | None  # the largest gradient norm of the run's first steps, once they are recorded
    spread: float = 0.0  # the standard deviation of the window's per-step losses: the batch-to-batch noise

    @property
    def noise_band(self) -> float:
        """How far one window's mean loss strays from another's by batch-to-batch noise alone: three standard
        errors of the difference of two window means."""
        return 3 * self.spread * math.sqrt(2 / max(self.size, 1))

    @property
    def stuck(self) -> bool:
        """The loss is still at its start."""
        return self.mean_loss >= 0.95 * self.first

    @property
    def noisy(self) -> bool:
        """Noise dominates the steps: larger ones would only add noise."""
        return self.median_snr < 0.5

    @property
    def settled(self) -> bool:
        """The gradient fell to a few percent of its peak: a minimum, where small steps are right."""
        return self.median_grad < 0.05 * self.peak_grad

    @property
    def stalled(self) -> bool:
        """The loss fell by under 3% since the previous window."""
        return self.previous is not None and self.mean_loss > 0.97 * self.previous

    @property
    def flat(self) -> bool:
        """The loss moved by at most 1% since the previous window."""
        return self.previous is not None and abs(self.previous - self.mean_loss) <= 0.01 * abs(self.previous)


Rule = Callable[["Doctor", Any, Window], bool]


def _median(values: list[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


# -- the rules, in the order they are tried -----------------------------------------------------------------------
# The first two judge the window against the past and undo it when it went wrong; the rest treat what it shows.


def undo_failed_raise(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """The guard of a raise: if the window after raising the learning rate did worse, roll back and lower it to
    a third, which also caps later raises."""
    if w.raised_from is None or not w.mean_loss > 1.02 * w.raised_from:  # worse beyond window-to-window noise
        return False
    doctor.raise_cap = w.lr / 3
    doctor.roll_back(state, w.lr, w.lr / 3,
                     f"the steps after raising the learning rate did worse ({w.mean_loss:.3g} > "
                     f"{w.raised_from:.3g}): rolled back and lowered it again", counted=False)
    return True


def rollback_when_loss_rises(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """The loss climbs back up: 50% above the best window, by more than the batch-to-batch noise explains
    (:attr:`Window.noise_band`) and by more than 2% of the starting loss (near a minimum the loss's ups and downs
    are large multiples of a tiny number); the steps are too large to settle: roll back and take a learning rate
    0.3x, at most ``max_lr_cuts`` times a run."""
    rise = w.mean_loss - w.best_before
    if not (w.mean_loss > 1.5 * w.best_before and rise > w.noise_band and rise > 0.02 * abs(w.first) and
            doctor.has_snapshot and doctor.rollbacks < doctor.max_rollbacks and doctor.lr_cuts < doctor.max_lr_cuts):
        return False
    doctor.lr_cuts += 1
    lr = w.lr
    doctor.roll_back(state, lr, lr * 0.3,
                     f"the loss rose from {w.best_before:.3g} to {w.mean_loss:.3g}: rolled back to the last good "
                     f"point and lowered the learning rate {lr:.3g} -> {lr * 0.3:.3g}")
    return True


def restart_when_stuck(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """Not learning after large steps (most ReLU units killed, or a rollback that was not enough while the
    steps are not small, so large and useless): start over from the initial point, learning rate 0.1x."""
    moving = w.median_ratio >= 1e-3
    if not (w.stuck and (w.dead > 0.5 or (doctor.rollbacks and moving)) and doctor.can_restart and
            doctor.rollbacks < doctor.max_rollbacks):
        return False
    lr = w.lr
    why = f"{w.dead:.0%} of the ReLU units are dead" if w.dead > 0.5 else "after lowering the learning rate"
    doctor.restart(state, lr, lr * 0.1,
                   f"the loss is still at its start ({w.mean_loss:.3g}), {why}: back to the initial point, "
                   f"learning rate {lr:.3g} -> {lr * 0.1:.3g}")
    return True


def raise_small_steps(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """The steps change the weights by under 1e-3 of their size, the loss is far from its floor, and neither
    noise nor a settled minimum explains it: raise the learning rate, after a snapshot. Where the run can be
    probed (a named optimizer), in one move: a probe (:func:`~gdlab.doctor.probe.probe_lr`) trains learning rates
    from 3x the run's to the top of the optimizer's range a few steps from here, and the run takes the one
    :func:`~gdlab.doctor.probe.choose` picks, if any beat its own (a probe's verdict, either way, stands for two
    epochs; after ``max_probes`` probes the rule rests). Otherwise (an optimizer object, or a probe that failed)
    x3 per check, within the ceilings. The next window judges the raise (:func:`undo_failed_raise`)."""
    if not (w.median_ratio < 1e-3 and w.mean_loss > 0.2 * w.first and not w.noisy and not w.settled):
        return False
    why = f"the steps change the weights by {w.median_ratio:.2g} of their size (about 1e-3 is usual)"
    if doctor.can_probe(state):
        if doctor.probe_rests(state):
            return False  # the last probe's verdict stands
        probed = doctor.probe(state, probe_grid(w.lr, doctor.optimizer or "", ceiling=doctor.raise_cap))
        if probed is not None:
            return doctor.take_probe(state, probed, w, why)
    lr = w.lr
    if not lr * 3 <= doctor.raise_limit:
        return False
    doctor.raise_lr(state, lr * 3, f"{why}: raised the learning rate {lr:.3g} -> {lr * 3:.3g}",
                    judged_against=w.mean_loss)
    return True


def halve_when_noisy(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """Noise dominates the steps and the loss stalled: halve the learning rate."""
    if not (w.noisy and w.stalled and w.mean_loss > 0.2 * w.first):
        return False
    lr = w.lr
    doctor.set_lr(state, lr * 0.5, f"noise dominates the steps (gradient SNR {w.median_snr:.2g}) and the loss stalled "
                  f"at {w.mean_loss:.3g}: halved the learning rate {lr:.3g} -> {lr * 0.5:.3g}")
    return True


def clip_spikes(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """A gradient-norm spike in the window (:func:`~gdlab.doctor.series.find_spike`): clip the norm to twice
    the mean before it, from now on (once per run)."""
    if doctor.clipping or not w.grads or w.opening_grad is None:
        return False
    window = spike_window(state.plan.batch_size)
    # this window's norms and the ``window`` before them, which the first of them is measured against
    recent = finite(column(state.history.steps, "grad_norm")[-(w.size + window):])
    spike = find_spike(recent, window, len(recent) - len(w.grads), w.opening_grad)
    if spike is None:
        return False
    peak, before = spike
    doctor.clip_gradients(state, 2 * before,
                          f"the gradient norm jumped to {peak:.3g}, {peak / before:.0f}x its mean over the {window} "
                          f"steps before: clipping it to {2 * before:.3g} from now on")
    return True


def add_momentum_on_plateau(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """A plateau (the loss flat and well above its start's half, the gradient under a fifth of its peak, the
    units alive) under an optimizer with momentum 0: momentum 0.9 crosses it faster."""
    # w.grads not empty makes peak_grad finite
    if not (w.flat and w.grads and max(w.grads) < 0.2 * w.peak_grad and w.mean_loss > 0.5 * w.first and
            w.dead <= 0.5):
        return False
    group = state.optimizer.param_groups[0]
    if "momentum" not in group or group["momentum"]:
        return False
    doctor.set_momentum(state, 0.9, "a plateau (the loss flat, the gradient small): added momentum 0.9 to cross it "
                        "faster")
    return True


def keep_good_point(doctor: Doctor, state: LoopState, w: Window) -> bool:
    """Nothing to treat: when the loss is near its best, snapshot the model as the last good point to roll back
    to. Records no remedy, so it never ends the check."""
    if w.mean_loss <= 1.5 * min(doctor.best_loss, w.first):
        doctor.take_snapshot(state)
    return False


UNDO_RULES: tuple[Rule, ...] = (undo_failed_raise, rollback_when_loss_rises)
TREATMENTS: tuple[Rule, ...] = (restart_when_stuck, raise_small_steps, halve_when_noisy, clip_spikes,
                                add_momentum_on_plateau, keep_good_point)
REMEDY_RULES: tuple[Rule, ...] = UNDO_RULES + TREATMENTS
"""Every rule, in the order a check tries them."""


# -- the callback -------------------------------------------------------------------------------------------------



def clip_before_step(optimizer: Any, max_norm: float) -> Callable[[], None]:
    """Clip the gradients' global norm to ``max_norm`` before each of ``optimizer``'s steps: its ``step`` is
    wrapped (the model and the optimizer's own chain are left as they are). Returns what unwraps it.

    Example:
        >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.0)
        >>> unwrap = clip_before_step(opt, 1.0)
        >>> model(torch.full((1, 2), 100.0)).sum().backward(); opt.step()
        >>> round(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()), 4); unwrap()
        1.0
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    original = optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return original(*args, **kwargs)

    optimizer.step = step

    def unwrap() -> None:
        optimizer.step = original

    return unwrap

class Doctor(Callback):
    """The callback ``fit`` attaches: findings at the end; with ``mode="auto"``, remedies during the run.

    Args:
        mode: ``off`` (findings only), ``suggest`` (findings with their remedies; the default) or ``auto``.
        max_rollbacks: how often a divergence may be rolled back before the run stops.
        lr_ceiling: how far ``auto`` may raise the learning rate by x3 steps (a multiple of the starting one);
            a probe's choice is bounded by the optimizer's learning-rate range instead (it was measured).
        optimizer: the run's optimizer by name (``fit`` passes it): with it, ``auto`` can probe learning rates
            (:mod:`gdlab.doctor.probe`); without it (an optimizer object), it moves them in fixed steps.
        max_probes: how many probes a run may have.
        max_lr_cuts: how often a rising loss (not a divergence) may be rolled back with a lower learning rate.

    Example:
        >>> Doctor("auto").mode, Doctor().remedies
        ('auto', [])
    """

    def __init__(self, mode: str = "suggest", *, max_rollbacks: int = 10, lr_ceiling: float = 1e4,
                 optimizer: str | None = None, max_probes: int = 3, max_lr_cuts: int = 3) -> None:
        self.mode = check_settings(remedy=mode)["remedy"]  # the one check of the settings (gdlab.config)
        self.max_rollbacks = max_rollbacks
        self.lr_ceiling = lr_ceiling
        self.optimizer = optimizer if optimizer in OPTIMIZERS else None
        self.max_probes = max_probes
        self.max_lr_cuts = max_lr_cuts
        self.lr_cuts = 0  # the rollbacks of a rising loss so far (at most max_lr_cuts)
        self._probes = 0
        self._probe_after = 0  # no probe before this step: the last one's verdict stands
        self._probe_failed: str | None = None  # why probing stopped (an error), if it did
        self.findings: list[Finding] = []
        self.remedies: list[Remedy] = []
        self._snapshot: Snapshot | None = None  # the last good point (the loop's kind: gdlab.loop.Snapshot)
        self.rollbacks = 0  # the counted rollbacks so far (at most max_rollbacks)
        self.start_lr = math.nan  # the first parameter group's learning rate when the run started
        self._raised_at: float | None = None  # the mean loss before the last raise, for its guard
        self._smooth: EMA | None = None  # the per-step loss's moving average, over about 256 samples
        self._best = math.inf
        self._first: float | None = None  # the mean loss over the opening window
        self._opening: list[float] = []
        self._origin: Snapshot | None = None
        self._window_start = self._window_step = 0
        self._previous: float | None = None
        self.raise_cap = math.inf  # a raise of the learning rate that failed caps the later ones
        self._last_rollback = -math.inf
        self._judged = 0  # the history's rows whose loss on_step_end has judged
        self._best_window = math.inf
        self._clip: tuple[Any, Any] | None = None
        self._dead = 0.0  # the latest share of dead ReLU units measured
        self._peak_grad = -math.inf
        self._opening_grad: float | None = None  # the largest gradient norm of the first steps

    # -- what a rule reads ------------------------------------------------------------------------------------
    @property
    def has_snapshot(self) -> bool:
        """Whether there is a last good point to roll back to (:meth:`take_snapshot`)."""
        return self._snapshot is not None

    @property
    def can_restart(self) -> bool:
        """Whether the initial point is kept (``auto``, with snapshots): :meth:`restart` can go back to it."""
        return self._origin is not None

    @property
    def clipping(self) -> bool:
        """Whether the gradients are clipped from now on (:meth:`clip_gradients`, once per run)."""
        return self._clip is not None

    @property
    def best_loss(self) -> float:
        """The best smoothed per-step loss so far (inf before one counts)."""
        return self._best

    @property
    def raise_limit(self) -> float:
        """The highest learning rate a raise in fixed steps may reach: ``lr_ceiling`` times the starting one,
        and under :attr:`raise_cap` once a raise failed."""
        return min(self.lr_ceiling * self.start_lr, self.raise_cap)

    # -- the actions a rule takes: each records its remedy (the snapshot excepted) -------------------------------
    def diagnosis(self, *, run_id: str | None = None, steps: int | None = None) -> Diagnosis:
        """The findings so far as causes and consequences (:func:`gdlab.doctor.explain`), with the remedies applied.

        Example:
            >>> Doctor().diagnosis(run_id="r1", steps=10).causes
            []
        """
        return explain(self.findings, run_id=run_id, remedies=self.remedies, steps=steps)

    def take_snapshot(self, state: LoopState) -> None:
        """Keep the model's and the optimizer's state, in memory, as the last good point to roll back to."""
        if self._snapshot is None:
            self._snapshot = Snapshot()
        self._snapshot.take(state.model, state.optimizer)

    def set_lr(self, state: LoopState, lr: float, reason: str, **details: Any) -> None:
        """Set the learning rate to ``lr`` (every parameter group scaled alike) and record a ``set_lr`` remedy
        (``details``: more of its parameters, as a probe's).

        Example:
            >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> from types import SimpleNamespace; state = SimpleNamespace(optimizer=opt, step=7)
            >>> doctor = Doctor("auto"); doctor.set_lr(state, 0.05, "noisy")
            >>> opt.param_groups[0]["lr"], doctor.remedies[0].params
            (0.05, {'lr': 0.05, 'from_lr': 0.1})
        """
        from_lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        self._set(state, "lr", lr)
        self._act(state, "set_lr", {"lr": lr, "from_lr": from_lr, **details}, reason)

    def raise_lr(self, state: LoopState, lr: float, reason: str, *, judged_against: float, **details: Any) -> None:
        """Raise the learning rate to ``lr`` after a snapshot (:meth:`set_lr`); the next window judges the raise
        against ``judged_against``, the mean loss before it (:func:`undo_failed_raise`)."""
        self.take_snapshot(state)
        self.set_lr(state, lr, reason, **details)
        self._raised_at = judged_against

    def roll_back(self, state: LoopState, lr: float, new: float, reason: str, *, counted: bool = True) -> None:
        """Back to the snapshot with learning rate ``new`` (from ``lr``), recorded as a ``rollback_and_set_lr``
        remedy; ``counted`` rollbacks are limited by ``max_rollbacks``.

        Example:
            >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> from types import SimpleNamespace; state = SimpleNamespace(model=model, optimizer=opt, step=3)
            >>> doctor = Doctor("auto"); doctor.take_snapshot(state)
            >>> with torch.no_grad(): _ = model.weight.fill_(float("nan"))
            >>> doctor.roll_back(state, 0.1, 0.01, "diverged")
            >>> bool(model.weight.isfinite().all()), opt.param_groups[0]["lr"], doctor.rollbacks
            (True, 0.01, 1)
        """
        self._restore(state)
        self._dead = 0.0  # what was measured of the weights left behind says nothing of those restored
        self._set(state, "lr", new)
        if counted:
            self.rollbacks += 1
        self._act(state, "rollback_and_set_lr", {"lr": new, "from_lr": lr}, reason)

    def restart(self, state: LoopState, lr: float, new: float, reason: str) -> None:
        """Back to the initial point (it becomes the snapshot) with learning rate ``new``: :meth:`roll_back`."""
        self._snapshot = copy.deepcopy(self._origin)
        self.roll_back(state, lr, new, reason)

    def set_momentum(self, state: LoopState, momentum: float, reason: str) -> None:
        """Set the momentum of every parameter group that has one, recorded as a ``set_momentum`` remedy."""
        self._set(state, "momentum", momentum)
        self._act(state, "set_momentum", {"momentum": momentum}, reason)

    def clip_gradients(self, state: LoopState, max_norm: float, reason: str) -> None:
        """Clip the gradient's global norm to ``max_norm`` before every later step (:func:`clip_before_step`,
        undone when the run ends), recorded as a ``clip_norm`` remedy."""
        self._install_clipping(state, max_norm)
        self._act(state, "clip_norm", {"max_norm": max_norm}, reason)

    # the actions' workings (a subclass changes an action by overriding its public method: watch's doctor
    # overrides take_snapshot and roll_back)

    def _restore(self, state: LoopState) -> None:
        assert self._snapshot is not None
        self._snapshot.restore(state.model, state.optimizer)  # the learning rates stay as they are now

    def _install_clipping(self, state: LoopState, max_norm: float) -> None:
        self._clip = (state.optimizer, clip_before_step(state.optimizer, max_norm))

    def _set(self, state: LoopState, key: str, value: float) -> bool:
        """Set ``key`` to ``value`` in the first group; a learning rate scales every group alike (param groups
        keep their own ratios, as a "lower lr for the backbone" recipe wants)."""
        groups = state.optimizer.param_groups
        first = groups[0].get(key) if groups else None
        changed = False
        for g in groups:
            if key in g:
                scaled = key == "lr" and isinstance(first, (int, float)) and first > 0 and g is not groups[0]
                g[key] = g[key] * value / first if scaled else value
                changed = True
        return changed

    def _act(self, state: LoopState, action: str, params: dict[str, Any], reason: str) -> None:
        self.remedies.append(Remedy(state.step, action, params, reason))

    def can_probe(self, state: LoopState) -> bool:
        """Whether learning rates can be probed from ``state``: ``auto``, a named optimizer, training data to
        draw from (``state.sample``), and no probe has failed."""
        return self.mode == "auto" and self.optimizer is not None and self._probe_failed is None and \
            getattr(state, "sample", None) is not None

    def probe_rests(self, state: LoopState) -> bool:
        """Whether the last probe's verdict still stands (two epochs after it), or the run has had ``max_probes``."""
        return state.step < self._probe_after or self._probes >= self.max_probes

    def probe(self, state: LoopState, lrs: list[float]) -> Probe | None:
        """Probe ``lrs`` (and the run's own) from here; None when there is nothing to probe or it failed (then
        probing stops for the run, and the fixed steps take over)."""
        if not lrs or self.optimizer is None:
            return None
        try:
            found = probe_lr(state, self.optimizer, lrs, steps=probe_steps(state.total_steps))
        except Exception as error:  # the run goes on without probes, and says why
            self._probe_failed = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            self._act(state, "probe_lr", {"lr": state.optimizer.param_groups[0]["lr"], "failed": self._probe_failed},
                      f"the learning-rate probe failed ({self._probe_failed}): no more probes in this run")
            return None
        self._probes += 1
        self._probe_after = state.step + 4 * self._cadence(state)  # two epochs (four checks, at least 40 steps)
        return found

    def take_probe(self, state: LoopState, found: Probe, w: Window, why: str) -> bool:
        """Act on a probe: take its learning rate (:meth:`raise_lr`: after a snapshot; the next window judges it),
        or record that the run's own stood. True: the check is over either way (the probe was an action)."""
        params = {"probe": found.to_dict()}
        if found.chosen is None:
            self._act(state, "probe_lr", {"lr": w.lr, **params}, f"{why}: {found.describe()}")
            return True
        self.raise_lr(state, found.chosen, f"{why}: {found.describe()}", judged_against=w.mean_loss, **params)
        return True

    def on_fit_start(self, state: LoopState) -> None:
        self.start_lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        if self.mode == "auto":
            self.take_snapshot(state)
            self._origin = copy.deepcopy(self._snapshot)

    def on_step_end(self, state: LoopState) -> None:
        """With ``auto``: a loss blowing up (the smoothed loss above 4x its best, a best under 2% of the start
        counting as 2% of it, or 5x its start) is a divergence too. The smoothing spans about 256 samples, so one
        sample's large loss (batch 1) is not mistaken for it.

        The losses are judged at the loop's batched reads, never by a read of their own: each call judges the rows
        whose loss the loop has read since the last (those before :class:`~gdlab.loop.StepLog`'s pending rows;
        :meth:`~gdlab.records.Table.peek` reads them without a fetch). A loop without a batched log (its loss on
        the host already) is judged step by step."""
        if self.mode != "auto":
            return
        log = getattr(state, "log", None)
        if log is None:
            loss = state.loss
            if math.isfinite(loss):
                self._judge_loss(state, loss, state.step)
            return
        table = state.history.steps
        stop = log.rows[0] if log.rows else len(table)
        self._judged = min(self._judged, len(table))  # the loop's rollback truncated the history
        if stop <= self._judged:
            return
        start, self._judged = self._judged, stop
        acted = len(self.remedies)
        for loss, step in zip(table.peek("loss", start, stop), table.peek("step", start, stop)):
            rolled = math.isfinite(loss) and self._judge_loss(state, loss, int(step) if math.isfinite(step) else
                                                              state.step)
            if rolled or len(self.remedies) > acted:  # the doctor acted now: the rows not yet judged were trained
                self._judged = len(table)  # before it, and would be judged against what it changed; the next
                self._window_step = max(self._window_step, state.step)  # window is one trained after it, whole
                return

    def _judge_loss(self, state: LoopState, loss: float, step: int) -> bool:
        """One step's loss (read by the loop) into the smoothed loss and the checks; True when it rolled back."""
        window = max(10, 256 // max(state.plan.batch_size, 1))
        if self._first is None:
            # the starting loss: the first batch's when batches are large enough to trust one, else the mean over
            # the opening ~256 samples
            self._opening.append(loss)
            if state.plan.batch_size >= 16 or len(self._opening) >= window:
                self._first = statistics.fmean(self._opening)
        if self._smooth is None:
            self._smooth = EMA(1 - 1 / window)
        smooth = self._smooth.update(loss)
        since = step - max(self._last_rollback, 0)
        if since >= window:
            self._best = min(self._best, smooth)
        first = self._first if self._first is not None else statistics.fmean(self._opening)
        # 4x a best near zero is noise, not a blow-up: the best counts as at least 2% of the start
        blown = (since >= 2 * window and smooth > 4 * max(self._best, 0.02 * abs(first))) or \
            (since >= 5 and smooth > 5 * first)
        if blown:
            reference = min(self._best, first)
            if self.on_diverge(state, why=f"the smoothed loss blew up to {smooth:.3g}, {smooth / reference:.3g}x "
                                          "its best"):
                self._smooth = None  # the average starts again from the restored point
                self._window_start, self._window_step = len(state.history.steps), state.step
                return True
            return False
        if step - self._window_step >= self._cadence(state):
            self._window_step = step
            self._check(state)
        return False

    def needs_step(self, step: int) -> bool:
        """Whether ``step`` needs :meth:`on_step_end` on its own (:func:`gdlab.watch`'s lane): every step with
        ``auto`` (it watches the smoothed loss), none otherwise."""
        return self.mode == "auto"

    def next_needed(self, step: int) -> float:
        """The first step from ``step`` on that :meth:`needs_step` (inf: none)."""
        return step if self.mode == "auto" else math.inf

    def on_steps_end(self, state: LoopState, rows: range) -> None:
        """Steps it need not see one by one (:meth:`needs_step`): nothing to do."""

    @staticmethod
    def _cadence(state: LoopState) -> int:
        return max(10, state.plan.iterations_per_epoch // 2)

    def on_diverge(self, state: LoopState, why: str | None = None) -> bool:
        """The loss became non-finite: with ``auto``, roll back and lower the learning rate; True if it did."""
        if self.mode != "auto" or self._snapshot is None or self.rollbacks >= self.max_rollbacks:
            return False
        lr = float(state.optimizer.param_groups[0].get("lr", math.nan))
        sharp = finite(column(state.history.steps, "sharpness"))
        limit = finite(column(state.history.steps, "stability_limit"))
        soon = state.step - self._last_rollback <= 5  # diverged again right after a rollback: step down faster
        new = lr * (limit[-1] / sharp[-1]) / 2 if sharp and limit and sharp[-1] > 0 else lr * (0.01 if soon else 0.1)
        new = min(new, lr * 0.5)
        self._last_rollback = state.step
        self.roll_back(state, lr, new, f"{why or f'the loss became {state.loss}'} at step {state.step}: rolled "
                                       f"back to the last good point and lowered the learning rate {lr:.3g} -> "
                                       f"{new:.3g}")
        return True

    def _check(self, state: LoopState) -> None:
        """With ``auto``, every half epoch (at least 10 steps): act on what the last window shows, by the first
        rule of :data:`REMEDY_RULES` that acts."""
        w = self._read_window(state)
        if w is None or undo_failed_raise(self, state, w):
            return
        # a window undone by a failed raise is not counted among the best
        self._best_window = min(self._best_window, w.mean_loss)
        if rollback_when_loss_rises(self, state, w):
            return
        # the window stands: its gradients and dead units count in the running values
        self._dead, self._peak_grad = w.dead, w.peak_grad
        for rule in TREATMENTS:
            if rule(self, state, w):
                return

    def _read_window(self, state: LoopState) -> Window | None:
        """The steps since the last check as a :class:`Window` (None without a finite loss or a starting loss);
        moves the check's marks: where the next window starts, the previous mean, a raise awaiting its verdict."""
        h = state.history
        rows = list(h.steps.rows(self._window_start))
        self._window_start = len(h.steps)
        losses = finite([r.get("loss", math.nan) for r in rows])
        if not losses or self._first is None:
            return None
        mean_loss = statistics.fmean(losses)
        previous, self._previous = self._previous, mean_loss
        raised_from, self._raised_at = self._raised_at, None  # a raise is judged by the one window after it
        dead = self._dead
        for r in reversed(rows):  # the latest measurement: a running value, so a check costs its window only
            shares = [v for k, v in r.items() if k.startswith("dead_share/") and math.isfinite(v)]
            if shares:
                dead = max(shares)
                break
        grads = finite([r.get("grad_norm", math.nan) for r in rows])
        spread = statistics.pstdev(losses) if len(losses) > 1 else 0.0
        opening = spike_window(state.plan.batch_size)
        if self._opening_grad is None and len(h.steps) >= opening:
            self._opening_grad = max(finite(column(h.steps, "grad_norm")[:opening]), default=0.0)
        return Window(size=len(rows), mean_loss=mean_loss, previous=previous, best_before=self._best_window,
                      raised_from=raised_from, first=self._first,
                      lr=float(state.optimizer.param_groups[0].get("lr", math.nan)),
                      median_ratio=_median(finite([r.get("update_ratio", math.nan) for r in rows])),
                      median_snr=_median(finite([r.get("grad_snr", math.nan) for r in rows])),
                      grads=grads, median_grad=_median(grads),
                      peak_grad=max(self._peak_grad, max(grads, default=-math.inf)), dead=dead,
                      opening_grad=self._opening_grad, spread=spread)

    def on_fit_end(self, state: LoopState) -> None:
        if self._clip is not None:  # the optimizer is the caller's again, unwrapped
            self._clip[1]()
            self._clip = None
        # the remedies prescribe nothing the run has: its activations and its momentum now (a resumed run's, or
        # one the doctor set)
        state.history.meta.update(run_settings(getattr(state, "model", None), state.optimizer))
        self.findings = diagnose(state.history)
        if self.mode == "off":
            for f in self.findings:
                f.remedy = None
