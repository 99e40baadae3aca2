"""The measurement planner of :func:`gdlab.watch` ("the lane", docs/watch.md): with ``step()`` ending each step,
each step gets only the hooks it needs, and the steps between those that need something are filed by ``step()`` in
two appends and reach the history and the hooks as one block when the lane ends.

Measured (issue 25: benchmarks/watch_overhead.py's loop, 450 steps, 11 rounds alternated, CPU clock,
2-core machine): the digits MLP costs +16.7 us a step with the lanes (cheap) against +25.9 us with every step on the
full path (ratio to the hand loop 1.117x against 1.182x; default 1.154x against 1.207x; the CNN 1.038x against
1.059x): the lanes pay for their lines, so they stay.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

__all__ = ["LanePlanner"]


class LanePlanner:
    """The planner's part of :class:`~gdlab.watching.Watch` (a mixin: the state is the watch's)."""

    _pre_handle: Any
    _post_handle: Any
    _before_step: int
    _lane: list[Any]
    _lane_lrs: list[Any]
    _lane_norms: list[tuple[int, Any, Any]]

    if TYPE_CHECKING:  # a part of Watch: the attributes it reads are Watch's (facade.py)
        def __getattr__(self, name: str) -> Any: ...

    def _init_lane(self) -> None:
        """The lane's state at the start: empty, shut."""
        self._lane = []  # the lane's steps since it was last drained: their losses, their lrs
        self._lane_lrs = []
        self._room = 0  # how many more steps the lane takes (0: shut)
        # the lane's gradient norms, taken by the optimizer's step pre-hook: (the step's place in the lane, the
        # norms, which parameters had a gradient), and the place of the next step whose norms are due
        self._lane_norms = []
        self._due = -1
        self._before_places: set[int] = set()  # the lane's places where a hook wants before_update
        self._lane_needed = False  # the lane's last step needs each hook's on_step_end on its own
        # the lane's room left when the optimizer's step pre-hook next goes on or off (-1: no change in this lane),
        # and the later changes (on at the step before each run of places that use it, off after the run)
        self._switch_room = -1
        self._switches: list[int] = []

    def _plan_hooks(self) -> None:
        """With step() ending each step, put on only the hooks the next step needs (each hook torch dispatches
        costs microseconds on every step): the forward pre-hook where an instrument measures that step (its hooks
        ride on the forward pass), the optimizer's step pre-hook where the gradient norms are due (before the
        update; the loop may zero the gradients after it), and no step post-hook (step() ends the step)."""
        self._quiet, self._room = False, 0
        state = self.state
        if self._closed or state.stop_reason is not None:
            return
        step = state.step + 1
        forward, norms = self._wants(step, state.iteration)
        self._quiet = not forward and not norms
        if self._keeps_before and self._wants_before(step):
            norms = True  # the pre-hook is on for it (a step outside the lane)
        # the lane takes steps whose norms are due too where the optimizer's step pre-hook takes them before the
        # update and step() comes after it (as the loop usually runs)
        lane_norms = self._opt_hooks and bool(self._update_first)
        if self._lane_open and not forward and (lane_norms or not norms):
            # the lane: the steps from here up to the next read of the host (every log_every steps), ending at
            # the first that a hook needs on its own (its on_step_end comes after the others' block)
            limit = self.log_every - (step - 1) % self.log_every
            room, needed = self._lane_room(step, limit, lane_norms) if self._nexts is not None else (0, False)
            while self._nexts is None and room < limit and not needed:  # hooks that only say needs_step
                if room:
                    ahead, normed = self._wants(step + room, state.iteration + room)
                    if ahead or (normed and not lane_norms):
                        break
                needed = any(needs(step + room) for needs in self._needs)
                room += 1
            self._room, self._lane_needed, self._quiet = room, needed, True
            self._due = -1
            if self.grad_norms:  # the first place in the lane whose norms are due
                first = 0 if step == 1 else (-step) % self.grad_norm_every
                self._due = first if first < room else -1
            self._before_places = self._places_before(step, room) if self._keeps_before else set()
            uses = set(range(self._due, room, self.grad_norm_every)) if self._due >= 0 else set()
            uses |= self._before_places
            # the pre-hook is on where the lane uses it: put on at the step before each run of places that use it,
            # taken off after the run (a hook torch calls costs microseconds on each step it is on)
            switches = []
            for place in sorted(uses):
                if place - 1 not in uses and place:
                    switches.append(room - place)  # on, at the step() of the place before
                if place + 1 not in uses and place + 1 < room:
                    switches.append(room - place - 1)  # off, at its own step()
            self._switches = switches[::-1]
            self._switch_room = self._switches.pop() if self._switches else -1
            norms = bool(uses) and min(uses) == 0
        self._forward_wanted = forward  # (the forward pre-hook stays on: it holds each step's inputs)
        if not self._opt_hooks:
            return
        if self._post_handle is not None and self._update_first is not None:  # on till the loop's order is seen
            self._post_handle.remove()
            self._post_handle = None
        if norms != (self._pre_handle is not None):
            if norms:
                self._pre_handle = self.optimizer.register_step_pre_hook(self._before_update_hook)
            else:
                self._pre_handle.remove()
                self._pre_handle = None

    def _switch_pre_hook(self) -> None:
        """The lane reached a step where the optimizer's step pre-hook goes on (the next update uses it) or off."""
        if self._pre_handle is None:
            self._pre_handle = self.optimizer.register_step_pre_hook(self._before_update_hook)
        else:
            self._pre_handle.remove()
            self._pre_handle = None
        self._switch_room = self._switches.pop() if self._switches else -1

    def _lane_room(self, step: int, limit: int, lane_norms: bool) -> tuple[int, bool]:
        """The lane from ``step`` (whose own wants allow it), in a few sums: up to ``limit`` steps, short of the
        next step that wants the forward hook (or, unless ``lane_norms``, the norms), through the next a hook
        needs. Also whether its last step is one a hook needs."""
        assert self._nexts is not None
        state = self.state
        stop = step + limit  # the first step past the lane
        if self._unscheduled or not self._learned:  # the forward hook on every step
            return 1, bool(self._nexts) and any(ahead(step) == step for ahead in self._nexts)
        for ahead in self._next_forwards:
            stop = min(stop, max(ahead(step + 1), step + 1))
        if self._samples is None and self._epoch_steps is not None and state.iteration + 1 < self._epoch_steps:
            stop = min(stop, step + self._epoch_steps - 1 - state.iteration)  # an epoch's last step: batch unseen
        if not lane_norms and self.grad_norms:
            stop = min(stop, step + 1 + (-(step + 1)) % self.grad_norm_every)
        needed_at = min((int(ahead(step)) if ahead(step) != math.inf else stop for ahead in self._nexts),
                        default=stop)
        if needed_at < stop:
            return needed_at - step + 1, True
        return stop - step, False

    def _wants(self, step: int, iteration: int) -> tuple[bool, bool]:
        """What ``step`` (the ``iteration``-th of its epoch, from 0) needs of our hooks: the forward pre-hook (an
        instrument measures it; the first batch is unread; or it is an epoch's last step whose length is known
        but not its samples, so its batch may be short), and the gradient norms."""
        measures = any(scheduled(step) for scheduled in self._schedules)
        last = self._samples is None and self._epoch_steps is not None and iteration + 1 == self._epoch_steps
        # (on till the loop's order is seen at its first update, so that the step under way is known then)
        forward = measures or bool(self._unscheduled) or not self._learned or last or \
            (self._update_first is None and self._opt_hooks)
        return forward, self.grad_norms and (measures or step % self.grad_norm_every == 0 or step == 1)

    @property
    def _keeps_before(self) -> bool:
        return bool(self._befores) and self._befores[0].keeps_before

    def _wants_before(self, step: int) -> bool:
        return any(hook.keeps_before and hook.needs_before(step) for hook in self._befores)

    def _places_before(self, step: int, room: int) -> set[int]:
        """The places in a lane of ``room`` steps from ``step`` where a hook wants before_update (a hook that says
        its next such step, ``next_before``, is asked step to step; another, at every place)."""
        places: set[int] = set()
        for hook in self._befores:
            if not hook.keeps_before:
                continue
            ahead = hook.next_before if hook in self._dispatch.answering("next_before") else None
            if ahead is None:
                places.update(p for p in range(room) if hook.needs_before(step + p))
                continue
            at = ahead(step)
            while at < step + room:
                if hook.needs_before(at):
                    places.add(at - step)
                at = ahead(at + 1)
        return places

    def _pre_update(self, step: int) -> None:
        """Before ``step``'s update (the optimizer's step pre-hook): each hook's before_update where wanted, once."""
        if step == self._before_step:
            return
        self._before_step = step
        self._busy = True
        try:
            for hook in self._befores:
                if hook.keeps_before and hook.needs_before(step):
                    hook.before_update(self.state, step)
        finally:
            self._busy = False

    def _lane_norm(self, place: int) -> None:
        """The optimizer's step pre-hook in the lane, at the lane's ``place`` where norms are due: take them (on
        the device); the next due place is the first past it."""
        present = self.log.grad_norms()
        self._lane_norms.append((place, self.state.param_grad_norms, present))
        while self._due <= place:
            self._due += self.grad_norm_every
        if self._due >= len(self._lane) + self._room:
            self._due = -1

    def _drain(self, check: bool = True, last_needed: bool = False) -> None:
        """File the lane's steps: their rows in one pass, then each hook's on_steps_end with their rows (with
        ``last_needed``, the last step's on_step_end on its own instead); with ``check``, read the host where the
        last of them is due a read (every ``log_every`` steps)."""
        losses = self._lane
        if not losses:
            return
        state, n = self.state, len(losses)
        lrs, norms = self._lane_lrs, self._lane_norms
        self._lane, self._lane_lrs, self._lane_norms = [], [], []
        if norms and norms[-1][0] >= n:  # taken by the pre-hook for the step under way, which is not among them
            self._lane_norms = [(place - n, values, present) for place, values, present in norms if place >= n]
            norms = [entry for entry in norms if entry[0] < n]
        start = len(state.history.steps)
        state.param_grad_norms = None  # no norms in their rows (NaN: not measured)
        sizes = [state.plan.batch_size] * n
        last = (self._epoch_steps or 0) - 1 - state.iteration  # an epoch's last step among them: its batch may be short
        if 0 <= last < n:
            sizes[last] = self._planned_size(state.iteration + last)
        self.log.record_steps(losses, lrs, sizes, norms)
        state.step += n
        state.iteration += n
        rows = range(start, start + n - 1 if last_needed else start + n)
        self._busy = True
        try:
            if rows:
                for end in self._block_ends:
                    end(state, rows)
            if last_needed:  # its norms, if the lane took them, as on_step_end finds a step's
                state.param_grad_norms = norms[-1][1] if norms and norms[-1][0] == n - 1 else None
                for handler in self._handlers["on_step_end"]:
                    handler(state)
        finally:
            self._busy = False
        if check and (state.step % self.log_every == 0 or self.log.diverged_at is not None):
            self._check()

    def _fill_lane(self, table: Any) -> None:
        """The history's first filler: a read mid-lane drains it (and shuts it till the next step plans it
        again: the steps after the read are still to come)."""
        if self._lane:
            self._drain(check=False)
            self._room, self._quiet = 0, False  # the next step on the full path (it reads its norms if due)
