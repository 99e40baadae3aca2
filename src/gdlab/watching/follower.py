"""The rank follower of :func:`gdlab.watch` under several processes (torchrun): rank zero watches, records and
diagnoses; every other rank follows its decisions (docs/watch.md, "Several processes").

Why not :class:`gdlab.distributed.Agreement` (``fit``'s): that one gathers every rank's state and checks that the
ranks stand at the same step, since under ``fit`` each rank runs the same loop and records the same history. Here
only rank zero records steps (the others keep no history: a follower's ``state.step`` stays 0), and the decisions
that travel are more than the learning rates: every numeric hyperparameter the doctor set (the momentum too) and
the norm of its ``clip_norm`` remedy, which a follower puts on its own optimizer. So rank zero's decision is
broadcast, one collective at each agreement.

Example:
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    >>> hyperparameters(opt)[0]["lr"], hyperparameters(opt)[0]["momentum"]
    (0.1, 0.9)
"""

from __future__ import annotations

from typing import Any

import torch

from gdlab import distributed
from gdlab.doctor.remedies import clip_before_step
from gdlab.instruments import unwrap

__all__ = ["RankFollower", "hyperparameters", "max_norm"]


def hyperparameters(optimizer: Any) -> list[dict[str, float]]:
    """Each param group's numeric settings (``lr``, ``momentum``...): what the doctor's remedies change, and what
    rank zero's watch tells the other ranks with ``remedy="auto"``."""
    return [{k: v for k, v in group.items() if k != "params" and isinstance(v, (int, float))}
            for group in optimizer.param_groups]


def max_norm(watched: Any) -> float | None:
    """The norm the doctor's latest ``clip_norm`` remedy clips the gradients to, or None (``watched``: a
    :class:`~gdlab.watching.Watch`, or anything with its ``physician``)."""
    remedies = watched.physician.remedies if watched.physician is not None else []
    for remedy in reversed(remedies):
        if remedy.action == "clip_norm":
            return float(remedy.params["max_norm"])
    return None


class RankFollower:
    """Rank zero's decisions on every rank, for one watch: the ranks agree every ``log_every`` ``step()`` calls
    (every call with ``remedy="auto"``, whose changes reach every rank before the next update), at each
    ``epoch_end()`` and at ``close()``. On rank zero (``main``) it sends; on the others it takes: the stop after a
    divergence nothing repaired (``stop_reason``, so that every rank's loop can break at the same step) and, with
    ``auto``, the optimizer's hyperparameters and the doctor's clip."""

    def __init__(self, ranks: distributed.Ranks, optimizer: torch.optim.Optimizer, *, auto: bool,
                 log_every: int) -> None:
        self.main, self.optimizer, self.auto, self.log_every = ranks.main, optimizer, auto, log_every
        self.ranks = ranks
        self.calls = 0
        self.replicas: distributed.ReplicaCheck | None = None  # made at the first agreement (the watch's model)
        self.replicas_found: dict[str, Any] | None = None
        self.clip_norm: float | None = None  # a follower's clip: rank zero's clip_norm remedy
        self.unclip: Any = None

    def count(self, watched: Any) -> None:
        """A ``step()`` call; the ranks agree on every ``log_every``-th (every one with ``auto``)."""
        self.calls += 1
        due = self.calls % self.log_every == 0
        if self.auto or due:
            self.agree(watched, replicas=due)

    def agree(self, watched: Any, *, replicas: bool = True) -> None:
        """One broadcast of rank zero's decision (``watched``: the :class:`~gdlab.watching.Watch`, for its
        ``state`` and doctor); a follower takes it. With ``replicas`` (every ``log_every`` calls, each
        ``epoch_end()``, ``close()``), the replicas' parameters are compared too (:meth:`check_replicas`)."""
        if replicas:
            self.check_replicas(watched)
        decision: dict[str, Any] | None = None
        if self.main:
            decision = {"stop": watched.state.stop_reason, "clip": max_norm(watched) if self.auto else None,
                        "groups": hyperparameters(self.optimizer) if self.auto else None}
        decision = distributed.broadcast(decision)
        if self.main or not isinstance(decision, dict):
            return
        if decision.get("stop") is not None:
            watched.state.stop(decision["stop"])
        for group, values in zip(self.optimizer.param_groups, decision.get("groups") or ()):
            group.update(values)
        clip = decision.get("clip")
        if clip is not None and clip != self.clip_norm:
            self.clip_norm = clip
            if self.unclip is not None:
                self.unclip()
            self.unclip = clip_before_step(self.optimizer, clip)

    def check_replicas(self, watched: Any) -> None:
        """Compare every rank's parameters (:class:`gdlab.distributed.ReplicaCheck`: one small ``all_gather``, on
        every rank at the same calls) until they first differ; rank zero puts what differs in the history's meta
        (``replicas_out_of_step``, with the ``step()`` call it was seen at), where the doctor names it."""
        if self.replicas_found is not None:
            return
        if self.replicas is None:
            self.replicas = distributed.ReplicaCheck(list(unwrap(watched.model).named_parameters()), self.ranks)
        found = self.replicas()
        if found is not None:
            self.replicas_found = {**found, "step": self.calls}
            if self.main:
                watched.state.history.meta.setdefault("replicas_out_of_step", self.replicas_found)

    def tell(self, report: dict[str, Any]) -> None:
        """Rank zero at ``close()``: the report's findings, remedies, final values and verdict to every rank."""
        distributed.broadcast(report)

    def told(self) -> dict[str, Any]:
        """A follower at ``close()``: rank zero's report (:meth:`tell`); the doctor's clip comes off."""
        told = distributed.broadcast(None)
        if self.unclip is not None:
            self.unclip()
            self.unclip = None
        return told
