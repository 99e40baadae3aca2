"""The learning-rate probe: short runs from where a run stands, one per candidate learning rate, trained as one
population (:func:`gdlab.population.train`) on the same batches, each judged by its loss over its last steps.

A remedy that moves the learning rate by a fixed factor per check (x3 when the steps are small) takes many checks
to cross decades: a run started at 1e-6 needs eight of them to reach 7e-3. A probe crosses them in one move: it
copies the run's parameters (and buffers: BatchNorm's running statistics) into one member per candidate, the
run's own learning rate among them, and trains every member the same few steps on the same batches, drawn from
the run's training data. Each batch is one no member has trained on yet (one pass over the drawn samples), so a
member's batch losses over its last quarter of steps measure where its learning rate has taken it on unseen
samples; the run takes the best learning rate only when that beats the run's own by a margin.

The probe leaves the run as it was: the members are copies; the samples are drawn by
:meth:`~gdlab.data.source.Source.sample` with its own generator; the global random number generators (which
population seeding and dropout draw from) are restored afterwards. So the run's data order and its randomness
are those of the run without the probe. The members start with a fresh optimizer state (populations build their
own) and train without a clip or schedule the run may have.

Example:
    >>> [f"{lr:.3g}" for lr in probe_grid(1e-6, "sgd", points=4)]  # 3x the lr or more, to the top of sgd's range
    ['0.0001', '0.00464', '0.215', '10']
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gdlab import population
from gdlab.errors import ModelError
from gdlab.optim import OPTIMIZERS
from gdlab.problem import LOSSES

__all__ = ["PROBE_STEPS", "PROBE_POINTS", "Probe", "choose", "probe_grid", "probe_steps", "probe_lr"]

PROBE_STEPS = 40
"""The most steps a probe trains each candidate (fewer on a short run: :func:`probe_steps`)."""

PROBE_POINTS = 8
"""Candidate learning rates a probe tries besides the run's own."""


@dataclass
class Probe:
    """What a probe tried and what it found.

    Attributes:
        lrs: the learning rates tried, the run's own first.
        losses: each one's mean batch loss over its last quarter of steps (inf where it diverged).
        chosen: the learning rate taken (:func:`choose`), or None when none beat the run's own by the margin.
        steps: the steps each candidate trained. from_step: the run's step it started from.
        samples: the training samples its batches were drawn from.
        seconds: wall-clock time of the probe. vectorized: trained as one vmapped computation (else the members
            one after another, where vmap cannot serve the model).

    Example:
        >>> Probe([1e-6, 0.1, 1.0], [2.3, 0.41, math.inf], 0.1, 40, 900, 1280, 0.2, True).describe()
        'probed lr 0.1..1 (2 values, 40 steps each from step 900): chose 0.1 (loss 0.41 vs 2.3 at 1e-06)'
    """

    lrs: list[float]
    losses: list[float]
    chosen: float | None
    steps: int
    from_step: int
    samples: int
    seconds: float
    vectorized: bool

    @property
    def best(self) -> int:
        """The index of the lowest loss (the run's own, 0, when every candidate diverged)."""
        return min(range(len(self.losses)), key=lambda i: (self.losses[i], i))

    def describe(self) -> str:
        """One sentence: the range tried, the steps, and the choice against the run's own learning rate."""
        tried = self.lrs[1:] or self.lrs[:1]
        span = f"{min(tried):.3g}..{max(tried):.3g}" if len(tried) > 1 else f"{tried[0]:.3g}"
        values = f"{len(tried)} value{'s' if len(tried) > 1 else ''}"
        text = f"probed lr {span} ({values}, {self.steps} steps each from step {self.from_step}): "
        own = f"{self.losses[0]:.3g} at {self.lrs[0]:.3g}"
        best = self.best
        if self.chosen is not None:
            i = self.lrs.index(self.chosen)
            text += f"chose {self.chosen:.3g} (loss {self.losses[i]:.3g} vs {own}"
            if i != best:
                text += f"; {self.lrs[best]:.3g} reached {self.losses[best]:.3g}, a larger step for little more"
            return text + ")"
        if best == 0:
            return text + f"none beat the run's own (loss {own})"
        return text + (f"kept the run's own: the best, {self.lrs[best]:.3g} (loss {self.losses[best]:.3g}), did "
                       f"not beat it by enough (loss {own})")

    def to_dict(self) -> dict[str, Any]:
        """The probe as plain data (what a remedy's params keep; a diverged candidate's loss is None)."""
        return {"lrs": self.lrs, "losses": [v if math.isfinite(v) else None for v in self.losses],
                "chosen": self.chosen, "steps": self.steps, "from_step": self.from_step, "samples": self.samples,
                "seconds": self.seconds, "vectorized": self.vectorized}


def probe_grid(lr: float, optimizer: str, *, points: int = PROBE_POINTS, ceiling: float = math.inf) -> list[float]:
    """Candidates above ``lr``: up to ``points`` learning rates log-spaced from 3x ``lr`` (or the bottom of the
    optimizer's range, if higher) to the top of its range (``OPTIMIZERS[optimizer].lr_range``), none above
    ``ceiling``, at least half a decade (~3.2x) apart; empty when there is no room.

    Example:
        >>> probe_grid(0.5, "sgd"), probe_grid(0.5, "sgd", ceiling=1.0), probe_grid(3.0, "sgd")
        ([1.5, 10.0], [1.0], [9.0])
        >>> probe_grid(10.0, "sgd")
        []
    """
    low, high = OPTIMIZERS[optimizer].lr_range
    top = min(high, ceiling)
    start = max(3 * lr, low)
    if top <= lr or points < 1:
        return []
    if start >= top:
        return [top]
    span = math.log10(top) - math.log10(start)
    count = min(points, 1 + math.floor(span / 0.5 + 1e-9))
    if count == 1:
        return [start]
    return [10 ** (math.log10(start) + i * span / (count - 1)) for i in range(count)]


def probe_steps(total_steps: int) -> int:
    """How many steps a probe trains each candidate: a tenth of the run, between 10 and :data:`PROBE_STEPS`.

    Example:
        >>> probe_steps(360), probe_steps(50), probe_steps(10_000)
        (36, 10, 40)
    """
    return max(10, min(PROBE_STEPS, total_steps // 10))


def probe_lr(state: Any, optimizer: str, lrs: Sequence[float], *, steps: int = PROBE_STEPS,
             margin: float = 0.1) -> Probe:
    """Probe ``lrs`` from where the run in ``state`` stands (a :class:`~gdlab.loop.LoopState`).

    Args:
        state: the run: its model (copied, left untouched), optimizer (its first group's hyperparameters besides
            the learning rate: momentum, betas, eps, weight decay, Nesterov), batch plan, loss, device, step and
            seed, and ``sample``, which draws the training samples.
        optimizer: the run's optimizer by name (a key of ``gdlab.optim.OPTIMIZERS``).
        lrs: the candidates; the run's own learning rate is tried first, besides them.
        steps: the steps each candidate trains, at the run's batch size (a full-batch run's probe takes its steps
            on up to 4096 drawn samples).
        margin: how much lower than the run's own loss the best must be for a choice (0.1: 10%; see
            :func:`choose`).

    Returns:
        The :class:`Probe`. The global random number generators are as they were before.
    """
    started = time.perf_counter()
    own = float(state.optimizer.param_groups[0]["lr"])
    tried = [own, *[float(lr) for lr in lrs if lr != own]]
    plan = state.plan
    full = plan.mode == "full"
    n = min(plan.samples, 4096 if full else steps * plan.batch_size)  # one pass: every batch unseen
    seed = (state.seed * 1_000_003 + state.step) % 2**31  # the probe's own draw: a new one at each step
    data = state.sample(n, seed)
    hyper = {"lr": tried, **_options(optimizer, state.optimizer.param_groups[0])}
    loss = state.loss_name if state.loss_name == "model" or state.loss_fn is LOSSES.get(state.loss_name or "") \
        else state.loss_fn
    one = copy.deepcopy(state.model)  # vmap stacks the members' tensors: one copy can stand for them all
    settings: dict[str, Any] = dict(seeds=[seed] * len(tried), optimizer=optimizer, hyper=hyper,
                                    batch_size="full" if full else plan.batch_size, steps=steps, loss=loss,
                                    device=state.device, shared_order=True, progress=False,
                                    target_key=state.target_key)
    with _generators_kept():
        try:
            pop = population.train(lambda: one, data, vectorize=True, **settings)
        except ModelError as error:
            if "vmap cannot train" not in str(error):
                raise
            # one by one, each member trains its own copy in place
            pop = population.train(lambda: copy.deepcopy(one), data, vectorize=False, **settings)
    last = pop.losses[-max(1, pop.steps // 4):]  # [steps, members]: NaN once a member diverged
    losses = [math.inf if d is not None or not bool(torch.isfinite(last[:, i]).all()) else float(last[:, i].mean())
              for i, d in enumerate(pop.diverged_at)]
    return Probe(tried, losses, choose(tried, losses, margin=margin), pop.steps, state.step, n,
                 time.perf_counter() - started, pop.vectorized)


def choose(lrs: Sequence[float], losses: Sequence[float], *, margin: float = 0.1,
           share: float = 0.9) -> float | None:
    """The learning rate a probe takes, or None to keep the run's own (``lrs[0]``, with ``losses[0]``).

    The best loss must beat the run's own by ``margin`` (10%). Then the smallest learning rate that gets
    ``share`` (90%) of the best one's gain over the run's own is taken: a short probe favours large learning
    rates (their noise and instability show later), so of two that did about as well, the smaller is safer.

    Example:
        >>> choose([1e-5, 0.1, 0.4, 2.0], [0.74, 0.46, 0.31, 0.28])   # 0.4 gets 93% of 2.0's gain
        0.4
        >>> choose([0.1, 0.3, 1.0], [0.50, 0.47, 0.48]) is None      # 6% better: not enough
        True
    """
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    own, low = losses[0], losses[best]
    if best == 0 or not math.isfinite(low) or low >= (1 - margin) * own:
        return None
    enough = low + (1 - share) * (own - low) if math.isfinite(own) else low * (2 - share)
    return min(lr for lr, value in zip(lrs[1:], losses[1:]) if value <= enough)


def _options(optimizer: str, group: dict[str, Any]) -> dict[str, Any]:
    """The run's hyperparameters besides the learning rate, as ``gdlab.optim.make`` takes them (a remedy may
    have changed them: momentum turned on for a plateau)."""
    defaults = OPTIMIZERS[optimizer].defaults
    out: dict[str, Any] = {}
    for key in ("momentum", "eps", "weight_decay", "nesterov"):
        if key in defaults and key in group:
            out[key] = group[key]
    if "betas" in defaults and "betas" in group:
        out["beta1"], out["beta2"] = (float(b) for b in group["betas"])
    return out


@contextlib.contextmanager
def _generators_kept() -> Iterator[None]:
    """The global random number generators (CPU and CUDA) as they were, whatever ran inside."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
