"""Built-in models and the user's own: ``build(name, in_features=..., out_features=...) -> nn.Module``.

``linear`` (one affine layer, for regression), ``logistic`` (an affine layer giving class logits), ``mlp``
(hidden sizes, activation, initialisation), ``cnn`` (two small conv blocks for image-shaped inputs) and
``module:function`` for any ``nn.Module`` factory (called with ``in_features``, ``out_features`` and
``sample_shape``, each if it names it).

Example:
    >>> model = build("mlp", in_features=64, out_features=10, hidden=(32,), activation="tanh")
    >>> model(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gdlab.errors import GdlabError, InvalidParameter, ModelError, UnknownChoice
from gdlab.guard import printable
from gdlab.resolve import call_user, names_code, resolve
from gdlab.resources import check_fits

__all__ = ["MODELS", "ACTIVATIONS", "INITS", "ModelInfo", "build", "estimate", "initialize", "save", "load",
           "Standardized"]

TRAINING_COPIES = 4
"""Copies of the parameters training holds: the weights, their gradients and up to two optimizer states (Adam)."""

ESTIMATE_ROWS = 32
"""The batch a built-in model's activations are estimated for (the default batch size)."""

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}

INITS = ("default", "xavier", "kaiming", "normal", "zeros")


@dataclass(frozen=True)
class ModelInfo:
    """A built-in model: its builder and a one-line description."""

    name: str
    build: Callable[..., nn.Module]
    description: str


def _linear(in_features: int, out_features: int, **_: Any) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features))


def _mlp(in_features: int, out_features: int, hidden: Sequence[int] = (64,), activation: str = "relu",
         **_: Any) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise UnknownChoice("activation", activation, ACTIVATIONS)
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


def _cnn(in_features: int, out_features: int, image_shape: tuple[int, ...] | None = None,
         activation: str = "relu", **_: Any) -> nn.Module:
    if image_shape is None:
        side = math.isqrt(in_features)
        if side * side != in_features:
            raise ModelError(f"model 'cnn' needs image-shaped inputs: {in_features} features are not a square "
                             "image; use data with an image shape (digits) or another model")
        image_shape = (1, side, side)
    if activation not in ACTIVATIONS:
        raise UnknownChoice("activation", activation, ACTIVATIONS)
    channels, height, width = image_shape
    act = ACTIVATIONS[activation]
    # [batch, C, H, W] -> two conv blocks halving H and W -> [batch, 32 * H/4 * W/4] -> logits
    return nn.Sequential(
        _AsImage(image_shape),
        nn.Conv2d(channels, 16, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), out_features),
    )


class _AsImage(nn.Module):
    """Reshape ``[batch, C*H*W]`` (or already ``[batch, C, H, W]``) inputs to ``[batch, C, H, W]``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        ModelInfo("linear", _linear, "one affine layer y = Wx + b (linear regression)"),
        ModelInfo("logistic", _linear, "one affine layer giving class logits (logistic regression)"),
        ModelInfo("mlp", _mlp, "multi-layer perceptron: --hidden sizes, --activation, --init"),
        ModelInfo("cnn", _cnn, "two conv blocks (16, 32 channels) for image-shaped inputs such as digits"),
    ]
}


def build(
    name: str,
    *,
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
    init: str = "default",
    image_shape: tuple[int, ...] | None = None,
    task: str | None = None,
) -> nn.Module:
    """Build model ``name`` for data with ``in_features`` inputs and ``out_features`` outputs.

    Args:
        name: a key of ``MODELS`` or ``module:function`` returning an ``nn.Module``.
        hidden: hidden layer sizes of ``mlp``.
        activation: ``relu``, ``tanh``, ``sigmoid`` or ``leaky_relu``.
        init: weight initialisation: ``default`` (PyTorch's), ``xavier``, ``kaiming``, ``normal`` (std 0.01)
            or ``zeros`` (every unit alike: the symmetry that random initialisation breaks).
        image_shape: ``(C, H, W)`` of flat image inputs, for ``cnn``.
        task: ``classification`` or ``regression``, to check the model fits the task.
    """
    if any(not isinstance(h, int) or h <= 0 for h in hidden):
        raise InvalidParameter("hidden", list(hidden), "positive layer sizes, e.g. 128,64")
    if init not in INITS:
        raise UnknownChoice("init", init, INITS)
    if name in MODELS:
        if name == "logistic" and task == "regression":
            raise ModelError("model 'logistic' gives class logits but the data is regression: use model 'linear'")
        params, need = estimate(name, in_features, out_features, hidden=hidden, image_shape=image_shape)
        shown = f" with hidden {list(hidden)}" if name == "mlp" else ""
        check_fits(f"model '{name}'{shown} ({params:,} parameters, {in_features:,} inputs, {out_features:,} outputs)",
                   need, hint="use smaller --hidden sizes, or data with fewer features or classes")
        model = MODELS[name].build(in_features, out_features, hidden=tuple(hidden), activation=activation,
                                   image_shape=image_shape)
    elif names_code(name):
        model = _user_model(name, in_features, out_features, image_shape or (in_features,))
    else:
        raise UnknownChoice("model", name, MODELS, ", or module:function")
    if init != "default":
        initialize(model, init)
    return model


def estimate(name: str, in_features: int, out_features: int, *, hidden: Sequence[int] = (64,),
             image_shape: tuple[int, ...] | None = None, rows: int = ESTIMATE_ROWS) -> tuple[int, int]:
    """``(parameters, bytes)`` of built-in model ``name`` in float32 before it is built: the parameters times
    :data:`TRAINING_COPIES`, and the activations of a batch of ``rows`` (forward and backward)."""
    if name == "mlp":
        sizes = [in_features, *hidden, out_features]
        params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        per_row = 2 * sum(hidden) + out_features  # before and after each activation, and the outputs
    elif name == "cnn":
        channels, height, width = image_shape or (1, math.isqrt(in_features), math.isqrt(in_features))
        params = channels * 16 * 9 + 16 + 16 * 32 * 9 + 32 + 32 * (height // 4) * (width // 4) * out_features + \
            out_features
        per_row = 3 * 16 * height * width + 3 * 32 * (height // 2) * (width // 2) + out_features
    else:
        params = in_features * out_features + out_features
        per_row = in_features + out_features
    return params, 4 * (TRAINING_COPIES * params + 2 * rows * per_row)


USER_MODEL_ARGUMENTS = ("in_features", "out_features", "sample_shape")
"""What ``module:function`` is called with, each only if it takes it: the number of input features, of outputs,
and the shape of one input sample (``(C, H, W)`` for image data, else ``(in_features,)``)."""


def _user_model(spec: str, in_features: int, out_features: int, sample_shape: tuple[int, ...]) -> nn.Module:
    factory = resolve(spec, "model")
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise InvalidParameter("model", spec, f"a function returning an nn.Module, got {type(factory).__name__}")
    model = call_user(spec, factory, "model", {"in_features": in_features, "out_features": out_features,
                                               "sample_shape": tuple(sample_shape)})
    if not isinstance(model, nn.Module):
        raise InvalidParameter("model", spec, f"a function returning an nn.Module, got {type(model).__name__}")
    return model


@torch.no_grad()
def initialize(model: nn.Module, init: str) -> nn.Module:
    """Re-initialise the weights of every Linear and Conv layer of ``model``; biases start at zero."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = module.weight
            if init == "xavier":
                nn.init.xavier_uniform_(w)
            elif init == "kaiming":
                nn.init.kaiming_uniform_(w, nonlinearity="relu")
            elif init == "normal":
                nn.init.normal_(w, std=0.01)
            elif init == "zeros":
                nn.init.zeros_(w)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# -- exported weights: safetensors, read without pickle -------------------------------------------------------

EXPORT_FORMAT = "gdlab-model-1"
"""The ``format`` of the JSON under the ``gdlab`` key of an exported file's safetensors metadata."""


class Standardized(nn.Module):
    """A model whose inputs are scaled first by the training data's mean and std (a run trained with
    ``standardize``), so it takes the raw inputs."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model((x - self.mean) / self.std)


def save(model: nn.Module, path: str | Any, spec: dict[str, Any]) -> Any:
    """Write ``model``'s weights to a ``.safetensors`` file, with ``spec`` (``model``, ``in_features``,
    ``out_features``, ``hidden``, ``activation``, ``image_shape``, ``task``, ``classes``: what :func:`build`
    needs, as JSON) in its metadata; a :class:`Standardized` model keeps its input scaling. Returns the path."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    inner: nn.Module = model.model if isinstance(model, Standardized) else model
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()}
    if isinstance(model, Standardized):
        tensors["gdlab.input_mean"] = model.mean.detach().cpu().contiguous()
        tensors["gdlab.input_std"] = model.std.detach().cpu().contiguous()
    path = Path(path)
    save_file(tensors, str(path), metadata={"gdlab": json.dumps({"format": EXPORT_FORMAT, **spec})})
    return path


def load(path: str | Any, model: nn.Module | None = None) -> nn.Module:
    """Read a model written by ``gdlab export`` (or :func:`save`) without unpickling anything: a built-in model
    is rebuilt from the file's metadata and its weights loaded; a user's own model (``module:function``) needs
    its class: build it and pass it as ``model`` to receive the weights. Inputs are standardised as in training
    when the run was (the model is then a :class:`Standardized`).

    Nothing in the file is imported or called: its metadata names a built-in model and its sizes, checked
    (:func:`_spec`) before anything is built; a damaged or tampered file is one :class:`ModelError` line.

    Example:
        >>> model = load("model.safetensors")  # doctest: +SKIP
        >>> model.eval()(torch.zeros(1, 64)).argmax(-1)  # doctest: +SKIP
    """
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ModelError(f"model file '{path}' not found: expected a file written by gdlab export") from None
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError) as e:
        said = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"model file '{path}' could not be read ({said}): expected a .safetensors file written by "
                         "gdlab export") from None
    try:
        meta = json.loads(metadata.get("gdlab", "{}"))
    except (TypeError, ValueError) as e:
        raise ModelError(f"model file '{path}': its gdlab metadata is not JSON ({e}): expected a file written by "
                         "gdlab export") from None
    if not isinstance(meta, dict):
        raise ModelError(f"model file '{path}': its gdlab metadata is a {type(meta).__name__}: expected a JSON "
                         "object written by gdlab export")
    mean, std = tensors.pop("gdlab.input_mean", None), tensors.pop("gdlab.input_std", None)
    if (mean is None) != (std is None) or mean is not None and std is not None and (
            not mean.is_floating_point() or not std.is_floating_point() or mean.shape != std.shape):
        raise ModelError(f"model file '{path}': its input scaling (gdlab.input_mean, gdlab.input_std) is damaged: "
                         "expected two floating-point tensors of one shape")
    if model is None:
        name = meta.get("model")
        if not isinstance(name, str) or name not in MODELS or meta.get("in_features") is None:
            shown = f"'{printable(name)}'" if isinstance(name, str) else "a model gdlab did not build"
            raise ModelError(f"model file '{path}' holds the weights of {shown}: build that model with its own "
                             "class and pass it, load(path, model=...)")
        try:
            spec = _spec(meta)
            params, _ = estimate(name, spec["in_features"], spec["out_features"], hidden=spec["hidden"],
                                 image_shape=spec["image_shape"])
            held = sum(t.numel() for t in tensors.values())
            if params != held:  # sizes that do not match the weights: refused before anything is built
                raise ModelError(f"its metadata describes {params:,} parameters but it holds {held:,}: expected "
                                 "the file gdlab export wrote")
            model = build(name, **spec)
        except GdlabError as e:
            raise ModelError(f"model file '{path}': {e}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelError(f"model file '{path}' does not fit the model: {str(e).splitlines()[0]}") from None
    return Standardized(model, mean, std) if mean is not None and std is not None else model


def _spec(meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`build`'s size arguments from an exported file's metadata, each checked for its type and range
    (:class:`InvalidParameter` naming the key), so that a tampered file never reaches a raw exception."""
    def count(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidParameter(f"metadata {key}", value, "a positive integer")
        return value

    hidden = meta.get("hidden") or [64]
    if not isinstance(hidden, list):
        raise InvalidParameter("metadata hidden", hidden, "a list of positive integers")
    image_shape = meta.get("image_shape")
    if image_shape is not None and (not isinstance(image_shape, list) or len(image_shape) != 3):
        raise InvalidParameter("metadata image_shape", image_shape, "null or [channels, height, width]")
    activation = meta.get("activation") or "relu"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise UnknownChoice("metadata activation", activation, ACTIVATIONS)
    return {"in_features": count("in_features", meta.get("in_features")),
            "out_features": count("out_features", meta.get("out_features")),
            "hidden": [count("hidden", h) for h in hidden], "activation": activation,
            "image_shape": tuple(count("image_shape", d) for d in image_shape) if image_shape is not None else None}
