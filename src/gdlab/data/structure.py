"""Batches as structures: a batch is ``(inputs, target)`` where the inputs are a tensor, a tuple or list of
tensors, or a dict of tensors (nested as deep as the user likes), and the model is called as ``model(x)``,
``model(*inputs)`` or ``model(**inputs)`` accordingly; a dict holding one input, for a model whose forward takes one
positional input under another name (``nn.Sequential``'s ``forward(input)``), is called as ``model(x)``.

A sample of a Dataset (or a whole in-memory data set) is split into inputs and target by :func:`split`:

- ``(x, y)``: inputs ``x`` (a tensor, a tuple of tensors or a dict), target ``y``;
- ``(u, v, ..., y)`` (a ``TensorDataset(*inputs, target)``): the last is the target, the rest are inputs;
- ``{"input_ids": ..., "labels": ...}``: the target is ``target_key`` (default: ``"y"``, ``"label"`` or
  ``"labels"``, whichever is there), the other keys are the inputs.

Floating-point leaves follow the model's dtype; integer and bool leaves (token ids, categories, masks) keep theirs.

Example:
    >>> inputs, target = split({"ids": torch.zeros(4, 7, dtype=torch.long), "label": torch.ones(4)})
    >>> describe(inputs, target)
    'inputs {ids: tensor[4, 7] int64}, target tensor[4] float32'
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from gdlab.errors import DataError

__all__ = ["TARGET_KEYS", "Inputs", "call", "call_args", "count", "describe", "float_features", "leaves",
           "functional", "positional_only_input", "rows", "split", "take", "to", "tree_map"]

TARGET_KEYS = ("y", "label", "labels")
"""The keys tried, in order, for the target of a dict sample when no ``target_key`` is given."""

Inputs = Any
"""A tensor, or a tuple, list or dict of them (nested)."""


def tree_map(fn: Callable[[Tensor], Any], tree: Inputs) -> Inputs:
    """``fn`` applied to every tensor of ``tree``, the structure kept (tuples stay tuples, dicts dicts)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return (list if isinstance(tree, list) else tuple)(tree_map(fn, v) for v in tree)
    return tree  # None, strings, numbers: carried as they are


def leaves(tree: Inputs) -> list[Tensor]:
    """The tensors of ``tree`` in order."""
    out: list[Tensor] = []
    tree_map(out.append, tree)
    return out


def count(tree: Inputs) -> int:
    """The number of samples (the first dimension of the first tensor)."""
    first = next(iter(leaves(tree)), None)
    if first is None or first.dim() == 0:
        raise DataError(f"the inputs {describe(tree)} hold no batch of samples: expected tensors with a first "
                        "dimension over samples")
    return len(first)


def take(tree: Inputs, index: Tensor) -> Inputs:
    """The samples at ``index`` (an int64 tensor on the data's device) of every tensor: whole rows copied."""
    return tree_map(lambda t: t.index_select(0, index), tree)


def rows(tree: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start`` to ``stop`` of every tensor (views, no copy)."""
    return tree_map(lambda t: t[start:stop], tree)


def to(tree: Inputs, device: torch.device, dtype: torch.dtype) -> Inputs:
    """``tree`` on ``device``, its floating-point tensors in ``dtype`` (integers and bools keep their dtype)."""
    return tree_map(lambda t: t.to(device, dtype if t.is_floating_point() else None), tree)


def call_args(inputs: Inputs, target: Tensor | None = None, target_key: str | None = None,
              model: Callable[..., Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments a model is called with: ``(x,)``, ``(*inputs,)`` or ``**inputs``;
    with ``target`` given (a model that computes its own loss) it is passed too: last positional, or by
    ``target_key`` (default ``labels``) for dict inputs. A dict of one input is passed positionally when
    ``model``'s forward cannot take it by its key and takes one positional input (:func:`positional_only_input`).

    Example:
        >>> call_args({"x": torch.zeros(2, 3)}, model=torch.nn.Sequential(torch.nn.Linear(3, 1)))[1]
        {}
        >>> sorted(call_args({"input_ids": torch.zeros(2, 3)})[1])
        ['input_ids']
    """
    if isinstance(inputs, Mapping):
        if model is not None and target is None and len(inputs) == 1:
            (key, value), = inputs.items()
            if positional_only_input(model, key):
                return (value,), {}
        kwargs = dict(inputs)
        if target is not None:
            kwargs[target_key or "labels"] = target
        return (), kwargs
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return (args + (target,) if target is not None else args), {}


def call(model: Callable[..., Any], inputs: Inputs, target: Tensor | None = None,
         target_key: str | None = None) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)`` (see :func:`call_args`): the one home of how a model
    is called on a batch."""
    args, kwargs = call_args(inputs, target, target_key, model)
    return model(*args, **kwargs)


def functional(template: torch.nn.Module,
               tensors: dict[str, Tensor] | tuple[dict[str, Tensor], ...]) -> Callable[..., Any]:
    """``template`` called with ``tensors`` (a dict, or a tuple of dicts such as parameters and buffers) in place of
    its own parameters and buffers (``torch.func.functional_call``), taking any arguments: the instruments' extra
    passes and the population's members call a model this way. It carries ``template`` as ``__wrapped__``, so
    :func:`call` reads the module's forward (a dict of one input to a positional forward).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> zero = {k: torch.zeros_like(v) for k, v in net.named_parameters()}
        >>> functional(net, zero)(torch.ones(1, 2)).item()
        0.0
    """
    def call(*args: Any, **kwargs: Any) -> Any:
        return functional_call(template, tensors, args, kwargs)

    return functools.update_wrapper(call, template, assigned=(), updated=())


def positional_only_input(model: Callable[..., Any], key: str) -> bool:
    """Whether ``model``, given a dict holding one input under ``key``, takes it as its one positional input: its
    forward has no parameter ``key`` and no ``**kwargs``, and can be called with one positional argument (the
    others have defaults). Wrappers that pass every argument through (DDP, ``DataParallel``, ``torch.compile``,
    a function with ``__wrapped__``) are looked through. A forward whose signature cannot be read keeps keywords.

    Example:
        >>> positional_only_input(torch.nn.Sequential(), "x"), positional_only_input(lambda x: x, "x")
        (True, False)
    """
    params = _parameters(_callee(model))
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params):
        return False
    if any(p.name == key and p.kind is not p.POSITIONAL_ONLY for p in params):
        return False  # model(key=x) is what it asks for
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty and p.kind is not p.VAR_POSITIONAL]
    return (bool(positional) or any(p.kind is p.VAR_POSITIONAL for p in params)) and len(required) <= 1 and \
        all(p.kind is not p.KEYWORD_ONLY for p in required)


def _callee(model: Any) -> Any:
    """What says how ``model`` takes its inputs: a module (whose forward is read), looked through the wrappers that
    pass their arguments on (DDP's and DataParallel's ``module``, torch.compile's ``_orig_mod``, a function's
    ``__wrapped__``, a module's bound ``forward``), or a plain callable."""
    for _ in range(8):  # wrappers nest a few deep at most
        if not isinstance(model, torch.nn.Module):
            model = inspect.unwrap(model)
            owner = getattr(model, "__self__", None)
            if isinstance(owner, torch.nn.Module) and getattr(model, "__name__", "") == "forward":
                model = owner
            if not isinstance(model, torch.nn.Module):
                return model
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)  # (an empty Sequential is falsy)
        params = _parameters(model)
        passes_on = params is not None and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
        if not (passes_on and isinstance(inner, torch.nn.Module)):
            return model
        model = inner
    return model


def _parameters(model: Any) -> list[inspect.Parameter] | None:
    """The parameters of a module's forward (read once per forward function), or of a callable; None when they
    cannot be read."""
    if isinstance(model, torch.nn.Module) and "forward" not in vars(model):  # an instance may set its own
        return _forward_parameters(type(model).forward)
    try:
        return list(inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters
                    .values())
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=512)
def _forward_parameters(forward: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """A module class's forward's parameters but ``self``: read once per class (a batch's call pays a lookup)."""
    try:
        return list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None


def split(sample: Any, target_key: str | None = None) -> tuple[Inputs, Tensor]:
    """A sample (or a batch of them) as ``(inputs, target)``; see the module's description for the forms."""
    if isinstance(sample, Mapping):
        keys = [target_key] if target_key is not None else [k for k in TARGET_KEYS if k in sample]
        if not keys or keys[0] not in sample:
            wanted = repr(target_key) if target_key is not None else " or ".join(repr(k) for k in TARGET_KEYS)
            raise DataError(f"the dict sample has keys {sorted(str(k) for k in sample)}: expected its target under "
                            f"{wanted} (target_key= names another key)")
        key = keys[0]
        return {k: v for k, v in sample.items() if k != key}, _tensor(sample[key])
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        inputs = sample[0] if len(sample) == 2 else tuple(sample[:-1])
        return inputs, _tensor(sample[-1])
    raise DataError(f"a sample is a {type(sample).__name__}: expected (inputs, target), (*inputs, target) or a dict "
                    "with a target key")


def _tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value)


def float_features(inputs: Inputs) -> Tensor | None:
    """The floating-point inputs as one ``[samples, features]`` matrix (integer and bool leaves left out), or None
    where there are none: what input-scale checks read."""
    floats = [t.reshape(len(t), -1) for t in leaves(inputs) if t.is_floating_point() and t.dim() > 0]
    if not floats:
        return None
    return floats[0] if len(floats) == 1 else torch.cat([f.to(floats[0].dtype) for f in floats], dim=1)


def describe(inputs: Inputs, target: Tensor | None = None) -> str:
    """The batch's structure for messages: ``inputs (tensor[32, 10] int64, tensor[32, 4] float32), target
    tensor[32] int64``."""
    text = "inputs " + _shape(inputs)
    return text if target is None else f"{text}, target {_shape(target)}"


def _shape(tree: Any) -> str:
    if isinstance(tree, Tensor):
        return f"tensor{list(tree.shape)} {str(tree.dtype).removeprefix('torch.')}"
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, Sequence) and not isinstance(tree, str):
        return "(" + ", ".join(_shape(v) for v in tree) + ")"
    return type(tree).__name__
