"""How many CPU threads torch uses for a training run: one for a model too small to gain from more.

torch runs each operation on ``torch.get_num_threads()`` threads (by default one per physical core). A small
model's operations are too short to split: the threads only add a hand-off per operation, and with another
process on the cores a thread that waits for a core stalls the whole step. ``fit(threads="auto")`` (the default,
``--threads auto``) therefore picks one thread when the work of a step, ``parameters x batch size`` (about the
multiply-adds of one forward pass of a dense model), is below :data:`AUTO_WORK`, and leaves torch's count as it is
above it. An integer sets the count, up to the CPUs this process may use (:func:`cpu_limit`: its CPU affinity, else
the machine's count; more threads than cores only wait for one another, and torch crashes on a count in the tens
of thousands). ``fit`` restores the previous count when it returns or raises (a library leaves no global state
changed). Only a CPU run is touched: on a GPU the count is left as it is under ``"auto"``.

``benchmarks/threads.py --rule`` times a step at 1 thread and at torch's count for a grid of sizes
(docs/benchmarks.md, "threads"): on the shared 2-core machine of the figures one thread won at every size, up to
500 million, so the threshold could not be measured there; 2 million is a judgement (a step's operations below it
last microseconds, too short to split), to be measured on a machine with free cores.

Example:
    >>> import torch
    >>> choose("auto", torch.nn.Linear(2, 1), batch_size=32, device=torch.device("cpu"))
    1
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from gdlab.errors import InvalidParameter

__all__ = ["AUTO_WORK", "check_threads", "choose", "cpu_limit", "restored", "use"]

AUTO_WORK = 2_000_000
"""``parameters x batch size`` below which ``threads="auto"`` trains on one thread (see the module on how it was
chosen)."""

P = ParamSpec("P")
R = TypeVar("R")


def cpu_limit() -> int:
    """The CPUs this process may run on: its affinity (``os.sched_getaffinity``, where the system has it: a
    container or ``taskset`` may allow fewer than the machine has), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def check_threads(value: Any) -> int | str:
    """``"auto"`` or a positive integer up to :func:`cpu_limit` (text from the command line is read as one).

    Example:
        >>> check_threads("auto"), check_threads("1")
        ('auto', 1)
        >>> check_threads(10**5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid threads 100000: expected "auto" or a positive integer up to ...
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    limit = cpu_limit()
    expected = f'"auto" or a positive integer up to {limit} (the CPUs this process may use)'
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit):
        return value
    raise InvalidParameter("threads", value, expected)


def choose(threads: Any, model: nn.Module, *, batch_size: int, device: torch.device) -> int:
    """The thread count for training ``model`` on batches of ``batch_size``: ``threads`` when it is a number;
    under ``"auto"``, 1 on the CPU when ``parameters x batch_size < AUTO_WORK``, else torch's current count."""
    threads = check_threads(threads)
    if isinstance(threads, int):
        return threads
    if device.type != "cpu":
        return torch.get_num_threads()
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 1 if parameters * batch_size < AUTO_WORK else torch.get_num_threads()


def use(threads: Any, model: nn.Module, *, batch_size: int, device: torch.device) -> int:
    """Set torch's thread count as :func:`choose` says (inside a function wrapped by :func:`restored`)."""
    chosen = choose(threads, model, batch_size=batch_size, device=device)
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return chosen


def restored(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``function`` so that torch's thread count is what it was before, however the function ends."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        previous = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    return wrapper
