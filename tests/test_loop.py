"""The loop: host syncs grow with steps / log_every, not with steps; a non-finite loss is caught at the next read
and rolled back from a snapshot; the per-step values read in batches equal those read every step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from gdlab.loop import LoopState, Snapshot, run
from gdlab.problem import Problem
from gdlab.train import fit


@contextmanager
def counting_syncs() -> Iterator[dict[str, int]]:
    """Count the calls that make the host wait for a tensor's value: item, tolist, float, int, bool."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__float__", "__int__", "__bool__")}

    def counted(original: Any) -> Any:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts["n"] += 1
            return original(self, *args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _data(n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def _syncs(steps: int, log_every: int, instruments: str) -> int:
    torch.manual_seed(0)
    with counting_syncs() as counts:
        fit(nn.Linear(4, 1), _data(), lr=0.01, batch_size=4, steps=steps, log_every=log_every, progress=False,
            instruments=instruments, doctor=False)
    return counts["n"]


@pytest.mark.parametrize("instruments", ["none", "cheap"])
def test_host_syncs_grow_with_steps_over_log_every(instruments: str) -> None:
    short, long = _syncs(200, 50, instruments), _syncs(800, 50, instruments)
    assert long - short <= 600 / 50 + 2  # 12 more reads for 600 more steps, not 600
    rare = _syncs(800, 200, instruments)
    assert rare < long - 8  # fewer reads with a longer log_every


def test_values_read_in_batches_equal_values_read_each_step() -> None:
    runs = []
    for log_every in (1, 7, 1000):
        torch.manual_seed(0)
        result = fit(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)), _data(256), lr=0.05, batch_size=16,
                     epochs=3, log_every=log_every, progress=False, instruments="cheap", doctor=False)
        runs.append(result.history)
    for other in runs[1:]:
        for key in ("loss", "grad_norm", "loss_ema", "grad_norm/0", "non_finite"):
            assert other.steps[key] == runs[0].steps[key]
        assert other.epochs["train_loss"] == runs[0].epochs["train_loss"]


def test_a_non_finite_loss_is_rolled_back_within_log_every_steps() -> None:
    X, y = _data(64)
    X[40:] *= 1e4  # batches from here on blow the parameters up
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    result = fit(model, (X, y), optimizer="sgd", lr=0.5, batch_size=64, epochs=200, log_every=10, progress=False,
                 instruments="none", doctor=False)
    assert result.stop_reason is not None and result.stop_reason.startswith("diverged")
    losses = result.history.steps["loss"]
    assert not math.isfinite(losses[-1]) and all(math.isfinite(v) for v in losses[:-1])
    assert result.steps == len(losses) and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_callback_reading_the_loss_each_step_sees_each_steps_loss() -> None:
    seen: list[float] = []

    class Reader:
        def on_step_end(self, state: LoopState) -> None:
            seen.append(state.loss)

    torch.manual_seed(0)
    result = fit(nn.Linear(4, 1), _data(64), lr=0.01, batch_size=8, epochs=2, progress=False, callbacks=[Reader()],
                 instruments="none", doctor=False)
    assert seen == result.history.steps["loss"]


def test_run_trains_a_problem_with_a_torch_optimizer() -> None:
    problem = Problem.make(nn.Linear(4, 1), _data(256), batch_size=32, device="cpu")
    state = LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.05), total_steps=400)
    run(problem, state)
    assert state.step == 400 and len(state.history.epochs) == 50 and state.history.epochs["train_loss"][-1] < 1e-4


def test_a_snapshot_restores_model_and_optimizer() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(3, 2)).sum().backward()
    opt.step()
    snap = Snapshot()
    snap.take(model, opt)
    weights, buffer = model.weight.detach().clone(), opt.state[model.weight]["momentum_buffer"].clone()
    for _ in range(3):
        opt.step()
    snap.take(model, opt)  # taken again: into the same tensors
    again = model.weight.detach().clone()
    opt.step()
    snap.restore(model, opt)
    assert torch.equal(model.weight, again) and not torch.equal(model.weight, weights)
    assert not torch.equal(opt.state[model.weight]["momentum_buffer"], buffer)


def test_a_bare_run_takes_no_gradient_norms_and_a_watched_one_does() -> None:
    torch.manual_seed(0)
    bare = fit(nn.Linear(4, 1), _data(64), lr=0.01, batch_size=8, epochs=1, progress=False, instruments="none",
               doctor=False)
    watched = fit(nn.Linear(4, 1), _data(64), lr=0.01, batch_size=8, epochs=1, progress=False, instruments="cheap",
                  doctor=False)
    assert "grad_norm" not in bare.history.steps and len(bare.history.steps["loss"]) == 8
    assert len(watched.history.steps["grad_norm"]) == 8 and all(v > 0 for v in watched.history.steps["grad_norm"])
