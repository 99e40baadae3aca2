"""Dead and saturated units: from one activation's output, the counts of zero ReLU outputs, of dead ReLU units (zero
for every sample) and of saturated tanh or sigmoid units, as one process reads them (:func:`activation_counts`) or as
the ranks of data-parallel training add them up (:func:`activation_sums`).

Example:
    >>> import torch
    >>> counts = activation_counts("1", nn.ReLU(), torch.tensor([[0.0, 1.0], [0.0, -2.0]]))
    >>> {k: float(t) * factor for k, (t, factor) in counts.items()}
    {'zero_share/1': 0.75, 'dead_share/1': 0.5}
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["activation_counts", "activation_sums"]


def activation_counts(name: str, module: nn.Module, output: Tensor) -> dict[str, tuple[Tensor, float]]:
    """Shares of zero and dead (zero for every sample) ReLU units, of saturated tanh or sigmoid units, as counts
    (scalar tensors, not synced) and the factors that make them shares."""
    units = output.reshape(len(output), -1)
    share = 1 / units.numel() if units.numel() else math.nan
    if isinstance(module, nn.ReLU):
        zero = units <= 0
        return {f"zero_share/{name}": (zero.sum(), share),
                f"dead_share/{name}": (zero.all(0).sum(), 1 / units.shape[1] if units.shape[1] else math.nan)}
    if isinstance(module, nn.Tanh):
        return {f"saturated/{name}": ((units.abs() > 0.99).sum(), share)}
    return {f"saturated/{name}": (((units < 0.01) | (units > 0.99)).sum(), share)}


def activation_sums(name: str, module: nn.Module, output: Tensor) -> dict[str, tuple[str, Tensor, float]]:
    """:func:`activation_counts` as sums the ranks add up: counts of zero or saturated units over the elements
    (``share``), and each unit's count of non-zero outputs (``dead``: the units no sample of any rank moved)."""
    units = output.reshape(len(output), -1)
    if isinstance(module, nn.ReLU):
        zero = units <= 0
        return {f"zero_share/{name}": ("share", zero.sum(), units.numel()),
                f"dead_share/{name}": ("dead", (~zero).sum(0), 0.0)}
    if isinstance(module, nn.Tanh):
        return {f"saturated/{name}": ("share", (units.abs() > 0.99).sum(), units.numel())}
    return {f"saturated/{name}": ("share", ((units < 0.01) | (units > 0.99)).sum(), units.numel())}
