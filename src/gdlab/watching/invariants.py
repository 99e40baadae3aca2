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

from typing import Any

import torch
from torch import nn

__all__ = ["UPDATES", "NAMED", "ZeroGradCheck", "SetupCheck"]

UPDATES = 3
"""The updates over which the loop's zeroing is checked (the first ones: a bug there is a bug at every step)."""

NAMED = 5
"""How many parameters or modules a finding of :class:`SetupCheck` names (the count is given in full)."""

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
    to its evidence (with ``update``: 1), empty when the setup is sound; ``done`` once it has looked. Host-side
    reads only: no device read, no ``.item()``."""

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
