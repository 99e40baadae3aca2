"""The layers the instruments name and measure: the model inside its wrappers, a layer's name in the columns, and the
trained parameters grouped by the layer that owns them."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap", "layer_name", "parameters_by_layer"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its wrappers, ``DistributedDataParallel`` (``.module``) and ``torch.compile``'s
    (``._orig_mod``), in any order: the module whose layers the instruments name and measure.

    Example:
        >>> import torch
        >>> net = nn.Linear(2, 1)
        >>> unwrap(torch.compile(net)) is net, unwrap(net) is net
        (True, True)
    """
    while True:
        inside = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else \
            getattr(model, "_orig_mod", None)
        if not isinstance(inside, nn.Module):
            return model
        model = inside


def layer_name(model: nn.Module, path: str) -> str:
    """A layer's name in the columns: its module path (``"0"``, ``"encoder.fc"``), or, for the model itself (a bare
    ``nn.Linear``), its class name."""
    return path or type(model).__name__


def parameters_by_layer(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters grouped by the module that owns them (``"0"``, ``"2"``, ``"encoder.fc"``...)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    model = unwrap(model)  # "0", not "_orig_mod.0"
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = layer_name(model, name.rsplit(".", 1)[0] if "." in name else "")
            groups.setdefault(owner, []).append((name, p))
    return groups
