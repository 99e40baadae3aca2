"""The gradient-descent loop (lecture, point 3): its events, the state callbacks see, and the loop itself.

:func:`run` is the lecture's four steps, read top to bottom: (1) start from the model's parameters, (2) take a
batch, evaluate the loss and its gradient, (3) update the parameters, (4) record and repeat. Callbacks observe and
act through the hooks :class:`Callback` declares (:data:`EVENTS` and a few more), dispatched by :class:`Hooks`;
each receives the :class:`LoopState` explicitly.

The loop does not wait for the device. The loss and gradient norms of each step stay on the device (a
:class:`StepLog`) and reach the host in batches: every ``log_every`` steps, at each epoch's end, and whenever
someone reads them (``state.loss``, or the history). A loss that is not finite is caught there, within
``log_every`` steps, and the parameters are rolled back to the last good :class:`Snapshot`.

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> problem = gdlab.problem.Problem.make(torch.nn.Linear(3, 1), (X, y), batch_size=16, device="cpu")
    >>> state = LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.1), total_steps=200)
    >>> run(problem, state)
    >>> state.step, state.history.epochs["train_loss"][-1] < 1e-3
    (200, True)
"""

from __future__ import annotations

import dataclasses
import math
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gdlab import distributed
from gdlab.data import BatchPlan, structure
from gdlab.errors import DataError, GdlabError, ModelError, shorten
from gdlab.metrics import METRICS
from gdlab.problem import NON_FINITE_SOURCES, LossFn, Problem, evaluate, non_finite, prediction
from gdlab.records import History, Table

__all__ = [
    "EVENTS",
    "HOOKS",
    "LOG_EVERY",
    "PLANS",
    "Callback",
    "Hooks",
    "Plan",
    "Cause",
    "Counted",
    "HELD_BYTES",
    "HeldBatches",
    "LoopState",
    "Result",
    "Snapshot",
    "StepLog",
    "answers",
    "data_cause",
    "final_metrics",
    "val_metrics",
    "run",
    "settle_divergence",
]

EVENTS = ("on_fit_start", "on_epoch_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")
"""The events of the loop, in the order they first fire."""

LOG_EVERY = 50
"""Steps between host reads of the per-step values (chosen by measurement: docs/benchmarks.md)."""


_LOW_PRECISION = (torch.bfloat16, torch.float16)


class Callback:
    """Base class for callbacks: every hook the loops call (:func:`run`, ``gdlab.watch``, the population's members
    through :func:`run`), declared here once with its signature and a default that does nothing. Override the ones
    you need; each event gets the :class:`LoopState`.

    - **Events** (:data:`EVENTS`, in the order they first fire): ``on_fit_start``, ``on_epoch_start``,
      ``on_step_start``, ``on_step_end``, ``on_epoch_end``, ``on_fit_end``.
    - **Outcomes**: ``on_diverge(state) -> bool`` (asked when the loss became NaN or inf and no bad data explains it;
      True: the hook acted, the run goes on) and ``close()`` (the run failed: let go of what you hold).
    - **Planning** (:data:`PLANS`: what the hook needs measured at the coming steps; ``gdlab.watch`` uses it to
      take the steps no hook needs in blocks, and :func:`run` takes each step whole): ``needs_step(step)`` and
      ``next_needed(step)`` say which steps need ``on_step_end`` one by one, ``on_steps_end(state, rows)`` takes
      the others in blocks; ``scheduled(step)`` and ``next_scheduled(step)`` say on which steps ``on_step_start``
      needs the forward pass (with ``due``: the step under way is one); ``needs_before(step)``,
      ``next_before(step)`` and ``before_update(state, step)`` keep something before an update (with
      ``keeps_before``).

    - **What it reads of the step**: ``reads_param_norms`` (a class attribute, False here): the hook reads each read
      row's per-parameter gradient norms (``state.log.take_param_norms(rows)``), which the loop then keeps; no hook
      asks the loop's log for them any other way.

    Which hooks answer a hook is decided once per list of hooks by :class:`Hooks`: a hook answers when its class
    overrides this base's method. An object that is not a ``Callback`` (a plain object with ``on_*`` methods)
    works the same way: it answers the hooks it has. Planning hooks are taken as a group: a hook that answers
    ``on_step_end`` without ``needs_step`` and ``on_steps_end`` needs every step one by one.

    Example:
        >>> class StopAtLoss(Callback):
        ...     def on_step_end(self, state):
        ...         if state.loss < 0.01:   # reading the loss waits for the device: one host sync per step
        ...             state.stop("loss below 0.01")
        >>> hooks = Hooks([StopAtLoss()])
        >>> len(hooks.answering("on_step_end")), len(hooks.answering("on_fit_end"))
        (1, 0)
    """

    keeps_before: bool = False
    """With ``before_update``: the hook keeps something before the updates of the steps ``needs_before`` names."""
    due: bool = False
    """With ``scheduled``: the step under way is one the hook measures (set by its ``on_step_start``)."""

    # -- the events ----------------------------------------------------------------------------------------------
    reads_param_norms: bool = False
    """True: this hook reads each row's per-parameter gradient norms (``state.log.take_param_norms``)."""

    def on_fit_start(self, state: LoopState) -> None:
        """Before the first step (also when resuming)."""

    def on_epoch_start(self, state: LoopState) -> None:
        """Before the first step of each epoch."""

    def on_step_start(self, state: LoopState) -> None:
        """Before each step's forward pass; ``state.batch`` is the step's batch."""

    def on_step_end(self, state: LoopState) -> None:
        """After each update; ``state.loss`` is the loss the step was computed on."""

    def on_epoch_end(self, state: LoopState) -> None:
        """After each epoch's record (train and validation loss) is in ``state.history.epochs``."""

    def on_fit_end(self, state: LoopState) -> None:
        """After the last step, whatever stopped the loop."""

    # -- the outcomes --------------------------------------------------------------------------------------------
    def on_diverge(self, state: LoopState) -> bool:
        """The loss became NaN or inf and no bad data explains it: return True when the hook acted (rolled back,
        lowered the learning rate) and the run goes on; when no hook acts, the run stops."""
        return False

    def close(self) -> None:
        """The run failed (an error, not a stop): let go of what the hook holds (a progress bar, a file)."""

    # -- planning: what the hook needs measured at the coming steps ----------------------------------------------
    def needs_step(self, step: int) -> bool:
        """Whether step ``step`` (1-based) needs this hook's ``on_step_end`` on its own (else ``on_steps_end``)."""
        return True

    def next_needed(self, step: int) -> float:
        """The first step from ``step`` on for which :meth:`needs_step` is True (``math.inf``: none)."""
        return step

    def on_steps_end(self, state: LoopState, rows: range) -> None:
        """The steps no hook needed one by one, in a block: their rows in ``state.history.steps``."""

    def scheduled(self, step: int) -> bool:
        """Whether this hook's ``on_step_start`` measures at step ``step`` (it needs the step's forward pass)."""
        return True

    def next_scheduled(self, step: int) -> float:
        """The first step from ``step`` on that :meth:`scheduled` names (``math.inf``: none)."""
        return step

    def needs_before(self, step: int) -> bool:
        """With :attr:`keeps_before`: whether :meth:`before_update` is wanted before step ``step``'s update."""
        return False

    def next_before(self, step: int) -> float:
        """The first step from ``step`` on that :meth:`needs_before` names (``math.inf``: none)."""
        return math.inf

    def before_update(self, state: LoopState, step: int) -> None:
        """Before the update of step ``step``, which :meth:`needs_before` named."""


PLANS = ("needs_step", "next_needed", "on_steps_end", "scheduled", "next_scheduled", "needs_before", "next_before",
         "before_update")
"""The planning hooks of :class:`Callback` (what a hook needs measured at the coming steps)."""

HOOKS = (*EVENTS, "on_diverge", "close", *PLANS)
"""Every hook :class:`Callback` declares; :class:`Hooks` dispatches them."""


def answers(hook: Any, name: str) -> bool:
    """Whether ``hook`` answers the hook ``name`` (one of :data:`HOOKS`): it has the method, and not as
    :class:`Callback`'s default (a plain object answers every hook it has).

    Example:
        >>> class Plain:
        ...     def on_fit_end(self, state): ...
        >>> answers(Plain(), "on_fit_end"), answers(Plain(), "on_step_end"), answers(Callback(), "on_fit_end")
        (True, False, False)
    """
    if getattr(hook, name, None) is None:
        return False
    return getattr(type(hook), name, None) is not getattr(Callback, name)


@dataclass(frozen=True)
class Plan:
    """What a list of hooks says through the planning hooks (:data:`PLANS`), gathered once by :class:`Hooks`:
    ``gdlab.watch`` reads it to file the steps no hook needs one by one in blocks (:func:`run` takes each step
    whole and needs none of it)."""

    lane: bool
    """Every hook that answers ``on_step_end`` answers ``needs_step`` and ``on_steps_end``: steps can go in blocks."""
    block_ends: list[Callable[[LoopState, range], None]]
    """With :attr:`lane`: their ``on_steps_end``."""
    needs: list[Callable[[int], bool]]
    """With :attr:`lane`: their ``needs_step``."""
    nexts: list[Callable[[int], float]] | None
    """Their ``next_needed``, where each of them (and each ``scheduled`` hook, its ``next_scheduled``) has one;
    else None (the steps are asked one by one)."""
    unscheduled: list[Any]
    """The hooks with an ``on_step_start`` and no ``scheduled``: every step's forward pass is theirs."""
    schedules: list[Callable[[int], bool]]
    """The ``scheduled`` of the hooks with an ``on_step_start`` that have one."""
    next_forwards: list[Callable[[int], float]]
    """Their ``next_scheduled``, where they have one."""
    befores: list[Any]
    """The hooks that answer ``before_update`` and ``needs_before`` (with ``keeps_before``, ``next_before``)."""
    param_norms: bool
    """A hook reads each row's per-parameter gradient norms (``reads_param_norms``): the log keeps them."""

    @classmethod
    def of(cls, hooks: Hooks) -> Plan:
        """The plan of ``hooks``."""
        ends, starts = hooks.answering("on_step_end"), hooks.answering("on_step_start")

        def every(hooks_: list[Any], name: str) -> bool:
            return all(hook in hooks.answering(name) for hook in hooks_)

        lane = every(ends, "on_steps_end") and every(ends, "needs_step")
        scheduled = [h for h in starts if h in hooks.answering("scheduled")]
        ahead = [h for h in starts if h in hooks.answering("next_scheduled")]
        return cls(lane=lane, block_ends=[h.on_steps_end for h in ends] if lane else [],
                   needs=[h.needs_step for h in ends] if lane else [],
                   # a schedule without next_scheduled: the steps are scanned instead
                   nexts=[h.next_needed for h in ends] if every(ends, "next_needed") and
                   len(ahead) == len(scheduled) else None,
                   unscheduled=[h for h in starts if h not in scheduled], schedules=[h.scheduled for h in scheduled],
                   next_forwards=[h.next_scheduled for h in ahead],
                   befores=[h for h in hooks.answering("before_update") if h in hooks.answering("needs_before")],
                   param_norms=any(getattr(h, "reads_param_norms", False) for h in hooks.hooks))


class Hooks:
    """The one dispatcher of a run's hooks (:func:`run` and ``gdlab.watch`` use it): which hooks answer each of
    :data:`HOOKS`, decided once (:func:`answers`), and the calls.

    Example:
        >>> class Count(Callback):
        ...     steps = 0
        ...     def on_step_end(self, state): self.steps += 1
        >>> hooks = Hooks([Count(), object()])
        >>> len(hooks.answering("on_step_end")), hooks.answering("on_fit_start"), hooks.diverged(None)
        (1, [], False)
    """

    def __init__(self, hooks: Sequence[Any] = ()) -> None:
        self.hooks = list(hooks)
        self._answering = {name: [hook for hook in self.hooks if answers(hook, name)] for name in HOOKS}
        self.handlers: dict[str, list[Callable[[LoopState], Any]]] = {
            event: [getattr(hook, event) for hook in self._answering[event]] for event in EVENTS}
        """Each event's bound methods, in the hooks' order."""
        self.plan = Plan.of(self)
        """What the hooks need measured at the coming steps (their planning hooks)."""

    def answering(self, name: str) -> list[Any]:
        """The hooks that answer ``name`` (one of :data:`HOOKS`), in their order."""
        return self._answering[name]

    def emit(self, event: str, state: LoopState) -> None:
        """Call every hook that answers ``event`` (one of :data:`EVENTS`) with ``state``."""
        for handler in self.handlers[event]:
            handler(state)

    def diverged(self, state: LoopState) -> bool:
        """Ask every hook's ``on_diverge`` (all of them, none skipped): whether one acted."""
        return any([hook.on_diverge(state) for hook in self._answering["on_diverge"]])

    def close(self) -> None:
        """Call every hook's ``close`` (the run failed)."""
        for hook in self._answering["close"]:
            hook.close()


@dataclass
class LoopState:
    """Everything the loop knows, handed to every callback. Steps and epochs count completed ones.

    The step's own values are on the device: ``step_loss`` (the loss), ``param_grad_norms`` (one 0-dim
    tensor per parameter tensor that has a gradient) and ``grad_norm`` (the global gradient norm, made from them
    when read). ``state.loss`` reads the loss on the host (one sync when values are pending); ``last_loss`` is
    the latest value already read (no sync: what a progress bar shows).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    history: History
    seed: int
    device: torch.device
    total_steps: int
    step: int = 0
    epoch: int = 0
    iteration: int = 0
    stop_reason: str | None = None
    interrupted: bool = False
    run_id: str | None = None
    val_samples: int | None = None
    # running sums of the epoch in progress: sample-weighted loss, samples seen (filled as values reach the host)
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    seconds: float = 0.0
    # for instruments: the step's batch (inputs, target), the forward pass (model or a functional call of it,
    # inputs, target) -> (loss, output), and a draw of training samples (n, seed) -> (inputs, target)
    batch: tuple[Any, Tensor | None] | None = None  # the target is None where a loop gdlab does not drive shows none
    forward: Callable[[Callable[..., Any], Any, Tensor], tuple[Tensor, Any]] | None = None
    loss_fn: LossFn | None = None  # the loss, and its name ("model": the model's own)
    loss_name: str | None = None
    target_key: str | None = None  # the target's key in dict samples
    sample: Callable[[int, int], tuple[Any, Tensor]] | None = None
    mean_loss: bool = False  # the loss is a mean over the batch's samples (the built-in ones are)
    step_loss: Tensor | None = None
    param_grad_norms: Sequence[Tensor] | None = None
    last_loss: float = math.nan
    log: StepLog | None = field(default=None, repr=False)

    @classmethod
    def start(cls, problem: Problem, optimizer: torch.optim.Optimizer, *, total_steps: int, seed: int = 0,
              history: History | None = None) -> LoopState:
        """The state at step 0 of ``problem`` trained by ``optimizer``."""
        return cls(problem.model, optimizer, problem.plan, history or History(), seed, problem.device, total_steps,
                   val_samples=len(problem.val) if problem.val is not None else None, forward=problem.forward,
                   loss_fn=problem.loss_fn, loss_name=problem.loss_name, target_key=problem.source.target_key,
                   sample=problem.source.sample, mean_loss=problem.mean_loss)

    @property
    def grad_norm(self) -> Tensor | None:
        """This step's global gradient norm, on the device (None where the loop takes no norms)."""
        norms = self.param_grad_norms
        if norms is None:
            return None
        return torch.linalg.vector_norm(torch.stack(list(norms))) if norms else torch.zeros((), device=self.device)

    @property
    def loss(self) -> float:
        """The latest step's loss on the host (reading it waits for the device when values are pending)."""
        if self.log is not None:
            self.log.fetch()
        return self.last_loss

    @loss.setter
    def loss(self, value: float) -> None:
        self.last_loss = value

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step, giving the reason."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group (NaN when the optimizer has none)."""
        return float(self.optimizer.param_groups[0].get("lr", math.nan))


@dataclass
class Result:
    """What :func:`gdlab.fit` returns.

    Attributes:
        model: the trained model (the same object that was passed in).
        history: per-step and per-epoch records.
        final: ``train_loss`` (mean over the last epoch's steps), ``val_loss``, and the task's validation
            metrics (:mod:`gdlab.metrics`): ``val_accuracy`` for classification (under any loss), ``val_accuracy``
            and ``val_subset_accuracy`` for multilabel, ``val_mae`` and ``val_r2`` for regression; None where
            there is no validation data. A loss that was not finite stays NaN or inf (a run diverged at its first
            step ends with a non-finite ``train_loss``, never 0), and the metrics of non-finite outputs are None.
        lr: the learning rate at the end (``param_groups[0]["lr"]``); NaN for an optimizer that shows none, such as
            a bare Transform (wrap it as ``gdlab.optim.inject(make, lr=...)`` to show it).
        run_id: the id in the run store, or None without a store.
        seconds: training time.
        plan: the batch plan.
        status: ``finished`` or ``stopped`` (interrupted).
        stop_reason: why the loop ended before its budget (converged, patience, diverged, interrupted), or None.
        findings: the doctor's :class:`~gdlab.doctor.Finding` list (empty with ``doctor=False``), flat: every finding,
            those another explains too.
        diagnosis: the findings as a causal story, a :class:`~gdlab.doctor.Diagnosis` (root causes first, each with
            the consequences it explains and its remedy; ``gdlab.doctor.explain(findings)``), printed by
            ``gdlab.doctor.story_lines``; None where the front door that made the result gave none.
        remedies: what the doctor did during the run with ``remedy="auto"`` (each with ``step``, ``action``,
            ``params``, ``reason``).
        lr_selection: with ``lr="auto"``, the :class:`~gdlab.lr_select.LRSelection` (what was tried, why the
            winner won, the cost); else None.
    """

    model: nn.Module
    history: History
    final: dict[str, float | None]
    lr: float
    run_id: str | None
    seconds: float
    plan: BatchPlan
    status: str = "finished"
    stop_reason: str | None = None
    steps: int = 0
    findings: list[Any] = field(default_factory=list)
    lr_selection: Any = None
    remedies: list[Any] = field(default_factory=list)
    diagnosis: Any = None

    def plot(self) -> Any:
        """The loss per epoch and per step (with its moving average) as a matplotlib ``Figure``; in Jupyter it
        shows itself, elsewhere ``result.plot().savefig("loss.png")``."""
        from gdlab.notebook import result_figure  # an edge: matplotlib only when a picture is asked for

        return result_figure(self)

    def _repr_html_(self) -> str:  # Jupyter: settings, final metrics, the loss figure and the doctor's story
        from gdlab.notebook import result_html

        return result_html(self)


class StepLog:
    """The per-step loss and gradient norms, kept on the device and read on the host in batches.

    Each step files its loss and norms (:meth:`record`) and appends its row (step, epoch, lr) to the history;
    :meth:`fetch` brings every pending value to the host in one sync, writes the rows' ``loss`` and
    ``grad_norm``, adds the epoch's running sums and notes the first non-finite loss (``diverged_at``, a row).
    The history runs :meth:`fetch` before it is read, so a reader never sees a row without its values.
    """

    def __init__(self, state: LoopState, params: Sequence[Tensor]) -> None:
        self.state, self.params = state, list(params)
        self.table: Table = state.history.steps
        self.rows: list[int] = []
        self.sizes: list[int] = []
        self.losses: list[Tensor] = []
        self.has_loss: list[bool] = []  # per row: whether it has a loss (a loop gdlab does not drive may show none)
        self.norms: list[Sequence[Tensor]] = []  # per step with norms: a 0-dim norm per parameter with a gradient
        self.present: list[list[bool] | None] = []  # which parameters had a gradient (None: all of them)
        self.normed: list[int] = []  # the rows the norms belong to (every row in fit; every k-th in gdlab.watch)
        self._present: list[bool] | None = None  # the latest norms' parameters with a gradient (None: all)
        self.diverged_at: int | None = None
        self.keep_param_norms = False  # a hook reads each row's per-parameter norms (Plan.param_norms)
        self.param_norms: dict[int, list[float]] = {}
        self.pending: list[Any] = []  # the all-reduces of the losses over the ranks, waited for at the read
        self.table.defer(self.fill)

    def close(self) -> None:
        """Fetch what is pending and stop filling the history."""
        self.table.undefer(self.fill)
        self.state.log = None

    def take_param_norms(self, rows: Sequence[int]) -> list[tuple[int, list[float]]]:
        """The per-parameter gradient norms of those of ``rows`` that have them (read, and kept since
        the hooks' ``reads_param_norms``), as ``(row, norms)``; handed over once, then forgotten."""
        kept = self.param_norms
        return [(r, kept.pop(r)) for r in rows if r in kept]

    def grad_norms(self) -> list[bool] | None:
        """This step's gradient norm per parameter, on the device (``state.param_grad_norms``): one kernel a
        step; stacking them and the global norm wait for the read. Returns which parameters had a gradient (None:
        all of them), as :meth:`record_steps` takes it."""
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        # low-precision gradients (bf16, fp16 models) are measured in float32: the instruments read float32
        low = any(g.dtype in _LOW_PRECISION for g in present)
        # no autograd record (a gradient made with create_graph=True has one), without the cost of no_grad's
        # decorator on every step
        enabled = torch.is_grad_enabled()
        if enabled:
            torch.set_grad_enabled(False)
        try:
            self.state.param_grad_norms = (torch._foreach_norm(present, 2, dtype=torch.float32) if low
                                           else torch._foreach_norm(present)) if present else ()
        finally:
            if enabled:
                torch.set_grad_enabled(True)
        self._present = None if len(present) == len(grads) else [g is not None for g in grads]
        return self._present

    def use_norms(self, norms: Sequence[Tensor], present: list[bool] | None) -> None:
        """Make norms that :meth:`grad_norms` took earlier (and which parameters had a gradient) this step's: a
        watched loop's pre-hook read them before the update, the step is recorded after it."""
        self.state.param_grad_norms, self._present = norms, present

    def record(self, loss: Tensor | None, samples: int, pending: Any = None) -> None:
        """File the step's loss (and the norms :meth:`grad_norms` took) and append its row. A loss of None (a loop
        gdlab does not drive, watched without its loss: :func:`gdlab.watch`) leaves the row without one;
        ``pending``: the collective still writing ``loss`` (the mean over the ranks), waited for at the read."""
        state, table = self.state, self.table
        if pending is not None:
            self.pending.append(pending)
        if loss is not None:
            if loss.dim():  # a [1] loss too: stacked with the others
                loss = loss.reshape(())
            if loss.dtype in _LOW_PRECISION:  # a low-precision model's loss, read in float32
                loss = loss.float()
            self.losses.append(loss)
        state.step_loss = loss
        self.has_loss.append(loss is not None)
        table.append({"step": state.step, "epoch": state.epoch + 1,
                      "lr": float(state.optimizer.param_groups[0].get("lr", math.nan))})  # state.lr, inlined
        row = len(table) - 1
        self.rows.append(row)
        self.sizes.append(samples)
        if state.param_grad_norms is not None:  # None: no norms taken (at all, or at this step: gdlab.watch)
            self.norms.append(state.param_grad_norms)
            self.present.append(self._present)
            self.normed.append(row)

    def record_steps(self, losses: Sequence[Tensor], lrs: Sequence[Any], sizes: Sequence[int],
                     norms: Sequence[tuple[int, Sequence[Tensor], list[bool] | None]] = ()) -> None:
        """File a block of steps (:func:`gdlab.watch`'s lane: ``state.step`` still counts the step before them),
        with their losses (0-dim or one-element tensors, detached), the learning rate each ran at, and the
        gradient norms of some (``(place in the block, norms, which parameters had a gradient)``, as
        :meth:`grad_norms` took them): :meth:`record` for each, in one pass (the losses' shapes and dtypes are
        left to the read: :meth:`fetch`)."""
        state, n = self.state, len(losses)
        self.losses += losses
        self.has_loss += [True] * n
        state.step_loss = losses[-1]
        start = len(self.table)
        self.table.extend({"step": range(state.step + 1, state.step + n + 1), "epoch": [state.epoch + 1] * n,
                           "lr": lrs})
        self.rows += range(start, start + n)
        self.sizes += sizes
        for place, step_norms, present in norms:
            self.norms.append(step_norms)
            self.present.append(present)
            self.normed.append(start + place)

    def fill(self, table: Table) -> None:
        """The history's filler: fetch before a read."""
        self.fetch()

    @torch.no_grad()
    def fetch(self, check: list[Tensor] | None = None) -> list[float]:
        """Read every pending value on the host in one sync (and the ``check`` scalars with them, returned)."""
        if not self.rows and not check:
            return []
        n, extra = len(self.losses), check or []
        for work in self.pending:  # the losses averaged over the ranks (data-parallel training)
            work.wait()
        self.pending = []
        scalars = [*self.losses, *(t for step in self.norms for t in step), *extra] if self.rows else extra
        try:  # 0-dim tensors (of any float dtype: stacked in the widest), one host sync for all
            values = torch.stack(scalars).tolist() if scalars else []
        except RuntimeError:  # a one-element loss ([1]) among them, as gdlab.watch files it: each made 0-dim
            values = torch.stack([t.reshape(()) for t in scalars]).tolist()
        if self.rows:
            self._write(values[:n], values[n : len(values) - len(extra)])
        return values[len(values) - len(extra):]

    def _write(self, fetched: list[float], flat: list[float]) -> None:
        """Put fetched values in their rows (the global gradient norm from the per-parameter ones), the epoch's sums
        and ``last_loss``; note the first non-finite loss."""
        state, rows = self.state, self.rows
        whole = len(fetched) == len(rows)  # every row has its loss (the usual case: no walk over the flags)
        if whole:
            losses: list[float | None] = list(fetched)
        else:
            it = iter(fetched)
            losses = [next(it) if has else None for has in self.has_loss]
        if fetched:
            self.table.write("loss", rows if whole else [r for r, v in zip(rows, losses) if v is not None], fetched)
        if self.norms:
            totals, at = [], 0
            for row, present, norms in zip(self.normed, self.present, self.norms):
                k = len(norms)
                values = flat[at : at + k]
                at += k
                total = math.sqrt(sum(v * v for v in values))
                # a measured norm that is not finite reads inf: NaN in the column means "not measured"
                totals.append(total if total == total else math.inf)
                if self.keep_param_norms:
                    if present is not None:
                        it = iter(values)
                        values = [next(it) if has else 0.0 for has in present]
                    self.param_norms[row] = values
            self.table.write("grad_norm", self.normed, totals)
        weighted = sum(map(operator.mul, fetched, self.sizes)) if whole else math.nan
        if math.isfinite(weighted):  # every loss finite: the epoch's sums in one pass
            state.epoch_loss_sum += weighted
            state.epoch_samples += sum(self.sizes)
            rows = []
        for row, loss, size in zip(rows, losses, self.sizes):
            if loss is None:
                continue
            if math.isfinite(loss):
                state.epoch_loss_sum += loss * size
                state.epoch_samples += size
            elif self.diverged_at is None:
                self.diverged_at = row
        if fetched:
            state.last_loss = fetched[-1]
        self.rows, self.sizes, self.losses, self.norms, self.present, self.has_loss = [], [], [], [], [], []
        self.normed = []


class Snapshot:
    """The last good parameters, buffers and optimizer state, kept in memory (on the model's device) for a
    rollback. Taking it again copies into the same tensors where the layout is unchanged.

    Example:
        >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> snap = Snapshot(); snap.take(model, opt)
        >>> with torch.no_grad(): _ = model.weight.fill_(float("nan"))
        >>> snap.restore(model, opt); bool(model.weight.isfinite().all())
        True
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.optimizer: Any = None
        self.step: int | None = None  # the loop's step when it was taken (the loop sets it)

    @torch.no_grad()
    def take(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """Keep the model's and the optimizer's state as they are now (None: the model's only)."""
        self.model = _refresh(self.model, model.state_dict())
        self.optimizer = _refresh(self.optimizer, optimizer.state_dict()) if optimizer is not None else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, keep_lrs: bool = True) -> None:
        """Put the kept state back. ``keep_lrs``: the learning rates stay as they are now (a remedy may have set
        them); False: the kept ones come back too (``gdlab.lr_find`` putting everything back as it was)."""
        model.load_state_dict(self.model)
        if optimizer is None or self.optimizer is None:
            return
        lrs = [group.get("lr") for group in optimizer.param_groups]
        optimizer.load_state_dict(_refresh(None, self.optimizer))  # a copy: the snapshot stays as it was
        if keep_lrs:
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr


def _refresh(kept: Any, now: Any) -> Any:
    """A copy of the tree ``now``, written into ``kept``'s tensors where shapes and dtypes match."""
    if isinstance(now, Tensor):
        if isinstance(kept, Tensor) and kept.shape == now.shape and kept.dtype == now.dtype and \
                kept.device == now.device:
            return kept.copy_(now)
        return now.detach().clone()
    if isinstance(now, dict):
        old = kept if isinstance(kept, dict) else {}
        return {k: _refresh(old.get(k), v) for k, v in now.items()}
    if isinstance(now, (list, tuple)):
        old_items = list(kept) if isinstance(kept, (list, tuple)) and len(kept) == len(now) else [None] * len(now)
        items = [_refresh(o, v) for o, v in zip(old_items, now)]
        return type(now)(*items) if hasattr(now, "_fields") else type(now)(items)
    return now


def run(problem: Problem, state: LoopState, hooks: Sequence[Any] | Hooks = (), *, tol: float | None = None,
        patience: int | None = None, log_every: int = LOG_EVERY, grad_norms: bool = True,
        checkpoint: Callable[[LoopState], None] | None = None, checkpoint_every: int | None = None,
        ranks: distributed.Ranks | None = None, agree: Callable[[LoopState], None] | None = None) -> None:
    """Train ``state.model`` on ``problem`` from where ``state`` stands until ``state.total_steps`` or a stop.

    Args:
        problem: the model and data, checked (:class:`~gdlab.problem.Problem`).
        state: the position, optimizer and history; changed in place.
        hooks: callbacks (:class:`Callback` subclasses, or plain objects with methods named after its hooks:
            the :data:`EVENTS`, ``on_diverge(state) -> bool``, asked before a run with a non-finite loss stops,
            True: it acted, go on; and ``close()``, called when the run fails), or their :class:`Hooks`.
        tol: stop when the epoch's train loss changes by less than ``tol``.
        patience: stop when the validation loss has not improved for ``patience`` epochs.
        log_every: steps between host reads of the loss and gradient norms (and the divergence check).
        grad_norms: take each step's gradient norms (the ``grad_norm`` column; one more read of every gradient).
        checkpoint: called every ``checkpoint_every`` steps (default: each epoch's end), at a stop and at the end.
        ranks: data-parallel training over these ranks (:mod:`gdlab.distributed`; ``problem.plan`` gives this rank
            its slice of each global batch): the model is wrapped in ``DistributedDataParallel`` for the step, and
            each step's loss is averaged over the ranks as the global batch's (without waiting: read with the rest).
        agree: with ``ranks``, called on every rank at each check (every ``log_every`` steps and each epoch's end):
            the ranks agree there on the learning rates, the stop and the parameters
            (:class:`gdlab.distributed.Agreement`); the loop stops only at a check.
    """
    model, optimizer, plan = state.model, state.optimizer, state.plan
    net = distributed.wrap(model, ranks) if ranks is not None else model
    dispatch = hooks if isinstance(hooks, Hooks) else Hooks(hooks)

    def emit(event: str) -> None:
        for handler in dispatch.handlers[event]:
            handler(state)

    log = state.log = StepLog(state, list(model.parameters()))
    log.keep_param_norms = dispatch.plan.param_norms  # a hook reads them (Callback.reads_param_norms)
    # 16-mixed: the loss is scaled before the backward pass against float16 underflow, the gradients unscaled
    # before they are measured or used, and a step with non-finite gradients is skipped (torch.amp's GradScaler)
    scaler = torch.amp.GradScaler(problem.device.type) if problem.precision == "16-mixed" else None
    good = Snapshot()
    good.take(model, optimizer)
    good.step = state.step
    # the batches read from a Dataset, held till their loss is read: the divergence check tests the batch the step
    # saw (in-memory data is rebuilt exactly from its indices; with ranks, every rank rebuilds the global batch)
    held = HeldBatches() if ranks is None and problem.source.tensors is None else None
    every = checkpoint_every or plan.iterations_per_epoch
    started = time.perf_counter() - state.seconds
    model.train()
    with _graceful_interrupt(state, launched=ranks is not None):
        try:
            emit("on_fit_start")
            batches: Iterator[tuple[Tensor, ...]] | None = None
            agreed_stop = False  # with ``agree``, the ranks stop together, at a check
            while state.step < state.total_steps and not (agreed_stop if agree is not None else state.stop_reason):
                if state.iteration == 0:
                    emit("on_epoch_start")
                if state.iteration == 0 or batches is None:  # a new epoch, or a resumed one
                    batches = problem.source.batches(plan, state.seed, state.epoch, state.iteration)

                # (2) evaluate the loss and its gradient on one batch (the user's data and model fail as one line)
                try:
                    x, y = next(batches)
                except Exception as e:
                    raise _failed(e, problem, f"reading the batch of step {state.step + 1}") from e
                state.batch = (x, y)
                if held is not None:
                    held.hold(state.step + 1, x, y)
                emit("on_step_start")
                try:
                    with problem.autocast():  # nothing at precision "32"
                        loss = problem.batch_loss(net, x, y)
                except Exception as e:
                    raise _failed(e, problem, f"the forward pass of step {state.step + 1}") from e
                samples, pending, shown = len(y), None, loss.detach()
                if ranks is not None:
                    local, samples = plan.share(state.iteration)
                    shown, pending = _reduce_loss(shown, local / samples if problem.mean_loss else 1 / ranks.world)
                    if problem.mean_loss and local * ranks.world != samples:  # unequal slices: the global mean's
                        loss = loss * (local * ranks.world / samples)  # gradient, as DDP averages the ranks'
                optimizer.zero_grad(set_to_none=True)
                try:
                    if scaler is None:
                        loss.backward()
                    else:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                except Exception as e:
                    raise _failed(e, problem, f"the backward pass of step {state.step + 1}") from e
                if grad_norms:
                    log.grad_norms()

                # (3) update the parameters
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()

                # (4) record on the device, and repeat; the host reads the values every log_every steps
                state.step += 1
                state.iteration += 1
                log.record(shown, samples, pending)
                emit("on_step_end")
                epoch_done = state.iteration == plan.iterations_per_epoch
                # with ranks, a checkpoint's step is a check too: every rank reads (and may roll back) alike
                periodic = epoch_done or state.step % log_every == 0 or (ranks is not None and state.step % every == 0)
                if periodic or log.diverged_at is not None:
                    _check(state, log, good, dispatch, problem, held)
                if epoch_done:
                    _end_epoch(problem, state, tol, patience, started)
                    emit("on_epoch_end")
                    state.epoch += 1
                    state.iteration = state.epoch_samples = 0
                    state.epoch_loss_sum = 0.0
                if state.interrupted and agree is None:
                    state.stop("interrupted")
                if agree is not None and periodic:
                    agree(state)
                    agreed_stop = state.stop_reason is not None
                stopping = agreed_stop if agree is not None else state.stop_reason is not None
                if checkpoint and (state.step % every == 0 or stopping):
                    _check(state, log, good, dispatch, problem, held)
                    state.seconds = time.perf_counter() - started
                    checkpoint(state)

            _check(state, log, good, dispatch, problem, held)
            log.close()
            # a budget in steps, or a stop, can end mid-epoch: record the part done (its first step too, when even
            # that one's loss was not finite: the epoch's record is then non-finite, never an earlier epoch's)
            if state.epoch_samples or state.iteration:
                _end_epoch(problem, state, None, None, started)
            state.seconds = time.perf_counter() - started
            if checkpoint:
                checkpoint(state)
            emit("on_fit_end")
        except BaseException:
            state.seconds = time.perf_counter() - started
            _close(log, dispatch)
            raise


def final_metrics(state: LoopState, val: Sequence[str] | None) -> dict[str, float | None]:
    """The run's final values, alike for every front door: ``train_loss`` (the last epoch's), ``val_loss`` and the
    validation metrics named in ``val`` (``accuracy`` -> ``val_accuracy``; :func:`val_metrics` gives the task's,
    :data:`gdlab.metrics.METRICS`); ``val=None``: no validation data, ``val_loss`` None. A loss that was not finite
    stays NaN or inf (a run whose last epoch had no finite loss ends with a non-finite ``train_loss``, never 0); a
    metric that was not finite or never recorded is None."""
    epochs = state.history.epochs
    final: dict[str, float | None] = {"train_loss": epochs.last("train_loss", state.loss)}
    final["val_loss"] = epochs.last("val_loss") if val is not None else None
    if val is not None:
        final.update({f"val_{name}": epochs.last(f"val_{name}") for name in val})
    return {k: (None if v is not None and math.isnan(v) and k not in _LOSSES else v) for k, v in final.items()}


def val_metrics(problem: Problem) -> Sequence[str] | None:
    """The validation metrics a problem's run ends with (its task's), or None without validation data."""
    return METRICS.get(problem.task, ()) if problem.val is not None else None


_LOSSES = ("train_loss", "val_loss")


def _check(state: LoopState, log: StepLog, good: Snapshot, hooks: Hooks,
           problem: Problem | None = None, held: HeldBatches | None = None) -> None:
    """Read the pending values; on a non-finite loss roll back (a hook's remedy, or a stop); else keep the
    parameters as the last good point when they are finite. ``held``: the batches of the steps just read."""
    params = [p.detach() for p in state.model.parameters()]
    (size,) = log.fetch([torch.stack(torch._foreach_norm(params)).sum() if params else torch.zeros(())])
    batches = held.let_go() if held is not None else []
    if log.diverged_at is None and math.isfinite(size):
        good.take(state.model, state.optimizer)
        good.step = state.step
        return
    steps = state.history.steps
    if log.diverged_at is None:  # finite losses, but the last update left the parameters non-finite
        log.diverged_at = len(steps) - 1
    row, log.diverged_at = log.diverged_at, None
    steps.truncate(row + 1)  # the steps after the first non-finite loss are undone with the rollback
    state.step = int(steps["step"][row])
    state.last_loss = steps["loss"][row]
    good.restore(state.model, state.optimizer)
    # the parameters restored are the ones the diverging step started from when it is the first since the snapshot:
    # its forward pass can then be replayed to tell the model's output from the loss
    replay = good.step is not None and state.step == good.step + 1 and not math.isfinite(state.last_loss)
    cause = _cause(problem, state, int(steps["epoch"][row]), replay, batches) if problem is not None else None
    if settle_divergence(state, row, hooks, cause):
        good.step = None  # a hook acted (it may have put back a point of its own): no replay until the next take


Cause = tuple[str, int, str, float | None]
"""Where a non-finite loss came from, when not the learning rate: ``(source, count, reason, target scale)``, the
source a key of :data:`~gdlab.problem.NON_FINITE_SOURCES`."""


def settle_divergence(state: LoopState, row: int, hooks: Hooks | Sequence[Any], cause: Cause | None) -> bool:
    """The one verdict on a non-finite loss at the history's ``row`` (``fit``'s loop and ``gdlab.watch`` both end
    here): a known ``cause`` (:func:`data_cause`: the data, the starting point, the model or the loss) is written in
    the row's ``bad_data`` columns and stops the run, since no learning rate can help; else each hook's
    ``on_diverge(state)`` is asked, and when none acted the run stops, the learning rate named. Returns whether a
    hook acted (the run goes on)."""
    steps = state.history.steps
    if cause is not None:
        what, count, reason, scale = cause
        steps.put("bad_data", row, NON_FINITE_SOURCES[what])
        steps.put("bad_data_count", row, float(count))
        if scale is not None:
            steps.put("bad_data_scale", row, scale)
        state.stop(f"diverged: {reason}")
        return False
    if (hooks if isinstance(hooks, Hooks) else Hooks(hooks)).diverged(state):
        return True
    state.stop(f"diverged: the loss became {steps['loss'][row]} at step {int(steps['step'][row])}; "
               "the learning rate is likely too large")
    return False


def data_cause(batch: tuple[Any, Any] | None, step: int) -> Cause | None:
    """The batch of ``step`` (``(inputs, targets)``, either may be None, or an int: that part's count of NaN and
    inf values, already taken) as the cause of its non-finite loss: the first part holding NaN or inf, with the
    count; None when both are finite (or no batch is known).

    Example:
        >>> data_cause((torch.tensor([1.0, float("nan")]), None), 7)[:2]
        ('inputs', 1)
    """
    if batch is None:
        return None
    for what, tree in (("inputs", batch[0]), ("targets", batch[1])):
        count = tree if isinstance(tree, int) else non_finite(tree) if tree is not None else 0
        if count:
            return what, count, (f"the batch of step {step} has {count} NaN or inf values in its {what}: a data "
                                 "problem, not the learning rate; clean or impute the data"), None
    return None


HELD_BYTES = 64 * 2**20
"""How many bytes of batches :class:`HeldBatches` holds by reference until their losses are read (64 MiB). Past it a
step's batch is reduced at once to its count of NaN and inf values: a few kernels on the device, no host read, no
reference kept, so a run of large batches (images on a GPU) never holds them all."""


class Counted:
    """A held batch part reduced to its number of NaN and inf values (a device tensor: read at the check only)."""

    def __init__(self, count: Tensor) -> None:
        self.count = count


class HeldBatches:
    """The batches of the steps whose loss is still unread, for the divergence check: the batch a step's forward
    pass saw, by reference (no copy) while the held ones stay within :data:`HELD_BYTES`, else reduced on the device
    to its NaN and inf counts. At each read they are let go (:meth:`let_go`); after a divergence the diverging
    step's batch is the one tested (:meth:`cause`), not one read again: a Dataset may not give the same batch twice
    (augmentation, a file rewritten, a sample corrupt once). ``fit``'s loop holds the batches it reads from a
    Dataset (in-memory tensors are rebuilt exactly from their indices); ``gdlab.watch`` holds every step's.

    Example:
        >>> held = HeldBatches()
        >>> held.hold(3, torch.tensor([1.0, float("nan")]), torch.zeros(2))
        >>> held.cause(held.let_go(), 3)[:2], held.let_go()
        (('inputs', 1), [])
    """

    def __init__(self) -> None:
        self.batches: list[tuple[int, Any, Any]] = []
        self.bytes = 0

    def hold(self, step: int, x: Any, y: Any = None) -> None:
        """Keep step ``step``'s batch: a reference within :data:`HELD_BYTES`, else its non-finite counts."""
        size = _nbytes(x) + _nbytes(y) if y is not None else _nbytes(x)
        if self.bytes + size <= HELD_BYTES:
            self.bytes += size
            self.batches.append((step, x, y))
        else:
            self.batches.append((step, _counted(x), _counted(y)))

    def let_go(self) -> list[tuple[int, Any, Any]]:
        """The batches held so far, handed over and no longer held (every step up to here is read)."""
        held, self.batches, self.bytes = self.batches, [], 0
        return held

    @staticmethod
    def cause(held: Sequence[tuple[int, Any, Any]], step: int) -> Cause | None:
        """:func:`data_cause` of step ``step``'s batch among ``held`` (None where it is clean or not held)."""
        for at, x, y in held:
            if at == step:
                return data_cause((_read(x), _read(y)), step)
        return None

    @staticmethod
    def has(held: Sequence[tuple[int, Any, Any]], step: int) -> bool:
        """Whether step ``step``'s batch is among ``held``."""
        return any(at == step for at, _, _ in held)


def _counted(tree: Any) -> Counted | None:
    if tree is None:
        return None
    parts = [(~torch.isfinite(t)).sum() for t in structure.leaves(tree)
             if isinstance(t, Tensor) and t.is_floating_point()]
    return Counted(torch.stack(parts).sum() if parts else torch.zeros((), dtype=torch.long))


def _nbytes(tree: Any) -> int:
    """The bytes of the tensors in ``tree`` (tensors, tuples, lists, dicts): on every step, so no tree walk."""
    kind = type(tree)
    if kind is tuple and len(tree) == 1:  # a forward pass's (x,): every step of a watched loop, so kept short
        tree = tree[0]
    if isinstance(tree, Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, (tuple, list)):
        return sum(_nbytes(t) for t in tree)
    if isinstance(tree, dict):
        return sum(_nbytes(t) for t in tree.values())
    return 0


def _read(part: Any) -> Any:
    """A held batch part as :func:`data_cause` takes it: a reduced one (:class:`Counted`) as its count."""
    return int(part.count) if isinstance(part, Counted) else part


@torch.no_grad()
def _cause(problem: Problem, state: LoopState, epoch: int, replay: bool,
           kept: Sequence[tuple[int, Any, Any]] = ()) -> Cause | None:
    """Where the non-finite loss of step ``state.step`` came from, when it is not the learning rate: ``(source,
    count, reason, target scale)``, the source a key of :data:`~gdlab.problem.NON_FINITE_SOURCES`. Read only after
    a divergence (the step's batch as ``kept``, :class:`HeldBatches`, else rebuilt from its seed, epoch and
    iteration), so training pays nothing; None where the cause cannot be told (the learning rate, most often).

    The batch's inputs or targets holding NaN or inf come first; then the parameters the run was rolled back to
    (not finite: its starting point was not); then, with ``replay`` (those parameters are the ones the step
    started from), the step's forward pass again: the model's output, else the loss, not finite."""
    step = state.step
    if HeldBatches.has(kept, step):  # the batch the step saw (a Dataset may not read the same twice)
        found = HeldBatches.cause(kept, step)
        batch = next(((x, y) for at, x, y in kept if at == step and not isinstance(x, Counted) and
                      not isinstance(y, Counted)), None)
    else:
        batch = _batch(problem, state, epoch)
        found = data_cause(batch, step)
    if found is not None:
        return found
    named = [(name, p) for name, p in state.model.named_parameters() if p.is_floating_point()]
    counts = torch.stack([(~torch.isfinite(p)).sum() for _, p in named]).tolist() if named else []
    if sum(counts):
        first = next(name for (name, _), c in zip(named, counts) if c)
        return "parameters", int(sum(counts)), (
            f"the model's parameters hold {int(sum(counts))} NaN or inf values (the first in '{shorten(first, 60)}') "
            f"at step {step}, before its update: the starting point is not finite (the initialisation, or the "
            "checkpoint resumed from); no learning rate can help"), None
    if not replay or batch is None:
        return None
    x, y = batch
    try:
        with problem.autocast():
            loss, output = problem.forward(state.model, x, y)
    except Exception:  # the model fails where it ran before: say nothing rather than guess
        return None
    shown = output if isinstance(output, Tensor) else prediction(output)
    count = non_finite(shown) if shown is not None else 0
    if count:
        return "output", count, (f"the model returned {count} NaN or inf values at step {step} for finite inputs "
                                 "and parameters: its forward pass is at fault (a log or division by 0, an "
                                 "overflow), not the learning rate"), None
    if bool(torch.isfinite(loss).all()):
        return None
    scale = float(y.abs().max()) if y.is_floating_point() and y.numel() else None
    held = loss.dtype if loss.is_floating_point() else torch.float32
    largest = torch.finfo(held).max
    if scale is not None and scale * scale * max(len(y), 1) > largest:
        reason = (f"the loss overflowed at step {step}: the model's outputs are finite, but the targets reach "
                  f"{scale:.3g}, and their squares over a batch pass {str(held).removeprefix('torch.')}'s largest "
                  f"number ({largest:.3g}); scale the targets (standardize them), not the learning rate")
    else:
        reason = (f"the loss ({problem.loss_name}) became {float(loss.float().reshape(-1)[0])} at step {step} from "
                  "finite outputs and targets" + (f" (the targets reach {scale:.3g})" if scale is not None else "")
                  + ": not the learning rate")
    return "loss", 0, reason, scale


def _batch(problem: Problem, state: LoopState, epoch: int) -> tuple[Any, Tensor] | None:
    """The batch of step ``state.step`` (in ``epoch``, 1-based) rebuilt from its seed, epoch and iteration, or None.
    With ranks, the whole global batch (every rank comes to the same answer)."""
    plan = problem.plan if problem.plan.ranks == 1 else dataclasses.replace(problem.plan, ranks=1, rank=0)
    iteration = state.step - 1 - (epoch - 1) * plan.iterations_per_epoch
    if not 0 <= iteration < plan.iterations_per_epoch:
        return None
    try:
        return next(problem.source.batches(plan, state.seed, epoch - 1, iteration))
    except Exception:  # the data cannot be read again: say nothing rather than guess
        return None


class LauncherEnded(RuntimeError):
    """A rank of data-parallel training ended by its launcher (SIGTERM): another rank failed, or the launch was
    stopped. Raised as it is, never taken for the user's code failing."""


def _failed(error: Exception, problem: Problem, doing: str) -> BaseException:
    """The error to raise for ``error``, raised by the user's data, model or loss while ``doing``: gdlab's own
    errors (and a launcher's end) as they are, anything else one :class:`~gdlab.errors.GdlabError` line naming the
    step, what ran, the error and the user's file and line (the original is its ``__cause__``)."""
    if isinstance(error, (GdlabError, LauncherEnded)):
        return error
    from gdlab.resolve import raised

    if doing.startswith("reading"):
        data = problem.source.dataset
        named = f"the Dataset {type(data).__name__}" if data is not None else "the training data"
        return DataError(f"{doing} failed: {named} raised {raised(error)}")
    return ModelError(f"{doing} (model {type(problem.model).__name__}, loss {problem.loss_name}) raised "
                      f"{raised(error)}")


def _reduce_loss(loss: Tensor, weight: float) -> tuple[Tensor, Any]:
    """``loss`` times ``weight``, summed over the ranks by an all-reduce that is not waited for: ``(the tensor
    it writes, the pending work)``."""
    low = loss.dtype in (torch.bfloat16, torch.float16)
    shown = (loss.reshape(1).float() if low else loss.reshape(1)) * weight  # a new tensor: the loss is untouched
    return shown, torch.distributed.all_reduce(shown, async_op=True)


def _close(log: StepLog, hooks: Hooks) -> None:
    """After a failure: keep what was measured (when the device still answers) and close the hooks."""
    try:
        log.close()
    except Exception:  # the device failed too: what is pending is lost, the first error is raised
        pass
    hooks.close()  # the progress bar must not leave the terminal live


def _end_epoch(problem: Problem, state: LoopState, tol: float | None, patience: int | None,
               started: float) -> None:
    """Record the epoch (train loss, validation loss and metrics) and apply the stopping rules."""
    # an epoch without a finite loss (diverged at its first step) records that loss: NaN or inf, never 0
    train = state.epoch_loss_sum / state.epoch_samples if state.epoch_samples else \
        state.last_loss if not math.isfinite(state.last_loss) else math.nan
    row: dict[str, float] = {"epoch": state.epoch + 1, "step": state.step, "train_loss": train}
    if problem.val is not None:
        try:
            with problem.autocast():
                measured = evaluate(state.model, problem.val, problem.loss_fn, problem.loss_name)
        except Exception as e:
            raise _failed(e, problem, f"evaluating the validation data at the end of epoch {state.epoch + 1}") \
                from e
        if not math.isfinite(measured["loss"]):  # NaN or inf outputs: their accuracy or R² would be made up
            measured = {k: (v if k == "loss" else math.nan) for k, v in measured.items()}
        row.update({f"val_{k}": v for k, v in measured.items()})
    row["seconds"] = time.perf_counter() - started
    previous = state.history.epochs.last("train_loss")
    state.history.epochs.append(row)
    if tol is not None and abs(previous - row["train_loss"]) < tol:
        state.stop(f"converged: the train loss changed by less than tol={tol:g}")
    if patience is not None:
        if row["val_loss"] < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = row["val_loss"], 0
        else:
            state.bad_epochs += 1
            if state.bad_epochs >= patience:
                state.stop(f"early stop: no better validation loss for {patience} epochs")


@contextmanager
def _graceful_interrupt(state: LoopState, *, launched: bool = False) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM): finish the step, checkpoint, stop. A second one stops at once. A rank of
    data-parallel training (``launched``) takes SIGTERM as its launcher ending it, because another rank failed: it
    fails at once rather than wait for ranks that are gone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if launched and signum == signal.SIGTERM:
            raise LauncherEnded("ended by the launcher (SIGTERM): another rank failed, or the launch was stopped")
        if state.interrupted:
            raise KeyboardInterrupt
        state.interrupted = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
