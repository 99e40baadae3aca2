"""optim.make: names build gdlab's transform chains behind the torch.optim adapter; options are checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdlab
from gdlab import optim
from gdlab.errors import InvalidParameter, UnknownChoice
from gdlab.optim import aliases


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_name_builds_an_adapter_with_lr_in_param_groups(name: str) -> None:
    opt = optim.make(name, _params(), lr=0.5)
    assert isinstance(opt, optim.Optimizer) and opt.param_groups[0]["lr"] == 0.5


def test_names_carry_torch_defaults_and_options() -> None:
    assert optim.make("momentum", _params(), lr=0.1).param_groups[0]["momentum"] == 0.9
    assert optim.make("sgd", _params(), lr=0.1, momentum=0.5).param_groups[0]["momentum"] == 0.5
    adam = optim.make("adam", _params(), lr=0.1, beta2=0.99, eps=1e-6, weight_decay=0.1).param_groups[0]
    assert (adam["betas"], adam["eps"], adam["weight_decay"]) == ((0.9, 0.99), 1e-6, 0.1)
    assert optim.OPTIMIZERS["adamw"].defaults["weight_decay"] == 0.01


def test_named_optimizer_equals_torch_optim_on_a_model() -> None:
    def train(opt_of: object) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Linear(4, 2).double()
        opt = opt_of(model.parameters())  # type: ignore[operator]
        for step in range(50):
            g = torch.Generator().manual_seed(step)
            loss = model(torch.randn(8, 4, generator=g, dtype=torch.float64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    ours = train(lambda p: optim.make("nesterov", p, lr=0.05, momentum=0.8, weight_decay=0.01))
    theirs = train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_clip_norm_clips_before_the_update() -> None:
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = optim.make("sgd", [w], lr=1.0, clip_norm=1.0)
    w.grad = torch.tensor([30.0, 40.0], dtype=torch.float64)  # norm 50 -> clipped to 1
    opt.step()
    assert w.tolist() == pytest.approx([-0.6, -0.8], rel=1e-6)


def test_transforms_instances_and_factories_pass_through() -> None:
    opt = torch.optim.SGD(_params(), lr=1.0)
    assert optim.make(opt, [], lr=0.1) is opt
    assert isinstance(optim.make(aliases.lion(0.01), _params(), lr=0.1), optim.Optimizer)
    with pytest.raises(InvalidParameter, match="a factory returning a torch.optim.Optimizer, got int"):
        optim.make(lambda params: 3, _params(), lr=0.1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"spec": "adam2"}, UnknownChoice, "unknown optimizer 'adam2': expected one of sgd, momentum, nesterov, "
                                           "adagrad, rmsprop, adam, adamw, lion"),
        ({"lr": 0}, InvalidParameter, "invalid lr 0"),
        ({"lr": -1}, InvalidParameter, "invalid lr -1"),
        ({"lr": float("nan")}, InvalidParameter, "invalid lr nan"),
        ({"lr": float("inf")}, InvalidParameter, "invalid lr inf"),
        ({"momentum": 1.0}, InvalidParameter, r"invalid momentum 1.0: expected a number in \[0, 1\)"),
        ({"momentum": -0.1}, InvalidParameter, "invalid momentum -0.1"),
        ({"spec": "adam", "momentum": 0.9}, InvalidParameter, "no momentum with optimizer 'adam' "
                                                               r"\(it applies to sgd, momentum, nesterov, rmsprop\)"),
        ({"spec": "sgd", "beta1": 0.9}, InvalidParameter, "no beta1 with optimizer 'sgd'"),
        ({"spec": "adam", "beta1": 1.0}, InvalidParameter, "invalid beta1 1.0"),
        ({"spec": "adam", "beta2": -0.5}, InvalidParameter, "invalid beta2 -0.5"),
        ({"spec": "adam", "eps": 0.0}, InvalidParameter, "invalid eps 0.0: expected a number > 0"),
        ({"spec": "sgd", "nesterov": True}, InvalidParameter, "invalid nesterov True: expected a momentum > 0"),
        ({"spec": "adam", "weight_decay": -1.0}, InvalidParameter, "invalid weight_decay -1.0"),
        ({"spec": "sgd", "clip_norm": 0}, InvalidParameter, "invalid clip_norm 0"),
        ({"spec": "sgd", "colour": 1}, InvalidParameter, "invalid optimizer option 'colour'"),
    ],
)
def test_bad_input_is_named(kwargs: dict, error: type, message: str) -> None:
    spec = kwargs.pop("spec", "sgd")
    lr = kwargs.pop("lr", 0.1)
    with pytest.raises(error, match=message):
        optim.make(spec, _params(), lr=lr, **kwargs)


def test_fit_with_options_and_a_schedule() -> None:
    X = torch.randn(64, 3)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    result = gdlab.fit(nn.Linear(3, 1), (X, y), optimizer="adamw", lr=0.05, weight_decay=0.0, beta2=0.99,
                       batch_size=16, epochs=20, schedule="warmup:8,cosine", progress=False)
    lrs = result.history.steps["lr"]
    assert lrs[0] == pytest.approx(0.05 / 8) and max(lrs) == pytest.approx(0.05) and lrs[-1] < 0.001
    losses = result.history.epochs["train_loss"]
    assert losses[-1] < losses[0] / 10


def test_fit_with_one_cycle_moves_momentum_inversely() -> None:
    X = torch.randn(64, 3)
    y = X.sum(1, keepdim=True)
    seen: list[tuple[float, float]] = []

    class Watch(gdlab.Callback):
        def on_step_end(self, state: gdlab.LoopState) -> None:
            group = state.optimizer.param_groups[0]
            seen.append((group["lr"], group["momentum"]))

    gdlab.fit(nn.Linear(3, 1), (X, y), optimizer="momentum", lr=0.1, batch_size=8, epochs=5, schedule="one_cycle",
              progress=False, callbacks=[Watch()])
    peak = max(range(len(seen)), key=lambda i: seen[i][0])
    assert seen[peak][1] == min(m for _, m in seen)  # highest lr, lowest momentum
