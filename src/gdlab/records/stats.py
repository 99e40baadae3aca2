"""Shared numerics on recorded columns: the one moving average, finite filtering, and the scales of input features.

The instruments, the doctor, the learning-rate range test and the plots all smooth a loss the same way; it is
written once here (STYLE 14: one moving average, used everywhere).

Example:
    >>> ema([1.0, 3.0], beta=0.5)
    [1.0, 2.3333333333333335]
    >>> scale_ratio([1.0, 0.0, 250.0])
    250.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is read only by input_scales, from the tensor it is given: the store reads no torch
    import torch

__all__ = ["EMA", "ema", "finite", "input_scales", "scale_ratio", "ILL_CONDITIONED"]


@dataclass
class EMA:
    """A bias-corrected exponential moving average, fed one value at a time (as Adam corrects its first moment).

    ``avg`` is the raw average ``beta * avg + (1 - beta) * x`` and ``weight`` the same recursion fed ones, so
    ``avg / weight`` is the average with the zero start divided out: the first value comes back as it is.
    Non-finite values are skipped (they neither move the average nor count in its weight).

    Example:
        >>> average = EMA(beta=0.5)
        >>> average.update(1.0), average.update(float("nan")), average.update(3.0)
        (1.0, 1.0, 2.3333333333333335)
    """

    beta: float
    avg: float = 0.0
    weight: float = 0.0  # 1 - beta ** (finite values seen), by the same recursion as avg

    def update(self, x: float) -> float:
        """Fold in ``x`` (skipped when not finite) and return the smoothed value."""
        if math.isfinite(x):
            beta = self.beta
            self.avg, self.weight = beta * self.avg + (1 - beta) * x, beta * self.weight + (1 - beta)
        return self.value

    def extend(self, values: Iterable[float]) -> list[float]:
        """Fold in each of ``values`` in turn (as :meth:`update` does, in one pass); the smoothed value after each.

        Example:
            >>> EMA(beta=0.5).extend([1.0, float("nan"), 3.0])
            [1.0, 1.0, 2.3333333333333335]
        """
        beta, avg, weight = self.beta, self.avg, self.weight
        out = []
        for x in values:
            if math.isfinite(x):
                avg, weight = beta * avg + (1 - beta) * x, beta * weight + (1 - beta)
            out.append(avg / weight if weight else math.nan)
        self.avg, self.weight = avg, weight
        return out

    @property
    def value(self) -> float:
        """The bias-corrected average so far (NaN before the first finite value)."""
        return self.avg / self.weight if self.weight else math.nan


def ema(values: Iterable[float], beta: float = 0.9) -> list[float]:
    """The bias-corrected moving average of a whole column, one output per input.

    Args:
        values: the column; non-finite entries are skipped (their output repeats the average so far, or is NaN
            before the first finite value).
        beta: the weight of the past, in [0, 1).

    Returns:
        The smoothed column, as long as ``values``.

    Example:
        >>> ema([float("nan"), 2.0, 2.0])
        [nan, 2.0, 2.0]
    """
    return EMA(beta).extend(values)


def finite(values: Iterable[float]) -> list[float]:
    """The finite values, in order.

    Example:
        >>> finite([1.0, float("nan"), float("inf"), 2.0])
        [1.0, 2.0]
    """
    values = values if isinstance(values, list) else list(values)
    if math.isfinite(sum(values)):  # a NaN or an inf makes the sum one: every value is finite (the common case,
        return values[:]  # read in one pass in C)
    if len(values) > 64:  # a long column with gaps (NaN where not measured): one pass in numpy
        import numpy as np  # here: the store, which imports these records, answers gdlab runs without numpy

        a = np.asarray(values, dtype=float)
        return a[np.isfinite(a)].tolist()
    return [v for v in values if math.isfinite(v)]


SCALE_SAMPLES = 1024
"""Samples :func:`input_scales` reads."""


def input_scales(X: torch.Tensor) -> list[float] | None:
    """Each input feature's scale: the 95th percentile of its absolute value.

    Args:
        X: ``[samples, features]`` inputs; up to the first 1,024 samples are read (enough to tell scales
            100-fold apart, and cheap beside an epoch of a large data set). A feature that is mostly zero
            (a rarely inked pixel) gets scale 0 and is left out of comparisons.

    Returns:
        One scale per feature (torch.quantile's 95th percentile with linear interpolation), or None for inputs
        that are not a non-empty matrix of at most 4096 features.

    Example:
        >>> import torch
        >>> input_scales(torch.tensor([[1.0, -10.0], [2.0, 20.0], [3.0, -30.0]]))
        [2.9, 29.0]
    """
    if X.dim() != 2 or not len(X) or X.shape[1] > 4096:
        return None
    # torch.quantile's linear interpolation between the two order statistics around rank 0.95 (n - 1), from the
    # top 5% alone (a partial sort, where quantile sorts everything)
    A = X[:SCALE_SAMPLES].detach().abs()  # [samples, features]
    n = len(A)
    rank = 0.95 * (n - 1)
    low = int(rank)
    top = A.topk(n - low, dim=0, sorted=True).values.double()  # descending: [-1] is rank low, [-2] is low + 1
    below, above = top[-1], top[-2] if n - low >= 2 else top[-1]
    return (below + (rank - low) * (above - below)).tolist()


def scale_ratio(scales: list[float] | None) -> float:
    """The largest over the smallest non-zero feature scale (1 when there is nothing to compare).

    Example:
        >>> scale_ratio([0.5, 50.0]), scale_ratio([3.0]), scale_ratio(None)
        (100.0, 1.0, 1.0)
    """
    nonzero = [s for s in scales or [] if s > 1e-12]
    return max(nonzero) / min(nonzero) if len(nonzero) >= 2 else 1.0


ILL_CONDITIONED = 100.0
"""Feature scales differing more than this many-fold make the inputs ill-conditioned (the doctor's
``ill_conditioned_inputs``; ``remedy="auto"`` standardises them)."""
