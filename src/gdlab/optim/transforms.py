"""Gradient transforms: small pieces, one equation each, chained into optimizers (as optax builds them).

A :class:`Transform` is a pair of functions over lists of tensors::

    state = transform.init(params)
    updates, state = transform.update(grads, state, params)
    apply_updates(params, updates)          # params += updates

Every hyperparameter may be a float, a schedule (a function of the step count, starting at 0) or a tensor of
shape ``[members]``: then each parameter has a leading ``[members]`` axis and member ``i`` uses entry ``i``
(broadcast over the parameter's other axes). Floats take the ``torch._foreach_*`` path; member tensors the same
equations one tensor at a time. Each transform's state is a small named tuple (``TraceState(count, buf)``,
``AdamState(count, mu, nu, nu_max)``, ...): tensors and an integer ``count``; :func:`find` picks one out of a
chain's state by its type.

Example:
    >>> p = [torch.tensor([1.0, -2.0])]
    >>> opt = chain(trace(decay=0.9), scale_by_learning_rate(0.1))
    >>> state = opt.init(p)
    >>> updates, state = opt.update([torch.tensor([1.0, 1.0])], state, p)
    >>> apply_updates(p, updates); [round(v, 6) for v in p[0].tolist()]
    [0.9, -2.1]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

from gdlab.errors import InvalidParameter

__all__ = [
    "AdamState",
    "ChainState",
    "CountState",
    "Hyper",
    "LionState",
    "RmsState",
    "RssState",
    "Source",
    "TraceState",
    "Transform",
    "add_decayed_weights",
    "add_l2",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "find",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "trace",
]

Hyper = float | Tensor | Callable[[int], Any]
State = Any  # a transform's own named tuple (CountState, TraceState, ..., ChainState)
# A hyperparameter resolved for one step: a float, or one tensor per parameter shaped to broadcast over it.
Value = float | list[Tensor]
Tensors = list[Tensor] | tuple[Tensor, ...]  # torch's foreach ops return tuples, comprehensions lists
S = TypeVar("S")


class Source(NamedTuple):
    """How a transform was made: ``make(**hyperparams)``. The aliases record it (and :func:`chain` passes on its
    one recorded member's), so :class:`~gdlab.optim.adapter.Optimizer` can show the hyperparameters in
    ``param_groups`` and make the transform again with a group's own values. ``injected``: made by
    :func:`~gdlab.optim.adapter.inject`, whose state holds the hyperparameters.

    Example:
        >>> from gdlab.optim import aliases
        >>> aliases.sgd(0.1).source.hyperparams
        {'lr': 0.1, 'momentum': 0.0, 'dampening': 0.0, 'nesterov': False, 'weight_decay': 0.0}
    """

    make: Callable[..., Transform]
    hyperparams: dict[str, Any]
    injected: bool = False


class Transform(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``.

    ``step``, where a transform has one, does ``update`` and ``apply_updates`` in one pass over memory (a fused
    kernel): ``step(params, grads, state) -> state`` changes ``params`` in place, and returns None, changing
    nothing, where it cannot serve (``[members]`` hyperparameters, mixed dtypes, a device without the kernel);
    then ``update`` does the work. Both compute the same step (tests check it). ``source``, where known, is how
    the transform was made (see :class:`Source`).
    """

    init: Callable[[Tensors], State]
    update: Callable[[Tensors, State, Tensors], tuple[Tensors, State]]
    step: Callable[[Tensors, Tensors, State], State | None] | None = None
    source: Source | None = None


# -- hyperparameters and the two paths (foreach for floats, per tensor for [members] values) ---------------------


def _value(h: Hyper, count: int, like: Sequence[Tensor]) -> Value:
    """``h`` at step ``count``: a float, or per-parameter tensors ``[members, 1, ...]`` (a one-element tensor
    ``[1, ...]`` with the parameter's number of axes, so it broadcasts over any parameter, a scalar one too)."""
    v = h(count) if callable(h) and not isinstance(h, Tensor) else h
    if isinstance(v, Tensor):
        if v.numel() == 1:
            return [v.to(x.device, x.dtype).reshape([1] * x.dim()) for x in like]
        return [v.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1))) for x in like]
    return float(v)


def _mul(xs: Tensors, s: Value) -> Tensors:
    return [x * v for x, v in zip(xs, s)] if isinstance(s, list) else torch._foreach_mul(xs, s)


def _add(xs: Tensors, ys: Tensors, s: Value = 1.0) -> Tensors:
    """xs + s * ys"""
    if isinstance(s, list):
        return [x + y * v for x, y, v in zip(xs, ys, s)]
    return torch._foreach_add(xs, ys, alpha=s)


def _div(xs: Tensors, s: Value) -> Tensors:
    return [x / v for x, v in zip(xs, s)] if isinstance(s, list) else torch._foreach_div(xs, s)


def _map(v: Value, fn: Callable[[Any], Any]) -> Value:
    """fn applied to a float, or to each per-parameter tensor."""
    return [fn(x) for x in v] if isinstance(v, list) else fn(v)


def _ema(avg: Tensors, xs: Tensors, decay: Value) -> Tensors:
    """decay * avg + (1 - decay) * xs"""
    return _add(_mul(avg, decay), xs, _map(decay, lambda d: 1 - d))


def _scale_add_(acc: Tensors, a: Value, xs: Tensors, b: Value) -> Tensors:
    """acc <- a * acc + b * xs, in place: a state's running sums are updated where they live, as torch.optim
    does (out of place, Adam would allocate two new tensors per parameter a step; docs/benchmarks.md, optim_step)."""
    if isinstance(a, list) or isinstance(b, list):
        a_: list[Any] = a if isinstance(a, list) else [a] * len(acc)
        b_: list[Any] = b if isinstance(b, list) else [b] * len(acc)
        for x, y, va, vb in zip(acc, xs, a_, b_):
            x.mul_(va).add_(y * vb)
    else:
        torch._foreach_mul_(acc, a)
        torch._foreach_add_(acc, xs, alpha=b)
    return acc


def _ema_(avg: Tensors, xs: Tensors, decay: Value) -> Tensors:
    """avg <- decay * avg + (1 - decay) * xs, in place."""
    return _scale_add_(avg, decay, xs, _map(decay, lambda d: 1 - d))


def _ema_square_(avg: Tensors, g: Tensors, decay: Value) -> Tensors:
    """avg <- decay * avg + (1 - decay) * g^2, in place (with floats, no temporary g^2 is made)."""
    if isinstance(decay, list):
        return _ema_(avg, torch._foreach_mul(g, g), decay)
    torch._foreach_mul_(avg, decay)
    torch._foreach_addcmul_(avg, g, g, value=1 - decay)
    return avg


def _check(name: str, value: Hyper, low: float, high: float, *, closed_high: bool = False) -> None:
    if callable(value) and not isinstance(value, Tensor):
        return  # a schedule is checked by its own constructor
    values = value.flatten().tolist() if isinstance(value, Tensor) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not (
            low <= v <= high if closed_high else low <= v < high
        ):
            bracket = "]" if closed_high else ")"
            raise InvalidParameter(name, v, f"a number in [{low:g}, {high:g}{bracket}")


# -- transforms, each beside its state: a named tuple with the step ``count`` (a chain's counts move together) --
# A state field that is None is absent (AdamState.nu_max without amsgrad): a saved state leaves it out.


class ChainState(NamedTuple):
    """:func:`chain`'s state: its transforms' states, in order."""

    inner: tuple[Any, ...]


def find(state: Any, kind: type[S]) -> S:
    """The first state of type ``kind`` in ``state`` (itself, or inside a chain's, depth first): how an alias
    finds its pieces (Adam's moments, the momentum buffers) whatever else its chain holds.

    Raises:
        LookupError: where ``state`` holds no ``kind``.

    Example:
        >>> opt = chain(trace(decay=0.9), scale_by_learning_rate(0.1))
        >>> find(opt.init([torch.zeros(2)]), TraceState).buf
        [tensor([0., 0.])]
    """
    for s in _walk(state):
        if isinstance(s, kind):
            return s
    raise LookupError(f"no {kind.__name__} in this {type(state).__name__}")


def _walk(state: Any) -> Iterator[Any]:
    """``state`` and, for a chain's, every state inside it, depth first."""
    yield state
    if isinstance(state, ChainState):
        for inner in state.inner:
            yield from _walk(inner)


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order, each to the previous one's updates.

    Where exactly one of them records its :class:`Source` (an alias), the chain records one too: the same chain
    with that member made again from new values, so an optimizer shows and changes its hyperparameters."""

    def init(params: Tensors) -> ChainState:
        return ChainState(tuple(t.init(params) for t in transforms))

    def update(grads: Tensors, state: ChainState, params: Tensors) -> tuple[Tensors, ChainState]:
        inner = []
        for t, s in zip(transforms, state.inner):
            grads, s = t.update(grads, s, params)
            inner.append(s)
        return grads, ChainState(tuple(inner))

    last = transforms[-1].step if transforms else None

    def step(params: Tensors, grads: Tensors, state: ChainState) -> ChainState:
        """The leading transforms' updates, then the last one's fused step (or its update where the step
        cannot serve: the leading states have moved on, so this step always finishes the work)."""
        assert last is not None
        inner = []
        for t, s in zip(transforms[:-1], state.inner):
            grads, s = t.update(grads, s, params)
            inner.append(s)
        done = last(params, grads, state.inner[-1])
        if done is None:
            updates, done = transforms[-1].update(grads, state.inner[-1], params)
            apply_updates(params, updates)
        return ChainState((*inner, done))

    return Transform(init, update, None if last is None else step, _chain_source(transforms))


def _chain_source(transforms: Sequence[Transform]) -> Source | None:
    """The chain's source where exactly one member has one (not an injected one: its state is laid out apart)."""
    recorded = [i for i, t in enumerate(transforms) if t.source is not None]
    if len(recorded) != 1:
        return None
    at = recorded[0]
    inner = transforms[at].source
    assert inner is not None
    if inner.injected:
        return None

    def make(**hyperparams: Any) -> Transform:
        parts = list(transforms)
        parts[at] = inner.make(**hyperparams)
        return chain(*parts)

    return Source(make, dict(inner.hyperparams))


class CountState(NamedTuple):
    """The state of a transform that keeps only the step count (scale_by_learning_rate, add_l2, clipping)."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)


def _stateless(fn: Callable[[Tensors, int, Tensors], Tensors]) -> Transform:
    """A transform whose only state is the step count."""

    def update(grads: Tensors, state: CountState, params: Tensors) -> tuple[Tensors, CountState]:
        return fn(grads, state.count, params), CountState(state.count + 1)

    return Transform(lambda params: CountState(0), update)


def scale_by_learning_rate(lr: Hyper) -> Transform:
    """u = -lr * u (the sign that turns a gradient into a descent step).

    Its ``step`` applies the update as it scales it (theta += -lr * u in one pass), so a chain ending here
    makes no temporary for the scaled update."""
    _check("lr", lr, 0.0, math.inf)
    plain = _stateless(lambda u, count, p: _mul(u, _negate(_value(lr, count, u))))

    def step(params: Tensors, u: Tensors, state: CountState) -> CountState:
        rate = _value(lr, state.count, u)
        if isinstance(rate, list):
            for p, x, r in zip(params, u, rate):
                p.add_(x * -r)
        else:
            torch._foreach_add_(params, u, alpha=-rate)
        return CountState(state.count + 1)

    return plain._replace(step=step)


def _negate(v: Value) -> Value:
    return [-x for x in v] if isinstance(v, list) else -v


def add_l2(weight_decay: Hyper) -> Transform:
    """u = u + weight_decay * theta: L2 regularisation coupled to the gradient (SGD's, Adam's weight_decay)."""
    _check("weight_decay", weight_decay, 0.0, math.inf)
    return _stateless(lambda u, count, p: _add(u, p, _value(weight_decay, count, u)))


def add_decayed_weights(weight_decay: Hyper) -> Transform:
    """u = u + weight_decay * theta, after the adaptive scaling: decoupled decay (AdamW, Loshchilov & Hutter
    2019, https://arxiv.org/abs/1711.05101). Same equation as :func:`add_l2`; its place in the chain differs."""
    return add_l2(weight_decay)


def clip_by_global_norm(max_norm: Hyper, *, per_member: bool = False) -> Transform:
    """u = u * min(1, max_norm / (|u| + 1e-6)) with |u| the norm over all parameters (torch's clip_grad_norm_);
    with ``per_member`` (or a ``[members]`` max_norm) one norm per member over its slices."""
    _check("max_norm", max_norm, 0.0, math.inf)

    def clip(u: Tensors, count: int, p: Tensors) -> Tensors:
        limit = _value(max_norm, count, u)
        if not (per_member or isinstance(limit, list)):
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u)))
            return torch._foreach_mul(u, (limit / (norm + 1e-6)).clamp(max=1.0))
        norm = torch.stack([x.reshape(len(x), -1).square().sum(1) for x in u]).sum(0).sqrt()  # [members]
        limits: list[Any] = limit if isinstance(limit, list) else [limit] * len(u)
        return [x * (lim / (norm.reshape(-1, *([1] * (x.dim() - 1))) + 1e-6)).clamp(max=1.0)
                for x, lim in zip(u, limits)]

    return _stateless(clip)


class TraceState(NamedTuple):
    """:func:`trace`'s momentum buffers, one per parameter."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)
    buf: Tensors


def trace(decay: Hyper = 0.9, *, dampening: Hyper = 0.0, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum as torch.optim.SGD has it (Polyak 1964; Sutskever et al. 2013 for Nesterov):

    buf = g on the first step, then buf = decay * buf + (1 - dampening) * g;
    u = g + decay * buf with ``nesterov``, else u = buf.
    """
    _check("momentum", decay, 0.0, 1.0)
    _check("dampening", dampening, 0.0, 1.0, closed_high=True)

    def init(params: Tensors) -> TraceState:
        return TraceState(0, [torch.zeros_like(p) for p in params])

    def update(g: Tensors, state: TraceState, params: Tensors) -> tuple[Tensors, TraceState]:
        count, mu = state.count, _value(decay, state.count, g)
        buf: Tensors
        if count == 0:
            buf = [x.clone() for x in g]
        else:
            keep = _map(_value(dampening, count, g), lambda d: 1 - d)
            buf = _scale_add_(state.buf, mu, g, keep)
        u = _add(g, buf, mu) if nesterov else buf
        return u, TraceState(count + 1, buf)

    return Transform(init, update)


class RssState(NamedTuple):
    """:func:`scale_by_rss`'s running sums of g^2."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)
    sum: Tensors


def scale_by_rss(*, initial_accumulator_value: float = 0.0, eps: Hyper = 1e-10) -> Transform:
    """AdaGrad (Duchi et al. 2011): s = s + g^2; u = g / (sqrt(s) + eps)."""
    _check("initial_accumulator_value", initial_accumulator_value, 0.0, math.inf)
    _check_eps(eps)

    def init(params: Tensors) -> RssState:
        return RssState(0, [torch.full_like(p, initial_accumulator_value) for p in params])

    def update(g: Tensors, state: RssState, params: Tensors) -> tuple[Tensors, RssState]:
        s = state.sum
        torch._foreach_addcmul_(s, g, g)
        u = _div_by(g, s, _value(eps, state.count, g))
        return u, RssState(state.count + 1, s)

    return Transform(init, update)


def _div_by(g: Tensors, second: Tensors, eps: Value, scale: Value = 1.0, times: Value = 1.0) -> Tensors:
    """g / (times * (sqrt(second) / scale + eps)), computed in one temporary (as 1 / denominator times g: no
    second parameter-sized buffer is allocated)."""
    denom = torch._foreach_sqrt(second)
    if isinstance(scale, list) or isinstance(times, list) or isinstance(eps, list):
        n = len(denom)
        per = [v if isinstance(v, list) else [v] * n for v in (scale, times, eps)]
        for d, v, f, e in zip(denom, *per):
            d.mul_(f / v).add_(f * e)
    else:
        if times / scale != 1.0:
            torch._foreach_mul_(denom, times / scale)
        torch._foreach_add_(denom, times * eps)
    torch._foreach_reciprocal_(denom)
    torch._foreach_mul_(denom, g)
    return denom


def _check_eps(eps: Hyper) -> None:
    _check("eps", eps, 0.0, math.inf)
    if not callable(eps) and not isinstance(eps, Tensor) and eps <= 0:
        raise InvalidParameter("eps", eps, "a number > 0, e.g. 1e-8")
    if isinstance(eps, Tensor) and bool((eps <= 0).any()):
        raise InvalidParameter("eps", eps.tolist(), "numbers > 0")


class RmsState(NamedTuple):
    """:func:`scale_by_rms`'s EMA of g^2 (``nu``) and, when centered, of g (``mu``)."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)
    nu: Tensors
    mu: Tensors | None = None


def scale_by_rms(*, alpha: Hyper = 0.99, eps: Hyper = 1e-8, centered: bool = False) -> Transform:
    """RMSProp (Tieleman & Hinton 2012), as torch.optim.RMSprop: s = alpha * s + (1 - alpha) * g^2;
    u = g / (sqrt(s) + eps), or with ``centered`` u = g / (sqrt(s - a^2) + eps) where a = EMA of g."""
    _check("alpha", alpha, 0.0, 1.0, closed_high=True)
    _check_eps(eps)

    def init(params: Tensors) -> RmsState:
        return RmsState(0, [torch.zeros_like(p) for p in params],
                        [torch.zeros_like(p) for p in params] if centered else None)

    def update(g: Tensors, state: RmsState, params: Tensors) -> tuple[Tensors, RmsState]:
        count, a = state.count, _value(alpha, state.count, g)
        nu = _ema_square_(state.nu, g, a)
        mu = None
        second = nu
        if centered:
            assert state.mu is not None
            mu = _ema_(state.mu, g, a)
            second = torch._foreach_addcmul(nu, mu, mu, value=-1.0)
        return _div_by(g, second, _value(eps, count, g)), RmsState(count + 1, nu, mu)

    return Transform(init, update)


class AdamState(NamedTuple):
    """:func:`scale_by_adam`'s moments; ``nu_max`` (the running maximum of nu) with amsgrad only."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)
    mu: Tensors
    nu: Tensors
    nu_max: Tensors | None = None


def scale_by_adam(*, b1: Hyper = 0.9, b2: Hyper = 0.999, eps: Hyper = 1e-8, amsgrad: bool = False) -> Transform:
    """Adam (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980): mu, nu = EMAs of g and g^2;
    u = (mu / (1 - b1^t)) / (sqrt(nu / (1 - b2^t)) + eps); with ``amsgrad`` nu is its running maximum
    (Reddi et al. 2018)."""
    _check("beta1", b1, 0.0, 1.0)
    _check("beta2", b2, 0.0, 1.0)
    _check_eps(eps)

    def init(params: Tensors) -> AdamState:
        return AdamState(0, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
                         [torch.zeros_like(p) for p in params] if amsgrad else None)

    def update(g: Tensors, state: AdamState, params: Tensors) -> tuple[Tensors, AdamState]:
        count = state.count
        beta1, beta2 = _value(b1, count, g), _value(b2, count, g)
        mu = _ema_(state.mu, g, beta1)
        nu = _ema_square_(state.nu, g, beta2)
        second = nu
        if amsgrad:
            assert state.nu_max is not None
            second = state.nu_max
            torch._foreach_maximum_(second, nu)
        t = count + 1
        u = _div_by(mu, second, _value(eps, count, g), scale=_map(beta2, lambda b: (1 - b**t) ** 0.5),
                    times=_map(beta1, lambda b: 1 - b**t))
        return u, AdamState(count + 1, mu, nu, state.nu_max)

    return Transform(init, update)


class LionState(NamedTuple):
    """:func:`scale_by_lion`'s momentum."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count (as in optax's states)
    mu: Tensors


def scale_by_lion(*, b1: Hyper = 0.9, b2: Hyper = 0.99) -> Transform:
    """Lion (Chen et al. 2023, https://arxiv.org/abs/2302.06675): u = sign(b1 * m + (1 - b1) * g);
    then m = b2 * m + (1 - b2) * g."""
    _check("beta1", b1, 0.0, 1.0)
    _check("beta2", b2, 0.0, 1.0)

    def init(params: Tensors) -> LionState:
        return LionState(0, [torch.zeros_like(p) for p in params])

    def update(g: Tensors, state: LionState, params: Tensors) -> tuple[Tensors, LionState]:
        count = state.count
        u = [x.sign() for x in _ema(state.mu, g, _value(b1, count, g))]
        mu = _ema_(state.mu, g, _value(b2, count, g))
        return u, LionState(count + 1, mu)

    return Transform(init, update)


@torch.no_grad()
def apply_updates(params: Tensors, updates: Tensors) -> None:
    """params += updates, in place."""
    torch._foreach_add_(params, updates)
