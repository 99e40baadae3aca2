"""The thread choice: ``threads="auto"`` times the run's first steps at 1 thread and at torch's count and keeps the
faster (checked with fake clocks, never the real one); a count is set as asked; fit and populations leave
torch's count as they found it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import gdlab
from gdlab import population
from gdlab import threads as threads_module
from gdlab.config import Config
from gdlab.errors import InvalidParameter
from gdlab.population import run as population_run
from gdlab.threads import CLEAR, MARGIN, WATCH, ThreadChooser, check_threads, cpu_limit, decide, separated, use

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def step_clock(seconds: dict[int, Callable[[int], float]]) -> tuple[Callable[[], float], list[int]]:
    """A fake clock whose steps take ``seconds[threads](i)`` (i: the step's index at that count), and the thread
    count of each timed step, in order."""
    now, counts, seen = [0.0], [], dict.fromkeys(seconds, 0)
    started = [False]

    def clock() -> float:
        if started[0]:  # the step's end: time passes by the count it ran at
            threads = torch.get_num_threads()
            now[0] += seconds[threads](seen[threads])
            seen[threads] += 1
            counts.append(threads)
        started[0] = not started[0]
        return now[0]

    return clock, counts


def drive(chooser: ThreadChooser, steps: int) -> None:
    for _ in range(steps):
        chooser.before_step()
        chooser.after_step()


def test_decide_keeps_the_faster_count_and_the_fewer_threads_within_the_margin() -> None:
    assert decide({1: [2.0, 2.2, 1.9, 2.1], 2: [1.0, 1.1, 0.9, 1.2]}) == 2
    assert decide({1: [1.0, 1.1, 0.9], 2: [2.0, 2.1, 1.9]}) == 1
    assert decide({1: [1.0 + MARGIN * 0.9], 2: [1.0]}) == 1  # within the margin: fewer threads
    assert decide({1: [1.0 + MARGIN * 1.1], 2: [1.0]}) == 2
    assert decide({1: [5.0, 0.1, 5.0], 2: [1.0, 1.0, 2.0]}) == 2  # medians and means, not minima
    assert decide({1: [3.0, 3.0, 3.0], 2: [1.0, 1.0, 40.0]}) == 1  # faster in the median, stalled in the mean
    assert decide({1: [3.0, 3.0, 3.0], 2: [1.0, 1.0, 2.9]}) == 2
    assert decide({1: [3.0, 3.0, 3.0], 2: [1.0, 1.0, 1.0, 1.0, 3.5]}) == 1  # one stall past 1 thread's typical step
    assert decide({1: [], 2: [3.0]}) == 2
    assert separated({1: [1.0, 1.1], 2: [1.2, 1.3]}) and not separated({1: [1.0, 1.3], 2: [1.2, 1.4]})


def test_the_trial_alternates_the_counts_times_real_steps_and_stops_when_clear(two_threads: None) -> None:
    clock, counts = step_clock({1: lambda i: 2.0, 2: lambda i: 1.0})  # two threads twice as fast
    chooser = ThreadChooser(counts=(1, 2), clock=clock)
    drive(chooser, 8)
    assert chooser.chosen is None  # 2x is not clear after one round; two rounds are not done yet
    drive(chooser, 1)
    # a warm-up step, then blocks of 2 steps (1, 2 | 2, 1): always faster at 2 after two rounds: 9 steps
    assert counts == [1] + [1, 1, 2, 2] + [2, 2, 1, 1]
    assert chooser.chosen == 2 and chooser.trial_steps == 9 and torch.get_num_threads() == 2
    # the warm-up and the first step after each change of count untimed
    assert chooser.samples == {1: [2.0] * 3, 2: [1.0] * 3}
    drive(chooser, 5)
    assert len(counts) == 14 and set(counts[9:]) == {2}  # more threads kept: still timed (watched), the count stays
    assert torch.get_num_threads() == 2 and "threads: 2" in chooser.describe()


def test_more_threads_kept_are_watched_and_given_up_when_they_stall(two_threads: None) -> None:
    """A lucky trial (or a neighbour arriving later) must not leave a run on a stalling second thread."""
    clock, counts = step_clock({1: lambda i: 2.0, 2: lambda i: 10.0 if i >= 8 and i % 3 == 0 else 1.0})
    chooser = ThreadChooser(counts=(1, 2), clock=clock)
    drive(chooser, 9)
    assert chooser.chosen == 2
    drive(chooser, WATCH - 1)
    assert chooser.chosen == 2  # the watch needs WATCH steps
    drive(chooser, 1)  # the second thread now stalls one step in three: mean 2.8 > 1 thread's 2.0
    assert chooser.chosen == 1 and torch.get_num_threads() == 1 and chooser.fell_back is not None
    assert chooser.fell_back[0] == 2 and chooser.fell_back[2] == 2.0 and "back to 1" in chooser.describe()
    timed = len(counts)
    drive(chooser, 5)
    assert len(counts) == timed  # the fewest threads are not watched: nothing more is timed
    steady = ThreadChooser(counts=(1, 2), clock=step_clock({1: lambda i: 2.0, 2: lambda i: 1.0})[0])
    drive(steady, 9 + 3 * WATCH)
    assert steady.chosen == 2 and steady.fell_back is None


def test_a_count_clear_times_slower_is_dropped_after_one_round(two_threads: None) -> None:
    """On a busy machine a second thread can stall a step 10-100x: the trial pays two such steps, not six."""
    clock, counts = step_clock({1: lambda i: 1.0, 2: lambda i: CLEAR * 1.0})
    chooser = ThreadChooser(counts=(1, 2), clock=clock)
    drive(chooser, 5)
    assert chooser.chosen == 1 and counts == [1, 1, 1, 2, 2] and torch.get_num_threads() == 1


def test_an_unclear_trial_runs_three_rounds_and_takes_the_median(two_threads: None) -> None:
    # 1 thread is faster in the median, but one slow step (a neighbour woke up) keeps the rounds from separating
    clock, counts = step_clock({1: lambda i: 9.0 if i == 4 else 1.0, 2: lambda i: 1.5})
    chooser = ThreadChooser(counts=(1, 2), clock=clock)
    drive(chooser, 13)
    assert chooser.chosen == 1 and chooser.trial_steps == 13 and len(counts) == 13
    assert torch.get_num_threads() == 1
    assert (len(chooser.samples[1]), len(chooser.samples[2])) == (5, 4)


def test_restart_measures_again_and_a_single_count_needs_no_trial(two_threads: None) -> None:
    clock, counts = step_clock({1: lambda i: 2.0, 2: lambda i: 1.0})
    chooser = ThreadChooser(counts=(1, 2), clock=clock)
    drive(chooser, 9)
    assert chooser.chosen == 2
    chooser.restart()
    assert chooser.chosen is None and chooser.samples == {1: [], 2: []}
    drive(chooser, 9)
    assert chooser.chosen == 2 and len(counts) == 18
    lone = ThreadChooser(counts=(1,), clock=lambda: pytest.fail("a single count is never timed"))
    drive(lone, 3)
    assert lone.chosen == 1 and lone.describe() == "threads: 1 (the only count)"
    with pytest.raises(ValueError, match="block"):
        ThreadChooser(counts=(1, 2), block=1)


def test_use_sets_a_count_and_starts_auto_at_one_thread_on_the_cpu_only(two_threads: None) -> None:
    assert use(2, device=CPU) is None and torch.get_num_threads() == 2
    assert use("1", device=CPU) is None and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    chooser = use("auto", device=CPU)
    assert isinstance(chooser, ThreadChooser) and chooser.counts == [1, 2] and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert use("auto", device=torch.device("meta")) is None and torch.get_num_threads() == 2  # not a CPU run
    torch.set_num_threads(1)
    assert use("auto", device=CPU) is None  # one count: nothing to measure


def test_a_count_above_the_cpus_is_one_line_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads 100000 crashed torch, and 10000 crawled: a count is capped at the CPUs this process may use."""
    import os

    if hasattr(os, "sched_getaffinity"):
        assert cpu_limit() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads_module, "cpu_limit", lambda: 4)
    assert check_threads(4) == 4 and check_threads("3") == 3
    message = 'invalid threads 5: expected "auto" or a positive integer up to 4 (the CPUs this process may use)'
    with pytest.raises(InvalidParameter) as raised:
        check_threads("5")
    assert str(raised.value) == message
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(InvalidParameter, match="threads"):
            check_threads(bad)
    with pytest.raises(InvalidParameter, match="up to 4"):
        Config(threads=100_000)
    assert Config(threads="2").threads == 2 and Config().fit_kwargs()["threads"] == "auto"
    previous = torch.get_num_threads()
    with pytest.raises(InvalidParameter, match="up to 4"):  # fit's threads: the same check, before any step
        gdlab.fit(torch.nn.Linear(3, 1), (torch.randn(8, 3), torch.randn(8, 1)), epochs=1, progress=False,
                  threads=100_000)
    assert torch.get_num_threads() == previous


class Seen(gdlab.Callback):
    def on_fit_start(self, state: object) -> None:
        self.threads = torch.get_num_threads()


@pytest.mark.parametrize(("threads", "inside"), [("auto", 1), (2, 2), (1, 1)])
def test_fit_sets_the_count_while_training_and_restores_it(two_threads: None, threads: int | str,
                                                          inside: int) -> None:
    X, y = torch.randn(32, 3), torch.randn(32, 1)
    seen = Seen()
    gdlab.fit(torch.nn.Linear(3, 1), (X, y), epochs=1, progress=False, threads=threads, callbacks=[seen])
    assert seen.threads == inside and torch.get_num_threads() == 2  # auto: the trial starts at 1 thread


def test_fit_restores_the_count_when_it_raises(two_threads: None) -> None:
    class Boom(gdlab.Callback):
        def on_fit_start(self, state: object) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gdlab.fit(torch.nn.Linear(3, 1), (torch.randn(8, 3), torch.randn(8, 1)), epochs=1, progress=False,
                  callbacks=[Boom()])
    assert torch.get_num_threads() == 2


class Planted:
    """``use`` replaced: every chooser a population makes gets a fake clock on which 2 threads are faster."""

    def __init__(self) -> None:
        self.choosers: list[ThreadChooser] = []
        self.counts: list[int] = []

    def __call__(self, threads: object, *, device: torch.device) -> ThreadChooser | None:
        if threads != "auto":
            return use(threads, device=device)
        clock, self.counts = step_clock({1: lambda i: 2.0, 2: lambda i: 1.0})
        torch.set_num_threads(1)
        self.choosers.append(ThreadChooser(counts=(1, 2), clock=clock))
        return self.choosers[-1]


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_population_drives_the_chooser_and_measures_again_after_a_cut(
        two_threads: None, monkeypatch: pytest.MonkeyPatch, vectorize: bool) -> None:
    planted = Planted()
    monkeypatch.setattr(population_run, "use_threads", planted)
    torch.set_num_threads(1)  # what the population found: put back at its end
    X = torch.randn(64, 3)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    pop = population.train(lambda: torch.nn.Linear(3, 1), (X, y), seeds=[0, 1, 2, 3], optimizer="sgd",
                           hyper={"lr": 0.05}, steps=40, batch_size=16, halving=[(20, 2)], progress=False,
                           vectorize=vectorize)
    (chooser,) = planted.choosers
    assert chooser.chosen == 2 and torch.get_num_threads() == 1
    trial = [1, 1, 1, 2, 2, 2, 2, 1, 1]  # a warm-up step, then blocks of 2: (1, 2 | 2, 1), two threads faster
    assert planted.counts[:9] == trial and chooser.trial_steps == 9
    if vectorize:  # two threads kept (and watched), then a new trial after the cut at step 20 (2 rows: less work)
        assert planted.counts[9:20] == [2] * 11 and planted.counts[20:29] == trial and len(planted.counts) == 40
    else:  # one by one: only the first member's first steps are a trial (every member's step is the same work)
        assert 1 not in planted.counts[9:]
    assert pop.steps == 40
    torch.set_num_threads(2)
    population.train(lambda: torch.nn.Linear(3, 1), (X, y), seeds=[0], hyper={"lr": 0.05}, steps=5,
                     progress=False, threads=1)
    assert len(planted.choosers) == 1 and torch.get_num_threads() == 2  # a count: no chooser, and put back
