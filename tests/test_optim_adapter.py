"""The adapter: a transform chain as a torch.optim.Optimizer (exactness, state_dict round trip, param groups)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from gdlab.optim import aliases, schedules
from gdlab.optim.adapter import Optimizer, inject


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        X = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = torch.randn(16, 2, generator=g, dtype=torch.float64)
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        opt.step()


def test_adapter_matches_torch_adamw() -> None:
    ours, theirs = _model(), _model()
    _train(ours, Optimizer(ours.parameters(), inject(aliases.adamw, lr=0.01, weight_decay=0.1)), range(200))
    _train(theirs, torch.optim.AdamW(theirs.parameters(), lr=0.01, weight_decay=0.1), range(200))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: inject(aliases.adam, lr=0.01, amsgrad=True),
                                  lambda: inject(aliases.momentum, lr=0.05),
                                  lambda: aliases.rmsprop(0.01, centered=True, momentum=0.5)])
def test_state_dict_round_trip_resumes_bitwise(make) -> None:
    straight = _model()
    _train(straight, Optimizer(straight.parameters(), make()), range(60))
    first = _model()
    opt = Optimizer(first.parameters(), make())
    _train(first, opt, range(30))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # no code is unpickled
    second = _model()
    second.load_state_dict(saved["model"])
    opt2 = Optimizer(second.parameters(), make())
    opt2.load_state_dict(saved["optimizer"])
    _train(second, opt2, range(30, 60))
    for a, b in zip(second.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_learning_rate_in_param_groups_is_obeyed() -> None:
    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Optimizer([w], inject(aliases.sgd, lr=0.5))
    assert opt.param_groups[0]["lr"] == 0.5
    opt.param_groups[0]["lr"] = 0.25
    w.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    assert w.item() == pytest.approx(0.75)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # a torch scheduler drives it too
    opt.step()
    scheduler.step()
    opt.step()
    assert w.item() == pytest.approx(0.75 - 0.25 - 0.125)


def test_schedule_as_hyperparameter_and_zero_grad() -> None:
    w = nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = Optimizer([w], aliases.sgd(schedules.step(1.0, 1, 0.5)))
    for _ in range(3):
        w.grad = torch.tensor([-1.0], dtype=torch.float64)
        opt.step()
        opt.zero_grad()
        assert w.grad is None
    assert w.item() == pytest.approx(1.0 + 0.5 + 0.25)


def test_adapter_serves_gdlab_fit() -> None:
    import gdlab

    X = torch.randn(64, 3)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    result = gdlab.fit(nn.Linear(3, 1), (X, y), optimizer=lambda p: Optimizer(p, inject(aliases.adam, lr=0.05)),
                       epochs=40, progress=False)
    assert result.final["train_loss"] < 1e-3 and result.lr == 0.05


def test_turning_momentum_on_mid_run_changes_the_chain_safely() -> None:
    """A remedy or a schedule may set momentum on an optimizer built with none: the state follows the chain."""
    model = _model()
    opt = Optimizer(model.parameters(), inject(aliases.sgd, lr=0.05, momentum=0.0))
    _train(model, opt, range(5))
    opt.param_groups[0]["momentum"] = 0.9
    _train(model, opt, range(5, 10))
    reference = _model()
    ref_opt = Optimizer(reference.parameters(), inject(aliases.sgd, lr=0.05))
    _train(reference, ref_opt, range(5))
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)  # fresh buffers from step 6
    _train(reference, torch_opt, range(5, 10))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
