"""One run from its start to its end, whichever front door drives it: :func:`gdlab.fit` (gdlab's loop),
:func:`gdlab.watch` (a loop the user wrote) and, through ``watch``, the Lightning and Hugging Face callbacks.

A :class:`Run` owns what every run does alike, so that a behaviour fixed here is fixed for all of them:

- **the start**: the store's record of the run (a new run, or a stored one restored from its last checkpoint), the
  TensorBoard writer, and the hooks in their one order: the schedule and the instruments, the doctor, the user's
  callbacks, the recorder, the board, the progress bar (:attr:`Run.hooks`). :func:`describe` is the one summary
  of a run's settings the store keeps, :func:`start_meta` what the doctor reads of the model and the optimizer;
- **the ranks** (data-parallel ``fit``): every rank takes rank zero's run (:meth:`Run.share_start`) and agrees at
  the loop's checks (:meth:`Run.agreement`); they leave together;
- **failure**: what was recorded is kept, the stored run is marked ``failed`` (``stopped`` on Ctrl-C) and the
  board written (:meth:`Run.fail`);
- **the end**: the doctor's findings and remedies, the stored run closed with its final metrics, the board
  closed, and the :class:`~gdlab.loop.Result` with the doctor's causal story (:meth:`Run.end`).

The front doors keep what is theirs: ``fit`` builds the problem, chooses the learning rate and drives
:func:`gdlab.loop.run`; ``watch`` follows the user's loop step by step.

Example:
    >>> import torch
    >>> from gdlab import loop
    >>> from gdlab.problem import Problem
    >>> X = torch.randn(32, 2); y = X.sum(1, keepdim=True)
    >>> problem = Problem.make(torch.nn.Linear(2, 1), (X, y), batch_size=8, device="cpu")
    >>> state = loop.LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.1), total_steps=40)
    >>> run = Run(state)
    >>> loop.run(problem, state, run.hooks)
    >>> result = run.end(loop.final_metrics(state, None), "finished")
    >>> result.steps, result.status, result.findings
    (40, 'finished', [])
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gdlab import distributed
from gdlab.callbacks import POSITION, Recorder
from gdlab.errors import StoreError
from gdlab.loop import LoopState, Result
from gdlab.store import STEP_ROWS, Store

__all__ = ["Diagnosing", "Run", "describe", "start_meta"]


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """SIGTERM waits (blocked, then delivered) while a failure is recorded: under a launcher (torchrun), the other
    ranks get SIGTERM the moment one fails, and a rank that has left the loop (whose handler turns SIGTERM into an
    error) would otherwise die mid-write, its run left open. POSIX, main thread; elsewhere nothing changes."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class Diagnosing(Protocol):
    """What a run asks of its doctor at the end (:class:`gdlab.doctor.Doctor` is one): the findings, the remedies
    applied during the run, and the findings told as causes and consequences."""

    findings: list[Any]
    remedies: list[Any]

    def diagnosis(self, *, run_id: str | None, steps: int | None) -> Any: ...


def describe(model: nn.Module, optimizer: Any, **settings: Any) -> dict[str, Any]:
    """The summary of a run's settings the store keeps when no config is given: the model's class, the optimizer
    (its name, or its class), and ``settings`` as given (``lr``, ``batch_size``, ``loop``...).

    Example:
        >>> describe(torch.nn.Linear(2, 1), "sgd", lr=0.1, loop="watch")
        {'model': 'Linear', 'optimizer': 'sgd', 'lr': 0.1, 'loop': 'watch'}
    """
    name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    return {"model": type(model).__name__, "optimizer": name, **settings}


def start_meta(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What the doctor reads of a run's start besides the numbers, alike for every front door: the first parameter
    group's learning rate and momentum, and whether the loss is convex in the parameters (one trainable linear
    layer: a convex loss has no local minimum to restart from).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> start_meta(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        {'lr': 0.1, 'momentum': 0.9, 'convex': True}
    """
    group = optimizer.param_groups[0]
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    return {"lr": group.get("lr"), "momentum": group.get("momentum"),
            "convex": len(owners) == 1 and isinstance(owners[0], nn.Linear)}


class Run:
    """A run's start, end, failure and ranks (see the module). Build it with the run's state, then
    :meth:`record` it in a store (if any), drive the loop with :attr:`hooks`, and call :meth:`end` (or
    :meth:`fail`).

    Args:
        state: the loop's state (its model, optimizer, plan and history).
        doctor: the doctor watching the run (a hook): its findings and remedies end the run; None without one.
        diagnose: report the doctor's findings (False: the doctor only acts, ``remedy="auto"`` without findings).
        watching: the hooks that come before the doctor (a schedule, the instruments).
        callbacks: the user's hooks (after the doctor, before the record).
        store: a :class:`~gdlab.store.Store` or its folder, or None.
        tensorboard: a folder for TensorBoard event files, or None.
        progress: draw a progress bar (last among the hooks).
        ranks: data-parallel ranks (:class:`gdlab.distributed.Ranks`), or None in one process.
        step_rows: the newest steps the store keeps as recorded (:meth:`Store.add_steps`).
        checkpoint_share: the share of the run's time its checkpoints may take (the recorder skips one due sooner;
            the first, the last and one at a stop are always written); None: every checkpoint asked for.
    """

    def __init__(self, state: LoopState, *, doctor: Diagnosing | None = None, diagnose: bool = True,
                 watching: Sequence[Any] = (), callbacks: Sequence[Any] = (), store: Store | str | Path | None = None,
                 tensorboard: str | Path | None = None, progress: bool = False,
                 ranks: distributed.Ranks | None = None, step_rows: int = STEP_ROWS,
                 checkpoint_share: float | None = None) -> None:
        self.state, self.doctor, self.diagnose, self.ranks, self.step_rows = state, doctor, diagnose, ranks, step_rows
        self.checkpoint_share = checkpoint_share
        self.board: Any = None
        if tensorboard is not None:  # before the store: a missing extra leaves no store behind
            from gdlab.integrations.tensorboard import TensorBoard  # an edge: imported only when asked

            self.board = TensorBoard(tensorboard)
        self.store = store if isinstance(store, Store) or store is None else Store(store)
        self.recorder: Recorder | None = None
        self._watching, self._callbacks = list(watching), list(callbacks)
        self._bar: Any = None
        if progress:
            from gdlab.progress import ProgressBar  # an edge: rich is imported only when a bar is wanted

            self._bar = ProgressBar()

    @property
    def doctor_meta(self) -> dict[str, Any]:
        """The history's meta the store keeps for ``gdlab doctor`` (the settings the run may change left out)."""
        return {k: v for k, v in self.state.history.meta.items() if k not in ("lr", "momentum")}

    def record(self, described: dict[str, Any], *, plan: dict[str, Any] | None, name: str | None = None,
               resume: str | None = None, config: dict[str, Any] | None = None) -> None:
        """Record the run in the store (nothing without one): a new run described by ``described`` (with the
        doctor's meta and the batch ``plan``), or, with ``resume``, the stored run restored into the state from its
        last checkpoint (``config``, if given, replaces its stored settings)."""
        if self.store is None:
            return
        state = self.state
        if resume is not None:
            run = self.store.get(resume)
            if run.status == "running":
                raise StoreError(f"run {run.id} is still running in another process: stop it first (Ctrl-C), then "
                                 "resume it; if no process runs it any more (killed in a container, on another "
                                 "machine), resume it with gdlab train --resume RUN --force (Store.abandon)")
            meta = dict(state.history.meta)
            self.recorder = Recorder(self.store, run.id, step_rows=self.step_rows,
                                     checkpoint_share=self.checkpoint_share)
            self.recorder.restore(state, config)
            state.history.meta.update(meta)  # the stored history: the doctor reads this run's meta
        else:
            described = {**described, "doctor_meta": self.doctor_meta}
            run_id = self.store.create_run(described, plan, name=name)
            self.recorder = Recorder(self.store, run_id, step_rows=self.step_rows,
                                     checkpoint_share=self.checkpoint_share)
        state.run_id = self.recorder.run_id

    def share_start(self, resumed: bool) -> None:
        """Data-parallel: every rank takes rank zero's run id and, for a resumed run, rank zero's restored
        parameters, optimizer state, position and history (rank zero alone reads the store)."""
        state = self.state
        if self.ranks is None:
            return
        if not resumed:
            state.run_id = distributed.broadcast(state.run_id)
            return
        main = distributed.is_main()
        shared = distributed.broadcast((state.run_id, {key: getattr(state, key) for key in POSITION}, state.history)
                                       if main else None)
        distributed.share_state(state.model, state.optimizer)
        if not main:
            state.run_id, position, state.history = shared
            for key, value in position.items():
                setattr(state, key, value)
            state.loss = state.history.steps.last("loss")

    @property
    def hooks(self) -> list[Any]:
        """The run's hooks in their one order: the schedule and instruments, the doctor, the user's callbacks, the
        recorder, the board, the progress bar."""
        hooks = [*self._watching, *([self.doctor] if self.doctor is not None else []), *self._callbacks,
                 *([self.recorder] if self.recorder is not None else []),
                 *([self.board] if self.board is not None else []), *([self._bar] if self._bar is not None else [])]
        return hooks

    def agreement(self) -> distributed.Agreement | None:
        """Data-parallel: what the ranks agree on at the loop's checks (the doctor's actions share rank zero's
        parameters); None in one process."""
        if self.ranks is None:
            return None
        doctor = self.doctor
        return distributed.Agreement(self.ranks, (lambda: len(doctor.remedies)) if doctor is not None else None)

    def fail(self, error: BaseException, seconds: float | None = None) -> None:
        """The loop failed: keep what was recorded, mark the stored run ``failed`` (``stopped`` on Ctrl-C), write
        and close the board."""
        state = self.state
        if self.recorder is not None:
            with _sigterm_held():
                self.recorder.fail(state, error, state.seconds if seconds is None else seconds)
        if self.board is not None:
            self.board.write(state.history)
            self.board.close()

    def end(self, final: dict[str, float | None], status: str, *, lr_selection: Any = None,
            described: dict[str, Any] | None = None, checkpoint: bool = False,
            model: nn.Module | None = None) -> Result:
        """The run's end: the stored run closed as ``status`` with its ``final`` metrics, findings and remedies (its
        settings updated to ``described`` and the doctor's meta, and a last checkpoint, where asked), the board
        closed; every rank leaves together. Returns the :class:`~gdlab.loop.Result` (of ``model``: the module the
        user passed, where the state's is the one inside a wrapper)."""
        state, doctor = self.state, self.doctor
        findings = list(doctor.findings) if doctor is not None and self.diagnose else []
        remedies = list(doctor.remedies) if doctor is not None else []
        if self.recorder is not None:
            if described is not None:
                self.recorder.store.update_config(self.recorder.run_id, {**described, "doctor_meta": self.doctor_meta})
            if checkpoint:
                self.recorder.checkpoint(state)
            self.recorder.finish(state, status, final, findings, remedies)
        if self.board is not None:
            self.board.close(findings, remedies)
        if self.ranks is not None:  # no rank goes on (or exits) while a peer still speaks to it
            torch.distributed.barrier()
        diagnosis = doctor.diagnosis(run_id=state.run_id, steps=state.step) \
            if doctor is not None and self.diagnose else None
        return Result(model if model is not None else state.model, state.history, final, state.lr, state.run_id,
                      state.seconds, state.plan, status,
                      state.stop_reason, state.step, findings=findings, lr_selection=lr_selection,
                      remedies=remedies, diagnosis=diagnosis)
