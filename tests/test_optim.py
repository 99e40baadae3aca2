from __future__ import annotations

import pytest
import torch

from gdlab import optim
from gdlab.errors import InvalidParameter, UnknownChoice


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    ("name", "cls", "momentum", "nesterov"),
    [("sgd", torch.optim.SGD, 0.0, False), ("momentum", torch.optim.SGD, 0.9, False),
     ("nesterov", torch.optim.SGD, 0.9, True), ("adagrad", torch.optim.Adagrad, None, None),
     ("rmsprop", torch.optim.RMSprop, 0.0, None), ("adam", torch.optim.Adam, None, None),
     ("adamw", torch.optim.AdamW, None, None)],
)
def test_names_map_to_torch_optim(name: str, cls: type, momentum: float | None, nesterov: bool | None) -> None:
    opt = optim.make(name, _params(), lr=0.5)
    group = opt.param_groups[0]
    assert type(opt) is cls and group["lr"] == 0.5
    if momentum is not None:
        assert group["momentum"] == momentum
    if nesterov is not None:
        assert group["nesterov"] is nesterov


def test_momentum_overrides_the_default() -> None:
    assert optim.make("sgd", _params(), lr=0.1, momentum=0.5).param_groups[0]["momentum"] == 0.5
    assert optim.make("rmsprop", _params(), lr=0.1, momentum=0.3).param_groups[0]["momentum"] == 0.3


def test_instances_and_factories_pass_through() -> None:
    opt = torch.optim.SGD(_params(), lr=1.0)
    assert optim.make(opt, [], lr=0.1) is opt
    with pytest.raises(InvalidParameter, match="a factory returning a torch.optim.Optimizer, got int"):
        optim.make(lambda params: 3, _params(), lr=0.1)


def test_bad_values() -> None:
    with pytest.raises(UnknownChoice, match="unknown optimizer 'adam2': expected one of sgd, momentum, nesterov, "
                                            "adagrad, rmsprop, adam, adamw"):
        optim.make("adam2", _params(), lr=0.1)
    for lr in (0, -1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(InvalidParameter, match="invalid lr"):
            optim.make("sgd", _params(), lr=lr)  # type: ignore[arg-type]
    for momentum in (-0.1, 1.0, 2):
        with pytest.raises(InvalidParameter, match="invalid momentum"):
            optim.make("sgd", _params(), lr=0.1, momentum=momentum)
