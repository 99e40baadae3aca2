"""Pooling over ranks (data-parallel training, :mod:`gdlab.distributed`): rank 0 decides when to measure
(:func:`rank_zero_decides`), and a measured step's sums from every rank are added up in one all-reduce before its
statistics are formed (:class:`RankPool`). Nothing of this runs in one process."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gdlab import distributed
from gdlab.data import structure
from gdlab.instruments.persample import noise_scale_and_snr
from gdlab.loop import LoopState

__all__ = ["rank_zero_decides", "RankPool"]


def rank_zero_decides(due: bool) -> bool:
    """Rank 0's decision to measure at this step, taken by every rank (the budget runs on each rank's own clock).
    One small collective, at the steps the schedule offers a measurement only; none between them."""
    return bool(distributed.broadcast(due))


class RankPool:
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
    def make(cls, plan: Any, iteration: int, sub_batch: int) -> RankPool:
        local, batch = plan.share(iteration)
        total = min(batch, sub_batch)
        n = total // plan.ranks + (plan.rank < total % plan.ranks)
        return cls(max(1, min(n, local)), total < batch, batch, plan.ranks)

    def sub_batch(self, state: LoopState) -> tuple[Any, Tensor] | None:
        """This rank's ``n`` samples of its slice of the step's batch."""
        assert state.batch is not None  # asked on a step with a batch
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

    def row(self, state: LoopState, sums: list[tuple[list[Tensor], list[Tensor] | None]]) -> dict[str, float]:
        """The hooks' statistics over the ranks (``sums``: each layer's per-sample sums, as :func:`per_sample_sums`
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
            row.update(noise_scale_and_snr(each, mean_sq_value, round(n), self.batch))
        return row

    def noise(self, flat: Tensor, batch: int) -> dict[str, float]:
        """B_simple and the SNR from every rank's per-sample gradients ``flat`` ([n, parameters])."""
        parts, summed = self._reduce([flat.square().sum(), flat.sum(0)], [len(flat)], flat.device)
        each, mean_sq, n = torch.stack([parts[0][0], (parts[1] / summed[0]).square().sum(), summed[0]]).tolist()
        return noise_scale_and_snr(each, mean_sq, round(n), batch) if n >= 2 else {}
