from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gdlab import models
from gdlab.errors import InvalidParameter, ModelError, UnknownChoice


@pytest.mark.parametrize("name", ["linear", "logistic", "mlp", "cnn"])
def test_builtin_models_map_inputs_to_outputs(name: str) -> None:
    model = models.build(name, in_features=64, out_features=10, image_shape=(1, 8, 8))
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_mlp_hidden_sizes_and_activation() -> None:
    model = models.build("mlp", in_features=3, out_features=2, hidden=(8, 4), activation="tanh")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 8), (8, 4), (4, 2)]
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2


@pytest.mark.parametrize("init", ["xavier", "kaiming", "normal", "zeros"])
def test_inits_reset_weights_and_zero_biases(init: str) -> None:
    torch.manual_seed(0)
    model = models.build("mlp", in_features=20, out_features=5, hidden=(30,), init=init)
    first = model[1]
    assert torch.count_nonzero(first.bias) == 0
    if init == "zeros":
        assert torch.count_nonzero(first.weight) == 0
    elif init == "normal":
        assert first.weight.std().item() == pytest.approx(0.01, rel=0.2)
    else:
        bound = (6 / (20 + 30)) ** 0.5 if init == "xavier" else (6 / 20) ** 0.5
        assert first.weight.abs().max().item() <= bound


def test_cnn_infers_square_images_and_refuses_other_inputs() -> None:
    assert models.build("cnn", in_features=16, out_features=3)(torch.randn(2, 16)).shape == (2, 3)
    assert models.build("cnn", in_features=16, out_features=3)(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ModelError, match="15 features are not a square image"):
        models.build("cnn", in_features=15, out_features=3)


def test_bad_choices_are_named() -> None:
    with pytest.raises(UnknownChoice, match="unknown model 'resnet': expected one of linear, logistic, mlp, cnn, "
                                            "or module:function"):
        models.build("resnet", in_features=2, out_features=1)
    with pytest.raises(UnknownChoice, match="unknown activation 'gelu'"):
        models.build("mlp", in_features=2, out_features=1, activation="gelu")
    with pytest.raises(UnknownChoice, match="unknown init 'he'"):
        models.build("mlp", in_features=2, out_features=1, init="he")
    with pytest.raises(InvalidParameter, match="invalid hidden"):
        models.build("mlp", in_features=2, out_features=1, hidden=(0,))
    with pytest.raises(ModelError, match="use model 'linear'"):
        models.build("logistic", in_features=2, out_features=1, task="regression")


def test_user_model_from_module_function(user_modules: Path) -> None:
    model = models.build("user_models:regressor", in_features=3, out_features=2)
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (3, 2)
    assert models.build("user_models:wrong_inputs", in_features=3, out_features=1).in_features == 7
    with pytest.raises(InvalidParameter, match="a function returning an nn.Module, got int"):
        models.build("user_models:not_a_module", in_features=3, out_features=1)
