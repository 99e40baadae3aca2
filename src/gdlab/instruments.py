"""Instruments: small callbacks that measure each step and write the numbers into the run's ``History``.

Each instrument has a cost class:

- ``cheap`` (:class:`Cheap`, every step): the loss's moving average; the gradient norm per layer; the update-to-
  weight ratio per layer and overall; the parameter norm and the distance from the initial point; a non-finite
  flag for loss, gradients and parameters. One host sync per step for all of it.
- ``periodic`` (:class:`Periodic`, every ``every`` steps, on a sub-batch of the step's batch): per-sample gradients
  by ``torch.func`` give the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018,
  https://arxiv.org/abs/1812.06162) and the signal-to-noise ratio of the mini-batch gradient
  |G|^2 / (tr(Sigma) / batch); forward hooks give each activation's share of zero ReLU outputs, of dead units
  (zero for every sample) and of saturated tanh or sigmoid units; backward hooks give the norm of the gradient
  arriving at each layer's output (the lecture's global gradient), last layer to first.
- ``expensive`` (:class:`Expensive`, every ``every`` steps): the largest Hessian eigenvalue (power iteration on
  Hessian-vector products) against the stability limit 2/lr (2(1+beta)/lr with heavy-ball momentum beta), and
  the step size along the update direction (Cockpit's alpha: a 1-D quadratic fitted to the loss and directional
  derivative before and after the step; 0 = the step lands at its minimum, -1 = it barely moved, 1 = it
  overshot to the same height on the other side).

Columns are named ``name`` or ``name/layer`` (layers by their module names, as ``model.named_modules`` gives them;
a model that is itself a layer, a bare ``nn.Linear``, by its class name: ``grad_norm/Linear``).

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 3); y = (X[:, 0] > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = gdlab.fit(model, (X, y), epochs=2, progress=False, instruments="default", doctor=False)
    >>> sorted(k for k in result.history.steps.columns if k.startswith("grad_norm/"))
    ['grad_norm/0', 'grad_norm/2']
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.grad import conv2d_weight

from gdlab import distributed
from gdlab.data import structure
from gdlab.errors import UnknownChoice, check_int
from gdlab.records import EMA

__all__ = ["Instrument", "Cheap", "Periodic", "Expensive", "LEVELS", "attach", "unwrap"]

LEVELS = ("none", "cheap", "default", "full")
"""What ``fit(instruments=...)`` takes: ``default`` is cheap + periodic, ``full`` adds expensive."""

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Instrument:
    """Base: a callback with a ``cost`` class (``cheap``, ``periodic`` or ``expensive``)."""

    cost = "cheap"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its wrappers, ``DistributedDataParallel`` (``.module``) and ``torch.compile``'s
    (``._orig_mod``), in any order: the module whose layers the instruments name and measure.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> unwrap(torch.compile(net)) is net, unwrap(net) is net
        (True, True)
    """
    while True:
        inside = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else \
            getattr(model, "_orig_mod", None)
        if not isinstance(inside, nn.Module):
            return model
        model = inside


def _label(model: nn.Module, path: str) -> str:
    """A layer's name in the columns: its module path (``"0"``, ``"encoder.fc"``), or, for the model itself (a bare
    ``nn.Linear``), its class name."""
    return path or type(model).__name__


def _layers(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters grouped by the module that owns them (``"0"``, ``"2"``, ``"encoder.fc"``...)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    model = unwrap(model)  # "0", not "_orig_mod.0"
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = _label(model, name.rsplit(".", 1)[0] if "." in name else "")
            groups.setdefault(owner, []).append((name, p))
    return groups


class Cheap(Instrument):
    """Every step: the loss's moving average, the gradient norm per layer (from the per-parameter norms the loop
    takes anyway: no extra pass) and a non-finite flag. Every ``every`` steps (20): the update-to-weight ratio per
    layer and overall, the parameter norm and the distance from the start (one copy of the parameters before that
    step, a few norms after it), skipping a turn where that would cost more than ``budget`` of the training time
    so far (1%; with ``every=1``, no limit).

    Nothing waits for the device: the loop's log brings the per-parameter norms to the host with the loss, and
    the measured movements stay on the device; the per-step columns are written in batches when the history is
    next read (:meth:`Table.defer`)."""

    cost = "cheap"

    def __init__(self, beta: float = 0.9, every: int = 20, budget: float | None = None) -> None:
        self.beta, self.every = beta, every
        self.budget_share = budget if budget is not None else (math.inf if every == 1 else 0.01)

    def on_fit_start(self, state: Any) -> None:
        self.params = [p for p in state.model.parameters()]
        groups = _layers(state.model)
        self.names = list(groups)
        position = {id(p): i for i, p in enumerate(self.params)}
        self.members = [[position[id(p)] for _, p in members] for members in groups.values()]
        self.keys = [f"grad_norm/{name}" for name in self.names]
        self.ratio_keys = [f"update_ratio/{name}" for name in self.names]
        with torch.no_grad():
            self.start = [p.detach().clone() for p in self.params]
        self.before: list[Tensor] | None = None
        self.budget = _Budget(self.budget_share)
        self._decisions: dict[int, bool] = {}  # candidate step -> granted by the budget (with keeps_before)
        self.armed = self.every == 1  # the parameters before the next step are kept: measure its movement
        if self.armed:
            self._keep()
        self.average = EMA(self.beta)
        # filed by each step, written into the table in batches by _fill
        self.rows: list[int] = []
        self.moves: list[tuple[int, Tensor]] = []  # (row, [4 * parameters] squared norms) of measured steps
        self.log = getattr(state, "log", None)  # the loop's log: per-parameter gradient norms, read with the loss
        if self.log is not None:
            self.log.keep_param_norms = True
        self.table = state.history.steps
        self.table.defer(self._fill)

    @torch.no_grad()
    def _keep(self) -> None:
        if self.before is None:
            self.before = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.before, [p.detach() for p in self.params])

    def on_step_end(self, state: Any) -> None:
        self.rows.append(len(state.history.steps) - 1)
        if self.armed:
            with self.budget.measure():
                self.moves.append((self.rows[-1], self._movement()))
            self.armed = False
        if not self.keeps_before and (state.step + 1) % self.every == 0 and self.budget.allows(state.step + 1):
            with self.budget.measure():
                self._keep()  # the parameters before the next measured step
            self.armed = True

    # -- in a loop gdlab does not drive (gdlab.watch) ------------------------------------------------------------
    keeps_before = False
    """Whether the loop calls :meth:`before_update` (it sees each update coming: :func:`gdlab.watch`'s optimizer
    step pre-hook): the parameters before a measured step are then kept there, not at the step before's end."""

    def _granted(self, step: int) -> bool:
        """With :attr:`keeps_before`: whether the budget lets ``step`` (a candidate, every ``every``-th) be
        measured, decided at the first ask (the loop asks ahead, to plan its steps) and kept: asked again, the
        answer is the same."""
        decided = self._decisions.get(step)
        if decided is None:
            decided = self._decisions[step] = self.budget.allows(step)
            for past in [s for s in self._decisions if s < step - 2 * self.every]:  # the steps gone by
                del self._decisions[past]
        return decided

    def needs_before(self, step: int) -> bool:
        """Whether :meth:`before_update` is wanted before ``step``'s update: a measured step."""
        return self.every == 1 or (step % self.every == 0 and self._granted(step))

    def next_before(self, step: int) -> int:
        """The first step from ``step`` on that may need :meth:`before_update` (a candidate the budget refuses is
        passed over)."""
        return self.next_needed(step)

    def before_update(self, state: Any, step: int) -> None:
        """Before ``step``'s update (a measured one, :meth:`needs_before`): keep the parameters."""
        if self.every == 1 and not self.budget.allows(step):
            return
        with self.budget.measure():
            self._keep()
        self.armed = True

    def needs_step(self, step: int) -> bool:
        """Whether ``step`` (from 1) needs :meth:`on_step_end` on its own (:func:`gdlab.watch`'s lane): a
        measured step (with :attr:`keeps_before`, one the budget grants), and, unless the parameters are kept
        before the update, the step before each candidate."""
        if self.every == 1:
            return True
        if self.keeps_before:
            return step % self.every == 0 and self._granted(step)
        return step % self.every in (0, self.every - 1)

    def next_needed(self, step: int) -> int:
        """The first step from ``step`` on that :meth:`needs_step` (a candidate the budget refuses is passed over,
        the next one decided when the loop asks from past it)."""
        ahead = step + (-step) % self.every  # the next candidate
        if self.every == 1:
            return step
        if self.keeps_before:
            return ahead if self._granted(ahead) else ahead + self.every
        return ahead - 1 if ahead - 1 >= step else ahead

    def on_steps_end(self, state: Any, rows: range) -> None:
        """A block of steps that needs nothing of it one by one (:meth:`needs_step`): their rows are filed."""
        self.rows += rows

    def _fill(self, table: Any) -> None:
        """Write the filed steps' columns: the loss's moving average, each layer's gradient norm, the flag, and
        the measured steps' movement (one host sync for all of those)."""
        rows, k = self.rows, len(self.params)
        if not rows:
            return
        bad_params = self._write_moves(table)
        # the loop's log, the first filler, wrote the losses; a loop watched without its loss has none (gdlab.watch)
        loss_column = table.columns.get("loss")
        losses = [loss_column[r] for r in rows] if loss_column else [0.0] * len(rows)
        kept = self.log.param_norms if self.log is not None else {}
        # the rows whose per-parameter norms the log took (every row in fit; every k-th in gdlab.watch: the rest
        # stay NaN, not measured)
        measured = [(r, kept.pop(r)) for r in rows if r in kept]
        sums: dict[int, float] = {}
        if measured and k:
            normed = [r for r, _ in measured]
            per_tensor = list(zip(*(v for _, v in measured)))
            for key, members in zip(self.keys, self.members):
                column = per_tensor[members[0]] if len(members) == 1 else \
                    [math.hypot(*v) for v in zip(*(per_tensor[i] for i in members))]
                table.write(key, normed, column)
            # norms are >= 0: an inf or a nan shows in their sum (and a non-finite loss in loss + sum)
            sums = {r: sum(v) for r, v in measured}
        else:  # none measured (yet): the columns read NaN
            for key in self.keys:
                table.write(key, rows, [math.nan] * len(rows))
        if loss_column:
            table.write("loss_ema", rows, self.average.extend(losses))
        isfinite = math.isfinite
        if not bad_params and isfinite(sum(losses) + sum(sums.values())):  # all finite: told in two passes in C
            flags = [0.0] * len(rows)
        else:
            flags = [float(not isfinite(loss + sums.get(row, 0.0)) or row in bad_params)
                     for row, loss in zip(rows, losses)]
        table.write("non_finite", rows, flags)
        self.rows = []

    def _write_moves(self, table: Any) -> set[int]:
        """Write the measured steps' movement columns; the rows whose parameters were not finite."""
        if not self.moves:
            return set()
        rows = [row for row, _ in self.moves]
        values = torch.stack([squares for _, squares in self.moves]).tolist()  # [measured, 4 * parameters]
        self.moves = []
        moved = [self._movement_row(v) for v in values]
        for key in moved[0]:
            table.write(key, rows, [m[key] for m in moved])
        return {row for row, m in zip(rows, moved) if not math.isfinite(m["param_norm"])}

    def close(self) -> None:
        """Write what is filed and stop deferring (at the end of the run, or when it fails)."""
        table = getattr(self, "table", None)
        if table is not None:
            table.undefer(self._fill)

    def on_fit_end(self, state: Any) -> None:
        self.close()

    @torch.no_grad()
    def _movement(self) -> Tensor:
        """Per tensor: |update|, |weight before|, |now - start|, |now| (``[4 * parameters]``, on the device)."""
        assert self.before is not None
        now = [p.detach() for p in self.params]
        delta = torch._foreach_sub(now, self.before)
        moved = torch._foreach_sub(now, self.start)
        return torch.stack(torch._foreach_norm([*delta, *self.before, *moved, *now]))  # one norm call for all four

    def _movement_row(self, norms: list[float]) -> dict[str, float]:
        """The update-to-weight ratios per layer and overall, the parameter norm and the distance from the start."""
        k = len(self.params)
        squares = [v * v for v in norms]
        u2, w2, d2, p2 = (squares[i * k : (i + 1) * k] for i in range(4))
        row: dict[str, float] = {}
        for key, members in zip(self.ratio_keys, self.members):
            layer_w = sum(w2[i] for i in members)
            row[key] = math.sqrt(sum(u2[i] for i in members) / layer_w) if layer_w else math.nan
        row["update_ratio"] = math.sqrt(sum(u2) / sum(w2)) if sum(w2) else math.nan
        row["param_norm"], row["distance"] = math.sqrt(sum(p2)), math.sqrt(sum(d2))
        return row


class _Budget:
    """Spaces an instrument's measurements so that they cost at most ``share`` of the training time so far
    (measured, not guessed): a model where one measurement is dear gets fewer of them. The first ``free`` are
    always granted: a short run still gets the readings its detectors compare (a budget bounds long runs)."""

    def __init__(self, share: float, free: int = 2) -> None:
        self.share, self.free = share, free
        self.spent = 0.0
        self.granted = 0
        self.started = time.perf_counter()

    def allows(self, step: int) -> bool:
        granted = step <= 1 or self.granted < self.free or self.share == math.inf or \
            self.spent <= self.share * (time.perf_counter() - self.started - self.spent)
        self.granted += granted
        return granted

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - start


def _eager(hook: Any) -> Any:
    """A hook that torch.compile leaves out of its graphs (a model compiled with ``torch.compile`` calls its
    layers' hooks from the compiled code): run as written, on the real tensors, where dynamo would otherwise trace
    it and break the graph on the budget's clock."""
    return torch.compiler.disable(hook)


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Measure without leaving a trace: buffers (BatchNorm's running statistics) and the random number generators
    (dropout) are as they were, so a run with instruments is the run without them."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A storage-free copy of ``model`` (on the meta device) to run ``functional_call`` on: copying it again
    per measurement costs nothing, and the user's module is never swapped out."""
    return copy.deepcopy(model).to("meta")


def _math_attention() -> contextlib.AbstractContextManager[Any]:
    """Attention by its plain formula (fused kernels have no second derivative, which sharpness needs)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _functional(template: nn.Module, tensors: dict[str, Tensor]) -> Any:
    """``template`` called with ``tensors`` as its parameters and buffers, taking any arguments."""
    return lambda *args, **kwargs: functional_call(template, tensors, args, kwargs)


def _sub_batch(state: Any, size: int) -> tuple[Any, Tensor] | None:
    """Up to ``size`` samples of the step's batch; when the batch is smaller (stochastic descent), ``size``
    samples drawn from the training data instead (by the step number, so the run's randomness is untouched)."""
    batch = getattr(state, "batch", None)
    if batch is None or batch[1] is None or getattr(state, "forward", None) is None:
        return None  # no batch, or no target or loss to take on it (a loop gdlab does not drive: gdlab.watch)
    x, y = batch
    sample = getattr(state, "sample", None)
    if len(y) < min(size, 16) and sample is not None:
        return sample(min(size, state.plan.samples), state.step)
    return structure.tree_map(lambda t: t[:size], x), y[:size]


class Periodic(Instrument):
    """On the first step, the ``every``-th and then every ``interval``-th (:meth:`scheduled`; ``interval`` fixed once
    after the second measurement so that measuring costs about ``budget`` of the training time, 2%): the gradient
    noise scale and SNR, activation statistics, and the gradient arriving at each layer's output, on up to
    ``sub_batch`` samples.

    Where the step's batch has at least 16 samples, the measurement rides on the step's own forward and backward
    pass (hooks for that one step; no extra pass): activation statistics from the forward hooks, the arriving
    gradients from hooks on the layers' outputs and, when every trained parameter belongs to a ``Linear`` or
    ``Conv2d`` layer and the loss is a mean over samples (the built-in losses), the per-sample gradients' norms
    from each layer's input and output gradient (for ``Linear`` on 2-D inputs, |g_i|^2 = |x_i|^2 |delta_i|^2;
    for the rest, per-sample products). Otherwise (other layers, batch-mixing normalisation, a custom loss, tied
    weights, a model folding positions into the batch's rows) the per-sample gradients come from ``torch.func`` on
    a sub-batch after the step, and smaller batches (stochastic descent) get an extra forward and backward on
    ``sub_batch`` drawn training samples. The step's own pass includes its dropout masks (the noise the step
    really had); the ``torch.func`` pass runs in eval mode, so with dropout the two read somewhat apart."""

    cost = "periodic"
    min_batch = 16

    def __init__(self, every: int = 25, sub_batch: int = 64, budget: float = 0.02) -> None:
        check_int(every, "every", expected="an integer >= 1")
        check_int(sub_batch, "sub_batch", least=2)
        self.every, self.sub_batch, self.budget_share = every, sub_batch, budget
        self.per_sample_failed: str | None = None

    def on_fit_start(self, state: Any) -> None:
        model = unwrap(state.model)  # layers named in the module a torch.compile or DDP wrapper holds
        self.activations = [(_label(model, n), m) for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
        self.layers = [(_label(model, n), m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
        self.params = list(state.model.parameters())
        self.trained: tuple[bool, ...] | None = None  # which parameters train, when factoring was last judged
        self.can_factor = False
        self.owners: set[str] = set()
        self.meta: nn.Module | None = None  # made when first needed
        self.budget = _Budget(self.budget_share)  # ``spent``: the time inside its hooks (benchmarks read it)
        self.interval = self.every  # steps between measurements: ``every`` until fixed by _fix_interval
        self.measured = 0  # measurements taken so far
        self.timing: tuple[float, float] = (0.0, 0.0)  # when the last measured step started and ended
        self.started = 0.0  # when the step being measured started
        self.mean_loss = bool(getattr(state, "mean_loss", False))
        self.unfactorable = False  # seen not to factor (a layer used twice, samples folded into rows): for good
        self.handles: list[Any] = []
        self.due = False
        self.pool: _Pool | None = None  # data-parallel: this step's share of the measured samples (pooled)

    # -- the schedule: which steps are measured (the one place that decides it) -------------------------------
    def scheduled(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) is measured: the first and every ``interval``-th. A function of the
        step alone (a loop may ask ahead: :func:`gdlab.watch` puts its forward hook on those steps only)."""
        return step == 1 or step % self.interval == 0

    def _timed(self, step: int, start: float) -> None:
        """After a measured step: the interval, fixed once from the second measurement (the first warms up),
        so that measuring costs about ``budget`` of the training time: the measured step's whole extra time
        (the hooks, torch's dispatch of them, the reads) against the mean step between the two measurements,
        both by the training thread's CPU time (``time.thread_time``: another process's turn on the core, which
        swung the wall-clock timings tenfold on a loaded machine, counts in neither). Fixed, the schedule
        depends on the step alone, so identical runs measure the same steps (bar a different interval where the
        two timings straddle a power of two)."""
        end = time.thread_time()
        self.measured += 1
        if self.measured == 2 and self.budget_share != math.inf and self.every >= 3:
            between = step - 2  # the steps from the first measurement to this one, neither counted
            typical = (start - self.timing[1]) / between if between > 0 else 0.0
            if typical > 0:
                self._fix_interval((end - start - typical) / (self.budget_share * typical * self.every))
        self.timing = (start, end)

    def _fix_interval(self, ratio: float) -> None:
        """``interval``: ``every`` times the power of two that covers ``ratio`` (a measurement's extra time over
        ``budget`` of ``every`` steps' time), at least ``every``."""
        self.interval = self.every * (2 ** math.ceil(math.log2(ratio)) if ratio > 1 else 1)

    # -- riding on the step ----------------------------------------------------------------------------------
    def on_step_start(self, state: Any) -> None:
        if self.handles:
            self.close()
        step = state.step + 1
        plan = getattr(state, "plan", None)
        ranked = plan is not None and plan.ranks > 1
        self.due = self.scheduled(step)
        if ranked and (step % self.every == 0 or step == 1):
            # RANKS AGREE ON THE SCHEDULE here: rank 0's decision (each rank fixed its interval by its own clock;
            # every scheduled step is a multiple of ``every``, so these candidates cover them all)
            self.due = _agreed(self.due)
        if not self.due:
            return
        self.started = time.thread_time()
        size = _batch_size(state.batch) if state.batch is not None else 0
        self.pool = _Pool.make(plan, state.iteration, self.sub_batch) if ranked else None
        if size >= self.min_batch or self.pool is not None:  # with ranks, always on the step (any slice serves)
            # which layers train may change during a run (unfreezing): look again when it has
            trained = tuple(p.requires_grad for p in self.params)
            if trained != self.trained:
                self.trained = trained
                self.can_factor = _factorable(state.model)
                self.owners = {n for n, m in self.layers
                               if any(p.requires_grad for p in m.parameters(recurse=False))}
            self.factored = self.mean_loss and not self.unfactorable and self.can_factor
            self._arm(size)

    def _arm(self, batch: int) -> None:
        pool = self.pool
        n = min(batch, self.sub_batch) if pool is None else pool.n
        self.seen: dict[str, tuple[Tensor, float]] = {}  # column -> (a scalar tensor, the factor it takes)
        self.calls: dict[str, int] = {}
        # layer -> (sum_i |g_i|^2, |sum_i g_i|^2) over n samples; with the whole batch (n == batch), sum_i g_i is
        # the batch gradient times n, whose norm the loop has already taken: no second sum
        self.sums: dict[str, tuple[list[Tensor], list[Tensor] | None]] = {}
        budget = self.budget

        def activation_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                start = time.perf_counter()
                if pool is None:
                    self.seen.update(_activation_stats(name, module, output.detach()[:n]))
                else:
                    pool.parts.update(_activation_parts(name, module, output.detach()[:n]))
                budget.spent += time.perf_counter() - start
            return hook

        def layer_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                self.calls[name] = self.calls.get(name, 0) + 1
                if not isinstance(output, Tensor) or not output.requires_grad:
                    return
                x = inputs[0].detach() if inputs and isinstance(inputs[0], Tensor) else None
                if x is None or len(x) != batch or len(output) != batch:
                    self.unfactorable = True  # rows are not samples (a model folding positions into the batch)

                def on_grad(g: Tensor) -> None:
                    start = time.perf_counter()
                    g = g.detach()
                    if pool is not None:
                        pool.grad_out(name, g[:n])
                    else:
                        self.seen[f"grad_out/{name}"] = (torch.linalg.vector_norm(g[:n]), 1 / math.sqrt(len(g[:n])))
                    if self.factored and name in self.owners and x is not None:
                        self.sums[name] = _per_sample_sums(module, x[:n], g[:n], total=n < len(g)) \
                            if pool is None else _per_sample_sums(module, x[:n], g[:n], total=pool.partial,
                                                                  vectors=True)
                    budget.spent += time.perf_counter() - start

                output.register_hook(on_grad)
            return hook

        self.handles = [m.register_forward_hook(_eager(activation_hook(n))) for n, m in self.activations]
        self.handles += [m.register_forward_hook(_eager(layer_hook(n))) for n, m in self.layers]

    def close(self) -> None:
        """Take the hooks off the model (after the step they rode on, or when the run fails)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def on_fit_end(self, state: Any) -> None:
        self.close()

    def next_scheduled(self, step: int) -> int:
        """The first step from ``step`` on that is measured (:meth:`scheduled`)."""
        return 1 if step <= 1 else step + (-step) % self.interval

    def needs_step(self, step: int) -> bool:
        """Whether ``step`` needs :meth:`on_step_end` on its own (:func:`gdlab.watch`'s lane): a measured one."""
        return self.scheduled(step)

    def next_needed(self, step: int) -> int:
        """The first step from ``step`` on that :meth:`needs_step`."""
        return self.next_scheduled(step)

    def on_steps_end(self, state: Any, rows: range) -> None:
        """Steps it does not measure: nothing to do."""

    def on_step_end(self, state: Any) -> None:
        if not self.due:
            return
        self.due = False
        try:
            self._measure(state)
        finally:
            self._timed(state.step, self.started)

    def _measure(self, state: Any) -> None:
        row: dict[str, float] = {}
        rode = bool(self.handles)
        if rode:
            self.close()
            row.update(self._collected(state))
        if "noise_scale" not in row:
            batch = _sub_batch(state, self.sub_batch) if self.pool is None else self.pool.sub_batch(state)
            if batch is not None and (len(batch[1]) >= 2 or self.pool is not None):
                with _untouched(state.model):
                    row.update(self._noise(state, *batch))
                    if not rode:  # a small batch: nothing rode on the step
                        row.update(self._hooks(state, *batch))
        if row:
            state.history.steps.extend_last(row)

    def _collected(self, state: Any) -> dict[str, float]:
        """The numbers the hooks gathered during the step, with one host sync."""
        if any(c != 1 for c in self.calls.values()):
            self.unfactorable = True  # a layer used twice (tied weights): per-sample norms do not factor
        if self.unfactorable:
            self.factored = False
        sums = list(self.sums.values()) if self.factored and self.owners <= self.sums.keys() else []
        if self.pool is not None:  # data-parallel: one all-reduce of every rank's sums, then the statistics
            return self.pool.row(state, sums)
        eaches = [t for each, _ in sums for t in each]
        wholes = [t for _, whole in sums for t in whole or []]
        size = _batch_size(state.batch)
        scale = size ** 2  # the per-sample gradients are the batch size times the hooks' shares
        grad_norm = state.grad_norm if state.grad_norm is not None else torch.zeros(())
        values = _scalars([*self.seen.values(), *((t, scale) for t in eaches + wholes), (grad_norm, 1.0)])
        row = dict(zip(self.seen, values))
        if sums:
            n = min(size, self.sub_batch)
            rest = values[len(self.seen):-1]
            if all(whole is not None for _, whole in sums):
                mean_sq = sum(rest[len(eaches):]) / (n * n)
            else:  # the whole batch: |mean_i g_i| is the batch gradient's norm, which the loop has taken
                mean_sq = values[-1] ** 2
            row.update(_noise_row(sum(rest[:len(eaches)]), mean_sq, n, state.plan.batch_size))
        return row

    # -- extra passes, where the step's own cannot serve -----------------------------------------------------
    def _noise(self, state: Any, x: Tensor, y: Tensor) -> dict[str, float]:
        """B_simple and the SNR from per-sample gradients (eval-mode forward: one sample has no batch stats)."""
        if self.per_sample_failed is not None:
            return {}
        params = {k: v.detach() for k, v in state.model.named_parameters() if v.requires_grad}
        # buffers and frozen parameters: constants of the call
        consts = {k: v.detach() for k, v in state.model.named_parameters() if not v.requires_grad}
        consts.update({k: v.detach() for k, v in state.model.named_buffers()})
        forward = state.forward
        if self.meta is None:
            self.meta = _meta_copy(state.model)
        template = copy.deepcopy(self.meta).eval()  # never the user's module: functional_call may leave it altered

        def one(p: dict[str, Tensor], xi: Any, yi: Tensor) -> Tensor:
            call = _functional(template, {**p, **consts})
            return forward(call, structure.tree_map(lambda t: t.unsqueeze(0), xi), yi.unsqueeze(0))[0]

        try:
            with warnings.catch_warnings():  # an op without a batching rule (attention, LSTM) is slower, not wrong
                warnings.filterwarnings("ignore", message="There is a performance drop")
                per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
        except Exception as error:  # a model per-sample gradients cannot serve
            self.per_sample_failed = str(error).splitlines()[0] if str(error) else type(error).__name__
            return {}
        n = len(y)
        flat = torch.cat([g.detach().reshape(n, -1) for g in per.values()], dim=1).double()
        if self.pool is not None:  # data-parallel: the ranks' sums pooled
            return self.pool.noise(flat, state.plan.batch_size)
        mean = flat.mean(0)
        return _noise_row(float(flat.square().sum()), float(mean.square().sum()), n, state.plan.batch_size)

    def _hooks(self, state: Any, x: Any, y: Tensor) -> dict[str, float]:
        """One extra forward and backward on the sub-batch with hooks on activations and layers."""
        seen: dict[str, tuple[Tensor, float]] = {}

        def forward_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                seen.update(_activation_stats(name, module, output.detach()))
            return hook

        def backward_hook(name: str) -> Any:
            def hook(module: nn.Module, grad_in: Any, grad_out: Any) -> None:
                g = grad_out[0]
                if g is not None:
                    seen[f"grad_out/{name}"] = (torch.linalg.vector_norm(g.detach(), dtype=torch.float64),
                                                1 / math.sqrt(len(y)))
            return hook

        handles = [m.register_forward_hook(forward_hook(n)) for n, m in self.activations]
        handles += [m.register_full_backward_hook(backward_hook(n)) for n, m in self.layers]
        params = [p for p in state.model.parameters() if p.requires_grad]
        try:
            with warnings.catch_warnings():
                # the first layer's inputs need no gradient: torch warns that its hook sees only the output's
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss, _ = state.forward(state.model, x, y)
                torch.autograd.grad(loss, params, allow_unused=True)  # leaves .grad alone
        finally:
            for h in handles:
                h.remove()
        return dict(zip(seen, _scalars(list(seen.values()))))


def _batch_size(batch: tuple[Any, Tensor | None]) -> int:
    """The samples in a step's batch: its target's, or its inputs' where it shows no target (gdlab.watch)."""
    x, y = batch
    return len(y) if y is not None else structure.count(x)


def _noise_row(each: float, mean_sq: float, n: int, batch: int) -> dict[str, float]:
    """B_simple and the SNR from sum_i |g_i|^2 (``each``) and |mean_i g_i|^2 (``mean_sq``) over ``n`` per-sample
    gradients: tr(Sigma) unbiased = (sum_i |g_i|^2 - n |mean|^2) / (n - 1)."""
    trace = max(each - n * mean_sq, 0.0) / (n - 1)
    return {"noise_scale": trace / mean_sq if mean_sq > 0 else math.inf,
            "grad_snr": mean_sq / (trace / batch) if trace > 0 else math.inf}


def _scalars(entries: Sequence[tuple[Tensor, float]]) -> list[float]:
    """Each scalar tensor (of any dtype) times its factor, as floats, with one host sync for all."""
    if not entries:
        return []
    values = torch.stack([t for t, _ in entries]).tolist()  # stack promotes: counts and float32 norms together
    return [v * factor for v, (_, factor) in zip(values, entries)]


def _activation_stats(name: str, module: nn.Module, output: Tensor) -> dict[str, tuple[Tensor, float]]:
    """Shares of zero and dead (zero for every sample) ReLU units, of saturated tanh or sigmoid units, as counts
    (scalar tensors, not synced) and the factors that make them shares."""
    units = output.reshape(len(output), -1)
    share = 1 / units.numel() if units.numel() else math.nan
    if isinstance(module, nn.ReLU):
        zero = units <= 0
        return {f"zero_share/{name}": (zero.sum(), share),
                f"dead_share/{name}": (zero.all(0).sum(), 1 / units.shape[1] if units.shape[1] else math.nan)}
    if isinstance(module, nn.Tanh):
        return {f"saturated/{name}": ((units.abs() > 0.99).sum(), share)}
    return {f"saturated/{name}": (((units < 0.01) | (units > 0.99)).sum(), share)}


def _factorable(model: nn.Module) -> bool:
    """Whether per-sample gradient norms follow from each layer's input and output gradient: every trained
    parameter is the weight or bias of exactly one ``Linear`` or plain ``Conv2d`` layer, and no layer mixes the
    samples of a batch (batch normalisation in training)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return False
        own = [(k, p) for k, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        plain_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" and \
            not isinstance(module.padding, str)
        if not (isinstance(module, nn.Linear) or plain_conv) or any(k not in ("weight", "bias") for k, _ in own):
            return False
        if any(id(p) in seen for _, p in own):
            return False
        seen.update(id(p) for _, p in own)
    return all(id(p) in seen for p in model.parameters() if p.requires_grad)


def _per_sample_sums(module: nn.Module, x: Tensor, g: Tensor, total: bool = True,
                     vectors: bool = False) -> tuple[list[Tensor], list[Tensor] | None]:
    """For one layer, sum_i |g_i|^2 and (with ``total``) |sum_i g_i|^2 of its per-sample gradients of the trained
    parameters (weight, bias or both), from its input ``x`` and the gradient ``g`` at its output (sample i's loss
    gradient is sample i's share of ``g`` times the batch size, for a mean over samples: the caller scales).
    Each as scalar tensors, one per parameter (their sum is the layer's), not synced: the caller syncs once for
    all layers (with ``vectors``, the sums sum_i g_i themselves, flattened, in place of their squared norms:
    the ranks of data-parallel training add them up). The sums run over per-sample terms that are all >= 0, so
    the model's precision loses nothing that matters (a float32 model gives them to about 1e-6); half precision
    is raised to float32 first."""
    if g.dtype in (torch.float16, torch.bfloat16):
        x, g = x.float(), g.float()
    n = len(x)
    b = getattr(module, "bias", None)
    bias = isinstance(b, Tensor) and b.requires_grad
    weight = bool(module.weight.requires_grad)
    parts: list[Tensor] = []  # per-sample gradients, [n, size], of the weight and the bias
    if isinstance(module, nn.Linear) and x.dim() == 2:
        # the rank-one case: |g_i [x_i, 1]^T|^2 = |g_i|^2 (|x_i|^2 + 1) (the 1: the bias); nothing materialised
        inputs = torch.linalg.vecdot(x, x) if weight else None
        if bias:
            inputs = inputs + 1 if inputs is not None else torch.ones(n, dtype=g.dtype, device=g.device)
        each = [torch.dot(torch.linalg.vecdot(g, g), inputs)] if inputs is not None else []
        if not total:
            return each, None
        sums = ([(g.T @ x).flatten()] if weight else []) + ([g.sum(0)] if bias else [])  # [out * in], [out]
        return each, sums if vectors else [torch.dot(v, v) for v in sums]
    if isinstance(module, nn.Conv2d):
        assert not isinstance(module.padding, str)  # _factorable lets only numeric padding through
        if weight:  # each sample's weight gradient at once: a convolution grouped by sample
            c, out = x.shape[1], g.shape[1]
            parts.append(conv2d_weight(
                x.reshape(1, n * c, *x.shape[2:]), (n * out, c, *module.weight.shape[2:]),
                g.reshape(1, n * out, *g.shape[2:]), module.stride, module.padding, module.dilation,
                groups=n).view(n, -1))
        if bias:
            parts.append(g.sum((2, 3)))  # [n, out]
    else:  # Linear on [n, ..., in]: positions share the weight
        x, g = x.reshape(n, -1, x.shape[-1]), g.reshape(n, -1, g.shape[-1])  # [n, positions, in / out]
        if weight:
            parts.append((g.transpose(1, 2) @ x).view(n, -1))  # [n, out * in]
        if bias:
            parts.append(g.sum(1))
    each = [torch.linalg.vecdot(part, part).sum() for part in parts]  # each sample's |.|^2, then their sum
    if not total:
        return each, None
    sums = [part.sum(0) for part in parts]
    return each, sums if vectors else [torch.dot(v, v) for v in sums]


# -- data-parallel training: the ranks pool their sums (gdlab.distributed) -------------------------------------------

def _agreed(due: bool) -> bool:
    """Rank 0's decision to measure at this step, taken by every rank (the budget runs on each rank's own clock).
    One small collective, at the steps the schedule offers a measurement only; none between them."""
    return bool(distributed.broadcast(due))


class _Pool:
    """A measured step of a data-parallel run: this rank measures ``n`` samples of its slice, its share of
    ``min(global batch, sub_batch)`` split over the ranks as the batch is; its hooks file sums (per-sample gradient
    sums and squared sums, counts of zero or saturated units, squared norms), and one all-reduce adds up every
    rank's before the statistics are formed. With a global batch of at most ``sub_batch``, every sample of it is
    measured and the statistics are one process's at that batch."""

    def __init__(self, n: int, partial: bool, batch: int, world: int) -> None:
        self.n, self.partial, self.batch, self.world = n, partial, batch, world
        # column -> (how it is read, the sums to add up over the ranks, a count to add up with them)
        self.parts: dict[str, tuple[str, Tensor, float]] = {}

    @classmethod
    def make(cls, plan: Any, iteration: int, sub_batch: int) -> _Pool:
        local, batch = plan.share(iteration)
        total = min(batch, sub_batch)
        n = total // plan.ranks + (plan.rank < total % plan.ranks)
        return cls(max(1, min(n, local)), total < batch, batch, plan.ranks)

    def sub_batch(self, state: Any) -> tuple[Any, Tensor] | None:
        """This rank's ``n`` samples of its slice of the step's batch."""
        x, y = state.batch
        return None if y is None else (structure.tree_map(lambda t: t[: self.n], x), y[: self.n])

    def grad_out(self, name: str, g: Tensor) -> None:
        self.parts[f"grad_out/{name}"] = ("norm", torch.linalg.vector_norm(g, dtype=torch.float64).square(), len(g))

    def _reduce(self, segments: list[Tensor], counts: list[float], device: torch.device) -> tuple[list[Tensor], Tensor]:
        """Every rank's ``segments`` and ``counts`` added up: one all-reduce."""
        flat = torch.cat([*(t.reshape(-1).double() for t in segments),
                          torch.tensor(counts, dtype=torch.float64, device=device)])
        torch.distributed.all_reduce(flat)
        *parts, summed = flat.split([*(t.numel() for t in segments), len(counts)])
        return parts, summed

    def row(self, state: Any, sums: list[tuple[list[Tensor], list[Tensor] | None]]) -> dict[str, float]:
        """The hooks' statistics over the ranks (``sums``: each layer's per-sample sums, as :func:`_per_sample_sums`
        gives them with ``vectors``), with one all-reduce and one host sync."""
        keys = list(self.parts)
        segments = [t for _, t, _ in self.parts.values()]
        counts = [c for _, _, c in self.parts.values()]
        scale = self.batch / self.world  # a rank's output gradients are its loss's: the global mean's times this
        eaches = [t for each, _ in sums for t in each]
        wholes = [t for _, whole in sums for t in whole or []]
        if sums:
            segments.append(torch.stack([t.double() for t in eaches]).sum() * scale**2)
            counts.append(self.n)
            if wholes:
                segments.append(torch.cat([t.reshape(-1).double() for t in wholes]) * scale)
        device = next(iter(state.model.parameters())).device
        parts, summed = self._reduce(segments, counts, device)
        shrink = 1 / self.world if getattr(state, "mean_loss", False) else 1.0
        values: list[Tensor] = []
        for (kind, _, _), part, count in zip(self.parts.values(), parts, summed):
            if kind == "share":
                values.append(part[0] / count)
            elif kind == "dead":
                values.append((part == 0).sum() / part.numel())
            else:  # the gradient arriving at a layer's output, per sample, as one process at the global batch
                values.append(part[0].sqrt() * shrink / count.sqrt())
        if sums:
            total = summed[len(keys)]
            grad_norm = state.grad_norm if state.grad_norm is not None else torch.zeros((), device=device)
            mean_sq = parts[len(keys) + 1].square().sum() / total**2 if wholes else grad_norm.double().square()
            values += [parts[len(keys)][0], mean_sq.to(device), total]
        read = torch.stack([v.double() for v in values]).tolist() if values else []
        row = dict(zip(keys, read))
        if sums:
            each, mean_sq_value, n = read[len(keys):]
            row.update(_noise_row(each, mean_sq_value, round(n), self.batch))
        return row

    def noise(self, flat: Tensor, batch: int) -> dict[str, float]:
        """B_simple and the SNR from every rank's per-sample gradients ``flat`` ([n, parameters])."""
        parts, summed = self._reduce([flat.square().sum(), flat.sum(0)], [len(flat)], flat.device)
        each, mean_sq, n = torch.stack([parts[0][0], (parts[1] / summed[0]).square().sum(), summed[0]]).tolist()
        return _noise_row(each, mean_sq, round(n), batch) if n >= 2 else {}


def _activation_parts(name: str, module: nn.Module, output: Tensor) -> dict[str, tuple[str, Tensor, float]]:
    """:func:`_activation_stats` as sums the ranks add up: counts of zero or saturated units over the elements
    (``share``), and each unit's count of non-zero outputs (``dead``: the units no sample of any rank moved)."""
    units = output.reshape(len(output), -1)
    if isinstance(module, nn.ReLU):
        zero = units <= 0
        return {f"zero_share/{name}": ("share", zero.sum(), units.numel()),
                f"dead_share/{name}": ("dead", (~zero).sum(0), 0.0)}
    if isinstance(module, nn.Tanh):
        return {f"saturated/{name}": ("share", (units.abs() > 0.99).sum(), units.numel())}
    return {f"saturated/{name}": ("share", ((units < 0.01) | (units > 0.99)).sum(), units.numel())}


class Expensive(Instrument):
    """Every ``every`` steps: the sharpness (largest Hessian eigenvalue, ``iterations`` of power iteration)
    against the stability limit, and Cockpit's alpha for the step just taken."""

    cost = "expensive"

    def __init__(self, every: int = 50, sub_batch: int = 128, iterations: int = 20, budget: float = 0.5) -> None:
        self.every, self.sub_batch, self.iterations, self.budget_share = every, sub_batch, iterations, budget
        self.before: dict[str, Tensor] | None = None
        self.failed: str | None = None  # why the model cannot be measured (no double backward): measured no more

    def on_step_end(self, state: Any) -> None:
        row: dict[str, float] = {}
        if self.before is not None and self.failed is None:
            with self.budget.measure():
                batch = _sub_batch(state, self.sub_batch)
                if batch is not None:
                    with _untouched(state.model), _math_attention():
                        try:
                            row.update(self._alpha(state, *batch))
                            row.update(self._sharpness(state, *batch))
                        except RuntimeError as error:  # an op without a second derivative: the run goes on
                            self.failed = (str(error).strip().splitlines() or [type(error).__name__])[0]
                            row = {}
                            state.history.meta["sharpness_unavailable"] = self.failed
            self.before = None
        if (state.step + 1) % self.every == 0 and self.budget.allows(state.step + 1):
            self._keep(state)
        if row:
            state.history.steps.extend_last(row)

    def on_fit_start(self, state: Any) -> None:
        self.meta = _meta_copy(state.model)
        self.budget = _Budget(self.budget_share)
        self._keep(state)  # the first step is measured too

    def _keep(self, state: Any) -> None:
        """The parameters before the next step: alpha needs both ends of it."""
        self.before = {k: v.detach().clone() for k, v in state.model.named_parameters()}

    def _loss_and_grad(self, state: Any, params: dict[str, Tensor], x: Any, y: Tensor) -> tuple[float, list[Tensor]]:
        names = list(params)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        buffers = {k: v.detach() for k, v in state.model.named_buffers()}
        template = copy.deepcopy(self.meta).train(state.model.training)
        loss, _ = state.forward(_functional(template, {**leaves, **buffers}), x, y)
        grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
        return float(loss.detach()), [g if g is not None else torch.zeros_like(leaves[k]) for g, k in zip(grads, names)]

    def _alpha(self, state: Any, x: Any, y: Tensor) -> dict[str, float]:
        assert self.before is not None
        after = {k: v.detach() for k, v in state.model.named_parameters()}
        names = [k for k in after if k in self.before]
        step = [after[k] - self.before[k] for k in names]
        l0, g0 = self._loss_and_grad(state, {k: self.before[k] for k in names}, x, y)
        l1, g1 = self._loss_and_grad(state, {k: after[k] for k in names}, x, y)
        d0 = sum(float((g * s).sum()) for g, s in zip(g0, step))
        d1 = sum(float((g * s).sum()) for g, s in zip(g1, step))
        # q(t) = a t^2 + b t + c on the step t in [0, 1]: c = l0, b = d0; a from both the value and the slope at 1
        a = ((l1 - l0 - d0) + (d1 - d0) / 2) / 2
        if not (a > 0 and d0 < 0):
            return {"alpha": math.nan}
        t_min = -d0 / (2 * a)
        return {"alpha": 1 / t_min - 1}

    def _sharpness(self, state: Any, x: Any, y: Tensor) -> dict[str, float]:
        params = [p for p in state.model.parameters() if p.requires_grad]
        loss, _ = state.forward(state.model, x, y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        generator = torch.Generator().manual_seed(state.step)
        v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
        norm = math.sqrt(sum(float(t.square().sum()) for t in v))
        v = [t / norm for t in v]
        eigen = math.nan
        for i in range(self.iterations):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=i < self.iterations - 1)
            eigen = sum(float((a * b).sum()) for a, b in zip(hv, v))
            norm = math.sqrt(sum(float(t.square().sum()) for t in hv))
            if norm == 0 or not math.isfinite(norm):
                break
            v = [t.detach() / norm for t in hv]
        group = state.optimizer.param_groups[0]
        lr = float(group.get("lr", math.nan))
        beta = float(group.get("momentum", 0.0) or 0.0)
        return {"sharpness": eigen, "stability_limit": 2 * (1 + beta) / lr if lr > 0 else math.inf}


def attach(level: str | Sequence[Instrument]) -> list[Instrument]:
    """The instruments of ``level`` (``none``, ``cheap``, ``default``, ``full``) or the ones given."""
    if not isinstance(level, str):
        # cheap, then periodic, then expensive: periodic's hooks on the step must be off before another's extra pass
        order = {"cheap": 0, "periodic": 1, "expensive": 2}
        return sorted(level, key=lambda i: order.get(getattr(i, "cost", "cheap"), 0))
    if level not in LEVELS:
        raise UnknownChoice("instruments", level, LEVELS)
    return {"none": [], "cheap": [Cheap()], "default": [Cheap(), Periodic()],
            "full": [Cheap(), Periodic(), Expensive()]}[level]  # type: ignore[return-value]
