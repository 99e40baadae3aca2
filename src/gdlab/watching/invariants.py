"""Invariants of the user's loop that :func:`gdlab.watch` checks at its first updates, for almost nothing: the
silent bugs whose loss curve looks like a tuning problem.

- **gradients not zeroed**: the first backward pass after an update accumulated into the very gradient tensor
  that update used, with nothing done to it in between (no ``zero_grad()``, no ``set_to_none``): the gradients of
  every step pile up, and the run looks like a learning rate far too large. Read from the tensor's identity and
  its version counter (host-side integers: no read of the device): accumulating bumps the version once, zeroing it
  in place bumps it too, ``set_to_none`` makes a new tensor. Intended accumulation (several backward passes, then
  one update that zeroes after it), zeroing after the update, ``set_to_none``, clipping and a ``GradScaler``
  (in place, but before the update) are all told apart from it.

The check watches one parameter the optimizer updates (the first with ``requires_grad``), over the first
:data:`UPDATES` updates, then takes its hooks off: a loop that never zeroes fails it at the first update.
What it cannot see: a loop that zeroes some parameters but not others (one is watched), and a model wrapped in
``DistributedDataParallel``, or any loop under several processes (a reducer writes the gradients itself; the
check stays off there).

:class:`SetupCheck` looks once, at the first update (the optimizer's step post-hook), at how the loop is set up,
from host-side attributes only (``requires_grad``, ``grad is None``, identities, ``param_groups``, ``training``):

- **the optimizer holds nothing trainable** (``optimizer_has_no_trainable_params``): no parameter of its param
  groups requires a gradient (a fine-tuning script that hands the optimizer only the frozen head): ``step()``
  changes nothing;
- **gradients that no optimizer uses** (``grads_in_no_param_group``): parameters of the watched model with
  ``requires_grad=True`` that got a gradient but are in no param group (named, a few). Parameters frozen on
  purpose (``requires_grad=False``) never get one and are never named. Where the optimizer holds nothing
  trainable, these are that finding's evidence, not a finding of their own;
- **training in eval mode** (``training_in_eval_mode``): the update's model is in ``eval()`` (the watched module's
  own flag) while it holds dropout or batch-norm modules, also in eval mode, and gradients flowed. A model trained
  in ``train()`` mode whose batch-norm layers are put in ``eval()`` on purpose (frozen statistics) is not flagged;
  validation under ``torch.no_grad()`` takes no update and is never looked at.

Three more, each an object of its own with a narrow API (``fit`` can call them at its own points):
:class:`UpdateCheck` (**the update changes nothing**: the first updates move no parameter they had a non-zero
gradient for; device work at those updates, one read at the next check), :class:`ScheduleCheck` (**a schedule that
ends early**: the recorded learning rates reach near zero long before the plan ends; host numbers only) and
:class:`ModeCheck` (**validation in train() mode**: passes without gradients while dropout or batch norm is in
training mode; host flags only). Dropout active in ``eval()`` is read from the traced pass of
:func:`gdlab.doctor.trace_activations`; replicas out of step from :class:`gdlab.distributed.ReplicaCheck`.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Dropout(0.1), torch.nn.Linear(4, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> check = SetupCheck(model.eval(), opt)
    >>> model(torch.ones(4, 2)).sum().backward(); opt.step()
    >>> check.done, sorted(check.found), check.found["training_in_eval_mode"]["modules"]
    (True, ['training_in_eval_mode'], ['1'])
    >>> check.close()

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> check = ZeroGradCheck(model, opt)
    >>> for _ in range(3):  # no zero_grad()
    ...     model(torch.ones(4, 2)).sum().backward(); opt.step()
    >>> check.found["update"], check.found["parameter"], check.done
    (1, 'weight', True)
    >>> check.close()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["UPDATES", "NAMED", "SAMPLE", "NEAR_ZERO", "PASSES", "ZeroGradCheck", "SetupCheck", "UpdateCheck",
           "ScheduleCheck", "ModeCheck"]

UPDATES = 3
"""The updates over which the loop's zeroing is checked (the first ones: a bug there is a bug at every step)."""

NAMED = 5
"""How many parameters or modules a finding of :class:`SetupCheck` names (the count is given in full)."""

SAMPLE = 1024
"""How many entries of each parameter :class:`UpdateCheck` keeps before an update (evenly spaced over it) to see
whether the update moved it."""

NEAR_ZERO = 0.01
"""A learning rate at or below this share of its peak so far is "near zero" (:class:`ScheduleCheck`)."""

PASSES = 2
"""Forward passes without gradients, with no step between them, that make a validation (:class:`ModeCheck`); a
single pass (a target computed under ``no_grad`` inside a step) is not one."""

_MODED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
          nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# the modules whose forward pass differs between train() and eval() (instance norm tracks no statistics by default)


class ZeroGradCheck:
    """Whether the loop zeroes its gradients between updates (see the module's text); ``found`` holds the
    evidence when it does not (``update``: the update whose gradient the next backward pass added to,
    ``parameter``: the watched parameter's name), else None; ``done`` once it has decided."""

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        self.found: dict[str, Any] | None = None
        self.done = False
        self.updates = 0
        self._kept: tuple[Any, int] | None = None  # the gradient the last update used, and its version then
        self._handles: list[Any] = []
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) in held]
        wrapped = type(model).__name__ == "DistributedDataParallel" or (
            torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)  # a reducer may write the gradients: not this check's case
        if not named or wrapped or not hasattr(named[0][1], "register_post_accumulate_grad_hook"):
            self.done = True
            return
        self.name, self._parameter = named[0]
        self._handles = [optimizer.register_step_post_hook(self._after_update),
                         self._parameter.register_post_accumulate_grad_hook(self._accumulated)]

    def _after_update(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.updates += 1
        grad = self._parameter.grad
        self._kept = (grad, grad._version) if grad is not None else None
        if self.updates > UPDATES:
            self.done = True  # decided: the hooks come off at the watch's next read (not from inside a hook)

    def _accumulated(self, parameter: Any) -> None:
        kept, self._kept = self._kept, None
        if kept is None or self.done:
            return
        grad, version = kept
        if parameter.grad is grad and grad._version == version + 1:  # added to, untouched since the update
            self.found = {"update": self.updates, "parameter": self.name}
            self.done = True

    def close(self) -> None:
        """Take the hooks off (the check has decided, or the watch ends); called outside the hooks (torch's hook
        tables may not change while they run)."""
        self.done = True
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SetupCheck:
    """How the loop is set up, looked at once at the first update (see the module's text): ``found`` maps each
    finding's code (``optimizer_has_no_trainable_params``, ``grads_in_no_param_group``, ``training_in_eval_mode``)
    to its evidence (with ``update``: 1; ``update_changes_nothing`` where the optimizer holds trainable tensors but
    none of the model's parameters, which get the gradients), empty when the setup is sound; ``done`` once it has
    looked. Host-side reads only: no device read, no ``.item()``."""

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        self.found: dict[str, dict[str, Any]] = {}
        self.done = False
        self._model, self._optimizer = model, optimizer
        self._handles: list[Any] = []
        if not hasattr(optimizer, "register_step_post_hook") or not hasattr(optimizer, "param_groups"):
            self.done = True
            return
        self._handles = [optimizer.register_step_post_hook(self._after_update)]

    def _after_update(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.done:
            return
        self.done = True  # once: the hook comes off at the watch's next read (not from inside a hook)
        held = [p for group in optimizer.param_groups for p in group["params"]]
        ids = {id(p) for p in held}
        stray = [name for name, p in self._model.named_parameters()
                 if p.requires_grad and p.grad is not None and id(p) not in ids]
        if not any(getattr(p, "requires_grad", False) for p in held):
            self.found["optimizer_has_no_trainable_params"] = {
                "update": 1, "held": len(held), "optimizer": type(optimizer).__name__,
                "with_grads": len(stray), "parameters": stray[:NAMED]}
        elif stray and not any(id(p) in ids for p in self._model.parameters()):
            # the optimizer holds trainable tensors, none of them the model's: a model wrapped (its parameters made
            # anew) after the optimizer was built over the old ones: step() moves tensors the loop never uses
            self.found["update_changes_nothing"] = {
                "update": 1, "seen_by": "the optimizer holds none of the model's parameters", "held": len(held),
                "count": len(stray), "parameters": stray[:NAMED], "optimizer": type(optimizer).__name__}
        elif stray:
            self.found["grads_in_no_param_group"] = {"update": 1, "count": len(stray), "parameters": stray[:NAMED]}
        flowed = any(getattr(p, "grad", None) is not None for p in held) or stray
        moded = [name or type(m).__name__ for name, m in self._model.named_modules()
                 if isinstance(m, _MODED) and not m.training]
        if flowed and not self._model.training and moded:
            self.found["training_in_eval_mode"] = {"update": 1, "count": len(moded), "modules": moded[:NAMED]}

    def close(self) -> None:
        """Take the hook off (the check has looked, or the watch ends); called outside the hook."""
        self.done = True
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _sample(p: Tensor) -> Tensor:
    """At most :data:`SAMPLE` entries of ``p``, evenly spaced over it (a view: clone it to keep it)."""
    flat = p.detach().reshape(-1)
    return flat[::max(1, flat.numel() // SAMPLE)][:SAMPLE]


def _number(value: Any) -> float | None:
    """A learning rate as a plain number (None for a tensor, whose value would need a read)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class UpdateCheck:
    """Whether the first :data:`UPDATES` updates move the parameters the optimizer holds and gives non-zero gradients
    to (**the update changes nothing**, ``update_changes_nothing``): before each, an evenly spaced sample of each
    such parameter (:data:`SAMPLE` entries) and whether its gradient is non-zero, kept on the device; after it,
    whether the sample changed. :meth:`note`, at the loop's next read after those updates, reads them in one go.
    ``found`` holds the evidence where nothing moved at a learning rate above 0, else None; ``done`` once decided.

    What it names: a step that writes nowhere (a hand-written optimizer that rebinds ``p = p - lr * p.grad``
    instead of changing ``p`` in place), updates too small for the parameters' precision (``model.half()`` with a
    small learning rate). The optimizer holding none of the model's parameters (a model wrapped after the optimizer
    was built) is :class:`SetupCheck`'s, under the same code. Learning rates of 0 at all of those updates (a
    schedule's first steps) are not named.

    Example:
        >>> class Rebinds(torch.optim.SGD):  # a hand-written step: p is rebound, never changed
        ...     def step(self, closure=None):
        ...         for p in self.param_groups[0]["params"]:
        ...             p = p - 0.1 * p.grad
        >>> model = torch.nn.Linear(2, 1); opt = Rebinds(model.parameters(), lr=0.1)
        >>> check = UpdateCheck(model, opt)
        >>> for _ in range(UPDATES):
        ...     opt.zero_grad(); model(torch.ones(4, 2)).sum().backward(); opt.step()
        >>> check.note(); check.found["count"], check.found["parameters"]
        (2, ['weight', 'bias'])
        >>> check.close()
    """

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        self.found: dict[str, Any] | None = None
        self.done = False
        self.collected = False
        self.updates = 0
        names = {id(p): name for name, p in model.named_parameters()}
        groups = getattr(optimizer, "param_groups", None) or []
        self._held = [(names.get(id(p), f"param_groups[{g}][{i}]"), p) for g, group in enumerate(groups)
                      for i, p in enumerate(group["params"]) if getattr(p, "requires_grad", False)]
        self._optimizer = optimizer
        self._before: list[tuple[str, Tensor, Tensor, Tensor]] | None = None  # name, parameter, sample, grad != 0
        self._marks: list[tuple[list[str], Tensor]] = []  # per update: the names and [2, n] (grad != 0, moved)
        self._lrs: list[float] = []
        self._handles: list[Any] = []
        if not self._held or not hasattr(optimizer, "register_step_pre_hook"):
            self.done = True
            return
        self._handles = [optimizer.register_step_pre_hook(self._keep), optimizer.register_step_post_hook(self._compare)]

    def _keep(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.done or self.updates >= UPDATES:
            return
        with torch.no_grad():
            self._before = [(name, p, _sample(p).clone(), p.grad.ne(0).any()) for name, p in self._held
                            if p.grad is not None]

    def _compare(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        before, self._before = self._before, None
        if before is None or self.done:
            return
        self.updates += 1
        self._lrs.extend(lr for lr in (_number(group.get("lr")) for group in optimizer.param_groups) if lr is not None)
        self.collected = self.updates >= UPDATES  # the hooks may come off (unhook), the marks await note()
        if before:
            with torch.no_grad():
                moved = torch.stack([(_sample(p) != kept).any() for _, p, kept, _ in before])
                self._marks.append(([name for name, *_ in before], torch.stack([torch.stack([b[3] for b in before]),
                                                                               moved])))

    def note(self, final: bool = False) -> None:
        """Decide, once the first :data:`UPDATES` updates are seen (or at the loop's end, ``final``, on those
        seen): one read of the kept marks."""
        if self.done or (self.updates < UPDATES and not final) or not self.updates:
            return
        self.done = True  # the hooks come off at close(), outside them
        marks, self._marks = self._marks, []
        if not marks:
            return
        pushed, moved = torch.cat([m for _, m in marks], dim=1).cpu().tolist()
        names = [name for named, _ in marks for name in named]
        if any(moved) or not any(pushed) or (self._lrs and max(self._lrs) <= 0):
            return  # something moved; no gradient to apply; a learning rate of 0 (a schedule's start)
        stuck = list(dict.fromkeys(n for n, g in zip(names, pushed) if g))
        dtype = next((p.dtype for n, p in self._held if n == stuck[0]), None)
        self.found = {"update": self.updates, "seen_by": "no parameter moved while its gradient was non-zero",
                      "count": len(stuck), "parameters": stuck[:NAMED], "lr": max(self._lrs) if self._lrs else None,
                      "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                      "optimizer": type(self._optimizer).__name__}

    @property
    def hooked(self) -> bool:
        """Whether its hooks are still on the optimizer."""
        return bool(self._handles)

    def unhook(self) -> None:
        """Take the hooks off (the first updates are seen), keeping the marks for :meth:`note`; called outside
        the hooks (torch's hook tables may not change while they run)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._before = [], None

    def close(self) -> None:
        """Take the hooks off and let the kept samples go (decided, or the watch ends); called outside the hooks."""
        self.done = True
        self.unhook()
        self._marks = []


class ScheduleCheck:
    """Whether the learning rate reaches near zero long before the run's plan ends (**a schedule that ends early**,
    ``schedule_ends_early``: a scheduler built per epoch and stepped per batch): the first step whose learning rate
    is at most :data:`NEAR_ZERO` of its peak so far, before ``share`` of the ``planned`` steps, with the loop going
    on after it (at least 5 steps and a tenth as many again: a schedule that ends with its run is not named).
    Read from the learning rate of each step the loop recorded (host-side numbers: no device read), the rows since
    the last look (after :attr:`seen`), at the loop's reads, until decided.

    ``planned``: the steps planned (``fit``: ``state.total_steps``, ``share`` 0.2), or the first epoch's
    (``watch`` knows no more: ``share`` 1, the lr at zero inside the first epoch is the signature); None while
    unknown (the check waits). A schedule stepped as intended (over the whole run, a warmup, a decay per epoch) is
    quiet. What it cannot see: a schedule whose floor is above :data:`NEAR_ZERO` of its peak; warm restarts with
    cycles much shorter than the plan are named.

    Example:
        >>> check = ScheduleCheck(100, share=0.2, of="the planned steps")
        >>> check.note([0.1 * 0.7 ** i for i in range(40)])  # down 30% a step: near zero at step 14
        >>> check.found["step"], check.found["planned"]
        (14, 100)
    """

    def __init__(self, planned: int | None = None, *, share: float = 0.2, of: str = "the planned steps") -> None:
        self.found: dict[str, Any] | None = None
        self.done = False
        self.planned, self.share, self.of = planned, share, of
        self._seen = 0  # the steps looked at so far
        self._peak = 0.0
        self._at: int | None = None  # the first step (from 1) near zero
        self._low = math.nan  # its learning rate

    @property
    def seen(self) -> int:
        """The steps looked at so far (the next :meth:`note` starts after them)."""
        return self._seen

    def note(self, lrs: Sequence[float]) -> None:
        """Look at the learning rates of the steps recorded since the last call (each step's, in order: the rows
        after :attr:`seen`)."""
        if self.done:
            return
        for lr in lrs:
            self._seen += 1
            if self._at is not None or not isinstance(lr, (int, float)) or not math.isfinite(lr):
                continue
            if lr > self._peak:
                self._peak = lr
            elif self._peak > 0 and lr <= NEAR_ZERO * self._peak:
                self._at, self._low = self._seen, lr
        if self.planned is None:
            return
        limit = self.share * self.planned
        at = self._at
        if at is None or at >= limit:
            self.done = at is not None or self._seen >= limit  # held up past the limit: it does not end early
            return
        if self._seen - at >= max(5, 0.1 * at):  # the loop went on at that learning rate
            self.done = True
            self.found = {"step": at, "lr": self._low, "peak": self._peak, "planned": self.planned,
                          "share": self.share, "of": self.of, "steps_seen": self._seen}


class ModeCheck:
    """Whether validation runs with the model's dropout or batch-norm modules in training mode (**the wrong mode on
    validation**, ``validation_in_train_mode``): :meth:`see` is told of each forward pass of the model without
    gradients (``torch.no_grad``, ``inference_mode``) and the loop's step then; :data:`PASSES` of them at one step
    make a validation, which is named where a dropout or batch-norm module is in training mode (passes where a batch
    norm's ``momentum`` is None, recomputing its statistics on purpose as ``swa_utils.update_bn`` does, are not
    validations). Host-side
    flags only; off after the first two validations seen, or where the model holds no such module.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        >>> check = ModeCheck(model)
        >>> with torch.no_grad():  # validation without model.eval()
        ...     for _ in range(PASSES):
        ...         check.see(10)
        >>> check.found
        {'step': 10, 'passes': 2, 'count': 1, 'modules': ['1']}
    """

    def __init__(self, model: nn.Module) -> None:
        self.found: dict[str, Any] | None = None
        self._moded = [(name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, _MODED)]
        self.done = not self._moded
        self._step: int | None = None
        self._passes = 0
        self.validations = 0

    def see(self, step: int) -> None:
        """A forward pass of the model without gradients, at the loop's ``step`` (the steps taken so far)."""
        if self.done:
            return
        if step != self._step:
            self._step, self._passes = step, 0
        self._passes += 1
        if self._passes != PASSES:
            return
        if any(isinstance(m, nn.modules.batchnorm._NormBase) and m.momentum is None for _, m in self._moded):
            return  # batch norm's statistics recomputed on purpose (a cumulative average): not a validation
        self.validations += 1
        training = [name for name, m in self._moded if m.training]
        if training:
            self.found = {"step": step, "passes": PASSES, "count": len(training), "modules": training[:NAMED]}
        self.done = bool(training) or self.validations >= 2
