"""What measuring may cost: an instrument's cost class (:class:`Instrument`) and the time budget that spaces its
measurements (:class:`Budget`)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

from gdlab.loop import Callback

__all__ = ["Instrument", "Budget"]


class Instrument(Callback):
    """Base: a callback (its hooks, planning ones included, are :class:`~gdlab.loop.Callback`'s) with a ``cost``
    class (``cheap``, ``periodic`` or ``expensive``)."""

    cost = "cheap"


class Budget:
    """Spaces an instrument's measurements so that they cost at most ``share`` of the training time so far
    (measured, not guessed): a model where one measurement is dear gets fewer of them. The first ``free`` are
    always granted: a short run still gets the readings its detectors compare (a budget bounds long runs)."""

    def __init__(self, share: float, free: int = 2) -> None:
        self.share, self.free = share, free
        self.spent = 0.0
        self.granted = 0
        self.started = time.perf_counter()

    def allows(self, step: int) -> bool:
        granted = step <= 1 or self.granted < self.free or self.share == math.inf or \
            self.spent <= self.share * (time.perf_counter() - self.started - self.spent)
        self.granted += granted
        return granted

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - start
