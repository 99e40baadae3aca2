"""gdlab's transforms against torch.optim (float64, 200 steps, 1e-10 relative), Lion by hand, populations."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from gdlab.errors import InvalidParameter
from gdlab.optim import aliases
from gdlab.optim.transforms import (
    LionState,
    Transform,
    apply_updates,
    chain,
    clip_by_global_norm,
    find,
    scale_by_learning_rate,
)

STEPS = 200


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)  # a new random batch every step
    X = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    return nn.functional.mse_loss(model(X), y)


def _with_torch(cls: type, **kwargs: object) -> list[torch.Tensor]:
    model = _model()
    opt = cls(model.parameters(), **kwargs)
    for step in range(STEPS):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def _with_gdlab(transform: Transform) -> list[torch.Tensor]:
    model = _model()
    params = list(model.parameters())
    state = transform.init(params)
    for step in range(STEPS):
        grads = torch.autograd.grad(_loss(model, step), params)
        updates, state = transform.update(list(grads), state, params)
        apply_updates(params, updates)
    return [p.detach() for p in params]


CASES = [
    ("sgd", torch.optim.SGD, {"lr": 0.05}, aliases.sgd(0.05)),
    ("sgd momentum dampening wd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1,
                                                    "weight_decay": 0.01},
     aliases.sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("nesterov", torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True}, aliases.nesterov(0.05, 0.8)),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
                                      "initial_accumulator_value": 0.1},
     aliases.adagrad(0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.01}, aliases.rmsprop(0.01)),
    ("rmsprop momentum centered wd", torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True,
                                                           "weight_decay": 0.01, "alpha": 0.9},
     aliases.rmsprop(0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01)),
    ("adam", torch.optim.Adam, {"lr": 0.01}, aliases.adam(0.01)),
    ("adam amsgrad wd", torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01, "betas": (0.8, 0.99)},
     aliases.adam(0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01)),
    ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}, aliases.adamw(0.01, weight_decay=0.1)),
    ("adamw amsgrad", torch.optim.AdamW, {"lr": 0.01, "amsgrad": True}, aliases.adamw(0.01, amsgrad=True)),
]


@pytest.mark.parametrize(("cls", "kwargs", "transform"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_torch_optim_to_1e_10(cls: type, kwargs: dict, transform: Transform) -> None:
    ours, theirs = _with_gdlab(transform), _with_torch(cls, **kwargs)
    start = [p.detach() for p in _model().parameters()]
    assert all((a - s).abs().max() > 1e-3 for a, s in zip(ours, start))  # training moved every tensor
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lion_matches_its_published_rule_by_hand() -> None:
    """Two steps of Lion (Chen et al. 2023, Algorithm 2) computed by hand on one scalar parameter."""
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    p = [torch.tensor([1.0], dtype=torch.float64)]
    opt = aliases.lion(lr, betas=(b1, b2), weight_decay=wd)
    state = opt.init(p)
    g1, g2 = 2.0, -3.0
    # step 1: m = 0; c = 0.1 * 2 = 0.2 -> sign +1; theta = 1 - 0.1 * (1 + 0.5 * 1) = 0.85; m = 0.01 * 2 = 0.02
    updates, state = opt.update([torch.tensor([g1], dtype=torch.float64)], state, p)
    apply_updates(p, updates)
    assert p[0].item() == pytest.approx(0.85, abs=1e-15)
    # step 2: c = 0.9 * 0.02 + 0.1 * -3 = -0.282 -> sign -1; theta = 0.85 - 0.1 * (-1 + 0.5 * 0.85) = 0.9075
    updates, state = opt.update([torch.tensor([g2], dtype=torch.float64)], state, p)
    apply_updates(p, updates)
    assert p[0].item() == pytest.approx(0.9075, abs=1e-15)
    assert find(state, LionState).mu[0].item() == pytest.approx(0.99 * 0.02 + 0.01 * -3, abs=1e-15)


def _population(make: Callable[..., Transform], members: list[dict], shared: dict) -> None:
    """Members with their own hyperparameters as [members] tensors equal each member run alone."""
    M, steps = len(members), 50
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(M, 4, 3, generator=g, dtype=torch.float64)  # [members, in, out]
    X = torch.randn(steps, 8, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(steps, 8, 3, generator=g, dtype=torch.float64)

    def train(W: torch.Tensor, transform: Transform) -> torch.Tensor:
        W = W.clone().requires_grad_(True)
        state = transform.init([W])
        for t in range(steps):
            pred = torch.einsum("bi,mio->mbo", X[t], W) if W.dim() == 3 else X[t] @ W  # [members, batch, out]
            loss = ((pred - Y[t]) ** 2).mean(dim=(-1, -2)).sum()  # members' losses are independent
            (grad,) = torch.autograd.grad(loss, [W])
            updates, state = transform.update([grad], state, [W])
            apply_updates([W], updates)
        return W.detach()

    keys = members[0].keys()
    stacked = {k: torch.tensor([m[k] for m in members], dtype=torch.float64) for k in keys}
    together = train(W0, make(**shared, **stacked))
    for i, member in enumerate(members):
        alone = train(W0[i], make(**shared, **member))
        torch.testing.assert_close(together[i], alone, rtol=1e-10, atol=1e-12)


def test_population_sgd_members_equal_runs_alone() -> None:
    _population(aliases.sgd, [{"lr": 0.01, "momentum": 0.0}, {"lr": 0.05, "momentum": 0.9},
                              {"lr": 0.1, "momentum": 0.5}], {"nesterov": False})


def test_population_adam_members_equal_runs_alone() -> None:
    def adam(lr: object, b1: object, b2: object, eps: object) -> Transform:
        return aliases.adam(lr, betas=(b1, b2), eps=eps)

    _population(adam, [{"lr": 0.01, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
                       {"lr": 0.1, "b1": 0.5, "b2": 0.9, "eps": 1e-3}], {})


def test_population_rmsprop_and_lion() -> None:
    _population(aliases.rmsprop, [{"lr": 0.01, "alpha": 0.9}, {"lr": 0.001, "alpha": 0.99}], {"centered": True})
    _population(aliases.lion, [{"lr": 0.01, "weight_decay": 0.0}, {"lr": 0.001, "weight_decay": 0.1}], {})


def test_clip_by_global_norm_matches_torch() -> None:
    model = _model()
    _loss(model, 0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    clipped, _ = chain(clip_by_global_norm(0.1)).update(grads, chain(clip_by_global_norm(0.1)).init(grads), grads)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    for a, p in zip(clipped, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-15)


def test_schedule_as_learning_rate() -> None:
    p = [torch.zeros(1, dtype=torch.float64)]
    opt = scale_by_learning_rate(lambda t: 0.1 * 0.5**t)
    state = opt.init(p)
    seen = []
    for _ in range(3):
        updates, state = opt.update([torch.ones(1, dtype=torch.float64)], state, p)
        seen.append(-updates[0].item())
    assert seen == pytest.approx([0.1, 0.05, 0.025])


# name: (alias, lr on the parabola, lr on Rosenbrock, whose curvature near the start is ~600)
ALIASES = {
    "sgd": (aliases.sgd, 0.01, 1e-3),
    "momentum": (aliases.momentum, 0.005, 2e-4),
    "nesterov": (aliases.nesterov, 0.005, 2e-4),
    "adagrad": (aliases.adagrad, 0.5, 0.5),
    "rmsprop": (aliases.rmsprop, 0.01, 1e-3),
    "adam": (aliases.adam, 0.05, 0.02),
    "adamw": (aliases.adamw, 0.05, 0.02),
    "lion": (aliases.lion, 0.003, 1e-3),
}


def _minimise(transform: Transform, f: Callable[[torch.Tensor], torch.Tensor], start: list[float],
              steps: int) -> torch.Tensor:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    state = transform.init([x])
    for _ in range(steps):
        (grad,) = torch.autograd.grad(f(x), [x])
        updates, state = transform.update([grad], state, [x])
        apply_updates([x], updates)
        for tensors in _tensors(state):
            assert torch.isfinite(tensors).all() and tensors.shape == x.shape  # finite state, unchanged shapes
    return x.detach()


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", list(ALIASES))
def test_every_alias_finds_the_minimum_of_a_parabola(name: str) -> None:
    make, lr, _ = ALIASES[name]
    x = _minimise(make(lr), lambda x: (x**2 * torch.tensor([1.0, 10.0], dtype=torch.float64)).sum(),
                  [3.0, -2.0], 2000)
    assert x.norm().item() < 0.05


@pytest.mark.parametrize("name", list(ALIASES))
def test_every_alias_approaches_the_rosenbrock_minimum(name: str) -> None:
    def rosenbrock(x: torch.Tensor) -> torch.Tensor:
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    start = [-1.0, 1.5]
    make, _, lr = ALIASES[name]
    x = _minimise(make(lr), rosenbrock, start, 5000)
    assert rosenbrock(x).item() < 0.1 * rosenbrock(torch.tensor(start, dtype=torch.float64)).item()
    assert math.dist(x.tolist(), [1.0, 1.0]) < math.dist(start, [1.0, 1.0])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: aliases.sgd(-0.1), r"invalid lr -0.1"),
        (lambda: aliases.sgd(float("nan")), r"invalid lr nan"),
        (lambda: aliases.sgd(0.1, momentum=1.0), r"invalid momentum 1.0: expected a number in \[0, 1\)"),
        (lambda: aliases.sgd(0.1, nesterov=True), r"invalid nesterov True: expected a momentum > 0"),
        (lambda: aliases.adam(0.1, betas=(1.0, 0.9)), r"invalid beta1 1.0"),
        (lambda: aliases.adam(0.1, betas=(0.9, -0.1)), r"invalid beta2 -0.1"),
        (lambda: aliases.adam(0.1, eps=0.0), r"invalid eps 0.0: expected a number > 0"),
        (lambda: aliases.sgd(torch.tensor([0.1, -1.0])), r"invalid lr -1.0"),
    ],
)
def test_bad_hyperparameters_are_named(make: Callable[[], Transform], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        make()
