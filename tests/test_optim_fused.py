"""Fused kernels behind the aliases: the same step as the plain transforms, taken only where it may be."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

from gdlab.optim import aliases, fused, schedules
from gdlab.optim.adapter import Optimizer, inject
from gdlab.optim.transforms import TraceState, chain, clip_by_global_norm, find

CASES = [
    ("_fused_sgd_", aliases.sgd, {"lr": 0.05}),
    ("_fused_sgd_", aliases.sgd, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
    ("_fused_sgd_", aliases.sgd, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("_fused_sgd_", aliases.nesterov, {"lr": 0.05, "weight_decay": 0.01}),
    ("_fused_adam_", aliases.adam, {"lr": 0.01}),
    ("_fused_adam_", aliases.adam, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("_fused_adamw_", aliases.adamw, {"lr": 0.01}),
    ("_fused_adamw_", aliases.adamw, {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True, "betas": (0.8, 0.99)}),
    ("_fused_adamw_", aliases.adamw, {"lr": schedules.cosine(0.01, 200)}),
    ("_fused_sgd_", aliases.momentum, {"lr": 0.05, "momentum": schedules.OneCycle(0.05, 200).momentum}),
]


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    dtype = next(model.parameters()).dtype
    for step in steps:
        g = torch.Generator().manual_seed(step)
        X = torch.randn(16, 5, generator=g).to(dtype)
        y = torch.randn(16, 2, generator=g).to(dtype)
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        opt.step()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each fused kernel ran."""
    counted: dict[str, int] = {}
    for name in ("_fused_sgd_", "_fused_adam_", "_fused_adamw_"):
        kernel = getattr(torch, name)

        def spy(*args: Any, _name: str = name, _kernel: Any = kernel, **kwargs: Any) -> None:
            counted[_name] = counted.get(_name, 0) + 1
            _kernel(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    return counted


@pytest.mark.parametrize(("kernel", "alias", "hyper"), CASES)
def test_fused_step_equals_plain_transforms(kernel: str, alias: Any, hyper: dict[str, Any],
                                            calls: dict[str, int]) -> None:
    fast, plain = _model(), _model()
    _train(fast, Optimizer(fast.parameters(), inject(alias, **hyper)), range(200))
    _train(plain, Optimizer(plain.parameters(), inject(alias, **hyper), fused=False), range(200))
    assert calls == {kernel: 200}  # the kernel did every step of the first run, none of the second
    for a, b in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("kernel", "alias", "hyper"), CASES[:8])
def test_fused_step_matches_in_float32(kernel: str, alias: Any, hyper: dict[str, Any]) -> None:
    fast, plain = _model(torch.float32), _model(torch.float32)
    _train(fast, Optimizer(fast.parameters(), inject(alias, **hyper)), range(100))
    _train(plain, Optimizer(plain.parameters(), inject(alias, **hyper), fused=False), range(100))
    for a, b in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_and_plain_share_one_state_layout() -> None:
    """A checkpoint written by the fused path resumes on the plain one and ends where a straight run ends."""
    straight = _model()
    _train(straight, Optimizer(straight.parameters(), inject(aliases.adam, lr=0.01, amsgrad=True)), range(60))
    first = _model()
    opt = Optimizer(first.parameters(), inject(aliases.adam, lr=0.01, amsgrad=True))
    _train(first, opt, range(30))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt2 = Optimizer(first.parameters(), inject(aliases.adam, lr=0.01, amsgrad=True), fused=False)
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    _train(first, opt2, range(30, 60))
    for a, b in zip(first.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_member_hyperparameters_take_the_plain_path(calls: dict[str, int]) -> None:
    params = [torch.zeros(3, 4, dtype=torch.float64)]
    grads = [torch.ones(3, 4, dtype=torch.float64)]
    opt = aliases.adam(torch.tensor([0.1, 0.01, 0.001]))
    assert opt.step is not None
    opt.step(params, grads, opt.init(params))
    assert calls == {}  # no kernel takes one lr per member; the transforms did it: Adam's first step is -lr
    torch.testing.assert_close(params[0], torch.tensor([[-0.1], [-0.01], [-0.001]]).double().expand(3, 4))


def test_mixed_dtypes_take_the_plain_path(calls: dict[str, int]) -> None:
    params = [torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float32)]
    grads = [torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float32)]
    opt = aliases.momentum(0.1)
    assert opt.step is not None
    state = opt.step(params, grads, opt.init(params))
    assert calls == {} and state is not None and find(state, TraceState).count == 1
    assert params[0].tolist() == [-0.1, -0.1] and params[1].dtype == torch.float32


@pytest.mark.parametrize("alias", [aliases.sgd, aliases.momentum, aliases.adam, aliases.adamw, aliases.rmsprop,
                                   aliases.adagrad, aliases.lion])
def test_step_equals_update_then_apply_with_member_values(alias: Any) -> None:
    """The plain step (lr folded into the update's application) computes what update + apply_updates does."""
    g = torch.Generator().manual_seed(0)
    lr = torch.tensor([0.1, 0.01])
    a = [torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)]
    b = [x.clone() for x in a]
    opt = alias(lr)
    sa, sb = opt.init(a), opt.init(b)
    for _ in range(20):
        grads = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in a]
        sa = opt.step(a, grads, sa)
        updates, sb = opt.update(grads, sb, b)
        for x, u in zip(b, updates):
            x.add_(u)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_a_chain_ending_in_an_alias_uses_its_fused_step(calls: dict[str, int]) -> None:
    fast, plain = _model(), _model()
    make = lambda **h: chain(clip_by_global_norm(0.1), aliases.adamw(**h))
    _train(fast, Optimizer(fast.parameters(), inject(make, lr=0.01)), range(50))
    _train(plain, Optimizer(plain.parameters(), inject(make, lr=0.01), fused=False), range(50))
    assert calls == {"_fused_adamw_": 50}
    for a, b in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_numbers_resolves_schedules_and_refuses_tensors() -> None:
    assert fused.numbers(3, lr=lambda t: 0.1 * t, eps=1e-8) == {"lr": pytest.approx(0.3), "eps": 1e-8}
    assert fused.numbers(0, lr=torch.tensor([0.1, 0.2])) is None
