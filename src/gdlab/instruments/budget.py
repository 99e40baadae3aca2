"""What measuring may cost: an instrument's cost class (:class:`Instrument`) and the time budget that spaces its
measurements (:class:`Budget`)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from gdlab.loop import Callback

__all__ = ["Instrument", "Budget"]


class Instrument(Callback):
    """Base: a callback (its hooks, planning ones included, are :class:`~gdlab.loop.Callback`'s) with a ``cost``
    class (``cheap``, ``periodic`` or ``expensive``)."""

    cost = "cheap"


class Budget:
    """Spaces a recurring cost (an instrument's measurements, the run's checkpoints) so that it takes at most
    ``share`` of the time so far (measured, not guessed): a model where one measurement is dear gets fewer of them.
    The first ``free`` are always granted: a short run still gets the readings its detectors compare (a budget
    bounds long runs). ``clock`` reads the time (a test gives its own).

    Example:
        >>> now = [0.0]
        >>> budget = Budget(0.1, free=1, clock=lambda: now[0])
        >>> budget.allows(1)  # the first is free
        True
        >>> with budget.measure():
        ...     now[0] += 1.0  # and costs 1 s
        >>> now[0] += 5.0  # 5 s of other work: 1 s spent is 20% of it
        >>> budget.allows(2)
        False
        >>> now[0] += 5.0  # 10 s of other work: 10%
        >>> budget.allows(3)
        True
    """

    def __init__(self, share: float, free: int = 2, clock: Callable[[], float] = time.perf_counter) -> None:
        self.share, self.free, self.clock = share, free, clock
        self.spent = 0.0
        self.granted = 0
        self.started = clock()

    def allows(self, step: int) -> bool:
        """Whether the next measurement (at ``step``, from 1) may be taken: the first step and the first ``free``
        always; then while what was spent is at most ``share`` of the rest of the time since the budget began."""
        granted = step <= 1 or self.granted < self.free or self.share == math.inf or \
            self.spent <= self.share * (self.clock() - self.started - self.spent)
        self.granted += granted
        return granted

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        """Count the time inside the block as spent."""
        start = self.clock()
        try:
            yield
        finally:
            self.spent += self.clock() - start
