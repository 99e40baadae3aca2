"""A transform chain as a ``torch.optim.Optimizer``, with torch.optim's semantics where users rely on them.

* Each param group keeps its own hyperparameters (``lr``, ``weight_decay``, ``betas``, ``momentum``...), shown in
  ``param_groups`` (and their starting values in ``defaults``) for an alias's transform (its ``source``, see
  :class:`~gdlab.optim.transforms.Source`) or one made by :func:`inject`. The adapter reads them back before
  every step, so a callback, a remedy or any ``torch.optim.lr_scheduler`` (StepLR, OneCycleLR and CyclicLR
  cycling ``momentum`` or ``betas[0]``, ...) that sets them is obeyed; the chain is made again only when a value
  changes.
* A parameter whose ``.grad`` is None is not stepped: no weight decay, no momentum, its state untouched. Each
  parameter counts its own steps, as torch.optim's per-parameter ``step`` (Adam's bias correction, momentum's
  first step; a schedule given as a hyperparameter is read at that count too).
* ``maximize=True`` (or a group's ``"maximize"``) ascends the gradient.
* float16 and bfloat16 parameters are stepped in float32 and rounded back (their state stays in their dtype).
* A tensor ``lr`` must have one element; a torch.optim state dict does not load (a one-line error says so).

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
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
    Source,
    State,
    TraceState,
    Transform,
    apply_updates,
)

__all__ = ["InjectState", "Optimizer", "inject"]

_LOW = (torch.float16, torch.bfloat16)  # stepped in float32, rounded back


class InjectState(NamedTuple):
    """:func:`inject`'s state: the hyperparameters, the state of the transform they make, and the names of those
    that are zero (their transforms are left out of the chain)."""

    hyperparams: dict[str, Any]
    inner: State
    zeros: tuple[str, ...]


def _zeros(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The hyperparameters that are the plain number 0: an alias leaves out their transforms (momentum 0: no
    trace), so the state's layout changes when a value turns zero or stops being zero."""
    return tuple(k for k, v in values.items() if not isinstance(v, (Tensor, tuple)) and not callable(v)
                 and v == 0)


def _keyed(value: Any) -> Any:
    """``value`` as part of a hashable key: tensors and schedules by identity, sequences item by item."""
    if isinstance(value, Tensor) or callable(value):
        return ("id", id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_keyed(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple((k, _keyed(v)) for k, v in values.items())


def inject(make: Callable[..., Transform], **hyperparams: Any) -> Transform:
    """``make(**hyperparams)`` with the hyperparameters held in the state (``state.hyperparams``): change them
    there between steps and the next update uses the new values. The chain is rebuilt only when they change.

    Behind :class:`Optimizer` the hyperparameters (``make``'s defaults, then these) are each param group's.

    Example:
        >>> from gdlab.optim import aliases
        >>> opt = Optimizer([torch.nn.Parameter(torch.zeros(2))], inject(aliases.adam, lr=0.1))
        >>> opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]
        (0.1, (0.9, 0.999))
    """
    built: dict[str, Any] = {"key": None, "transform": None}

    def current(values: dict[str, Any]) -> Transform:
        key = _key(values)
        if key != built["key"]:
            built["key"], built["transform"] = key, make(**values)
        return built["transform"]

    def fit_layout(state: InjectState, params: Any) -> InjectState:
        """The inner state, re-made (fresh buffers) where a zero came or went and the chain changed shape."""
        now = _zeros(state.hyperparams)
        if state.zeros != now:
            fresh = current(state.hyperparams).init(params)
            if _layout(fresh) != _layout(state.inner):
                state = state._replace(inner=fresh)
        return state._replace(zeros=now)

    def init(params: Any) -> InjectState:
        return InjectState(dict(hyperparams), current(hyperparams).init(params), _zeros(hyperparams))

    def update(grads: Any, state: InjectState, params: Any) -> tuple[Any, InjectState]:
        state = fit_layout(state, params)
        updates, inner = current(state.hyperparams).update(grads, state.inner, params)
        return updates, state._replace(inner=inner)

    def step(params: Any, grads: Any, state: InjectState) -> InjectState | None:
        state = fit_layout(state, params)
        fast = current(state.hyperparams).step
        inner = None if fast is None else fast(params, grads, state.inner)
        return None if inner is None else state._replace(inner=inner)

    return Transform(init, update, step, Source(make, dict(hyperparams), injected=True))


def _defaults(source: Source) -> dict[str, Any]:
    """Every hyperparameter of a source: ``make``'s keyword defaults, then the values it was made with."""
    try:
        parameters = inspect.signature(source.make).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        parameters = []  # type: ignore[assignment]
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found = {p.name: p.default for p in parameters if p.kind in keywords and p.default is not p.empty}
    return {**found, **source.hyperparams}


def _check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        shown = lr.tolist() if lr.numel() <= 8 else f"tensor of shape {tuple(lr.shape)}"
        raise InvalidParameter("lr", shown, "a number or a one-element tensor (one learning rate per param group)")


@dataclass
class _Group:
    """What the optimizer keeps for one param group beside torch's dict."""

    params: list[Tensor]
    detached: list[Tensor]  # views of the same storage, made once
    low: bool  # holds float16 or bfloat16 parameters
    values: dict[str, Any] = field(default_factory=dict)  # the hyperparameters the state was last fitted to
    inner: Any = None  # the transform's state (InjectState's inner for an injected one)
    transform: Transform | None = None  # made from ``values``
    key: Any = None  # ``values``' key; None: fit again at the next step
    zeros: tuple[str, ...] | None = None  # the zero hyperparameters the state's layout follows; None: unknown
    counts: list[int] | None = None  # each parameter's step count, once they differ (a missing grad)


class Optimizer(torch.optim.Optimizer):
    """Drive any ``nn.Module`` with a gdlab transform, as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or param groups; a group's own values (``{"params": ..., "weight_decay": 0}``) win
            over the transform's.
        transform: a transform. An alias (``aliases.adamw(1e-3)``), a chain holding one, or :func:`inject`'s
            shows its hyperparameters in ``param_groups`` and ``defaults``, each group's used for it; any other
            transform serves every group alike.
        fused: let torch's fused kernels do the step where the transform can use one (see
            :mod:`gdlab.optim.fused`); with False the transforms do every step.
        maximize: ascend the gradient (the default of each group's ``"maximize"``).

    Example:
        >>> from torch import nn
        >>> from gdlab.optim import aliases
        >>> model = nn.Linear(3, 1)
        >>> opt = Optimizer([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}],
        ...                 aliases.adamw(1e-3, weight_decay=0.1))
        >>> [g["weight_decay"] for g in opt.param_groups], opt.defaults["betas"]
        ([0.1, 0.0], (0.9, 0.999))
    """

    def __init__(self, params: Iterable[Any], transform: Transform, *, fused: bool = True,
                 maximize: bool = False) -> None:
        self.transform = transform
        self.fused = fused
        self._source = transform.source
        self._injected = self._source is not None and self._source.injected
        self._hyper: dict[str, Any] = {} if self._source is None else _defaults(self._source)
        self._built: dict[Any, tuple[dict[str, Any], Transform]] = {}  # key -> (values kept alive, transform)
        if self._source is not None and not self._injected:
            self._built[_key(self._hyper)] = (dict(self._hyper), transform)  # it serves its own values
        self._groups: list[_Group] = []
        super().__init__(params, defaults={**self._hyper, "maximize": maximize})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as torch.optim's: a fine-tuned backbone unfrozen later), its state fresh; its own values
        win over ``defaults``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        params = list(group["params"])
        try:
            new = _Group(params, [p.detach() for p in params], any(p.dtype in _LOW for p in params))
            transform = self._fit(new, group)
            with torch.no_grad():
                new.inner = transform.init(new.detached)
        except BaseException:
            self.param_groups.pop()
            raise
        self._groups.append(new)

    def __getstate__(self) -> dict[str, Any]:
        """All the optimizer holds (torch's keeps only defaults, state and param groups), so ``copy.deepcopy``
        gives an optimizer that steps on."""
        return dict(self.__dict__)

    @property
    def transform_state(self) -> Any:
        """The transform's state as it stands: named tuples (``InjectState``, ``ChainState``, ``AdamState``, ...;
        see :func:`gdlab.optim.transforms.find`); with several param groups a list, one per group. Read it;
        :meth:`load_state_dict` replaces it.

        Example:
            >>> from gdlab.optim import aliases
            >>> opt = Optimizer([torch.nn.Parameter(torch.zeros(2))], inject(aliases.adam, lr=0.1))
            >>> [type(s).__name__ for s in opt.transform_state.inner.inner]
            ['AdamState', 'CountState']
        """
        states = [self._state_of(g) for g in self._groups]
        return states[0] if len(states) == 1 else states

    def _state_of(self, g: _Group) -> Any:
        return InjectState(dict(g.values), g.inner, g.zeros or ()) if self._injected else g.inner

    def _fit(self, g: _Group, group: dict[str, Any]) -> Transform:
        """The transform for ``group``'s values now, the group's state re-made where the chain changed shape."""
        if self._source is None:
            return self.transform
        values = {k: group.get(k, d) for k, d in self._hyper.items()}
        key = _key(values)
        if key == g.key and g.transform is not None:
            return g.transform
        transform = self._build(values, key)
        zeros = _zeros(values)
        if g.inner is not None and zeros != g.zeros and _layout(_shape_of(transform, g.detached)) != \
                _layout(g.inner):
            with torch.no_grad():
                g.inner, g.counts = transform.init(g.detached), None
        g.values, g.transform, g.key, g.zeros = values, transform, key, zeros
        return transform

    def _build(self, values: dict[str, Any], key: tuple[Any, ...]) -> Transform:
        """``source.make(**values)``, checked; the few last made are kept."""
        _check_lr(values.get("lr"))
        hit = self._built.get(key)
        if hit is not None:
            return hit[1]
        assert self._source is not None
        transform = self._source.make(**values)
        if len(self._built) >= 32:
            self._built.clear()
        self._built[key] = (values, transform)  # the values keep tensors and schedules (keyed by id) alive
        return transform

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of each param group from its parameters' ``.grad``, with the group's hyperparameters;
        a parameter whose ``.grad`` is None is left as it is, its state too."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g, group in zip(self._groups, self.param_groups):
            if g.params and g.params[0].data_ptr() != g.detached[0].data_ptr():
                _follow(g)  # module.to() gave the parameters new storage
            transform = self._fit(g, group)
            grads = [p.grad for p in g.params]
            if g.counts is None and not g.low and all(x is not None for x in grads):  # the fast path
                given: list[Tensor] = grads  # type: ignore[assignment]  # none is None
                if group.get("maximize"):
                    given = list(torch._foreach_neg(given))
                g.inner = self._run(transform, g.detached, given, g.inner)
            else:
                self._step_some(g, group, transform, grads)
        return loss

    def _run(self, transform: Transform, params: list[Tensor], grads: list[Tensor], state: Any) -> Any:
        """One step of ``transform`` on these parameters: its fused ``step`` where it serves, else ``update``."""
        if transform.step is not None:
            with contextlib.nullcontext() if self.fused else fused_kernels_off():
                done = transform.step(params, grads, state)
            if done is not None:
                return done
        updates, state = transform.update(grads, state, params)
        apply_updates(params, list(updates))
        return state

    def _step_some(self, g: _Group, group: dict[str, Any], transform: Transform, grads: list[Tensor | None]) -> None:
        """The step where some gradients are missing, the parameters' counts differ or some are float16/bfloat16:
        the parameters with a gradient, in buckets of one step count, each stepped on its slice of the state
        (in float32 for low precision) and written back."""
        n = len(g.params)
        active = [i for i, x in enumerate(grads) if x is not None]
        if not active:
            return
        count = _count(g.inner)
        if g.counts is None and len(active) < n and count is not None:
            g.counts = [count] * n  # from now on each parameter counts its own steps
        buckets: dict[int | None, list[int]] = {}
        for i in active:
            buckets.setdefault(count if g.counts is None else g.counts[i], []).append(i)
        for at, idx in buckets.items():
            params = [g.detached[i] for i in idx]
            some: list[Tensor] = [grads[i] for i in idx]  # type: ignore[misc]
            if group.get("maximize"):
                some = list(torch._foreach_neg(some))
            sub = _select(g.inner, idx, n, at)
            if g.low:
                wide = [_float32(p) for p in params]
                done = self._run(transform, wide, [_float32(x) for x in some], _each_tensor(sub, _float32))
                for p, w in zip(params, wide):
                    if w is not p:
                        p.copy_(w)  # rounds back to the parameter's dtype
            else:
                done = self._run(transform, params, some, sub)
            g.inner = _merge(g.inner, done, idx, n)
            if g.counts is not None:
                for i in idx:
                    g.counts[i] += 1
        if g.counts is not None and len(set(g.counts)) == 1:
            g.counts = None  # all caught up: one count again (the state's)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the transform's state as plain dicts and lists of tensors and numbers
        (``{"hyperparams": ..., "inner": {"inner": [{"count": ..., "buf": [...]}, ...]}, "zeros": [...]}``,
        the layout gdlab has always saved; schedules are not saved). With several param groups
        ``{"groups": [one such state per group]}``; a group whose parameters' step counts differ (missing
        gradients) adds ``"counts"``, one per parameter."""
        saved = super().state_dict()
        saved["param_groups"] = [{k: v for k, v in g.items() if not callable(v)} for g in saved["param_groups"]]
        entries = []
        for g in self._groups:
            entry = _plain(self._state_of(g))
            if g.counts is not None and isinstance(entry, dict):
                entry["counts"] = list(g.counts)
            entries.append(entry)
        saved["transform"] = entries[0] if len(entries) == 1 else {"groups": entries}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (onto these parameters' devices), its dicts made named states
        again. A torch.optim optimizer's state dict is refused: its state does not fit gdlab's transforms."""
        if not isinstance(state_dict, Mapping) or "transform" not in state_dict:
            keys = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise InvalidParameter("state_dict keys", keys, "a gdlab Optimizer's state_dict, with its 'transform' "
                                   "(a torch.optim optimizer's state does not load into gdlab's)")
        state_dict = dict(state_dict)
        saved = state_dict.pop("transform")
        current_groups = self.param_groups
        super().load_state_dict(state_dict)
        for group, old in zip(self.param_groups, current_groups):
            for key, value in old.items():
                group.setdefault(key, value)  # schedules, not saved, come from the new optimizer
        several = isinstance(saved, dict) and list(saved) == ["groups"]
        entries = list(saved["groups"]) if several else [saved]
        if len(entries) == len(self._groups):
            for g, entry in zip(self._groups, entries):
                self._load(g, entry)
            return
        if len(entries) != 1:
            raise InvalidParameter("state_dict", f"{len(entries)} group states",
                                   f"{len(self._groups)}, one per param group")
        # one state over every group's parameters, in order (as gdlab saved it before groups had their own)
        whole = _Group([p for g in self._groups for p in g.params], [], False)
        self._load(whole, entries[0], template=self._state_of(self._groups[0]))
        n, lo = len(whole.params), 0
        for g in self._groups:
            idx = list(range(lo, lo + len(g.params)))
            lo += len(g.params)
            g.inner = _select(whole.inner, idx, n, None)
            g.zeros, g.key, g.counts = whole.zeros, None, None if whole.counts is None else \
                [whole.counts[i] for i in idx]

    def _load(self, g: _Group, entry: Any, template: Any = None) -> None:
        counts = None
        if isinstance(entry, dict) and "counts" in entry:
            entry = dict(entry)
            counts = entry.pop("counts")
        like = g.params[0] if g.params else next(p for x in self._groups for p in x.params)
        restored = _restore(entry, self._state_of(g) if template is None else template, like)
        if isinstance(restored, InjectState):
            g.inner, g.zeros = restored.inner, tuple(restored.zeros) if self._injected else None
        else:
            g.inner, g.zeros = restored, None  # layout checked at the next step
        g.key, g.counts = None, None if counts is None else [int(c) for c in counts]


def _follow(g: _Group) -> None:
    """The group's views made again, and its state moved to each parameter's device and dtype: ``module.to()``
    (``fit`` moves the model to its device) put new storage behind the same parameters."""
    g.detached = [p.detach() for p in g.params]
    g.low = any(p.dtype in _LOW for p in g.params)
    g.key = None
    first = g.params[0]
    n = len(g.params)

    def move(state: Any) -> Any:
        if isinstance(state, Tensor):
            return state.to(first.device)
        if _is_named(state):
            return type(state)(*[move(v) for v in state])
        if _per_parameter(state, n):
            return [t.to(p.device, p.dtype if t.is_floating_point() and p.is_floating_point() else t.dtype)
                    for t, p in zip(state, g.params)]
        if isinstance(state, (list, tuple)):
            return type(state)(move(v) for v in state)
        return state

    g.inner = move(g.inner)


def _float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _LOW else t


def _shape_of(transform: Transform, params: list[Tensor]) -> Any:
    """``transform``'s initial state for ``params`` (on the meta device where it can: only its layout is read)."""
    try:
        return transform.init([p.to("meta") for p in params])
    except Exception:  # a transform whose init needs real values
        with torch.no_grad():
            return transform.init(params)


def _count(state: Any) -> int | None:
    """The step count of a state (the first ``count`` found: a chain's move together), None without one."""
    if _is_named(state):
        if "count" in state._fields and isinstance(state.count, int):
            return int(state.count)
        return next((c for c in (_count(v) for v in state) if c is not None), None)
    if isinstance(state, (list, tuple)):
        return next((c for c in (_count(v) for v in state) if c is not None), None)
    return None


def _per_parameter(value: Any, n: int) -> bool:
    """Whether ``value`` is a list of one tensor per parameter (a momentum buffer, Adam's moments...)."""
    return isinstance(value, (list, tuple)) and n > 0 and len(value) == n and all(isinstance(t, Tensor)
                                                                                for t in value)


def _select(state: Any, idx: list[int], n: int, count: int | None) -> Any:
    """``state`` for the parameters ``idx`` of ``n``: its per-parameter lists cut to them, every count ``count``
    (None: left as it is)."""
    if _is_named(state):
        return type(state)(*[count if f == "count" and count is not None and isinstance(v, int)
                             else _select(v, idx, n, count) for f, v in zip(state._fields, state)])
    if _per_parameter(state, n):
        return [state[i] for i in idx]
    if isinstance(state, tuple):
        return tuple(_select(v, idx, n, count) for v in state)
    if isinstance(state, list):
        return [_select(v, idx, n, count) for v in state]
    return state


def _merge(whole: Any, part: Any, idx: list[int], n: int) -> Any:
    """``whole`` with ``part`` (the state :func:`_select` cut for ``idx``, stepped) written back: its tensors put in
    their places (copied into the old ones where the dtype differs: a low-precision state stepped in float32)."""
    if _is_named(whole) and type(part) is type(whole):
        return type(whole)(*[_merge(w, p, idx, n) for w, p in zip(whole, part)])
    if _per_parameter(whole, n) and isinstance(part, (list, tuple)) and len(part) == len(idx):
        out = list(whole)
        for i, t in zip(idx, part):
            if t is out[i]:
                continue
            if t.dtype != out[i].dtype:
                out[i].copy_(t)
            else:
                out[i] = t
        return out
    if isinstance(whole, tuple) and isinstance(part, tuple) and len(whole) == len(part) and not _is_named(part):
        return tuple(_merge(w, p, idx, n) for w, p in zip(whole, part))
    return part


def _each_tensor(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``state`` with ``fn`` applied to each tensor in its named states, lists and tuples."""
    if isinstance(state, Tensor):
        return fn(state)
    if _is_named(state):
        return type(state)(*[_each_tensor(v, fn) for v in state])
    if isinstance(state, (list, tuple)):
        return type(state)(_each_tensor(v, fn) for v in state)
    return state


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
