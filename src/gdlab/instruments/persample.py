"""Per-sample gradient math, pure functions: the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al.
2018, https://arxiv.org/abs/1812.06162) and the mini-batch gradient's signal-to-noise ratio |G|^2 / (tr(Sigma) / batch)
from sums over per-sample gradients; those sums for one layer from its input and output gradient
(:func:`per_sample_sums`); and whether a model's per-sample gradients factor so (:func:`factorable`).

Example:
    >>> row = noise_scale_and_snr(each=10.0, mean_sq=1.0, n=5, batch=32)  # tr(Sigma) = (10 - 5) / 4
    >>> row["noise_scale"], row["grad_snr"]
    (1.25, 25.6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

__all__ = ["noise_scale_and_snr", "noise_from_trace", "grouped_sums", "factorable", "per_sample_sums"]


def noise_scale_and_snr(each: float, mean_sq: float, n: int, batch: int) -> dict[str, float]:
    """B_simple and the SNR from sum_i |g_i|^2 (``each``) and |mean_i g_i|^2 (``mean_sq``) over ``n`` per-sample
    gradients: tr(Sigma) unbiased = (sum_i |g_i|^2 - n |mean|^2) / (n - 1)."""
    trace = max(each - n * mean_sq, 0.0) / (n - 1)
    return noise_from_trace(trace, mean_sq, n, batch)


def noise_from_trace(trace: float, mean_sq: float, gradients: int, batch: int) -> dict[str, float]:
    """B_simple = tr(Sigma) / |mean|^2 and the SNR |mean|^2 / (tr(Sigma) / ``batch``), labelled with
    ``noise_gradients``: how many gradients tr(Sigma) was estimated from (per-sample gradients, or the mean
    gradients of groups of samples, :func:`grouped_sums`), its degrees of freedom plus one: a reading from 8 is
    an estimate as a reading from 64 is, with about 3x its spread."""
    return {"noise_scale": trace / mean_sq if mean_sq > 0 else math.inf,
            "grad_snr": mean_sq / (trace / batch) if trace > 0 else math.inf,
            "noise_gradients": float(gradients)}


def grouped_sums(grads: Sequence[Tensor], sizes: Tensor) -> Tensor:
    """tr(Sigma) and |mean|^2 (a float64 pair, not synced) from the mean gradients h_j of m groups of samples
    (``grads``: one tensor [m, ...] per parameter) of ``sizes`` b_j (n in all): mean = sum_j b_j h_j / n and
    tr(Sigma) = sum_j b_j |h_j - mean|^2 / (m - 1), unbiased whatever the sizes (E: (m tr(Sigma) - tr(Sigma)) /
    (m - 1)). Groups of one sample are the per-sample definition. The sums run over centred gradients (no
    difference of two large sums), so a float32 model's precision keeps them to about 1e-6."""
    weights = sizes.to(grads[0])  # the gradients' dtype and device
    m, n = len(weights), weights.sum()
    trace = mean_sq = torch.zeros((), dtype=weights.dtype, device=weights.device)
    for g in grads:
        g = g.reshape(m, -1)
        mean = (weights @ g) / n
        centred = g - mean
        trace = trace + torch.linalg.vecdot(centred, centred) @ weights
        mean_sq = mean_sq + torch.dot(mean, mean)
    return torch.stack([trace / (m - 1), mean_sq]).double()


def factorable(model: nn.Module) -> bool:
    """Whether per-sample gradient norms follow from each layer's input and output gradient: every trained
    parameter is the weight or bias of exactly one ``Linear`` or plain ``Conv2d`` layer, and no layer mixes the
    samples of a batch (batch normalisation in training)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return False
        own = [(k, p) for k, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        plain_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" and \
            not isinstance(module.padding, str)
        if not (isinstance(module, nn.Linear) or plain_conv) or any(k not in ("weight", "bias") for k, _ in own):
            return False
        if any(id(p) in seen for _, p in own):
            return False
        seen.update(id(p) for _, p in own)
    return all(id(p) in seen for p in model.parameters() if p.requires_grad)


def per_sample_sums(module: nn.Module, x: Tensor, g: Tensor, total: bool = True,
                     vectors: bool = False) -> tuple[list[Tensor], list[Tensor] | None]:
    """For one layer, sum_i |g_i|^2 and (with ``total``) |sum_i g_i|^2 of its per-sample gradients of the trained
    parameters (weight, bias or both), from its input ``x`` and the gradient ``g`` at its output (sample i's loss
    gradient is sample i's share of ``g`` times the batch size, for a mean over samples: the caller scales).
    Each as scalar tensors, one per parameter (their sum is the layer's), not synced: the caller syncs once for
    all layers (with ``vectors``, the sums sum_i g_i themselves, flattened, in place of their squared norms:
    the ranks of data-parallel training add them up). The sums run over per-sample terms that are all >= 0, so
    the model's precision loses nothing that matters (a float32 model gives them to about 1e-6); half precision
    is raised to float32 first."""
    if g.dtype in (torch.float16, torch.bfloat16):
        x, g = x.float(), g.float()
    n = len(x)
    b = getattr(module, "bias", None)
    bias = isinstance(b, Tensor) and b.requires_grad
    weight = bool(module.weight.requires_grad)
    parts: list[Tensor] = []  # per-sample gradients, [n, size], of the weight and the bias
    if isinstance(module, nn.Linear) and x.dim() == 2:
        # the rank-one case: |g_i [x_i, 1]^T|^2 = |g_i|^2 (|x_i|^2 + 1) (the 1: the bias); nothing materialised
        inputs = torch.linalg.vecdot(x, x) if weight else None
        if bias:
            inputs = inputs + 1 if inputs is not None else torch.ones(n, dtype=g.dtype, device=g.device)
        each = [torch.dot(torch.linalg.vecdot(g, g), inputs)] if inputs is not None else []
        if not total:
            return each, None
        sums = ([(g.T @ x).flatten()] if weight else []) + ([g.sum(0)] if bias else [])  # [out * in], [out]
        return each, sums if vectors else [torch.dot(v, v) for v in sums]
    if isinstance(module, nn.Conv2d):
        assert not isinstance(module.padding, str)  # factorable lets only numeric padding through
        if weight:  # each sample's weight gradient at once: a convolution grouped by sample
            c, out = x.shape[1], g.shape[1]
            parts.append(conv2d_weight(
                x.reshape(1, n * c, *x.shape[2:]), (n * out, c, *module.weight.shape[2:]),
                g.reshape(1, n * out, *g.shape[2:]), module.stride, module.padding, module.dilation,
                groups=n).view(n, -1))
        if bias:
            parts.append(g.sum((2, 3)))  # [n, out]
    else:  # Linear on [n, ..., in]: positions share the weight
        x, g = x.reshape(n, -1, x.shape[-1]), g.reshape(n, -1, g.shape[-1])  # [n, positions, in / out]
        if weight:
            parts.append((g.transpose(1, 2) @ x).view(n, -1))  # [n, out * in]
        if bias:
            parts.append(g.sum(1))
    each = [torch.linalg.vecdot(part, part).sum() for part in parts]  # each sample's |.|^2, then their sum
    if not total:
        return each, None
    sums = [part.sum(0) for part in parts]
    return each, sums if vectors else [torch.dot(v, v) for v in sums]
