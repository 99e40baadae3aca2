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

from gdlab.loop import EVENTS, HOOKS, Callback, Hooks, LoopState, Plan, Snapshot, answers, run
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


# -- issue 24: a loss non-finite from the start, and the user's model or data failing in the loop ----------------


class _NaNOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * float("nan")


def test_targets_whose_loss_overflows_at_step_1_end_non_finite_and_are_named() -> None:
    X, _ = _data(64)
    y = torch.randn(64, 1, generator=torch.Generator().manual_seed(1)) * 1e30  # finite, but squared: inf
    torch.manual_seed(0)
    result = fit(nn.Linear(4, 1), (X, y), lr=0.01, batch_size=16, epochs=3, progress=False)
    assert result.steps == 1 and result.final["train_loss"] == math.inf  # never 0
    assert "targets reach" in result.stop_reason and "not the learning rate" in result.stop_reason
    (finding,) = [f for f in result.findings if f.code == "non_finite"]
    assert finding.evidence["quantity"] == "loss" and finding.evidence["target_scale"] > 1e29
    assert finding.remedy["action"] == "scale_targets" and "targets that reach 1.61e+30" in finding.explanation


def test_a_model_returning_nan_ends_non_finite_without_made_up_metrics() -> None:
    X, _ = _data(64)
    y = torch.arange(64) % 3
    result = fit(_NaNOut(), (X[:48], y[:48]), val=(X[48:], y[48:]), lr=0.1, batch_size=16, epochs=2, log_every=2,
                 progress=False)
    assert result.steps == 1 and math.isnan(result.final["train_loss"]) and math.isnan(result.final["val_loss"])
    assert result.final["val_accuracy"] is None  # the accuracy of NaN outputs would be made up
    assert result.history.epochs["train_loss"] != [0.0]
    (finding,) = [f for f in result.findings if f.code == "non_finite"]
    assert finding.evidence == {"quantity": "output", "count": 48, "source": "model"}
    assert "for finite inputs, targets and parameters" in finding.explanation


def test_a_non_finite_starting_point_is_named() -> None:
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight[0, 2] = float("nan")
    result = fit(model, _data(64), lr=0.01, batch_size=16, epochs=2, progress=False)
    assert math.isnan(result.final["train_loss"]) and "the starting point is not finite" in result.stop_reason
    (finding,) = [f for f in result.findings if f.code == "non_finite"]
    assert finding.evidence == {"quantity": "parameters", "count": 1, "source": "starting point"}


class _FailsAt(nn.Module):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.layer, self.at, self.calls = nn.Linear(4, 1), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError("no more")
        return self.layer(x)


@pytest.mark.parametrize("at", [1, 5])
def test_a_model_that_raises_in_the_loop_is_one_line_naming_the_step(at: int, tmp_path: Any) -> None:
    from gdlab.errors import ModelError
    from gdlab.store import Store

    with pytest.raises(ModelError, match=rf"^the forward pass of step {at} \(model _FailsAt, loss mse\) raised "
                       r"RuntimeError: no more \(test_loop.py, line \d+\)$") as caught:
        fit(_FailsAt(at), _data(64), lr=0.01, batch_size=8, epochs=1, progress=False, store=tmp_path,
            instruments="none")  # the instruments' own passes would count as calls too
    assert isinstance(caught.value.__cause__, RuntimeError)  # the original, for a debugger
    (stored,) = Store(tmp_path).runs()
    assert stored.status == "failed" and stored.error == f"ModelError: {caught.value}" and stored.steps == at - 1


def test_a_dataset_that_fails_mid_training_is_one_line_naming_the_step(tmp_path: Any) -> None:
    from torch.utils.data import Dataset

    from gdlab.errors import DataError
    from gdlab.loop import Callback
    from gdlab.store import Store

    X, y = _data(64)

    class Flaky(Dataset):
        broken = False

        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if self.broken:
                raise OSError(f"cannot read sample {i}")
            return X[i], y[i]

    data = Flaky()

    class BreakAfter3(Callback):
        def on_step_end(self, state: LoopState) -> None:
            data.broken = state.step == 3

    with pytest.raises(DataError, match=r"^reading the batch of step 4 failed: the Dataset Flaky raised OSError: "
                       r"cannot read sample \d+ \(test_loop.py, line \d+\)$"):
        fit(nn.Linear(4, 1), data, lr=0.01, batch_size=8, epochs=1, progress=False, store=tmp_path,
            callbacks=[BreakAfter3()])
    (stored,) = Store(tmp_path).runs()
    assert stored.status == "failed" and stored.steps == 3 and len(Store(tmp_path).history(stored.id).steps) == 3


def test_a_dataset_that_is_empty_or_unreadable_fails_before_training() -> None:
    from torch.utils.data import Dataset

    from gdlab.errors import DataError, InvalidParameter

    class Rows(Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Any:
            raise KeyError(f"sample {i} is missing")

    with pytest.raises(InvalidParameter, match="^invalid data 'Rows': expected a Dataset with at least one sample$"):
        fit(nn.Linear(4, 1), Rows(0), progress=False)
    with pytest.raises(DataError, match=r"^reading sample 0 of the training data failed: the Dataset Rows raised "
                       r"KeyError: 'sample 0 is missing' \(test_loop.py, line \d+\)$"):
        fit(nn.Linear(4, 1), Rows(10), progress=False)


# -- the hook protocol: Callback declares every hook, Hooks dispatches them ------------------------------------------
class _Calls(Callback):
    """A Callback that answers some events (the others are the base's no-ops)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, state: LoopState) -> None:
        self.calls.append("on_fit_start")

    def on_epoch_end(self, state: LoopState) -> None:
        self.calls.append("on_epoch_end")

    def on_fit_end(self, state: LoopState) -> None:
        self.calls.append("on_fit_end")


class _Plain:
    """Not a Callback: a user's plain object with two hooks."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_step_end(self, state: LoopState) -> None:
        self.calls.append("on_step_end")

    def on_diverge(self, state: LoopState) -> bool:
        self.calls.append("on_diverge")
        return True


def test_callback_declares_every_hook_with_a_default() -> None:
    base = Callback()
    assert set(EVENTS) < set(HOOKS) and {"on_diverge", "close", "needs_step", "before_update"} <= set(HOOKS)
    for name in HOOKS:
        assert callable(getattr(Callback, name)) and getattr(Callback, name).__doc__, name
        assert not answers(base, name), name  # the base's defaults answer nothing
    assert base.on_diverge(None) is False and base.needs_step(3) and base.next_needed(3) == 3  # type: ignore[arg-type]


def test_hooks_answer_by_override_for_callbacks_and_by_presence_for_plain_objects() -> None:
    mine, plain = _Calls(), _Plain()
    hooks = Hooks([mine, plain, object()])
    assert hooks.answering("on_fit_start") == [mine] and hooks.answering("on_step_end") == [plain]
    assert hooks.answering("on_diverge") == [plain] and hooks.answering("close") == []
    assert hooks.answering("on_step_start") == [] and hooks.answering("needs_step") == []
    assert [h.__self__ for h in hooks.handlers["on_epoch_end"]] == [mine]  # type: ignore[attr-defined]


def test_hooks_ask_every_on_diverge_and_close_every_hook_that_closes() -> None:
    class Acts(Callback):
        asked = 0
        closed = 0

        def on_diverge(self, state: LoopState) -> bool:
            self.asked += 1
            return True

        def close(self) -> None:
            self.closed += 1

    first, plain, silent = Acts(), _Plain(), _Calls()
    hooks = Hooks([first, plain, silent])
    assert hooks.diverged(None)  # type: ignore[arg-type]
    assert first.asked == 1 and plain.calls == ["on_diverge"]  # both asked, though the first acted
    hooks.close()
    assert first.closed == 1
    assert not Hooks([silent]).diverged(None)  # type: ignore[arg-type]


def test_run_calls_only_the_hooks_each_hook_answers() -> None:
    mine, plain = _Calls(), _Plain()
    problem = Problem.make(nn.Linear(4, 1), _data(64), batch_size=16, device="cpu")
    state = LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.05), total_steps=8)
    run(problem, state, [mine, plain])
    assert mine.calls == ["on_fit_start", "on_epoch_end", "on_epoch_end", "on_fit_end"]
    assert plain.calls == ["on_step_end"] * 8
    again = _Calls()
    state = LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.05), total_steps=4)
    run(problem, state, Hooks([again]))  # the dispatcher itself, made once, is taken too
    assert again.calls == ["on_fit_start", "on_epoch_end", "on_fit_end"]


def test_the_plan_gathers_the_planning_hooks_as_a_group() -> None:
    class Sparse(Callback):  # needs every 10th step one by one, the others in blocks
        def on_step_end(self, state: LoopState) -> None: ...
        def needs_step(self, step: int) -> bool:
            return step % 10 == 0
        def next_needed(self, step: int) -> float:
            return -(-step // 10) * 10
        def on_steps_end(self, state: LoopState, rows: range) -> None: ...

    class Measures(Callback):  # measures on its schedule, without saying the next such step
        def on_step_start(self, state: LoopState) -> None: ...
        def scheduled(self, step: int) -> bool:
            return step == 5

    sparse, measures = Sparse(), Measures()
    plan = Hooks([sparse]).plan
    assert plan.lane and plan.needs == [sparse.needs_step] and plan.block_ends == [sparse.on_steps_end]
    assert plan.nexts == [sparse.next_needed] and plan.unscheduled == [] and plan.befores == []
    assert Plan.of(Hooks([sparse, _Plain()])).lane is False  # a plain on_step_end needs every step
    both = Hooks([sparse, measures]).plan
    assert both.lane and both.schedules == [measures.scheduled] and both.nexts is None  # scanned step by step
    assert Hooks([_Plain(), measures]).plan.unscheduled == [] and Hooks([_Calls()]).plan.lane  # nothing to block
