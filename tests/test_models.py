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


# -- issue 24: a tampered .safetensors file is one ModelError line, and its metadata never leads to an import ----

def _exported(path: Path, **meta: object) -> Path:
    """An exported mlp (3 inputs, hidden [4], 2 outputs) at ``path``, its metadata's keys changed by ``meta``."""
    import json

    from safetensors.torch import save_file

    spec = {"model": "mlp", "in_features": 3, "out_features": 2, "hidden": [4], "activation": "relu",
            "image_shape": None, "task": "classification", "classes": None}
    models.save(models.build("mlp", in_features=3, out_features=2, hidden=(4,)), path, spec)
    if meta:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            text = meta.pop("raw", None) or json.dumps({**json.loads(f.metadata()["gdlab"]), **meta})
        save_file(tensors, str(path), metadata={"gdlab": str(text)})
    return path


TAMPERED = [
    ({"raw": "{not json"}, "its gdlab metadata is not JSON"),
    ({"raw": "[1, 2]"}, "its gdlab metadata is a list: expected a JSON object written by gdlab export"),
    ({"hidden": ["4"]}, "invalid metadata hidden '4': expected a positive integer"),
    ({"hidden": "4"}, "invalid metadata hidden '4': expected a list of positive integers"),
    ({"in_features": "3"}, "invalid metadata in_features '3': expected a positive integer"),
    ({"out_features": -2}, "invalid metadata out_features -2: expected a positive integer"),
    ({"activation": 7}, "unknown metadata activation 7: expected one of relu, tanh, sigmoid, leaky_relu"),
    ({"image_shape": "abc"}, "invalid metadata image_shape 'abc': expected null or [channels, height, width]"),
    ({"model": "os:abort"}, "holds the weights of 'os:abort': build that model with its own class and pass it"),
    ({"model": "user_models:regressor"}, "holds the weights of 'user_models:regressor'"),
    ({"model": ["mlp"]}, "holds the weights of a model gdlab did not build"),
    ({"in_features": 10**12}, "its metadata describes 4,000,000,000,014 parameters but it holds 26: expected the "
     "file gdlab export wrote"),
    ({"hidden": [10**9, 10**9]}, "its metadata describes 1,000,000,007,000,000,002 parameters but it holds 26"),
]


@pytest.mark.parametrize(("meta", "message"), TAMPERED, ids=[m for _, m in TAMPERED])
def test_tampered_metadata_is_one_line_and_imports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           meta: dict[str, object], message: str) -> None:
    import importlib

    path = _exported(tmp_path / "m.safetensors", **meta)
    monkeypatch.setattr(importlib, "import_module", lambda *a, **k: pytest.fail("load imported a module"))
    with pytest.raises(ModelError) as caught:
        models.load(path)
    assert str(caught.value).startswith(f"model file '{path}'") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_damaged_safetensors_files_are_one_line(tmp_path: Path) -> None:
    import struct

    from safetensors.torch import save_file

    good = _exported(tmp_path / "good.safetensors")
    assert models.load(good)(torch.zeros(1, 3)).shape == (1, 2)
    damaged = {
        "past.safetensors": struct.pack("<Q", 10**9) + b'{"__metadata__": {}}',  # a header longer than the file
        "header.safetensors": struct.pack("<Q", 9) + b"{not json",
        "empty.safetensors": b"",
        "cut.safetensors": good.read_bytes()[:-10],
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=f"model file '.*{name}' could not be read") as caught:
            models.load(tmp_path / name)
        assert "\n" not in str(caught.value)
    tensors = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2), "gdlab.input_mean": torch.zeros(1, 3)}
    save_file(tensors, str(tmp_path / "half.safetensors"), metadata={"gdlab": '{"model": "linear", "in_features": 3, '
                                                                               '"out_features": 2}'})
    with pytest.raises(ModelError, match="its input scaling .* is damaged"):
        models.load(tmp_path / "half.safetensors")
