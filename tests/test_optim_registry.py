"""One record per optimizer: OPTIMIZERS, lr_select.GRIDS and the CLI's listing all read it."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import gdlab
from gdlab import lr_select, optim
from gdlab.cli import app
from gdlab.errors import InvalidParameter, UnknownChoice
from gdlab.optim import aliases, registry
from gdlab.optim.transforms import Transform, chain, scale_by_learning_rate

NAMES = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lion"]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_record_is_whole(name: str) -> None:
    info = optim.OPTIMIZERS[name]
    assert info.name == name and info.alias is getattr(aliases, name)
    assert info.equation and info.summary and "\n" not in info.equation + info.summary
    low, high = info.lr_range
    assert 0 < low < high
    assert isinstance(info.alias(**{**info.defaults, "lr": 0.1}), Transform)


def test_the_lr_ranges_lr_auto_searches_are_the_records() -> None:
    assert list(optim.OPTIMIZERS) == NAMES
    assert lr_select.GRIDS == {
        "sgd": (1e-4, 10.0), "momentum": (1e-4, 3.0), "nesterov": (1e-4, 3.0), "adagrad": (1e-4, 3.0),
        "rmsprop": (1e-5, 1.0), "adam": (1e-5, 1.0), "adamw": (1e-5, 1.0), "lion": (1e-6, 0.3),
    }
    assert dict(lr_select.GRIDS) == {n: i.lr_range for n, i in optim.OPTIMIZERS.items()}


def test_a_new_record_is_a_named_optimizer_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def signless(lr: float = 0.1) -> Transform:
        return chain(scale_by_learning_rate(lr))

    info = registry.OptimizerInfo("toy", signless, "theta -= lr * g", (1e-3, 0.5), "A toy optimizer for a test.")
    monkeypatch.setitem(optim.OPTIMIZERS, "toy", info)
    assert lr_select.GRIDS["toy"] == (1e-3, 0.5) and "toy" in lr_select.GRIDS
    listed = CliRunner().invoke(app, ["optimizers"]).stdout
    assert "toy" in listed and "A toy optimizer for a test." in listed and "0.001..0.5" in listed
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = optim.make("toy", [w], lr=0.5)
    w.grad = torch.tensor([1.0])
    opt.step()
    assert w.item() == 0.5 and opt.param_groups[0]["lr"] == 0.5


def test_the_listing_and_the_help_show_every_record() -> None:
    listed = CliRunner().invoke(app, ["optimizers"]).stdout
    for info in optim.OPTIMIZERS.values():
        assert info.name in listed and info.summary in listed and info.equation in listed
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"]).stdout.split())
    assert ", ".join(NAMES) + "; gdlab optimizers describes them" in help_text


def test_register_records_the_alias_beside_it_and_checks() -> None:
    @optim.register(equation="theta -= lr * g", lr_range=(1e-3, 1.0), summary="Another SGD.", name="sgd2")
    def other(lr: float = 0.1) -> Transform:
        return chain(scale_by_learning_rate(lr))

    try:
        assert optim.OPTIMIZERS["sgd2"].alias is other and optim.OPTIMIZERS["sgd2"].defaults == {"lr": 0.1}
        with pytest.raises(InvalidParameter, match="invalid name 'sgd2'"):
            optim.register(equation="", lr_range=(1e-3, 1.0), summary="", name="sgd2")(other)
    finally:
        del optim.OPTIMIZERS["sgd2"]
    with pytest.raises(InvalidParameter, match="invalid lr_range"):
        optim.register(equation="", lr_range=(1.0, 0.1), summary="")


@pytest.mark.parametrize("name", NAMES)
def test_aliases_are_importable_from_optim(name: str) -> None:
    assert getattr(gdlab.optim, name) is getattr(aliases, name) is optim.OPTIMIZERS[name].alias
    assert name in optim.__all__


def test_optim_public_names() -> None:
    assert sorted(optim.__all__) == sorted([
        "LR_RANGES", "OPTIMIZERS", "OPTIONS", "Optimizer", "OptimizerInfo", "OptimizerSpec", "check_lr",
        "check_momentum", "hyperparams", "make", "register", *NAMES,
    ])
    for name in optim.__all__:
        assert getattr(optim, name) is not None


def test_hyperparams_are_what_make_puts_in_param_groups() -> None:
    hyper = optim.hyperparams("adamw", lr=0.01, beta1=0.8, eps=None)
    assert hyper == {"lr": 0.01, "betas": (0.8, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False}
    group = optim.make("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=0.01, beta1=0.8).param_groups[0]
    assert {k: group[k] for k in hyper} == hyper
    assert optim.hyperparams("sgd", lr=0.1, momentum=0.5)["momentum"] == 0.5
    with pytest.raises(UnknownChoice, match="unknown optimizer 'adamax'"):
        optim.hyperparams("adamax", lr=0.1)
    with pytest.raises(InvalidParameter, match="invalid lr"):
        optim.hyperparams("sgd", lr=-1.0)
    with pytest.raises(InvalidParameter, match="no eps with optimizer 'sgd'"):
        optim.hyperparams("sgd", lr=0.1, eps=1e-3)
