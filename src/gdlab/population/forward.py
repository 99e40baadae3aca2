"""The members' forward pass: losses of all members at once (``vmap``, or batched matrix products for an MLP),
their evaluation on held-out data, and the probe that tells whether ``vmap`` can serve a model at all."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state, vmap

from gdlab.data import structure
from gdlab.data.source import Source
from gdlab.metrics import Metrics, chunk_sums, threshold
from gdlab.problem import LOSSES, LossFn, batch_loss, match_output, predicted

__all__ = ["ELEMENTWISE", "evaluate", "in_memory", "member_losses", "mlp_forward", "mlp_layers",
           "trainable", "vmap_problem"]

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
               nn.Dropout)
"""Modules the batched MLP path applies as they are: each acts element by element (dropout too)."""


def member_losses(template: nn.Module, loss_fn: LossFn, loss_name: str, shared_batch: bool,
                  M: int, target_key: str | None = None) -> Callable[..., Tensor]:
    """``(params, buffers, x, y) -> [M]`` mean batch losses.

    The forward pass is vmapped; a built-in loss is then taken on all members' outputs at once
    (``reduction="none"``, one kernel instead of one per member). ``x`` (a tensor or a structure of them) and
    ``y`` are ``[M, batch, ...]``, or ``[batch, ...]`` shared by all members when ``shared_batch``.
    """

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
        return match_output(structure.call(structure.functional(template, (p, b)), x), y, loss_name)

    def member_loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
        return batch_loss(structure.functional(template, (p, b)), x, y, loss_fn, loss_name, target_key)[0]

    dims = (0, 0, None, None) if shared_batch else (0, 0, 0, 0)
    builtin = loss_name in LOSSES and loss_fn is LOSSES[loss_name]
    layers = mlp_layers(template)
    if not builtin:
        return vmap(member_loss, in_dims=dims, randomness="different")
    vmapped = vmap(forward, in_dims=dims, randomness="different")

    def outputs(p: dict[str, Tensor], b: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
        if layers is None or not isinstance(x, Tensor):
            return vmapped(p, b, x, y)
        out = mlp_forward(layers, {**b, **p}, x.expand(M, *x.shape) if shared_batch else x)  # frozen ones in b
        target = y.shape if shared_batch else y.shape[1:]  # one member's targets
        if loss_name != "cross_entropy" and out.shape[1:] != target and out[0].numel() == target.numel():
            return out.reshape(M, *target)  # as match_output does for one model
        return out

    def losses(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = outputs(p, b, x, y)  # [M, batch, ...]
        target = y.expand(M, *y.shape) if shared_batch else y
        each = loss_fn(out.flatten(0, 1), target.flatten(0, 1), reduction="none")  # type: ignore[call-arg]
        return each.reshape(M, -1).mean(1)

    return losses


def mlp_layers(template: nn.Module) -> list[tuple[str, Any]] | None:
    """For an ``nn.Sequential`` of Flatten, Linear and elementwise activations (gdlab's ``mlp``, ``linear`` and
    ``logistic``), its layers as ``("linear", name) | ("flatten", None) | ("apply", module)``; else None.

    Such a model runs as batched matrix products over members (``baddbmm``), faster on a CPU than the vmapped
    ``functional_call`` (docs/benchmarks.md), computing the same function (tests compare the two).
    """
    if type(template) is not nn.Sequential:
        return None
    layers: list[tuple[str, Any]] = []
    for name, module in template.named_children():
        if type(module) is nn.Linear:
            layers.append(("linear", name))
        elif type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            layers.append(("flatten", None))
        elif type(module) in ELEMENTWISE:
            layers.append(("apply", module))
        else:
            return None
    return layers


def mlp_forward(layers: list[tuple[str, Any]], p: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x`` ``[M, batch, ...]`` through every member's layers (from :func:`mlp_layers`): ``[M, batch, outputs]``."""
    for kind, what in layers:
        if kind == "flatten":
            x = x.flatten(2)
        elif kind == "apply":
            x = what(x)  # elementwise (dropout draws per element, so per member)
        else:
            weight, bias = p[f"{what}.weight"], p.get(f"{what}.bias")  # [M, out, in], [M, out]
            x = torch.bmm(x, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
                bias.unsqueeze(1), x, weight.transpose(1, 2))
    return x


def in_memory(source: Source) -> tuple[Any, Tensor]:
    """The training data on the device: inputs (a tensor or a structure) and targets, ``[samples, ...]`` each (a
    Dataset is read once, in order)."""
    return source.all()


@torch.no_grad()
def evaluate(template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], source: Source,
             loss_fn: LossFn, loss_name: str, M: int, chunk: int = 4096) -> tuple[Tensor, dict[str, Tensor]]:
    """Each member's mean loss on ``source`` and the task's metrics (:mod:`gdlab.metrics`: accuracy for classes
    under any loss, accuracy and subset accuracy for multilabel targets, MAE and R² for regression), in eval mode:
    ``[M]`` float64 each (CPU), the metrics by name (those the outputs give predictions for).

    ``params`` and ``buffers`` are stacked ``[M, ...]``; the template is left in training mode.
    """
    template.eval()
    task, cut = source.task, threshold(loss_fn, loss_name)

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Any, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, out = batch_loss(structure.functional(template, (p, b)), x, y, loss_fn, loss_name, source.target_key)
        return loss, chunk_sums(task, predicted(out, loss_name), y, cut)

    total = torch.zeros(M, dtype=torch.float64)
    metrics = Metrics(task, cut)
    count = 0
    try:
        for x, y in source.chunks(chunk):
            losses, sums = vmap(one, in_dims=(0, 0, None, None))(params, buffers, x, y)  # [M] each
            total += losses.double().cpu() * len(y)
            metrics.add_sums(sums)
            metrics.add_targets(y)
            count += len(y)
    finally:
        template.train()
    return total / max(count, 1), {k: v.double().cpu() for k, v in metrics.result().items()}


def trainable(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Stacked parameters split: those that train, and the buffers with the frozen parameters (carried as they
    are, as torch.optim leaves a parameter without a gradient alone)."""
    frozen = {k: v.detach() for k, v in params.items() if not v.requires_grad}
    return {k: v for k, v in params.items() if v.requires_grad}, {**buffers, **frozen}


def vmap_problem(model: nn.Module, source: Source, loss_fn: LossFn, loss_name: str) -> str | None:
    """Why vmap cannot train ``model`` (a probe forward and backward on two members), or None."""
    probe = [copy.deepcopy(model) for _ in range(2)]
    params, buffers = stack_module_state(probe)
    template = copy.deepcopy(model).to("meta")
    x, y = next(source.chunks(4))
    # batched as in training: data-dependent branches show
    xs, ys = structure.tree_map(lambda t: torch.stack([t, t]), x), torch.stack([y, y])
    params, buffers = trainable(params, buffers)
    try:
        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
            return batch_loss(structure.functional(template, (p, b)), x, y, loss_fn, loss_name, source.target_key)[0]

        vmap(one, randomness="different")(params, buffers, xs, ys).sum().backward()
    except Exception as error:  # any failure means the model needs the one-by-one path
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return text.split(". ")[0].rstrip(".")
    return None
