"""A transform chain as a ``torch.optim.Optimizer``: param groups, ``zero_grad``, ``state_dict`` round trip.

:func:`inject` keeps an alias's hyperparameters in its state, so they can change between steps: the adapter
shows them in ``param_groups`` (as torch.optim does) and reads them back before every step, so a callback, a
remedy or a ``torch.optim.lr_scheduler`` that sets ``group["lr"]`` is obeyed.

Example:
    >>> import torch
    >>> from gdlab.optim import aliases
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = Optimizer([w], inject(aliases.sgd, lr=0.5))
    >>> (w**2).sum().backward(); opt.step(); w.tolist()   # w -= 0.5 * 2w
    [0.0]
    >>> opt.param_groups[0]["lr"] = 0.1                    # obeyed from the next step on
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gdlab.errors import InvalidParameter
from gdlab.optim.fused import off as fused_kernels_off
from gdlab.optim.transforms import (
    AdamState,
    ChainState,
    CountState,
    LionState,
    RmsState,
    RssState,
    State,
    TraceState,
    Transform,
    apply_updates,
)

__all__ = ["InjectState", "Optimizer", "inject"]


class InjectState(NamedTuple):
    """:func:`inject`'s state: the hyperparameters, the state of the transform they make, and the names of those
    that are zero (their transforms are left out of the chain)."""

    hyperparams: dict[str, Any]
    inner: State
    zeros: tuple[str, ...]


def inject(make: Callable[..., Transform], **hyperparams: Any) -> Transform:
    """``make(**hyperparams)`` with the hyperparameters held in the state (``state.hyperparams``): change them
    there between steps and the next update uses the new values. The chain is rebuilt only when they change."""
    built: dict[str, Any] = {"key": None, "transform": None, "zeros": None}

    def zeros(values: dict[str, Any]) -> tuple[str, ...]:
        # an alias leaves out the transform of a zero hyperparameter (momentum 0: no trace), so the state's layout
        # changes when a value turns zero or stops being zero
        return tuple(k for k, v in values.items() if not isinstance(v, (Tensor, tuple)) and not callable(v)
                     and v == 0)

    def current(values: dict[str, Any]) -> Transform:
        key = tuple((k, id(v) if isinstance(v, Tensor) or callable(v) else v) for k, v in values.items())
        if key != built["key"]:
            built["key"], built["transform"] = key, make(**values)
        return built["transform"]

    def fit_layout(state: InjectState, params: Any) -> InjectState:
        """The inner state, re-made (fresh buffers) where a zero came or went and the chain changed shape."""
        now = zeros(state.hyperparams)
        if state.zeros != now:
            fresh = current(state.hyperparams).init(params)
            if _layout(fresh) != _layout(state.inner):
                state = state._replace(inner=fresh)
        return state._replace(zeros=now)

    def init(params: Any) -> InjectState:
        return InjectState(dict(hyperparams), current(hyperparams).init(params), zeros(hyperparams))

    def update(grads: Any, state: InjectState, params: Any) -> tuple[Any, InjectState]:
        state = fit_layout(state, params)
        updates, inner = current(state.hyperparams).update(grads, state.inner, params)
        return updates, state._replace(inner=inner)

    def step(params: Any, grads: Any, state: InjectState) -> InjectState | None:
        state = fit_layout(state, params)
        fast = current(state.hyperparams).step
        inner = None if fast is None else fast(params, grads, state.inner)
        return None if inner is None else state._replace(inner=inner)

    return Transform(init, update, step)


class Optimizer(torch.optim.Optimizer):
    """Drive any ``nn.Module`` with a gdlab transform.

    Args:
        params: parameters or param groups (one set of hyperparameters for all groups).
        transform: a transform; built with :func:`inject`, its hyperparameters appear in ``param_groups``.
        fused: let torch's fused kernels do the step where the transform can use one (see
            :mod:`gdlab.optim.fused`); with False the transforms do every step.
    """

    def __init__(self, params: Iterable[Any], transform: Transform, *, fused: bool = True) -> None:
        super().__init__(params, defaults={})
        self.transform = transform
        self.fused = fused
        self._params: list[Tensor] = [p for group in self.param_groups for p in group["params"]]
        self._detached = [p.detach() for p in self._params]  # views of the same storage, made once
        with torch.no_grad():
            self._state = transform.init(self._detached)
        for group in self.param_groups:
            group.update(self._hyperparams())

    @property
    def transform_state(self) -> Any:
        """The transform's state as it stands: named tuples (``InjectState``, ``ChainState``, ``AdamState``, ...;
        see :func:`gdlab.optim.transforms.find`). Read it; :meth:`load_state_dict` replaces it.

        Example:
            >>> from gdlab.optim import aliases
            >>> opt = Optimizer([torch.nn.Parameter(torch.zeros(2))], inject(aliases.adam, lr=0.1))
            >>> [type(s).__name__ for s in opt.transform_state.inner.inner]
            ['AdamState', 'CountState']
        """
        return self._state

    def _hyperparams(self) -> dict[str, Any]:
        return self._state.hyperparams if isinstance(self._state, InjectState) else {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update from the parameters' ``.grad`` (missing gradients count as zero)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hyper = self._hyperparams()
        first = self.param_groups[0]
        for key in hyper:  # the groups' values win: a scheduler or a remedy may have changed them
            if any(g[key] is not first[key] and g[key] != first[key] for g in self.param_groups[1:]):
                raise InvalidParameter(key, "different values per param group", "one value for all groups")
            hyper[key] = first[key]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        if self.transform.step is not None:
            with contextlib.nullcontext() if self.fused else fused_kernels_off():
                done = self.transform.step(self._detached, grads, self._state)
            if done is not None:
                self._state = done
                return loss
        updates, self._state = self.transform.update(grads, self._state, self._detached)
        apply_updates(self._detached, list(updates))
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the transform's state as plain dicts and lists of tensors and numbers
        (``{"hyperparams": ..., "inner": {"inner": [{"count": ..., "buf": [...]}, ...]}, "zeros": [...]}``,
        the layout gdlab has always saved; schedules are not saved)."""
        saved = super().state_dict()
        saved["param_groups"] = [{k: v for k, v in g.items() if not callable(v)} for g in saved["param_groups"]]
        saved["transform"] = _plain(self._state)
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (onto these parameters' devices and dtypes), its dicts made
        named states again."""
        state_dict = dict(state_dict)
        saved = state_dict.pop("transform")
        current_groups = self.param_groups
        super().load_state_dict(state_dict)
        for group, old in zip(self.param_groups, current_groups):
            for key, value in old.items():
                group.setdefault(key, value)  # schedules, not saved, come from the new optimizer
        like = self._params[0]
        self._state = _restore(saved, self._state, like)


def _is_named(state: Any) -> bool:
    return isinstance(state, tuple) and hasattr(state, "_fields")


def _layout(state: Any) -> Any:
    """The shape of a state tree: state types, keys and list lengths, leaves as their type."""
    if _is_named(state):
        return type(state).__name__, tuple(_layout(v) for v in state)
    if isinstance(state, dict):
        return tuple((k, _layout(v)) for k, v in sorted(state.items()))
    if isinstance(state, (list, tuple)):
        return tuple(_layout(v) for v in state)
    return type(state).__name__


def _plain(state: Any) -> Any:
    """The state as plain dicts and lists, so torch.load(weights_only=True) reads it: a named state becomes the
    dict of its fields (a None field, absent, left out), and callables (schedules) are left out."""
    if _is_named(state):
        return {k: _plain(v) for k, v in state._asdict().items() if v is not None}
    if isinstance(state, dict):
        return {k: _plain(v) for k, v in state.items() if not callable(v) or isinstance(v, Tensor)}
    if isinstance(state, (list, tuple)):
        return [_plain(v) for v in state]
    return state


# The named states a saved dict may be. Each is known by its keys in order (``_plain`` writes a state's fields in
# order, as gdlab 0.1.0 wrote its dicts): AdamState (count, mu, nu) and RmsState (count, nu, mu) differ only so.
_STATES: tuple[type[Any], ...] = (
    InjectState, ChainState, CountState, TraceState, RssState, RmsState, AdamState, LionState,
)


def _fits(kind: type[Any], saved: dict[str, Any]) -> bool:
    """Whether ``saved`` is a ``kind`` written by :func:`_plain`: its fields in order, only None ones missing."""
    fields: tuple[str, ...] = kind._fields
    required = [f for f in fields if f not in kind._field_defaults]
    return list(saved) == [f for f in fields if f in saved] and all(f in saved for f in required)


def _kind(saved: dict[str, Any], current: Any) -> type[Any] | None:
    """The named state ``saved`` is: ``current``'s type where it fits, else the built-in one that fits (the layout
    changed since the save: a zero hyperparameter came or went); None for a plain dict (the hyperparameters)."""
    if isinstance(current, dict):
        return None
    kinds = (type(current), *_STATES) if _is_named(current) else _STATES
    return next((kind for kind in kinds if _fits(kind, saved)), None)


def _restore(saved: Any, current: Any, like: Tensor) -> Any:
    """``saved`` with tensors cloned onto ``like``'s device, its dicts made named states again (see :func:`_kind`)
    and its lists tuples where ``current`` has tuples (with no ``current``: lists of anything but tensors); what
    ``saved`` lacks (schedules, fields of the current state) taken from ``current``."""
    if isinstance(saved, dict):
        kind = _kind(saved, current)
        if kind is None:
            merged = dict(current) if isinstance(current, dict) else {}
            merged.update({k: _restore(v, merged.get(k), like) for k, v in saved.items()})
            return merged
        template = current if isinstance(current, kind) else None
        return kind(*[_restore(saved[f], getattr(template, f, None), like) if f in saved
                      else getattr(template, f, None) for f in kind._fields])
    if isinstance(saved, (list, tuple)):
        others = list(current) if isinstance(current, (list, tuple)) else []
        others += [None] * (len(saved) - len(others))  # a chain longer than the current one: a zero went
        restored = [_restore(v, c, like) for v, c in zip(saved, others)]
        if current is None:  # nothing to follow (the layout changed): states and names in tuples, tensors in lists
            as_tuple = not any(isinstance(v, Tensor) for v in restored)
        else:
            as_tuple = isinstance(current, tuple)
        return tuple(restored) if as_tuple else restored
    if isinstance(saved, Tensor):
        return saved.detach().clone().to(like.device)
    return saved
