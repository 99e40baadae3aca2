"""Learning-rate schedules: functions of the step count ``t`` (from 0) giving the value at that step.

Any transform hyperparameter accepts one. ``one_cycle`` also carries the inverse momentum cycle
(``.momentum``); ``reduce_on_plateau`` is driven by a metric the loop passes to its ``step(metric)``.
:func:`parse` reads the CLI's ``--schedule`` text.

Example:
    >>> s = linear_warmup(2, cosine(0.1, total_steps=10))
    >>> [round(s(t), 4) for t in range(4)]
    [0.05, 0.075, 0.1, 0.0976]
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gdlab.errors import InvalidParameter, UnknownChoice, check_number

__all__ = ["Schedule", "constant", "step", "exponential", "cosine", "linear_warmup", "one_cycle", "OneCycle",
           "ReduceOnPlateau", "reduce_on_plateau", "parse", "SCHEDULES"]

Schedule = Callable[[int], float]


def _positive(name: str, value: float) -> None:
    check_number(value, name, above=0)


def constant(value: float) -> Schedule:
    """value at every step."""
    _positive("lr", value)
    return lambda t: value


def step(lr: float, every: int, gamma: float = 0.1) -> Schedule:
    """lr * gamma^(t // every), as torch.optim.lr_scheduler.StepLR."""
    _positive("lr", lr)
    _positive("every", every)
    _positive("gamma", gamma)
    return lambda t: lr * gamma ** (t // every)


def exponential(lr: float, gamma: float) -> Schedule:
    """lr * gamma^t, as ExponentialLR."""
    _positive("lr", lr)
    _positive("gamma", gamma)
    return lambda t: lr * gamma**t


def cosine(lr: float, total_steps: int, final: float = 0.0) -> Schedule:
    """final + (lr - final) * (1 + cos(pi * t / total_steps)) / 2, as CosineAnnealingLR (Loshchilov & Hutter
    2017); holds ``final`` after ``total_steps``."""
    _positive("lr", lr)
    _positive("total_steps", total_steps)
    return lambda t: final + (lr - final) * (1 + math.cos(math.pi * min(t, total_steps) / total_steps)) / 2


def linear_warmup(steps: int, then: Schedule, start_factor: float | None = None) -> Schedule:
    """A linear ramp from ``start_factor * then(0)`` to ``then(0)`` over ``steps`` steps, then ``then`` (from its
    own step 0), as SequentialLR(LinearLR(start_factor, total_iters=steps), then, milestones=[steps]).
    ``start_factor`` defaults to 1 / steps."""
    _positive("warmup steps", steps)
    factor = 1 / steps if start_factor is None else start_factor
    if not 0 < factor <= 1:
        raise InvalidParameter("start_factor", factor, "a number in (0, 1]")
    return lambda t: then(0) * (factor + (1 - factor) * t / steps) if t < steps else then(t - steps)


class OneCycle:
    """The 1cycle policy (Smith & Topin 2019), as OneCycleLR with cosine annealing: the lr rises from
    max_lr / div_factor to max_lr over ``pct_start`` of the steps, then falls to that start / final_div_factor;
    ``momentum`` runs the inverse cycle, from max_momentum down to base_momentum and back."""

    def __init__(self, max_lr: float, total_steps: int, *, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95) -> None:
        _positive("max_lr", max_lr)
        _positive("total_steps", total_steps)
        if not 0 < pct_start < 1:
            raise InvalidParameter("pct_start", pct_start, "a fraction strictly between 0 and 1")
        start = max_lr / div_factor
        self.rise_end = float(pct_start * total_steps) - 1
        self.total = total_steps
        self.lrs = (start, max_lr, start / final_div_factor)
        self.momenta = (max_momentum, base_momentum, max_momentum)

    def _at(self, t: int, values: tuple[float, float, float]) -> float:
        if t <= self.rise_end:
            return _anneal(values[0], values[1], t / self.rise_end)
        return _anneal(values[1], values[2], (t - self.rise_end) / (self.total - 1 - self.rise_end))

    def __call__(self, t: int) -> float:
        return self._at(t, self.lrs)

    def momentum(self, t: int) -> float:
        """The momentum (or Adam's beta1) at step t."""
        return self._at(t, self.momenta)


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def one_cycle(max_lr: float, total_steps: int, **options: float) -> OneCycle:
    """See :class:`OneCycle`."""
    return OneCycle(max_lr, total_steps, **options)


class ReduceOnPlateau:
    """lr times ``factor`` when the metric has not improved by a relative ``threshold`` for ``patience`` calls
    to :meth:`step`, as ReduceLROnPlateau (mode min, relative threshold)."""

    def __init__(self, lr: float, *, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0) -> None:
        _positive("lr", lr)
        if not 0 < factor < 1:
            raise InvalidParameter("factor", factor, "a number in (0, 1)")
        self.lr, self.factor, self.patience, self.threshold = lr, factor, patience, threshold
        self.cooldown, self.min_lr = cooldown, min_lr
        self.best, self.bad, self.cooling = math.inf, 0, 0

    def step(self, metric: float) -> None:
        """Feed the latest value of the watched metric (validation loss, usually)."""
        if metric < self.best * (1 - self.threshold):
            self.best, self.bad = metric, 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        if self.bad > self.patience:
            self.lr = max(self.lr * self.factor, self.min_lr)
            self.cooling, self.bad = self.cooldown, 0

    def __call__(self, t: int) -> float:
        return self.lr


def reduce_on_plateau(lr: float, **options: float) -> ReduceOnPlateau:
    """See :class:`ReduceOnPlateau`."""
    return ReduceOnPlateau(lr, **options)  # type: ignore[arg-type]


SCHEDULES = ("constant", "step:EVERY:GAMMA", "exponential:GAMMA", "cosine", "one_cycle", "plateau",
             "warmup:N,<schedule>")


def parse(text: str, lr: float, total_steps: int) -> Schedule:
    """Read ``--schedule`` text: ``cosine``, ``step:EVERY:GAMMA``, ``exponential:GAMMA``, ``one_cycle``,
    ``plateau``, ``constant``, or ``warmup:N,<one of those>``."""
    head, _, rest = text.strip().partition(",")
    name, *args = head.split(":")

    def number(i: int, cast: Callable[[str], float]) -> float:
        try:
            return cast(args[i])
        except ValueError:
            raise UnknownChoice("schedule", text, SCHEDULES) from None

    shapes = {"constant": 0, "cosine": 0, "one_cycle": 0, "plateau": 0, "step": 2, "exponential": 1, "warmup": 1}
    if name not in shapes or len(args) != shapes[name] or bool(rest) != (name == "warmup"):
        raise UnknownChoice("schedule", text, SCHEDULES)
    if name == "warmup":
        steps = int(number(0, int))
        return linear_warmup(steps, parse(rest, lr, max(total_steps - steps, 1)))
    if name == "step":
        return step(lr, int(number(0, int)), number(1, float))
    if name == "exponential":
        return exponential(lr, number(0, float))
    made: dict[str, Callable[[], Schedule]] = {
        "constant": lambda: constant(lr),
        "cosine": lambda: cosine(lr, total_steps),
        "one_cycle": lambda: one_cycle(lr, total_steps),
        "plateau": lambda: reduce_on_plateau(lr),
    }
    return made[name]()
