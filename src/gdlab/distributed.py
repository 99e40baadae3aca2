"""Data-parallel training under ``torch.distributed``: which rank this process is, the process group, and how the
ranks keep agreeing.

``fit`` takes part when a process group with more than one rank is initialised, or when the process was launched by
``torchrun`` (``WORLD_SIZE`` > 1 in the environment: :func:`setup` initialises the group, gloo on the CPU, NCCL on
CUDA, with a timeout so that a rank that dies never leaves the others waiting for ever). Each rank takes its own slice
of every global batch (the epoch's order still comes from ``(seed, epoch)``), the model is wrapped in
``DistributedDataParallel`` (gradients are averaged during the backward pass), and each step's loss is averaged over
the ranks without waiting (an asynchronous all-reduce, read with the rest of the step's values). Every rank sees the
same losses and gradient norms, so every rank makes the same decisions; at the loop's checks the ranks agree on rank
0's learning rates and stop, and when a remedy acted on any rank, rank 0's parameters and optimizer state are
broadcast (:class:`Agreement`). Only rank 0 writes to the store, draws the progress bar and prints.

Importing this module initialises nothing; ``torch.distributed`` is only asked whether a group exists.

Example:
    >>> current() is None  # one process: nothing distributed
    True
"""

from __future__ import annotations

import atexit
import datetime
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdlab.errors import InvalidParameter

__all__ = ["TIMEOUT", "TIMEOUT_ENV", "TRACEBACKS_ENV", "Agreement", "Ranks", "ReplicaCheck", "broadcast", "current",
           "failure_text", "is_main", "keep_traceback", "setup", "share_state", "timeout", "wrap"]

TIMEOUT = 300.0
"""Seconds a collective may wait for the other ranks before the process group gives up (a rank that crashed)."""

TIMEOUT_ENV = "GDLAB_DIST_TIMEOUT"
"""The environment variable that overrides :data:`TIMEOUT` (seconds)."""

TRACEBACKS_ENV = "GDLAB_RANK_TRACEBACKS"
"""Set by ``gdlab ... --nproc`` in the ranks it launches: a folder where a rank that fails leaves its traceback
(:func:`keep_traceback`), for rank 0 to store with the run's error (:func:`failure_text`), since no rank prints one."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks: ``rank`` of ``world``, ``local_rank`` on its machine, the backend."""

    rank: int
    world: int
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that stores, prints and draws the progress bar)."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> str | torch.device:
        """The device of this rank: with NCCL, ``cuda:LOCAL_RANK`` for ``auto`` or ``cuda``; else ``device``."""
        if self.backend == "nccl" and str(device) in ("auto", "cuda"):
            return torch.device("cuda", self.local_rank)
        return device


def current() -> Ranks | None:
    """The ranks of the initialised process group, or None when there is none (or it has a single rank)."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), str(dist.get_backend()))


def is_main() -> bool:
    """True in a single process and on rank 0 (of the initialised group, or as torchrun's ``RANK`` says before
    it is initialised)."""
    ranks = current()
    if ranks is not None:
        return ranks.main
    return int(os.environ.get("WORLD_SIZE", "1")) < 2 or os.environ.get("RANK", "0") == "0"


def timeout() -> float:
    """The process group's timeout in seconds: ``GDLAB_DIST_TIMEOUT`` or :data:`TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidParameter(TIMEOUT_ENV, text, "a number of seconds > 0")
    return value


def setup() -> Ranks | None:
    """The ranks this process trains among: the initialised group's, or a group initialised here when ``torchrun``
    launched the process (``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set): NCCL when CUDA is available, else gloo, with
    :func:`timeout`. None in a single process."""
    ranks = current()
    if ranks is not None or torch.distributed.is_initialized():
        return ranks
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "MASTER_ADDR" not in os.environ:
        return None
    seconds = timeout()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    atexit.register(_destroy)  # the group made here is taken down here, before the interpreter's teardown
    return current()


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (rank 0's parameters and buffers are copied to every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    param = next(model.parameters())
    ids = [param.device.index] if param.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def share_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Copy rank 0's parameters, buffers and optimizer state to every rank."""
    for tensor in [*model.parameters(), *model.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)
    state = broadcast(optimizer.state_dict() if is_main() else None)
    if not is_main():
        optimizer.load_state_dict(state)


class Agreement:
    """Called by the loop at its checks on every rank: the ranks take rank 0's learning rates and stop (or stop
    as ``interrupted`` when any rank was: Ctrl-C), and when a remedy acted on any rank since the last check
    (``acted()`` counts the actions), rank 0's parameters, buffers and optimizer state. One collective per check;
    the parameters only after a remedy."""

    def __init__(self, ranks: Ranks, acted: Callable[[], int] | None = None) -> None:
        self.ranks, self.acted = ranks, acted
        self.seen = 0

    def __call__(self, state: Any) -> None:
        count = self.acted() if self.acted is not None else 0
        mine = ([g.get("lr") for g in state.optimizer.param_groups], state.stop_reason, state.interrupted,
                count != self.seen, state.step)
        everyone: list[Any] = [None] * self.ranks.world
        torch.distributed.all_gather_object(everyone, mine)
        steps = [entry[-1] for entry in everyone]
        if len(set(steps)) > 1:  # a rank rolled back alone: go no further than say so
            raise RuntimeError(f"the ranks are out of step (at steps {steps}): a callback acted on some ranks only")
        lrs, stop, _, _, _ = everyone[0]
        for group, lr in zip(state.optimizer.param_groups, lrs):
            if lr is not None:
                group["lr"] = lr
        state.interrupted = any(entry[2] for entry in everyone)
        state.stop_reason = stop if stop is not None or not state.interrupted else "interrupted"
        self.seen = count
        if any(entry[3] for entry in everyone):
            share_state(state.model, state.optimizer)


class ReplicaCheck:
    """Whether the replicas' parameters still agree (**replicas out of step**, ``replicas_out_of_step``): each call
    takes a fingerprint of this rank's parameters on their device (per parameter, the sum and the sum of absolute
    values, in float64), gathers every rank's in one small ``all_gather``, and compares them with rank 0's. Every
    rank calls it at the same points (a collective) and gets the same answer: None while they agree, else the first
    rank and the first parameter that differ (by ``named``'s order), how many parameters differ on that rank, and
    the relative difference. Data-parallel replicas are identical after every update, so any difference beyond
    rounding (1e-6 of the parameter's absolute sum) is a bug: parameters changed on one rank outside the all-reduce
    (a rank-dependent initialisation after wrapping, an in-place edit on one rank), or gradients no longer averaged
    (a model moved after ``DistributedDataParallel`` wrapped it: pytorch#104336). One collective and one small host
    read per call; the caller calls it at the points where the ranks agree already.

    ``named``: ``(name, parameter)`` pairs, the same on every rank (the module inside the wrapper's names).
    """

    TOLERANCE = 1e-6

    def __init__(self, named: list[tuple[str, torch.Tensor]], ranks: Ranks) -> None:
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.ranks = ranks

    def __call__(self) -> dict[str, Any] | None:
        if not self.params:
            return None
        with torch.no_grad():
            mine = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                                for p in self.params])  # [parameters, 2]
            everyone = [torch.empty_like(mine) for _ in range(self.ranks.world)]
            torch.distributed.all_gather(everyone, mine)
            stacked = torch.stack(everyone)  # [ranks, parameters, 2]
            gap = (stacked - stacked[0]).abs().amax(-1) / (stacked[0, :, 1] + 1e-12)  # [ranks, parameters]
        read = gap.cpu().tolist()
        for rank, gaps in enumerate(read):
            off = [i for i, g in enumerate(gaps) if not g <= self.TOLERANCE]  # NaN counts as different
            if off:
                return {"rank": rank, "parameter": self.names[off[0]], "count": len(off),
                        "parameters": [self.names[i] for i in off[:5]], "relative": gaps[off[0]],
                        "ranks": self.ranks.world}
        return None


def keep_traceback(error: BaseException) -> None:
    """Leave ``error``'s traceback where rank 0 reads it (``rank<RANK>.txt`` in :data:`TRACEBACKS_ENV`'s folder),
    when this process is a rank launched by ``gdlab ... --nproc``; nothing otherwise."""
    folder, rank = os.environ.get(TRACEBACKS_ENV), os.environ.get("RANK")
    if not folder or rank is None or not rank.isdigit():
        return
    path = Path(folder) / f"rank{int(rank)}.txt"
    try:  # written whole, then renamed: a reader never sees half of it
        path.with_suffix(".part").write_text("".join(traceback.format_exception(error)).rstrip())
        path.with_suffix(".part").replace(path)
    except OSError:  # the error itself is what matters: it is raised either way
        pass


def failure_text(error: BaseException) -> str:
    """The error a failed run stores: ``Type: message``; under ranks, followed by this rank's traceback and those
    the other ranks left (:func:`keep_traceback`), since no rank prints its traceback on the terminal.

    Example:
        >>> failure_text(ValueError("boom"))  # one process: one line
        'ValueError: boom'
    """
    line = f"{type(error).__name__}: {error}"
    if current() is None and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return line
    rank = os.environ.get("RANK", "0")
    parts = [line, f"rank {rank}:\n" + "".join(traceback.format_exception(error)).rstrip()]
    folder = os.environ.get(TRACEBACKS_ENV)
    if folder:
        for path in sorted(Path(folder).glob("rank*.txt"), key=lambda p: p.stem.rjust(12)):  # rank2 before rank10
            if path.stem[4:] != rank:
                try:
                    parts.append(f"rank {path.stem[4:]}:\n" + path.read_text(errors="replace"))
                except OSError:
                    continue
    return "\n\n".join(parts)
