"""The optimizer records: one per named optimizer, made beside its alias in ``aliases.py`` by :func:`register`.

A record holds all gdlab says about an optimizer: its alias (a transform chain with torch.optim's argument
names), its update in one line, the learning rates ``lr="auto"`` searches and a one-line summary.
:data:`OPTIMIZERS` (the names ``make``, ``fit`` and the CLI take), :data:`LR_RANGES` (``lr_select.GRIDS``) and
the ``gdlab optimizers`` listing all read the records, so a new optimizer is one function and its record.

Example:
    >>> OPTIMIZERS["adam"].lr_range, LR_RANGES["adam"], OPTIMIZERS["adam"].defaults["eps"]
    ((1e-05, 1.0), (1e-05, 1.0), 1e-08)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gdlab.errors import InvalidParameter
from gdlab.optim.transforms import Transform

__all__ = ["OptimizerInfo", "OPTIMIZERS", "LR_RANGES", "register"]

A = TypeVar("A", bound=Callable[..., Transform])


@dataclass(frozen=True)
class OptimizerInfo:
    """A named optimizer, everything about it in one record.

    Attributes:
        name: what ``make``, ``fit`` and the CLI call it.
        alias: ``(lr, ...) -> Transform``, with torch.optim's argument names and defaults.
        equation: its update in one line.
        lr_range: the (low, high) learning rates ``lr="auto"`` searches, on a log grid.
        summary: one line for the CLI.
    """

    name: str
    alias: Callable[..., Transform]
    equation: str
    lr_range: tuple[float, float]
    summary: str

    @property
    def defaults(self) -> dict[str, Any]:
        """The alias's keyword defaults (torch.optim's names)."""
        return {k: p.default for k, p in inspect.signature(self.alias).parameters.items()
                if p.default is not inspect.Parameter.empty}


OPTIMIZERS: dict[str, OptimizerInfo] = {}
"""The named optimizers' records, in the order they were registered."""


def register(*, equation: str, lr_range: tuple[float, float], summary: str,
             name: str | None = None) -> Callable[[A], A]:
    """Decorate an alias to record it in :data:`OPTIMIZERS` under its function's name (or ``name``).

    Args:
        equation: the update in one line. lr_range: (low, high), 0 < low < high, for ``lr="auto"``.
        summary: one line for the CLI. name: the name, if not the function's.

    Returns:
        The decorator; it returns the alias unchanged.

    Example:
        >>> from gdlab.optim.transforms import chain, scale_by_learning_rate
        >>> @register(equation="theta -= lr * g", lr_range=(1e-3, 1.0), summary="Another SGD.")
        ... def plain_gd(lr: float = 0.1) -> Transform:
        ...     return chain(scale_by_learning_rate(lr))
        >>> OPTIMIZERS["plain_gd"].alias is plain_gd, LR_RANGES["plain_gd"]
        (True, (0.001, 1.0))
        >>> del OPTIMIZERS["plain_gd"]
    """
    low, high = lr_range
    if not (0 < low < high and math.isfinite(high)):
        raise InvalidParameter("lr_range", lr_range, "(low, high) with 0 < low < high, e.g. (1e-4, 1.0)")

    def record(alias: A) -> A:
        key = name or alias.__name__
        if key in OPTIMIZERS:
            raise InvalidParameter("name", key, f"a name not yet in OPTIMIZERS ({', '.join(OPTIMIZERS)})")
        OPTIMIZERS[key] = OptimizerInfo(key, alias, equation, (float(low), float(high)), summary)
        return alias

    return record


class _LRRanges(Mapping[str, tuple[float, float]]):
    """``name -> lr_range`` of every record, read when asked (so a record made later shows too)."""

    def __getitem__(self, name: str) -> tuple[float, float]:
        return OPTIMIZERS[name].lr_range

    def __iter__(self) -> Iterator[str]:
        return iter(OPTIMIZERS)

    def __len__(self) -> int:
        return len(OPTIMIZERS)

    def __repr__(self) -> str:
        return repr(dict(self))


LR_RANGES: Mapping[str, tuple[float, float]] = _LRRanges()
"""The learning-rate range ``lr="auto"`` searches, per optimizer: a view of the records' ``lr_range``."""
