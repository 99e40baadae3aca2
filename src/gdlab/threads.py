"""How many CPU threads torch uses for a training run: measured on the run's own first steps.

torch runs each operation on ``torch.get_num_threads()`` threads (by default one per physical core). Whether more
than one pays depends on the work of a step and on who else is on the cores: a small model's operations are too
short to split (each hand-off costs more than it saves), and with another process on the cores a thread that
waits for a core stalls the whole step, while a large step can gain from every core. No size threshold predicts
that on every machine and load, so ``fit(threads="auto")`` (the default, ``--threads auto``) measures it, as
cudnn's benchmark mode chooses a convolution algorithm: a :class:`ThreadChooser` times the run's first steps
(training steps that count, not thrown away) at 1 thread and at torch's count, alternated, and keeps the faster
(the fewer threads when they are within :data:`MARGIN` of each other, or when one count is faster in the median
and the other in the mean). The trial takes at most 13 steps, 9 when
one count was always faster, 5 when one was :data:`CLEAR` times slower (a stalled thread on a busy machine costs
10-100x: the trial must not pay many such steps); it costs the difference between the two counts on the steps run
at the slower one. When it keeps more threads it goes on timing each step (two clock reads) and goes back to 1 thread
for good when the last :data:`WATCH` steps average more than 1 thread's steps did (a neighbour arrived, or the
trial was lucky: on a busy machine a second thread stalls now and then). Populations and sweeps use the same
chooser on their own steps, and measure again after a cut of successive halving changes the work of a step.

An integer sets the count, up to the CPUs this process may use (:func:`cpu_limit`: its CPU affinity, else the
machine's count; more threads than cores only wait for one another, and torch crashes on a count in the tens of
thousands). ``fit`` restores the previous count when it returns or raises (:func:`restored`: a library leaves no
global state changed). Only a CPU run is touched: on a GPU the count is left as it is under ``"auto"``.

``benchmarks/threads.py`` shows the choice against both fixed counts; the crossover measured on the 2-core
machine of the figures is in docs/benchmarks.md ("threads, measured").

Example:
    >>> import torch
    >>> chooser = ThreadChooser(counts=(1, 2), clock=iter([0.0, 1.0] * 13).__next__)  # a fake clock: 1 s a step
    >>> for _ in range(13):
    ...     chooser.before_step(); chooser.after_step()
    >>> chooser.chosen                                      # a tie: the fewer threads
    1
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import torch

from gdlab.errors import InvalidParameter

__all__ = ["CLEAR", "MARGIN", "WATCH", "ThreadChooser", "check_threads", "cpu_limit", "decide", "restored", "separated",
           "use"]

MARGIN = 0.05
"""More threads are kept only when their median step is faster than the fewer threads' by more than this share:
within it the steps cannot be told apart, and fewer threads leave the cores to the machine's other work."""

CLEAR = 3.0
"""After the first round, the fastest count is kept at once when every step of the others took this many times
its median step."""

WATCH = 10
"""While more threads than the fewest are kept, the steps are still timed: when the mean of the last this many
passes the fewest threads' median in the trial, the run goes back to the fewest threads."""

P = ParamSpec("P")
R = TypeVar("R")


def cpu_limit() -> int:
    """The CPUs this process may run on: its affinity (``os.sched_getaffinity``, where the system has it: a
    container or ``taskset`` may allow fewer than the machine has), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def check_threads(value: Any) -> int | str:
    """``"auto"`` or a positive integer up to :func:`cpu_limit` (text from the command line is read as one).

    Example:
        >>> check_threads("auto"), check_threads("1")
        ('auto', 1)
        >>> check_threads(10**5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid threads 100000: expected "auto" or a positive integer up to ...
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    limit = cpu_limit()
    expected = f'"auto" or a positive integer up to {limit} (the CPUs this process may use)'
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit):
        return value
    raise InvalidParameter("threads", value, expected)


def decide(samples: Mapping[int, Sequence[float]], margin: float = MARGIN) -> int:
    """The thread count to keep from step times measured at each count: the fewest threads whose median step and
    whose mean step are both within ``margin`` of the fastest ones, and more threads only when none of their steps
    took longer than the fewest threads' median; else the fewest threads measured (one count faster in the median,
    another in the mean: a count whose steps stall now and then on a busy machine costs its mean, and a wrong pick
    of more threads costs far more, 10-100x a step, than a missed core, at most the number of cores). A count
    without samples is not chosen.

    Example:
        >>> decide({1: [2.0, 2.1, 1.9], 2: [1.0, 1.1, 0.9]}), decide({1: [1.0, 1.02], 2: [0.99, 1.0]})
        (2, 1)
        >>> decide({1: [3.0, 3.0, 3.0], 2: [1.0, 1.0, 40.0]})   # faster in the median, stalled in the mean
        1
    """
    timed = {count: times for count, times in samples.items() if times}
    if not timed:
        raise ValueError("no step was timed")
    medians = {count: statistics.median(times) for count, times in timed.items()}
    means = {count: statistics.fmean(times) for count, times in timed.items()}
    best_median, best_mean = min(medians.values()), min(means.values())
    near = [count for count in timed
            if medians[count] <= best_median * (1 + margin) and means[count] <= best_mean * (1 + margin)]
    fewest = min(timed)
    choice = min(near) if near else fewest
    # more threads only when none of their steps stalled past the fewest threads' typical step
    return choice if choice == fewest or max(timed[choice]) <= medians[fewest] else fewest


def separated(samples: Mapping[int, Sequence[float]]) -> bool:
    """Whether one count's steps were all faster than every other count's (the trial can stop early)."""
    timed = [times for times in samples.values() if times]
    if len(timed) < 2:
        return False
    fastest = min(timed, key=statistics.median)
    return all(max(fastest) < min(times) for times in timed if times is not fastest)


class ThreadChooser:
    """``threads="auto"``: times a run's first steps at each thread count and keeps the faster.

    Drive it around each training step: ``before_step()`` sets the count the trial wants and starts the clock,
    ``after_step()`` stops it; after the trial the chosen count stays set and both calls return at once. It is
    also a hook of :func:`gdlab.loop.run` (``on_step_start`` and ``on_step_end``: put it first among the hooks).

    The trial: one warm-up step (first-step costs: allocations, lazy initialisation), then up to ``rounds``
    rounds; in each, a block of ``block`` steps at each count, the order alternating from round to round (1, N |
    N, 1 | 1, N), the first step after a change of count not timed (a switch wakes torch's thread pool). At the
    end of the first round the fastest count (by median) is kept when every step of the others took ``clear`` times
its median; from the second on, the
    trial stops as soon as one count's steps were all faster than the others' (:func:`separated`); else after the
    last round :func:`decide` keeps the count with the fastest median, the fewer threads within ``margin``. More
    threads kept are watched (:data:`WATCH`): the run goes back to the fewest when they stall. :meth:`restart`
    measures again (a population after a cut: the work of a step changed).

    Timing uses the host's clock: on the CPU a step's operations are done when it returns. A GPU run does not use
    a chooser (its CPU threads only launch kernels). A run shorter than the trial keeps the count it reached;
    ``fit`` restores torch's count when it ends.

    Example:
        >>> import itertools
        >>> ticks = itertools.count()                   # 1 thread: 3 ticks a step; 2 threads: 1 tick a step
        >>> def clock():
        ...     return next(ticks) * (3.0 if torch.get_num_threads() == 1 else 1.0)
        >>> previous = torch.get_num_threads()
        >>> chooser = ThreadChooser(counts=(1, 2), clock=clock)
        >>> while chooser.chosen is None:
        ...     chooser.before_step(); _ = next(ticks); chooser.after_step()
        >>> chooser.chosen, chooser.trial_steps, torch.get_num_threads()
        (2, 5, 2)
        >>> torch.set_num_threads(previous)
    """

    def __init__(self, counts: Sequence[int] | None = None, *, rounds: int = 3, block: int = 2,
                 margin: float = MARGIN, clear: float = CLEAR, clock: Callable[[], float] = time.perf_counter) -> None:
        self.counts = sorted(set(counts if counts is not None else (1, torch.get_num_threads())))
        if not self.counts or self.counts[0] < 1 or rounds < 1 or block < 2:
            raise ValueError(f"counts {counts}, rounds {rounds}, block {block}: positive counts, rounds >= 1 and "
                             "block >= 2 expected")
        self.rounds, self.block, self.margin, self.clear, self.clock = rounds, block, margin, clear, clock
        self.chosen: int | None = None
        """The count kept; None while the trial runs."""
        self.samples: dict[int, list[float]] = {}
        """The seconds of each timed step, by thread count."""
        self.trial_steps = 0
        """The steps the (last) trial took."""
        self.fell_back: tuple[int, float, float] | None = None
        """After the trial kept more threads: (that count, its recent mean step, the fewest threads' median) when
        the watch went back to the fewest."""
        self.restart()

    def restart(self) -> None:
        """Measure again from the next step (the work of a step changed)."""
        self.samples = {count: [] for count in self.counts}
        self.chosen = self.counts[0] if len(self.counts) == 1 else None
        self._recent: list[float] = []  # the watch's last step times
        self.trial_steps = 0
        # (count, timed) for each step of the trial: the warm-up first; a step after a change of count untimed
        self._plan = [(self.counts[0], False)]
        self._rounds: dict[int, int] = {}  # the trial's step count at the end of each round -> the round
        for r in range(self.rounds):
            for count in self.counts if r % 2 == 0 else self.counts[::-1]:
                self._plan += [(count, k > 0 or self._plan[-1][0] == count) for k in range(self.block)]
            self._rounds[len(self._plan)] = r
        self._started: float | None = None

    def before_step(self) -> None:
        """Before a training step: during the trial, set the count it wants and start the clock (and after it,
        while more threads than the fewest are kept: they are watched)."""
        if self.chosen is not None:
            if self.chosen != self.counts[0]:
                self._started = self.clock()
            return
        count = self._plan[self.trial_steps][0]
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        self._started = self.clock()

    def after_step(self) -> None:
        """After a training step: during the trial, file its time; decide when the trial is done."""
        if self._started is None:
            return
        elapsed = self.clock() - self._started
        self._started = None
        if self.chosen is not None:
            self._watch(elapsed)
            return
        count, timed = self._plan[self.trial_steps]
        if timed:
            self.samples[count].append(elapsed)
        self.trial_steps += 1
        if self._done(self._rounds.get(self.trial_steps)):
            self.chosen = decide(self.samples, self.margin)
            if torch.get_num_threads() != self.chosen:
                torch.set_num_threads(self.chosen)

    def _watch(self, elapsed: float) -> None:
        """More threads kept: when the mean of the last :data:`WATCH` steps passes the fewest threads' median step
        in the trial (a neighbour arrived, or the trial was lucky), go back to the fewest threads for good."""
        self._recent = [*self._recent[-(WATCH - 1):], elapsed]
        fewest = self.counts[0]
        typical = statistics.median(self.samples[fewest]) if self.samples[fewest] else math.inf
        if len(self._recent) == WATCH and statistics.fmean(self._recent) > typical * (1 + self.margin):
            assert self.chosen is not None
            self.fell_back = (self.chosen, statistics.fmean(self._recent), typical)
            self.chosen = fewest
            torch.set_num_threads(fewest)

    def _done(self, ended: int | None) -> bool:
        """Whether the trial can decide after round ``ended`` (None: mid-round)."""
        if ended is None:
            return False
        if ended == self.rounds - 1:
            return True
        timed = [times for times in self.samples.values() if times]
        if ended == 0:  # every step of the others took ``clear`` times the fastest count's median
            fastest = min(timed, key=statistics.median)
            return len(timed) > 1 and all(min(times) >= self.clear * statistics.median(fastest)
                                          for times in timed if times is not fastest)
        return separated(self.samples)

    def on_step_start(self, state: Any) -> None:
        """The loop's hook: :meth:`before_step`."""
        self.before_step()

    def on_step_end(self, state: Any) -> None:
        """The loop's hook: :meth:`after_step`."""
        self.after_step()

    def describe(self) -> str:
        """One line: the count kept and the median step at each count (or that the trial is still running)."""
        medians = ", ".join(f"{count}: {statistics.median(times) * 1e3:.3g} ms" for count, times in
                            self.samples.items() if times)
        if self.chosen is None:
            return f"threads: measuring ({self.trial_steps} steps so far{'; ' + medians if medians else ''})"
        if not medians:
            return f"threads: {self.chosen} (the only count)"
        if self.fell_back is not None:
            count, recent, typical = self.fell_back
            return (f"threads: {self.chosen} (kept {count} after {self.trial_steps} steps, {medians}; back to "
                    f"{self.chosen} when {count} threads' last {WATCH} steps took {recent * 1e3:.3g} ms on average)")
        return f"threads: {self.chosen} (median step {medians}, over {self.trial_steps} steps)"


def use(threads: Any, model: Any = None, *, device: torch.device, batch_size: int | None = None
        ) -> ThreadChooser | None:
    """Set torch's thread count for a run on ``device`` (inside a function wrapped by :func:`restored`): a number
    is set; ``"auto"`` on the CPU starts at 1 thread and returns the :class:`ThreadChooser` the run's loop must
    drive (None when there is only one count to try, or on a GPU, where the count is left as it is).

    ``model`` and ``batch_size`` are not read (the size rule this replaced took them); they go once every caller
    passes ``device`` alone.
    """
    threads = check_threads(threads)
    if isinstance(threads, int):
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return None
    if device.type != "cpu" or torch.get_num_threads() == 1:
        return None
    chooser = ThreadChooser()
    torch.set_num_threads(chooser.counts[0])  # a run that never reaches the loop (an error) ran on 1 thread
    return chooser


def restored(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``function`` so that torch's thread count is what it was before, however the function ends."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        previous = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    return wrapper
