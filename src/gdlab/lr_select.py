"""Choosing the learning rate: the range test (Smith 2017) and ``lr="auto"`` (a short parallel sweep).

The lecture says the learning rate is "found by experiment": too large diverges, too small stalls. The range
test raises the learning rate exponentially over one short run and watches the loss; :func:`select_lr` trains a
population over a log grid on a fraction of the budget and keeps the winner.

Example:
    >>> import torch
    >>> X = torch.randn(256, 4); y = X @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]])
    >>> model = torch.nn.Linear(4, 1)
    >>> before = [p.clone() for p in model.parameters()]
    >>> found = lr_find(model, (X, y), num_iter=60, progress=False)
    >>> sorted(found.suggestions), all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    (['min/10', 'steepest', 'valley'], True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdlab import loop, optim, population
from gdlab.config import Config
from gdlab.errors import InvalidParameter, check_int
from gdlab.loop import Callback, LoopState, Snapshot
from gdlab.problem import Problem, resolve_device
from gdlab.records import EMA

__all__ = ["lr_find", "LRFindResult", "select_lr", "LRSelection", "GRIDS", "GRID_POINTS", "HALVING", "PROBE_SPAN",
           "probe_suggestion"]

GRIDS = optim.LR_RANGES
"""The learning-rate range ``lr="auto"`` searches, per optimizer: its record's ``lr_range`` (``gdlab.optim``)."""

GRID_POINTS = 18
HALVING = ((0.1, 5), (0.3, 3))
"""Successive halving of ``lr="auto"``: (share of the budget, learning rates kept). 3 finalists from 30% of the
budget, not 2 from 50%: on moons a large learning rate's validation loss is at its roughest mid-run (the lr that
ends best ranked 4th of 5 at 50% on the README's example) and three finalists cost what two did (4.9 trainings
against 4.8); docs/benchmarks.md, "lr_select, issue 28"."""


@dataclass
class LRFindResult:
    """What :func:`lr_find` returns.

    Attributes:
        lrs, losses: the learning rate and batch loss of every step taken.
        smoothed: the bias-corrected moving average of the losses.
        suggestions: ``steepest`` (where the smoothed loss falls fastest against log lr), ``valley`` (halfway
            down the descent to the lowest smoothed loss, after fastai's valley rule), ``min/10`` (a tenth of
            the lr at the lowest smoothed loss).
        warnings: why the curve may not be trusted (flat, noisy, stopped at once, never rose).
        stopped: why the test ended (diverged, or the ramp was done).
        optimizer: the optimizer the suggestions are for; options: its hyperparameters (defaults filled in).
        probe: the short population probe of the valley (:func:`probe_suggestion`): ``lrs``, ``losses``, ``steps``,
            ``best``, ``agrees``; None when it was not run.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float]
    warnings: list[str]
    stopped: str
    optimizer: str = "sgd"
    extra: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] | None = None

    def plot(self, path: str | Path) -> Path:
        """The curve (raw and smoothed loss against lr, log scale) with the suggestions marked, as a PNG."""
        from gdlab.plots import plot_lr_find

        return plot_lr_find(self, path)

    def _repr_html_(self) -> str:  # Jupyter: the suggestions, the warnings and the curve
        from gdlab.notebook import lr_find_html

        return lr_find_html(self)


def _bar(total: int) -> Any:
    from gdlab.progress import TaskBar  # an edge: rich only when a bar is wanted

    return TaskBar("lr range test", total)


class _RangeTest(Callback):
    """The range test as a hook on :func:`gdlab.loop.run`: before each step's forward pass its learning rate on
    the exponential ramp; after the step its loss (read on the host: one sync a step, as every range test reads
    it), the moving average, and the stop rule: a loss that is not finite, or the smoothed loss past ``diverge``
    times its best. The ramp's end is the loop's: ``num_iter`` steps."""

    def __init__(self, start_lr: float, end_lr: float, num_iter: int, *, beta: float, diverge: float,
                 bar: Any = None) -> None:
        self.start_lr, self.ratio, self.last = start_lr, end_lr / start_lr, num_iter - 1
        self.diverge, self.bar = diverge, bar
        self.average, self.best = EMA(beta), math.inf
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped: str | None = None
        """Why the hook stopped the test (None: it did not)."""

    def lr(self, i: int) -> float:
        """The learning rate of step ``i`` (0-based)."""
        return self.start_lr * self.ratio ** (i / self.last)

    def on_step_start(self, state: LoopState) -> None:
        lr = self.lr(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr

    def on_step_end(self, state: LoopState) -> None:
        value, lr = state.loss, self.lr(state.step - 1)
        if not math.isfinite(value):
            self._stop(state, f"the loss became {value} at lr {lr:.3g}")
            return
        smooth = self.average.update(value)
        self.lrs.append(lr)
        self.losses.append(value)
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if self.bar is not None:
            self.bar.update(state.step, f"lr {lr:.2e}  loss {smooth:.4g}")
        if smooth > self.diverge * self.best:
            self._stop(state, f"the smoothed loss passed {self.diverge:g}x its best at lr {lr:.3g}")

    def on_diverge(self, state: LoopState) -> bool:
        """The loop's own check found the parameters NaN or inf after a step whose loss was finite (the next loss
        would not be): the test ends there, saying so; a loss that was not finite has ended it already."""
        self._stop(state, f"the parameters became NaN or inf at lr {self.lr(state.step - 1):.3g}")
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _stop(self, state: LoopState, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
        state.stop(reason)


@contextmanager
def _put_back(model: nn.Module, optimizer: Any, device: torch.device) -> Iterator[None]:
    """Everything the range test changes, put back as it was when it ends, also when it fails: the parameters and
    buffers, and a given optimizer's state with its learning rates (:class:`gdlab.loop.Snapshot`), the gradients,
    the device, each module's train or eval mode and the random number generators (the CPU's, and the GPUs')."""
    given = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    place = next((p.device for p in model.parameters()), None)
    kept = Snapshot()
    kept.take(model, given)
    grads = [(p, p.grad.detach().clone() if p.grad is not None else None) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    gpus = list(range(torch.cuda.device_count())) if device.type == "cuda" or torch.cuda.is_initialized() else []
    with torch.random.fork_rng(gpus):
        try:
            yield
        finally:
            if place is not None:
                model.to(place)
            kept.restore(model, given, keep_lrs=False)  # the optimizer's state after the parameters' move
            for p, grad in grads:
                p.grad = grad
            for m, training in modes:
                m.training = training


def lr_find(
    model: nn.Module,
    train: Any,
    *,
    optimizer: optim.OptimizerSpec = Config.optimizer,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    batch_size: int | str = 32,
    loss: Any = "auto",
    seed: int = 0,
    device: str | torch.device = "auto",
    beta: float = 0.95,
    diverge: float = 4.0,
    progress: bool = True,
    target_key: str | None = None,
    probe: bool = True,
    **optimizer_options: Any,
) -> LRFindResult:
    """The learning-rate range test: ``num_iter`` steps with the lr raised exponentially from ``start_lr`` to
    ``end_lr``, stopping when the smoothed loss passes ``diverge`` times its best. The steps are
    :func:`gdlab.loop.run`'s (the ramp and the stop rule are a hook on it); the model, an optimizer passed in, the
    modules' modes and the random number generators are restored exactly afterwards.

    Args:
        optimizer: a name (its other hyperparameters from ``optimizer_options``) or a torch optimizer; by default
            ``fit``'s and ``gdlab train``'s (momentum), so the suggestions fit the run that follows.
        beta: the smoothing of the moving average of the loss.
        probe: check the valley with a short population probe (:func:`probe_suggestion`; a named optimizer only):
            when a learning rate trained from the start does clearly better, a warning says so and which to trust.
        The rest: as for :func:`gdlab.fit`.
    """
    start_lr = optim.check_lr(start_lr, "start_lr")
    end_lr = optim.check_lr(end_lr, "end_lr")
    if end_lr <= start_lr:
        raise InvalidParameter("end_lr", end_lr, f"a learning rate above start_lr={start_lr:g}")
    check_int(num_iter, "num_iter", least=5)
    if not 0 <= beta < 1:
        raise InvalidParameter("beta", beta, "a number in [0, 1)")
    if not diverge > 1:
        raise InvalidParameter("diverge", diverge, "a number > 1")
    dev = resolve_device(device)
    with _put_back(model, optimizer, dev):
        problem = Problem.make(model, train, loss=loss, batch_size=batch_size, device=dev, target_key=target_key)
        state = LoopState.start(problem, optim.make(optimizer, model.parameters(), lr=start_lr, **optimizer_options),
                                total_steps=num_iter, seed=seed)
        test = _RangeTest(start_lr, end_lr, num_iter, beta=beta, diverge=diverge,
                          bar=_bar(num_iter) if progress else None)
        torch.manual_seed(seed)
        try:
            # the hook reads every step's loss and stops the test itself: the loop's periodic check (a read of the
            # parameters' norms and a snapshot) is not wanted, only its check at each epoch's end remains
            loop.run(problem, state, [test], log_every=num_iter + 1, grad_norms=False)
        finally:
            test.close()
    stopped = test.stopped or state.stop_reason or f"the ramp reached end_lr={end_lr:g}"
    lrs, losses, smoothed = test.lrs, test.losses, test.smoothed
    suggestions, warnings = _suggest(lrs, losses, smoothed, stopped, num_iter)
    name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    options: dict[str, Any] = {}
    if isinstance(optimizer, str):  # the settings the suggestions are for: the optimizer's defaults filled in
        given = {k: v for k, v in optimizer_options.items() if k != "clip_norm"}
        options = {**optim.hyperparams(optimizer, lr=start_lr, **given),
                   **({"clip_norm": optimizer_options["clip_norm"]} if optimizer_options.get("clip_norm") else {})}
    found = LRFindResult(lrs, losses, smoothed, suggestions, warnings, stopped, name, options=options)
    if probe and isinstance(optimizer, str) and "valley" in suggestions:  # the model is back at its start
        found.probe = probe_suggestion(model, train, suggestions["valley"], optimizer=optimizer, steps=num_iter,
                                       batch_size=batch_size, loss=loss, seed=seed, device=dev,
                                       target_key=target_key, **optimizer_options)
        if not found.probe["agrees"]:
            found.warnings.append(found.probe["note"])
    return found


PROBE_SPAN = tuple(10 ** (k / 3) for k in range(-3, 4))
"""The learning rates of :func:`probe_suggestion`, as multiples of the suggestion: a decade each way, 2.15x apart."""


def probe_suggestion(model: nn.Module, train: Any, lr: float, *, optimizer: str, steps: int,
                     batch_size: int | str = 32, loss: Any = "auto", seed: int = 0, device: str | torch.device = "auto",
                     target_key: str | None = None, tolerance: float = 0.1, **options: Any) -> dict[str, Any]:
    """Train ``lr`` and its neighbours (``lr`` times :data:`PROBE_SPAN`) for ``steps`` steps from ``model``'s
    parameters (left untouched) as one population, on the data order of ``seed``, and compare: each is ranked by its
    mean batch loss over the last tenth of the steps (diverged: inf). The probe ``agrees`` unless another learning
    rate ends more than ``tolerance`` (10%) below ``lr``; ``note`` says so, and which to trust.

    The range test judges a learning rate by the loss while the lr ramps through it, a loss that carries the steps
    taken at smaller ones and lags behind (the moving average); the probe trains each lr from the start, as a run
    does, so where they disagree the probe is the one to trust for a run of about ``steps`` steps (a longer run
    often wants a smaller lr than a short probe finds: ``lr="auto"`` tunes at the run's own length).

    Example:
        >>> X = torch.randn(256, 4); y = X @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]])
        >>> probed = probe_suggestion(torch.nn.Linear(4, 1), (X, y), 1e-4, optimizer="sgd", steps=40)
        >>> probed["agrees"], probed["best"] > 1e-4      # 1e-4 learns almost nothing in 40 steps
        (False, True)
    """
    lrs = [lr * factor for factor in PROBE_SPAN]
    start = copy.deepcopy(model)
    pop = population.train(lambda: copy.deepcopy(start), train, seeds=[seed] * len(lrs), optimizer=optimizer,
                           hyper={"lr": lrs, **options}, batch_size=batch_size, steps=steps, loss=loss,
                           device=device, progress=False, target_key=target_key)
    tail = pop.losses[-max(1, pop.steps // 10):]  # [last steps, members]
    scores = [math.inf if d is not None or not math.isfinite(v) else v
              for v, d in zip(tail.nanmean(0).tolist(), pop.diverged_at)]
    at = PROBE_SPAN.index(1.0)
    best = min(range(len(lrs)), key=lambda i: scores[i])
    agrees = best == at or scores[at] <= (1 + tolerance) * scores[best]
    edge = " (the end of its span: an lr further out may do better still)" if best in (0, len(lrs) - 1) else ""
    note = (f"the suggestion lr {lr:.3g} disagrees with a short population probe: {len(lrs)} learning rates from "
            f"{lrs[0]:.3g} to {lrs[-1]:.3g}, each trained {pop.steps} steps from the same start, ended best at lr "
            f"{lrs[best]:.3g} (loss {scores[best]:.4g}, against {scores[at]:.4g} at the suggestion){edge}; trust the "
            "probe: it trained each lr from the start, as a run does, where the range test's loss at an lr carries "
            "the steps at smaller ones; for a run much longer than the probe, lr='auto' tunes at its length")
    return {"lrs": lrs, "losses": scores, "steps": pop.steps, "best": lrs[best], "agrees": agrees,
            "note": "" if agrees else note}


def _suggest(lrs: list[float], losses: list[float], smoothed: list[float], stopped: str,
             num_iter: int) -> tuple[dict[str, float], list[str]]:
    warnings: list[str] = []
    n = len(smoothed)
    if n < 5:
        return {}, [f"the test stopped after {n} steps ({stopped}): start_lr is too large or the model diverges "
                    "at once; lower start_lr"]
    # leave out the first steps (the average is still warming up) and the last ones (the blow-up)
    lo, hi = min(n // 10, 10), max(n - max(n // 20, 2), min(n // 10, 10) + 3)
    xs = [math.log10(v) for v in lrs[lo:hi]]
    ys = smoothed[lo:hi]
    slopes = [(ys[min(i + 1, len(ys) - 1)] - ys[max(i - 1, 0)]) / (xs[min(i + 1, len(xs) - 1)] - xs[max(i - 1, 0)])
              for i in range(len(ys))]
    steepest = lrs[lo + min(range(len(slopes)), key=lambda i: slopes[i])]
    lowest = min(range(n), key=lambda i: smoothed[i])
    suggestions = {"steepest": steepest, "valley": lrs[_valley(smoothed)], "min/10": lrs[lowest] / 10}
    drop = (smoothed[0] - smoothed[lowest]) / max(abs(smoothed[0]), 1e-12)
    if drop < 0.05:
        warnings.append(f"the loss hardly fell ({drop:.1%} below its start): the curve is flat; widen the range "
                        "(start_lr, end_lr), train longer (num_iter) or check the model and data")
    # batch-to-batch noise: the spread of successive differences of the raw loss on the way down (differences
    # cancel the trend that a residual from the lagging average would count as noise)
    down = losses[lo : max(lowest, lo + 3) + 1]
    diffs = [b - a for a, b in zip(down, down[1:])]
    mean = sum(diffs) / max(len(diffs), 1)
    noise = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1) / 2)
    fall = smoothed[0] - smoothed[lowest]
    if fall > 0 and noise > fall:
        warnings.append(f"the loss is noisy (batch-to-batch spread {noise:.3g} against a fall of {fall:.3g}): "
                        "the suggestions are uncertain; use a larger batch_size or more num_iter")
    if "ramp" in stopped and smoothed[-1] <= 1.5 * smoothed[lowest]:
        warnings.append("the loss never rose: end_lr may be too small to show where training breaks down")
    return suggestions, warnings


def _valley(smoothed: list[float]) -> int:
    """Halfway down the valley: on the descent (from where the loss has fallen by a tenth of its total fall, to
    its lowest point), the middle of the longest decreasing subsequence. fastai's valley rule takes the longest
    decreasing subsequence of the whole curve; restricting it to the descent keeps a long, flat and noisy start
    (where the smoothed loss drifts down by hair's breadths) from winning."""
    n = len(smoothed)
    lowest = min(range(n), key=lambda i: smoothed[i])
    fall = smoothed[0] - smoothed[lowest]
    begin = 0
    for i in range(lowest, -1, -1):
        if smoothed[i] >= smoothed[0] - 0.1 * fall:
            begin = i
            break
    segment = smoothed[begin : lowest + 1]
    length = [1] * len(segment)
    start = list(range(len(segment)))
    best_end = 0
    for i in range(1, len(segment)):
        for j in range(i):
            if segment[i] < segment[j] and length[j] + 1 > length[i]:
                length[i], start[i] = length[j] + 1, start[j]
        if length[i] > length[best_end]:
            best_end = i
    first = start[best_end]
    return begin + first + (best_end - first) // 2


# -- lr="auto" ---------------------------------------------------------------------------------------------------


@dataclass
class LRSelection:
    """What :func:`select_lr` chose and why.

    Attributes:
        lr: the chosen learning rate. method: ``sweep`` or ``range-test``.
        tried: for the sweep, one dict per learning rate tried: ``lr``, ``loss`` (at ``steps``: a learning rate cut
            by successive halving has its loss from the step it was cut, not comparable with the finalists'),
            ``diverged``, ``steps``.
        reason: one sentence on why the winner won.
        cost: the work spent, in full trainings (member steps / the run's steps).
    """

    lr: float
    method: str
    tried: list[dict[str, Any]]
    reason: str
    cost: float

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "method": self.method, "tried": self.tried, "reason": self.reason,
                "cost": self.cost}


def select_lr(
    model: nn.Module,
    train: Any,
    *,
    optimizer: str = "momentum",
    method: str = "sweep",
    total_steps: int,
    batch_size: int | str = 32,
    val: Any = None,
    loss: Any = "auto",
    seed: int = 0,
    device: str | torch.device = "auto",
    grid: Sequence[float] | None = None,
    halving: Sequence[tuple[float, int]] = HALVING,
    progress: bool = False,
    target_key: str | None = None,
    workers: int = 1,
    **options: Any,
) -> LRSelection:
    """Choose a learning rate for ``model`` (left untouched) before a run of ``total_steps`` steps.

    ``method="sweep"``: successive halving over a log grid (``GRIDS[optimizer]``, 18 points, about 1.8x apart),
    trained as one population from the model's own initial point with the run's own data order: after 10% of
    the budget the 5 best continue, after 30% the 3 best, which train to the end (:data:`HALVING`); a cut ranks
    by the median of the last validation losses (the one at the cut and two epochs' before it:
    :func:`gdlab.population.members.halving_score`; one evaluation at a large lr is too noisy to rank by), and the
    winner has the lowest validation loss at the end (the last epoch's training loss without validation data;
    diverged members lose), which the run that follows reproduces. The cost is 18 x 0.1 + 5 x 0.2 + 3 x 0.7 = 4.9
    trainings, plus the run itself. The final ranking is made at the full budget because a short run favours the
    wrong learning rate (on the benchmark problems the best lr at 10% of the budget ended up to 15x worse at
    100%). A model vmap cannot serve (an LSTM) is trained one learning rate at a time with the same cuts, so it
    costs the same 4.9 trainings, not 18.
    ``method="range-test"``: the valley suggestion of :func:`lr_find`.

    ``workers``: under ``torchrun``, the number of ranks the sweep's learning rates are spread over
    (:func:`gdlab.population.train`); at each cut the ranks gather every member's score, so the cuts and the choice
    are one process's. The range test is not spread (every rank runs it alike).
    """
    if method not in ("sweep", "range-test"):
        raise InvalidParameter("lr_select", method, "sweep or range-test")
    if method == "range-test":
        if not isinstance(optimizer, str):
            raise InvalidParameter("optimizer", optimizer, "a name, for lr='auto'")
        found = lr_find(copy.deepcopy(model), train, optimizer=optimizer, batch_size=batch_size, loss=loss,
                        seed=seed, device=device, progress=progress, target_key=target_key, **options)
        if "valley" not in found.suggestions:
            raise InvalidParameter("lr", "auto", "a range test that trains: " + "; ".join(found.warnings))
        lr = found.suggestions["valley"]
        note = f" ({'; '.join(found.warnings)})" if found.warnings else ""
        return LRSelection(lr, "range-test", [{"lr": a, "loss": b} for a, b in zip(found.lrs, found.smoothed)],
                           f"the valley rule of the range test over {len(found.lrs)} steps{note}",
                           len(found.lrs) / max(total_steps, 1))
    if optimizer not in GRIDS:
        raise InvalidParameter("optimizer", optimizer, f"a named optimizer for lr='auto' ({', '.join(GRIDS)})")
    low, high = GRIDS[optimizer]
    lrs = list(grid) if grid is not None else [
        10 ** (math.log10(low) + i * (math.log10(high) - math.log10(low)) / (GRID_POINTS - 1))
        for i in range(GRID_POINTS)]
    milestones: list[tuple[int, int]] = []
    for share, keep in halving:
        at = max(1, round(share * total_steps))
        if at < total_steps and (not milestones or at > milestones[-1][0]):
            milestones.append((at, keep))

    def model_fn() -> nn.Module:
        return copy.deepcopy(model)

    pop = population.train(model_fn, train, seeds=[seed] * len(lrs), optimizer=optimizer,
                           hyper={"lr": lrs, **options}, batch_size=batch_size, steps=total_steps, val=val, loss=loss,
                           device=device, progress=progress, halving=milestones, target_key=target_key,
                           workers=workers)
    scores = pop.score()
    pruned = pop.pruned_at or [None] * len(lrs)
    tried = [{"lr": lr_, "loss": None if math.isinf(sc) else sc, "diverged": d is not None,
              "steps": p if p is not None else (d if d is not None else pop.steps)}
             for lr_, sc, d, p in zip(lrs, scores, pop.diverged_at, pruned)]
    finalists = [i for i, p in enumerate(pruned) if p is None and math.isfinite(scores[i])]
    if not finalists:
        raise InvalidParameter("lr", "auto", f"a learning rate that trains: every lr from {lrs[0]:.2g} to "
                               f"{lrs[-1]:.2g} diverged; check the data and the model")
    i = min(finalists, key=lambda k: scores[k])
    what = "validation" if val is not None else "training"
    cuts = ", ".join(f"{keep} kept after {at} steps" for at, keep in milestones)
    how = f"by successive halving over {len(lrs)} learning rates from {lrs[0]:.2g} to {lrs[-1]:.2g} ({cuts})"
    if not pop.vectorized:
        how += f", trained one by one (vmap cannot serve this model: {pop.notice})"
    reason = f"lowest {what} loss ({scores[i]:.4g}) after all {pop.steps} steps, {how}"
    return LRSelection(float(lrs[i]), "sweep", tried, reason, pop.member_steps / max(total_steps, 1))
