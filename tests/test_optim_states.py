"""Transform states are small named types; a checkpoint holds them as today's plain dicts and they come back."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

from gdlab import optim
from gdlab.optim import aliases
from gdlab.optim.adapter import InjectState, Optimizer, inject
from gdlab.optim.transforms import (
    AdamState,
    ChainState,
    CountState,
    LionState,
    RmsState,
    RssState,
    TraceState,
    add_l2,
    chain,
    clip_by_global_norm,
    find,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    trace,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        opt.zero_grad()
        model(torch.randn(8, 3, generator=g, dtype=torch.float64)).pow(2).mean().backward()
        opt.step()


def _named_anywhere(tree: Any) -> bool:
    if isinstance(tree, dict):
        return any(_named_anywhere(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return hasattr(tree, "_fields") or any(_named_anywhere(v) for v in tree)
    return False


@pytest.mark.parametrize(("transform", "kind"), [
    (scale_by_learning_rate(0.1), CountState), (add_l2(0.1), CountState), (clip_by_global_norm(1.0), CountState),
    (trace(0.9), TraceState), (scale_by_rss(), RssState), (scale_by_rms(), RmsState), (scale_by_adam(), AdamState),
    (scale_by_lion(), LionState), (chain(trace(0.9), scale_by_learning_rate(0.1)), ChainState),
])
def test_each_transform_keeps_its_own_named_state(transform: Any, kind: type) -> None:
    p = [torch.zeros(2, 3, dtype=torch.float64)]
    state = transform.init(p)
    assert type(state) is kind
    _, state = transform.update([torch.ones(2, 3, dtype=torch.float64)], state, p)
    assert type(state) is kind


def test_optional_fields_are_none_unless_asked_for() -> None:
    p = [torch.zeros(2)]
    assert scale_by_adam().init(p).nu_max is None and scale_by_adam(amsgrad=True).init(p).nu_max is not None
    assert scale_by_rms().init(p).mu is None and scale_by_rms(centered=True).init(p).mu is not None


def test_find_picks_the_first_state_of_a_type_through_nested_chains() -> None:
    p = [torch.zeros(2)]
    state = chain(clip_by_global_norm(1.0), aliases.adamw(0.1)).init(p)
    assert isinstance(state.inner[1], ChainState)
    assert find(state, AdamState) is state.inner[1].inner[0]
    assert find(state, CountState) is state.inner[0]
    with pytest.raises(LookupError, match="no TraceState"):
        find(state, TraceState)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_state_dict_round_trip_gives_named_states_and_identical_next_steps(name: str) -> None:
    straight = _model()
    _train(straight, optim.make(name, straight.parameters(), lr=0.01, weight_decay=0.01), range(10))
    first = _model()
    opt = optim.make(name, first.parameters(), lr=0.01, weight_decay=0.01)
    _train(first, opt, range(5))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    assert not _named_anywhere(opt.state_dict()["transform"])  # plain dicts and lists: weights_only can read them
    buffer.seek(0)
    second = _model()
    second.load_state_dict(first.state_dict())
    opt2 = optim.make(name, second.parameters(), lr=0.01, weight_decay=0.01)
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    assert isinstance(opt2.transform_state, InjectState) and isinstance(opt2.transform_state.inner, ChainState)
    assert [type(s) for s in opt2.transform_state.inner.inner] == [type(s) for s in opt.transform_state.inner.inner]
    _train(second, opt2, range(5, 10))
    for a, b in zip(second.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_state_dict_keeps_the_layout_gdlab_has_always_saved() -> None:
    model = _model()
    opt = optim.make("adam", model.parameters(), lr=0.01)
    _train(model, opt, range(2))
    saved = opt.state_dict()["transform"]
    assert list(saved) == ["hyperparams", "inner", "zeros"] and saved["zeros"] == ["weight_decay", "amsgrad"]
    assert list(saved["inner"]) == ["inner"] and isinstance(saved["inner"]["inner"], list)
    moments, rate = saved["inner"]["inner"]
    assert list(moments) == ["count", "mu", "nu"] and moments["count"] == 2 and len(moments["mu"]) == 4
    assert rate == {"count": 2}


def test_a_dict_state_in_the_saved_layout_loads() -> None:
    """The layout gdlab 0.1.0 wrote (tests/data/store-0.1.0 holds such checkpoints): plain dicts and lists."""
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = optim.make("momentum", [w], lr=0.1)
    state = opt.state_dict()
    state["transform"] = {
        "hyperparams": {"momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0, "lr": 0.1},
        "inner": {"inner": [{"count": 7, "buf": [torch.tensor([0.5, -0.5], dtype=torch.float64)]}, {"count": 7}]},
        "zeros": ["dampening", "nesterov", "weight_decay"],
    }
    opt.load_state_dict(state)
    restored = opt.transform_state
    assert isinstance(restored, InjectState) and restored.zeros == ("dampening", "nesterov", "weight_decay")
    assert restored.inner == ChainState((TraceState(7, restored.inner.inner[0].buf), CountState(7)))
    w.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()  # buf = 0.9 * buf + g = [1.45, 0.55]; w -= 0.1 * buf
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.145, 2.0 - 0.055], dtype=torch.float64))


def test_a_state_saved_after_momentum_came_in_resumes_exactly() -> None:
    """A remedy turned momentum on mid-run, so the saved chain has a trace the new optimizer (momentum 0) lacks:
    the saved layout wins, and the run goes on as if never interrupted."""

    def run(steps: range, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        for step in steps:
            if step == 3:
                opt.param_groups[0]["momentum"] = 0.9
            _train(model, opt, range(step, step + 1))

    straight = _model()
    run(range(10), straight, optim.make("sgd", straight.parameters(), lr=0.05))
    first = _model()
    opt = optim.make("sgd", first.parameters(), lr=0.05)
    run(range(6), first, opt)
    second = _model()
    second.load_state_dict(first.state_dict())
    opt2 = optim.make("sgd", second.parameters(), lr=0.05)  # momentum 0: a chain without trace
    opt2.load_state_dict(opt.state_dict())
    assert [type(s) for s in opt2.transform_state.inner.inner] == [TraceState, CountState]
    run(range(6, 10), second, opt2)
    for a, b in zip(second.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_a_bare_chain_round_trips_too() -> None:
    model = _model()
    opt = Optimizer(model.parameters(), aliases.rmsprop(0.01, centered=True, momentum=0.5))
    _train(model, opt, range(3))
    opt2 = Optimizer(_model().parameters(), aliases.rmsprop(0.01, centered=True, momentum=0.5))
    opt2.load_state_dict(opt.state_dict())
    assert [type(s) for s in opt2.transform_state.inner] == [RmsState, TraceState, CountState]
    assert all(torch.equal(a, b) for a, b in zip(opt2.transform_state.inner[0].mu, opt.transform_state.inner[0].mu))


def test_inject_keeps_its_hyperparameters_in_a_named_state() -> None:
    state = inject(aliases.adam, lr=0.1).init([torch.zeros(2)])
    assert isinstance(state, InjectState) and state.hyperparams == {"lr": 0.1} and state.zeros == ()
    assert isinstance(find(state.inner, AdamState), AdamState)
