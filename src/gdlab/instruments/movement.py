"""Movement, every step and every ``every`` steps (:class:`Cheap`): the gradient norm per layer, the loss's moving
average, a non-finite flag, and how far the weights move: the update-to-weight ratio per layer and overall, the
parameter norm and the distance from the initial point."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gdlab.instruments.budget import Budget, Instrument
from gdlab.instruments.layers import parameters_by_layer
from gdlab.loop import LoopState
from gdlab.records import EMA

__all__ = ["Cheap"]


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
    reads_param_norms = True  # the per-layer gradient norms: the loop's log keeps them (loop.Callback)

    def __init__(self, beta: float = 0.9, every: int = 20, budget: float | None = None) -> None:
        self.beta, self.every = beta, every
        self.budget_share = budget if budget is not None else (math.inf if every == 1 else 0.01)

    def on_fit_start(self, state: LoopState) -> None:
        self.params = [p for p in state.model.parameters()]
        groups = parameters_by_layer(state.model)
        self.names = list(groups)
        position = {id(p): i for i, p in enumerate(self.params)}
        self.members = [[position[id(p)] for _, p in members] for members in groups.values()]
        self.keys = [f"grad_norm/{name}" for name in self.names]
        self.ratio_keys = [f"update_ratio/{name}" for name in self.names]
        with torch.no_grad():
            self.start = [p.detach().clone() for p in self.params]
        self.before: list[Tensor] | None = None
        self.budget = Budget(self.budget_share)
        self._decisions: dict[int, bool] = {}  # candidate step -> granted by the budget (with keeps_before)
        self.armed = self.every == 1  # the parameters before the next step are kept: measure its movement
        if self.armed:
            self._keep()
        self.average = EMA(self.beta)
        # filed by each step, written into the table in batches by _fill
        self.rows: list[int] = []
        self.moves: list[tuple[int, Tensor]] = []  # (row, [4 * parameters] squared norms) of measured steps
        self.log = getattr(state, "log", None)  # the loop's log: per-parameter gradient norms, read with the loss
        self.table = state.history.steps
        self.table.defer(self._fill)

    @torch.no_grad()
    def _keep(self) -> None:
        if self.before is None:
            self.before = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.before, [p.detach() for p in self.params])

    def on_step_end(self, state: LoopState) -> None:
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

    def before_update(self, state: LoopState, step: int) -> None:
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

    def on_steps_end(self, state: LoopState, rows: range) -> None:
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
        # the rows whose per-parameter norms the log took (every row in fit; every k-th in gdlab.watch: the rest
        # stay NaN, not measured)
        measured = self.log.take_param_norms(rows) if self.log is not None else []
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

    def on_fit_end(self, state: LoopState) -> None:
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
