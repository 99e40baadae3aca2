from __future__ import annotations

import dataclasses
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
        ("lr = -0.5\n", r"invalid config run.toml lr -0.5: expected a finite number > 0"),
        ("batch_size = 0\n", r"invalid config run.toml batch_size 0"),
        ("epochs = = 1\n", r"invalid config '.*run.toml': expected valid TOML"),
    ],
)
def test_bad_toml_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(InvalidParameter, match=message):
        Config.from_toml(path)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ('epochs = "many"\n', {"epochs": 3}, "invalid config run.toml epochs 'many': expected an integer"),
        ("lr = true\n", {"lr": 0.1}, "invalid config run.toml lr True: expected a number or a string"),
        ('hidden = "64"\n', {"hidden": [8]}, "invalid config run.toml hidden '64': expected a list of integers"),
        ("[data_options]\nseed = 1\n", {"data_options": {"noise": 0.1}}, "invalid config run.toml data_options "
         "{'seed': 1}: expected no seed among the data options"),
        ("lr = -0.5\n", {"lr": 0.1}, "invalid config run.toml lr -0.5: expected a finite number > 0"),
    ],
)
def test_a_wrong_value_in_the_file_is_refused_even_when_a_flag_overrides_it(
        tmp_path: Path, text: str, overrides: dict[str, object], message: str) -> None:
    """Issue 28: the file is wrong whatever the flags say; the one line names the file, the key, the value and what
    was expected."""
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(InvalidParameter) as raised:
        Config.from_toml(path, overrides)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    path.write_text('remedy = "suggest"\nrestarts = 4\n')  # a rule between settings waits for the flags
    assert Config.from_toml(path, {"remedy": "auto"}).restarts == 4


def test_a_settings_file_that_is_not_utf8_text_is_one_line(tmp_path: Path) -> None:
    from gdlab.config import MAX_CONFIG_BYTES

    latin = tmp_path / "latin.toml"
    latin.write_bytes("epochs = 2\n# café\n".encode("latin-1"))
    with pytest.raises(InvalidParameter) as raised:
        Config.from_toml(latin)
    assert str(raised.value) == (f"invalid config '{latin}': expected a UTF-8 TOML file (byte 0xe9 at position 16 "
                                 "is not UTF-8)")
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(InvalidParameter, match="expected a TOML file of at most 1,000,000 bytes"):
        Config.from_toml(huge)
    with pytest.raises(InvalidParameter, match="expected a readable TOML file"):
        Config.from_toml(tmp_path)  # a folder


def test_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="expected an existing TOML file"):
        Config.from_toml(tmp_path / "none.toml")


def test_round_trip_through_dict() -> None:
    config = Config(data="linear", hidden=[4], momentum=0.5, data_options={"condition": 10.0})
    assert Config.from_dict(config.to_dict()) == config
    assert config.with_changes(epochs=3).epochs == 3


def test_fit_kwargs_are_fit_parameters() -> None:
    import inspect

    import gdlab
    from gdlab.config import OPTIMIZER_OPTIONS

    named = {name for name, p in inspect.signature(gdlab.fit).parameters.items() if p.kind is p.KEYWORD_ONLY}
    config = Config(optimizer="adamw", beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.01, clip_norm=1.0)
    kwargs = config.fit_kwargs()
    assert set(kwargs) - set(OPTIMIZER_OPTIONS) <= named  # the rest go to fit's **optimizer_options
    assert set(kwargs) & set(OPTIMIZER_OPTIONS) == {"beta1", "beta2", "eps", "weight_decay", "clip_norm"}
    assert {f.name for f in dataclasses.fields(Config)} >= set(kwargs)  # every value comes from a field
    assert (kwargs["epochs"], kwargs["steps"]) == config.budget()
    assert config.fit_kwargs("lr", "momentum", "nesterov") == {"lr": 0.1, "momentum": None}  # unset: left out
    with pytest.raises(InvalidParameter, match="invalid fit_kwargs name 'store'"):
        config.fit_kwargs("store")


def test_a_config_round_trips_into_a_fit_call() -> None:
    import torch

    import gdlab

    config = Config(optimizer="adam", lr=0.05, beta2=0.99, clip_norm=1.0, batch_size="full", steps=7, seed=3,
                    schedule="cosine", instruments="none", doctor=False, device="cpu")
    X, y = torch.randn(16, 2), torch.randn(16, 1)
    torch.manual_seed(0)
    result = gdlab.fit(torch.nn.Linear(2, 1), (X, y), progress=False, **config.fit_kwargs())
    assert result.steps == 7 and result.plan.mode == "full"
    torch.manual_seed(0)
    again = gdlab.fit(torch.nn.Linear(2, 1), (X, y), progress=False, optimizer="adam", lr=0.05, beta2=0.99,
                      clip_norm=1.0, batch_size="full", steps=7, seed=3, schedule="cosine", instruments="none",
                      doctor=False, device="cpu")
    assert again.final["train_loss"] == pytest.approx(result.final["train_loss"])


def test_every_setting_says_what_it_is_and_what_fit_calls_it() -> None:
    """Each field carries its help and the fit parameter it becomes, or (``via``) what uses it instead; fit_kwargs
    is read from exactly that."""
    import inspect

    import gdlab
    from gdlab.config import HELP, OPTIMIZER_OPTIONS, fit_name

    parameters = {name for name, p in inspect.signature(gdlab.fit).parameters.items() if p.kind is p.KEYWORD_ONLY}
    for f in dataclasses.fields(Config):
        assert f.metadata["help"].endswith("."), f.name
        assert HELP[f.name].startswith(f.metadata["help"])
        name = fit_name(f)
        if name is None:
            assert f.metadata["via"], f"{f.name}: neither a fit name nor what uses it"
        else:
            assert name in parameters or name in OPTIMIZER_OPTIONS, f"{f.name} -> {name} is no fit parameter"
    every = Config(beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.01, clip_norm=1.0, nesterov=True)
    assert set(every.fit_kwargs()) == {fit_name(f) for f in dataclasses.fields(Config)} - {None}
    assert Config(weight_decay=0.0).fit_kwargs("weight_decay") == {"weight_decay": 0.0}  # set, though falsy
    assert HELP["batch_size"].endswith("[default: 32]") and HELP["hidden"].endswith("[default: 128]")
    assert "[default" not in HELP["init"]  # a field shows its default only where it says so


def _refusals(**settings: object) -> dict[str, str]:
    """The error that Config, fit, watch and the Doctor each give for ``settings`` (where each takes them)."""
    import torch

    import gdlab
    from gdlab.doctor import Doctor

    model = torch.nn.Linear(2, 1)
    data = (torch.randn(8, 2), torch.randn(8, 1))
    makers = {
        "Config": lambda: Config(**settings),
        "fit": lambda: gdlab.fit(model, data, progress=False, epochs=1, **settings),
        "watch": lambda: gdlab.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **settings),
        "Doctor": lambda: Doctor(settings["remedy"]),
    }
    takes = {"Config": set(Config.__dataclass_fields__), "fit": {"remedy", "doctor", "restarts", "tol",
                                                                 "step_rows", "lr_select", "log_every", "seed"},
             "watch": {"remedy", "doctor", "log_every", "rollback"}, "Doctor": {"remedy"}}
    errors = {}
    for who, make in makers.items():
        if set(settings) <= takes[who]:
            with pytest.raises(InvalidParameter) as raised:
                make()
            errors[who] = str(raised.value)
    return errors


@pytest.mark.parametrize(
    ("settings", "message", "where"),
    [
        ({"remedy": "fix"}, "unknown remedy 'fix': expected one of off, suggest, auto", 4),
        ({"doctor": "yes"}, "invalid doctor 'yes': expected True or False", 3),
        ({"remedy": "suggest", "restarts": 3}, "invalid restarts 3: expected remedy auto with it", 2),
        ({"tol": 0.0}, "invalid tol 0.0: expected a finite number > 0", 2),
        ({"step_rows": -1}, "invalid step_rows -1: expected 0 (keep every step) or a positive integer", 2),
        ({"lr_select": "guess"}, "invalid lr_select 'guess': expected sweep or range-test", 2),
        ({"log_every": 0}, "invalid log_every 0: expected a positive integer", 2),
        ({"remedy": "suggest", "rollback": True}, 'invalid rollback True: expected remedy="auto"', 1),
    ],
)
def test_one_check_gives_one_error_through_config_fit_watch_and_the_doctor(settings: dict, message: str,
                                                                          where: int) -> None:
    errors = _refusals(**settings)
    assert len(errors) == where, errors
    assert all(text.startswith(message) for text in errors.values()), errors
    assert len(set(errors.values())) == 1  # the same words everywhere


def test_check_settings_normalises_and_names_what_it_does_not_know() -> None:
    from gdlab.config import check_settings

    assert check_settings(batch_size="64", precision="bf16", instruments=[]) == {
        "batch_size": 64, "precision": "bf16-mixed", "instruments": []}  # fit and watch take a list of instruments
    with pytest.raises(InvalidParameter, match="unknown instruments 'all'"):
        check_settings(instruments="all")
    with pytest.raises(InvalidParameter, match="invalid setting 'learning_rate'"):
        check_settings(learning_rate=0.1)
