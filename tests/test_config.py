from __future__ import annotations

from pathlib import Path

import pytest

from gdlab.config import DEFAULT_EPOCHS, Config
from gdlab.errors import InvalidParameter


def test_defaults_and_budget() -> None:
    config = Config()
    assert (config.data, config.model, config.batch_size) == ("digits", "mlp", 32)
    assert config.budget() == (DEFAULT_EPOCHS, None)
    assert Config(steps=100).budget() == (None, 100)


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('data = "moons"\nlr = 1\nhidden = [16, 16]\nbatch_size = "full"\nepochs = 7\n'
                    "[data_options]\nnoise = 0.1\n")
    config = Config.from_toml(path, {"epochs": 9})
    assert (config.data, config.lr, config.hidden, config.batch_size, config.epochs) == ("moons", 1.0, [16, 16],
                                                                                         "full", 9)
    assert config.data_options == {"noise": 0.1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate = 0.1\n", r"invalid config run.toml key 'learning_rate': expected one of data, target"),
        ('epochs = "ten"\n', r"invalid config run.toml epochs 'ten': expected an integer"),
        ("lr = true\n", r"invalid config run.toml lr True: expected a number"),
        ('hidden = ["a"]\n', r"invalid config run.toml hidden \['a'\]: expected a list of integers"),
        ("lr = -0.5\n", r"invalid lr -0.5: expected a finite number > 0"),
        ("batch_size = 0\n", r"invalid batch_size 0"),
        ("epochs = = 1\n", r"invalid config '.*run.toml': expected valid TOML"),
    ],
)
def test_bad_toml_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(InvalidParameter, match=message):
        Config.from_toml(path)


def test_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="expected an existing TOML file"):
        Config.from_toml(tmp_path / "none.toml")


def test_round_trip_through_dict() -> None:
    config = Config(data="linear", hidden=[4], momentum=0.5, data_options={"condition": 10.0})
    assert Config.from_dict(config.to_dict()) == config
    assert config.with_changes(epochs=3).epochs == 3
