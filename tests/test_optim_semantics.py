"""The adapter follows torch.optim where users rely on it: missing gradients, param groups, schedulers, maximize,
tensor learning rates, foreign state dicts, low-precision parameters."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from gdlab import optim
from gdlab.errors import InvalidParameter
from gdlab.optim import aliases, fused
from gdlab.optim.adapter import Optimizer, inject
from gdlab.optim.transforms import AdamState, TraceState, chain, clip_by_global_norm, find

Factory = Callable[[Any], torch.optim.Optimizer]


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def _backward(model: nn.Module, step: int) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(step)
    X = torch.randn(16, 5, generator=g).to(dtype)
    y = torch.randn(16, 2, generator=g).to(dtype)
    loss = nn.functional.mse_loss(model(X), y)
    loss.backward()
    return loss.detach()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, *,
           drop: Callable[[int], list[int]] = lambda s: [], scheduler: Any = None) -> None:
    """``steps`` steps; at step s the parameters numbered ``drop(s)`` have no gradient (.grad None)."""
    params = list(model.parameters())
    for step in steps:
        opt.zero_grad()
        _backward(model, step)
        for i in drop(step):
            params[i].grad = None
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _same(a: nn.Module, b: nn.Module, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _both(ours: Factory, theirs: Factory, steps: int = 30, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    a, b = _model(), _model()
    _train(a, ours(a.parameters()), range(steps), **kwargs)
    _train(b, theirs(b.parameters()), range(steps), **kwargs)
    return a, b


PAIRS: list[tuple[str, Factory, Factory]] = [
    ("sgd momentum wd", lambda p: Optimizer(p, aliases.sgd(0.05, momentum=0.9, weight_decay=0.1)),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("sgd dampening", lambda p: optim.make("momentum", p, lr=0.05, momentum=0.8, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, weight_decay=0.01)),
    ("nesterov", lambda p: Optimizer(p, aliases.nesterov(0.05, weight_decay=0.01)),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", lambda p: optim.make("adam", p, lr=0.01, weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    ("adamw", lambda p: Optimizer(p, aliases.adamw(0.01, weight_decay=0.1)),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    ("adamw plain", lambda p: Optimizer(p, inject(aliases.adamw, lr=0.01, weight_decay=0.1), fused=False),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    ("rmsprop", lambda p: Optimizer(p, aliases.rmsprop(0.01, momentum=0.5, weight_decay=0.1)),
     lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.1)),
    ("adagrad", lambda p: Optimizer(p, aliases.adagrad(0.1, lr_decay=0.01, weight_decay=0.1)),
     lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.1)),
]
IDS = [p[0] for p in PAIRS]


# -- a missing gradient: the parameter is not stepped, its state untouched ------------------------------------------


@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=IDS)
def test_a_frozen_layer_stays_as_torch_leaves_it(name: str, ours: Factory, theirs: Factory) -> None:
    a, b = _model(), _model()
    for model in (a, b):
        model[0].requires_grad_(False)  # a frozen backbone, its parameters still handed to the optimizer
    start = [p.detach().clone() for p in a.parameters()]
    _train(a, ours(a.parameters()), range(30))
    _train(b, theirs(b.parameters()), range(30))
    assert torch.equal(a[0].weight, start[0]) and torch.equal(a[0].bias, start[1])
    assert not torch.equal(a[2].weight, start[2])
    _same(a, b)


@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=IDS)
def test_a_gradient_missing_on_some_steps_skips_those_steps(name: str, ours: Factory, theirs: Factory) -> None:
    """Parameter 2 has no gradient on every third step, parameter 3 on the first five: torch skips them there,
    and each counts its own steps (Adam's bias correction, momentum's first step)."""
    drop = lambda s: ([2] if s % 3 == 1 else []) + ([3] if s < 5 else [])
    a, b = _both(ours, theirs, drop=drop)
    _same(a, b)


def test_a_skipped_parameter_keeps_its_state_and_its_own_count() -> None:
    model = _model()
    opt = Optimizer(model.parameters(), aliases.adam(0.01))
    _train(model, opt, range(3))
    before = [t.clone() for t in find(opt.transform_state, AdamState).mu]
    weight = model[2].weight.detach().clone()
    _train(model, opt, range(3, 5), drop=lambda s: [2])
    mu = find(opt.transform_state, AdamState).mu
    assert torch.equal(mu[2], before[2]) and torch.equal(model[2].weight, weight)
    assert not torch.equal(mu[0], before[0])
    assert opt.state_dict()["transform"]["counts"] == [5, 5, 3, 5]


def test_momentum_turned_on_for_a_parameter_that_had_no_gradient_starts_from_its_gradient() -> None:
    """torch's momentum buffer of a parameter first stepped late is its gradient then (dampening or not)."""
    drop = lambda s: [1] if s < 4 else []
    a, b = _both(lambda p: Optimizer(p, aliases.sgd(0.05, momentum=0.9, dampening=0.5)),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.5), steps=10, drop=drop)
    _same(a, b)


def test_no_gradient_at_all_is_no_step() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Optimizer([w], aliases.adamw(0.1, weight_decay=0.5))
    opt.step()
    assert w.tolist() == [1.0, 2.0] and find(opt.transform_state, AdamState).count == 0


# -- param groups keep their own hyperparameters ----------------------------------------------------------------


def _groups(model: nn.Module, **bias: Any) -> list[dict[str, Any]]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, **bias}]


@pytest.mark.parametrize("make", [lambda: aliases.adamw(0.01, weight_decay=0.1),
                                  lambda: inject(aliases.adamw, lr=0.01, weight_decay=0.1),
                                  lambda: optim.make("adamw", [nn.Parameter(torch.zeros(1))], lr=0.01,
                                                     weight_decay=0.1).transform])
def test_no_decay_on_biases_matches_torch_adamw_in_float32(make: Callable[[], Any]) -> None:
    a, b = _model(torch.float32), _model(torch.float32)
    ours = Optimizer(_groups(a, weight_decay=0.0), make())
    theirs = torch.optim.AdamW(_groups(b, weight_decay=0.0), lr=0.01, weight_decay=0.1)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]
    for step in range(20):
        _train(a, ours, range(step, step + 1))
        _train(b, theirs, range(step, step + 1))
        _same(a, b, rtol=1e-5, atol=1e-6)  # step for step


def test_each_group_its_own_lr_momentum_and_betas() -> None:
    a, b = _model(), _model()
    _train(a, Optimizer(_groups(a, lr=0.2, momentum=0.5, nesterov=True), aliases.momentum(0.05)), range(30))
    _train(b, torch.optim.SGD(_groups(b, lr=0.2, momentum=0.5, nesterov=True), lr=0.05, momentum=0.9), range(30))
    _same(a, b)
    a, b = _model(), _model()
    _train(a, Optimizer(_groups(a, betas=(0.5, 0.9), eps=1e-6, amsgrad=True), aliases.adam(0.01)), range(30))
    _train(b, torch.optim.Adam(_groups(b, betas=(0.5, 0.9), eps=1e-6, amsgrad=True), lr=0.01), range(30))
    _same(a, b)


def test_a_group_without_momentum_beside_one_with() -> None:
    a, b = _model(), _model()
    _train(a, Optimizer(_groups(a, momentum=0.0), aliases.sgd(0.05, momentum=0.9, weight_decay=0.01)), range(20))
    _train(b, torch.optim.SGD(_groups(b, momentum=0.0), lr=0.05, momentum=0.9, weight_decay=0.01), range(20))
    _same(a, b)


def test_a_group_added_later_as_torch_adds_it() -> None:
    """Fine-tuning: the head first, then the backbone unfrozen with its own smaller lr."""
    a, b = _model(), _model()
    ours = Optimizer(a[2].parameters(), aliases.adamw(0.01))
    theirs = torch.optim.AdamW(b[2].parameters(), lr=0.01)
    _train(a, ours, range(5))
    _train(b, theirs, range(5))
    ours.add_param_group({"params": a[0].parameters(), "lr": 0.001})
    theirs.add_param_group({"params": b[0].parameters(), "lr": 0.001})
    assert ours.param_groups[1]["weight_decay"] == 0.01
    _train(a, ours, range(5, 15))
    _train(b, theirs, range(5, 15))
    _same(a, b)


def test_a_bad_group_value_is_refused_when_the_optimizer_is_built() -> None:
    model = _model()
    with pytest.raises(InvalidParameter, match=r"invalid weight_decay -1.0: expected a number in \[0, inf\)"):
        Optimizer(_groups(model, weight_decay=-1.0), aliases.adamw(0.01))


def test_groups_round_trip_through_a_checkpoint() -> None:
    drop = lambda s: [1] if s % 4 == 0 else []
    straight = _model()
    _train(straight, Optimizer(_groups(straight, weight_decay=0.0), aliases.adamw(0.01)), range(20), drop=drop)
    first = _model()
    opt = Optimizer(_groups(first, weight_decay=0.0), aliases.adamw(0.01))
    _train(first, opt, range(10), drop=drop)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    second = _model()
    second.load_state_dict(first.state_dict())
    opt2 = Optimizer(_groups(second, weight_decay=0.0), aliases.adamw(0.01))
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.01, 0.0]
    _train(second, opt2, range(10, 20), drop=drop)
    for x, y in zip(second.parameters(), straight.parameters()):
        assert torch.equal(x, y)


def test_one_state_saved_over_several_groups_loads_into_each() -> None:
    """Before groups kept their own state, one state held every group's parameters, in order."""
    straight = _model()
    _train(straight, Optimizer(_groups(straight), aliases.momentum(0.05)), range(10))
    first = _model()
    opt = Optimizer(_groups(first), aliases.momentum(0.05))
    _train(first, opt, range(5))
    saved = opt.state_dict()
    assert list(saved["transform"]) == ["groups"]
    # the old layout: the groups' torch dict, one transform state over every parameter in order
    states = opt.transform_state
    count = find(states[0], TraceState).count
    saved["transform"] = {"inner": [{"count": count, "buf": [t for s in states for t in find(s, TraceState).buf]},
                                    {"count": count}]}
    second = _model()
    second.load_state_dict(first.state_dict())
    opt2 = Optimizer(_groups(second), aliases.momentum(0.05))
    opt2.load_state_dict(saved)
    _train(second, opt2, range(5, 10))
    for x, y in zip(second.parameters(), straight.parameters()):
        assert torch.equal(x, y)


# -- every adapter shows its hyperparameters: torch's schedulers work and are obeyed --------------------------------

SCHEDULED: list[tuple[str, Factory, Factory]] = [
    ("sgd", lambda p: Optimizer(p, aliases.sgd(0.05)), lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd by name", lambda p: optim.make("sgd", p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    ("momentum", lambda p: Optimizer(p, aliases.momentum(0.05, weight_decay=0.01)),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("momentum injected", lambda p: Optimizer(p, inject(aliases.momentum, lr=0.05)),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("adam", lambda p: Optimizer(p, aliases.adam(0.01)), lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adam injected", lambda p: Optimizer(p, inject(aliases.adam, lr=0.01)), lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adamw by name", lambda p: optim.make("adamw", p, lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    ("adamw clipped", lambda p: Optimizer(p, chain(clip_by_global_norm(10.0), aliases.adamw(0.01))),
     lambda p: torch.optim.AdamW(p, lr=0.01)),
]
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=30),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=5),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=30),
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize(("name", "ours", "theirs"), SCHEDULED, ids=[s[0] for s in SCHEDULED])
def test_torch_schedulers_drive_every_adapter_as_torch_optim(scheduler: str, name: str, ours: Factory,
                                                            theirs: Factory) -> None:
    a, b = _model(), _model()
    oa, ob = ours(a.parameters()), theirs(b.parameters())
    sa, sb = SCHEDULERS[scheduler](oa), SCHEDULERS[scheduler](ob)
    used: list[tuple[Any, ...]] = []
    for step in range(30):
        _train(a, oa, range(step, step + 1), scheduler=sa)
        _train(b, ob, range(step, step + 1), scheduler=sb)
        ga, gb = oa.param_groups[0], ob.param_groups[0]
        used.append((ga["lr"], ga.get("momentum"), ga.get("betas")))
        assert (ga["lr"], ga.get("momentum"), ga.get("betas")) == (gb["lr"], gb.get("momentum"), gb.get("betas"))
    assert len({u[0] for u in used}) > 1  # the schedule moved the lr
    if scheduler in ("OneCycleLR", "CyclicLR"):
        assert len({u[1] if u[2] is None else u[2][0] for u in used}) > 1  # and momentum or beta1
    _same(a, b)


def test_every_adapter_shows_its_hyperparameters_in_defaults() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    assert Optimizer(p, aliases.sgd(0.01)).defaults == {"lr": 0.01, "momentum": 0.0, "dampening": 0.0,
                                                         "nesterov": False, "weight_decay": 0.0, "maximize": False}
    assert Optimizer(p, inject(aliases.adam, lr=0.1)).defaults["betas"] == (0.9, 0.999)
    assert Optimizer(p, aliases.lion(1e-4)).param_groups[0]["betas"] == (0.9, 0.99)
    assert Optimizer(p, chain(clip_by_global_norm(1.0), aliases.rmsprop(0.01))).defaults["alpha"] == 0.99


# -- maximize ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda p: Optimizer(p, aliases.sgd(0.05, momentum=0.9, weight_decay=0.1), maximize=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1, maximize=True)),
    (lambda p: Optimizer(p, aliases.adam(0.01, weight_decay=0.1), maximize=True),
     lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, maximize=True)),
    (lambda p: Optimizer(p, inject(aliases.adamw, lr=0.01), fused=False, maximize=True),
     lambda p: torch.optim.AdamW(p, lr=0.01, maximize=True)),
])
def test_maximize_ascends_as_torch(ours: Factory, theirs: Factory) -> None:
    a, b = _both(ours, theirs, steps=12, drop=lambda s: [3] if s % 2 else [])  # (ascent soon amplifies rounding)
    _same(a, b)


def test_maximize_per_group_and_the_loss_rises() -> None:
    model = _model()
    opt = Optimizer([{"params": model.parameters(), "maximize": True}], aliases.sgd(0.05))
    first = _backward(model, 0)
    _train(model, opt, range(20))
    assert _backward(model, 0) > first


# -- a tensor learning rate -------------------------------------------------------------------------------------


def test_a_tensor_lr_of_several_elements_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidParameter) as error:
        Optimizer(_model().parameters(), aliases.sgd(torch.tensor([0.1, 0.2])))
    assert str(error.value) == ("invalid lr [0.10000000149011612, 0.20000000298023224]: expected a number or a "
                                "one-element tensor (one learning rate per param group)")
    with pytest.raises(InvalidParameter, match="invalid lr"):
        Optimizer([{"params": _model().parameters(), "lr": torch.ones(3)}], aliases.adam(0.01))


def test_a_one_element_tensor_lr_steps_as_its_number_and_a_scheduler_drives_it() -> None:
    a, b = _model(), _model()
    scalar = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))  # a 0-dim parameter too
    twin = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    oa = Optimizer([*a.parameters(), scalar], aliases.adam(torch.tensor(0.01, dtype=torch.float64)))
    ob = torch.optim.Adam([*b.parameters(), twin], lr=0.01)
    sa, sb = lr_scheduler.StepLR(oa, 3, 0.5), lr_scheduler.StepLR(ob, 3, 0.5)
    for step in range(10):
        for p in (scalar, twin):
            p.grad = torch.tensor(0.5, dtype=torch.float64)
        _train(a, oa, range(step, step + 1), scheduler=sa)
        for p in (scalar, twin):
            p.grad = torch.tensor(0.5, dtype=torch.float64)
        _train(b, ob, range(step, step + 1), scheduler=sb)
    _same(a, b)
    torch.testing.assert_close(scalar, twin)


# -- a foreign state dict ---------------------------------------------------------------------------------------


def test_a_torch_optim_state_dict_is_refused_in_one_line() -> None:
    model = _model()
    theirs = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, theirs, range(2))
    ours = Optimizer(model.parameters(), aliases.adam(0.01))
    with pytest.raises(InvalidParameter) as error:
        ours.load_state_dict(theirs.state_dict())
    message = str(error.value)
    assert "\n" not in message and message.startswith("invalid state_dict keys ['param_groups', 'state']: expected")
    assert "torch.optim" in message


# -- float16 and bfloat16 parameters learn ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.1), ("momentum", 0.05), ("adam", 0.01)])
def test_a_low_precision_mlp_learns(dtype: torch.dtype, name: str, lr: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1)).to(dtype)
    X = torch.randn(256, 20)
    y = X[:, :1] * 2 - X[:, 1:2]
    X, y = X.to(dtype), y.to(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    opt = optim.make(name, model.parameters(), lr=lr)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(X).float(), y.float())

    first = loss().item()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    for p, s in zip(model.parameters(), start):
        assert p.dtype == dtype and (p != s).float().mean() > 0.9  # (nearly) every element moved
    assert loss().item() < 0.5 * first


def test_low_precision_steps_in_float32_as_torch_does_in_float64() -> None:
    """The bf16 step is the float32 step rounded: close to torch's float64 run from the same bf16 start."""
    a = _model(torch.bfloat16)
    b = _model(torch.bfloat16).double()
    _train(a, Optimizer(a.parameters(), aliases.momentum(0.05)), range(5))
    _train(b, torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9), range(5))
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x.double(), y, rtol=0.02, atol=0.02)


def test_the_cpu_fused_kernels_are_not_handed_low_precision() -> None:
    p = [torch.zeros(40, dtype=torch.bfloat16)]
    g = [torch.ones(40, dtype=torch.bfloat16)]
    assert not fused.call("_fused_sgd_", p, g, [], weight_decay=0.0, momentum=0.0, lr=0.1, dampening=0.0,
                          nesterov=False, maximize=False, is_first_step=True)
    step = aliases.sgd(0.1).step
    assert step is not None
    step(p, g, aliases.sgd(0.1).init(p))
    assert bool((p[0] != 0).all())  # every element stepped: no block left behind


# -- the model moved after the optimizer was made (fit moves it to its device) -----------------------------------


def test_a_model_converted_after_the_optimizer_is_still_stepped() -> None:
    a, b = _model(torch.float32), _model(torch.float32)
    ours, theirs = Optimizer(a.parameters(), aliases.adam(0.01)), torch.optim.Adam(b.parameters(), lr=0.01)
    a.double(), b.double()  # new storage behind the same parameters, as model.to(device) gives
    _train(a, ours, range(10))
    _train(b, theirs, range(10))
    assert all(p.dtype == torch.float64 for s in ours.transform_state.inner[0] if isinstance(s, list) for p in s)
    _same(a, b)


def test_fit_keeps_each_groups_hyperparameters() -> None:
    """``fit(optimizer=...)`` with param groups (no schedule: fit's schedule sets every group's lr alike) steps
    as torch.optim.AdamW with the same groups, and leaves the groups as they were."""
    import gdlab

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    runs = []
    for make in (lambda g: Optimizer(g, aliases.adamw(0.05, weight_decay=0.1)),
                 lambda g: torch.optim.AdamW(g, lr=0.05, weight_decay=0.1)):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = make([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01, "weight_decay": 0.0}])
        gdlab.fit(model, (X, y), optimizer=opt, epochs=3, batch_size=16, progress=False, doctor=False)
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.05, 0.1), (0.01, 0.0)]
        runs.append(model)
    _same(runs[0], runs[1], rtol=1e-5, atol=1e-6)


def test_a_deep_copy_steps_on_as_the_original() -> None:
    import copy

    model = _model()
    opt = Optimizer(_groups(model, weight_decay=0.0), aliases.adamw(0.01))
    _train(model, opt, range(3), drop=lambda s: [1])
    twin, twin_opt = copy.deepcopy((model, opt))
    _train(model, opt, range(3, 6))
    _train(twin, twin_opt, range(3, 6))
    for x, y in zip(model.parameters(), twin.parameters()):
        assert torch.equal(x, y) and x.data_ptr() != y.data_ptr()
