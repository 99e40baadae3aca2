"""The thread choice: one thread for a small model, torch's count for a large one or on request, and fit leaves
torch's count as it found it."""

from __future__ import annotations

import pytest
import torch

import gdlab
from gdlab import threads as threads_module
from gdlab.config import Config
from gdlab.errors import InvalidParameter
from gdlab.threads import AUTO_WORK, check_threads, choose, cpu_limit

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_auto_takes_one_thread_for_a_small_model_and_torch_s_count_for_a_large_one(two_threads: None) -> None:
    small = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))  # digits' mlp
    assert choose("auto", small, batch_size=32, device=CPU) == 1
    large = torch.nn.Linear(1024, 1024)
    assert 1024 * 1025 * 256 >= AUTO_WORK
    assert choose("auto", large, batch_size=256, device=CPU) == 2
    assert choose("auto", large, batch_size=1, device=CPU) == 1  # the batch counts as much as the model
    assert choose("auto", small, batch_size=32, device=torch.device("meta")) == 2  # not a CPU run: left as it is


def test_a_count_overrides_the_choice(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "cpu_limit", lambda: 4)
    small = torch.nn.Linear(2, 1)
    assert choose(2, small, batch_size=32, device=CPU) == 2
    assert choose("3", small, batch_size=32, device=CPU) == 3
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(InvalidParameter, match="threads"):
            check_threads(bad)
    assert Config(threads="2").threads == 2 and Config().fit_kwargs()["threads"] == "auto"


def test_a_count_above_the_cpus_is_one_line_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads 100000 crashed torch, and 10000 crawled: a count is capped at the CPUs this process may use."""
    import os

    if hasattr(os, "sched_getaffinity"):
        assert cpu_limit() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads_module, "cpu_limit", lambda: 4)
    assert check_threads(4) == 4
    message = 'invalid threads 5: expected "auto" or a positive integer up to 4 (the CPUs this process may use)'
    with pytest.raises(InvalidParameter) as raised:
        check_threads("5")
    assert str(raised.value) == message
    with pytest.raises(InvalidParameter, match="up to 4"):
        Config(threads=100_000)
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
    assert seen.threads == inside and torch.get_num_threads() == 2


def test_fit_restores_the_count_when_it_raises(two_threads: None) -> None:
    class Boom(gdlab.Callback):
        def on_fit_start(self, state: object) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gdlab.fit(torch.nn.Linear(3, 1), (torch.randn(8, 3), torch.randn(8, 1)), epochs=1, progress=False,
                  callbacks=[Boom()])
    assert torch.get_num_threads() == 2
