"""``Config``: every knob of a training run, from CLI flags or a TOML file, checked with clear errors.

Precedence: the defaults below, then the TOML file (``--config FILE.toml``, flat keys as named here, plus an
optional ``[data_options]`` table), then flags given on the command line.

Each field says what it is once, in its metadata: its help (the ``gdlab train`` flag's, :data:`HELP`), whether that
help shows the default, and the :func:`gdlab.fit` parameter it becomes (:func:`fit_name`; ``via`` says what uses a
field that is no ``fit`` argument). :meth:`Config.fit_kwargs` is read from it. :func:`check_settings` is the one
check of every setting, for ``Config``, ``fit``, ``watch`` and the ``Doctor``.

Example:
    >>> config = Config.from_dict({"data": "moons", "hidden": [32, 32], "batch_size": "full"})
    >>> config.model, config.hidden, config.batch_size
    ('mlp', [32, 32], 'full')
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from gdlab.data import TASKS, parse_batch_size
from gdlab.errors import InvalidParameter, UnknownChoice, check_int, check_seed
from gdlab.optim import OPTIMIZERS, check_lr, check_momentum, schedules
from gdlab.store import DEFAULT_STORE, STORE_HELP
from gdlab.threads import check_threads

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "DEFAULT_EPOCHS", "HELP", "INSTRUMENT_LEVELS", "PRECISIONS", "REMEDY_MODES", "check_settings",
           "fit_name", "help_text", "resolve_precision"]

MAX_CONFIG_BYTES = 1_000_000
"""The largest settings file read (a TOML file of settings is a few hundred bytes)."""

DEFAULT_EPOCHS = 30
"""Epochs trained when a config gives neither ``epochs`` nor ``steps``."""

INSTRUMENT_LEVELS = ("none", "cheap", "default", "full")
"""What ``instruments`` takes by name (``gdlab.instruments.LEVELS``: ``default`` is cheap + periodic, ``full`` adds
expensive). Here, in the lowest layer, so that :func:`check_settings` can name them; the instruments import it."""

REMEDY_MODES = ("off", "suggest", "auto")
"""What ``remedy`` takes (``gdlab.doctor.REMEDY_MODES``): the doctor's findings carry no remedy, suggest one, or act
during the run. Here for the same reason; the doctor imports it."""


PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Training precisions, as Lightning names them: ``32`` (as the model is), ``bf16-mixed`` and ``16-mixed`` (the
forward pass and the loss under ``torch.autocast`` in that dtype, parameters, gradients and the update in the
model's own dtype; ``16-mixed`` also scales the loss against float16 underflow with a ``GradScaler``)."""


def resolve_precision(value: Any) -> str:
    """``precision`` checked: ``"32"`` (also ``32`` and ``"32-true"``), ``"bf16-mixed"`` or ``"16-mixed"``."""
    text = str(value).strip().lower()
    text = {"32-true": "32", "bf16": "bf16-mixed", "16": "16-mixed"}.get(text, text)
    if text not in PRECISIONS:
        raise UnknownChoice("precision", value, list(PRECISIONS))
    return text


def setting(default: Any, help: str, *, shown: bool = False, via: str | None = None, fit: str | None = None,
            option: bool = False) -> Any:
    """A :class:`Config` field that says what it is: ``help`` (the flag's help; ``shown``: followed by the default),
    the :func:`gdlab.fit` parameter it becomes (``fit``, by default the field's own name), or ``via``: what uses it
    instead (a field that is no ``fit`` argument). ``option``: one of the optimizer's options, passed only when set.
    A callable ``default`` is the field's default factory (a list, a dict)."""
    metadata = {"help": help, "shown": shown, "via": via, "fit": fit, "option": option}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """The settings of one ``gdlab train`` run. Defaults train an MLP on digits to above 97% accuracy."""

    # data
    data: str = setting("digits", "Built-in dataset (gdlab datasets), a .csv/.npz file, or module:function returning "
                        "a torch Dataset.", shown=True, via="experiment.load_data")
    target: str | None = setting(None, "Target column of a CSV file.", via="experiment.load_data")
    task: str | None = setting(None, "classification, regression or multilabel (inferred by default: 0/1 float "
                               "targets are multilabel).", via="experiment.load_data")
    val: str | None = setting(None, "Validation file, in the training file's format.", via="experiment.load_data")
    val_split: float | None = setting(None, "Hold out this fraction of a file for validation.",
                                      via="experiment.load_data")
    standardize: bool = setting(False, "Scale inputs to mean 0, std 1.", via="experiment.load_data")
    standardize_target: bool = setting(False, "Regression: train on targets scaled to mean 0, std 1; predictions, "
                                       "MAE and R^2 stay in the targets' units.")
    data_options: dict[str, Any] = setting(dict, "Option of a built-in dataset, e.g. condition=1000.",
                                           via="experiment.load_data")
    # model
    model: str = setting("mlp", "linear, logistic, mlp, cnn, or module:function.", shown=True,
                         via="experiment.build_model")
    hidden: list[int] = setting(lambda: [128], "Hidden sizes of mlp, comma-separated.", shown=True,
                                via="experiment.build_model")
    activation: str = setting("relu", "relu, tanh, sigmoid or leaky_relu.", shown=True, via="experiment.build_model")
    init: str = setting("default", "default, xavier, kaiming, normal or zeros.", via="experiment.build_model")
    # optimisation
    loss: str = setting("auto", "auto, mse, cross_entropy, l1, huber or bce.")
    optimizer: str = setting("momentum", f"{', '.join(OPTIMIZERS)}; gdlab optimizers describes them.", shown=True)
    lr: float | str = setting(0.1, "Learning rate, or auto (chosen by a short parallel sweep).", shown=True)
    lr_select: str = setting("sweep", "How --lr auto chooses: sweep or range-test.", shown=True)
    momentum: float | None = setting(None, "Momentum for sgd, momentum, nesterov, rmsprop.")
    beta1: float | None = setting(None, "Adam's / Lion's first beta.", option=True)
    beta2: float | None = setting(None, "Adam's / Lion's second beta.", option=True)
    eps: float | None = setting(None, "The epsilon of adagrad, rmsprop, adam, adamw.", option=True)
    weight_decay: float | None = setting(None, "Weight decay (decoupled for adamw and lion).", option=True)
    nesterov: bool = setting(False, "Nesterov momentum (sgd, momentum).", option=True)
    clip_norm: float | None = setting(None, "Clip the gradient's global norm to this first.", option=True)
    schedule: str | None = setting(None, "cosine, step:EVERY:GAMMA, exponential:GAMMA, one_cycle, plateau, "
                                   "constant, or warmup:N,<one of those>.")
    batch_size: int | str = setting(32, "full, stochastic, or a positive integer; for train --nproc, the global "
                                    "batch, split over the ranks.", shown=True)
    drop_last: bool = setting(False, "Drop a short last batch.")
    epochs: int | None = setting(None, f"Epochs ({DEFAULT_EPOCHS} when neither --epochs nor --steps is given).")
    steps: int | None = setting(None, "Steps (updates); stops at --epochs or --steps, first reached.")
    tol: float | None = setting(None, "Stop when the epoch train loss changes by less than this.")
    patience: int | None = setting(None, "Stop after this many epochs without a better val loss.")
    seed: int = setting(0, "Seeds initialisation, data order and dropout.", shown=True)
    device: str = setting("auto", "auto, cpu, cuda, mps.", shown=True)
    precision: str = setting("32", "32, bf16-mixed or 16-mixed (autocast; 16-mixed scales the loss too).",
                             shown=True)
    threads: int | str = setting("auto", "torch's CPU threads: auto (1 for a model too small to gain from more) or "
                                 "a count.", shown=True)  # see gdlab.threads
    # the doctor
    instruments: str = setting("default", "What to measure each step: none, cheap, default (cheap + periodic) or "
                               "full (+ sharpness and step size).")
    doctor: bool = setting(True, "Name what goes wrong, at the end.")
    remedy: str = setting("suggest", "off, suggest (the default) or auto: the doctor acts during the run.")
    restarts: int = setting(0, "With --remedy auto: if the run settles in a (perhaps local) minimum, train this "
                            "many restarts as one population and keep the best.")
    # the run store
    store: str = setting(DEFAULT_STORE, STORE_HELP, shown=True,
                         via="experiment.run, which opens the store and hands it to fit")
    name: str | None = setting(None, "A name for the run.")
    checkpoint_every: int | None = setting(None, "Steps between checkpoints (default: each epoch).")
    step_rows: int = setting(20_000, "The newest steps stored as recorded; older ones are merged into buckets of "
                             "mean, min and max. 0 keeps every step.", shown=True)
    tensorboard: str | None = setting(None, "A folder to write TensorBoard event files into as the run trains "
                                      "(needs pip install 'gdlab[tensorboard]').")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Config:
        """Build from a dict, rejecting unknown keys and values of the wrong type."""
        _check_types(values, source)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
        """Read a TOML file (UTF-8, at most :data:`MAX_CONFIG_BYTES`), then apply ``overrides`` (flags given on the
        command line). A file that cannot be read, decoded or parsed is one line naming it; so is a key, or a value
        of the wrong type or out of its range, in the file, even where a flag overrides it (the file is wrong)."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: a config named /dev/zero is not read for ever
            if len(raw) > MAX_CONFIG_BYTES:
                raise InvalidParameter("config", str(path), f"a TOML file of at most {MAX_CONFIG_BYTES:,} bytes")
            values = tomllib.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise InvalidParameter("config", str(path), "an existing TOML file") from None
        except OSError as e:
            raise InvalidParameter("config", str(path), f"a readable TOML file ({e.strerror})") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidParameter("config", str(path), f"valid TOML ({e})") from None
        except UnicodeDecodeError as e:  # TOML is UTF-8: a file in another encoding, or not text at all
            raise InvalidParameter("config", str(path), f"a UTF-8 TOML file (byte 0x{e.object[e.start]:02x} at "
                                   f"position {e.start} is not UTF-8)") from None
        _check_file(values, f"config {path.name}")  # a value a flag overrides is checked too: the file is wrong
        merged = {**values, **(overrides or {})}
        if isinstance(values.get("data_options"), dict) and overrides and "data_options" in overrides:
            merged["data_options"] = {**values["data_options"], **overrides["data_options"]}  # key by key
        return cls.from_dict(merged, source=f"config {path.name}")

    def with_changes(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and checked."""
        return Config.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (stored with the run, and read back by ``--resume``)."""
        return dataclasses.asdict(self)

    def optimizer_options(self) -> dict[str, Any]:
        """The optimizer options that were set (for ``optim.make`` / ``fit``): not None, and ``nesterov`` only when
        true."""
        values = {key: getattr(self, key) for key in OPTIMIZER_OPTIONS}
        return {key: value for key, value in values.items() if value is not None and value is not False}  # 0.0 too

    def fit_kwargs(self, *only: str) -> dict[str, Any]:
        """The keyword arguments of :func:`gdlab.fit` that this config sets: the one mapping from a config to a
        training run, read from the fields' metadata (each field's :func:`fit_name`; ``epochs``/``steps`` from
        :meth:`budget`; the optimizer's options only when set).

        Args:
            only: names of some of them, for a call that shares a few of ``fit``'s arguments (a sweep, the range
                test, a replay); an optimizer option that is not set is left out.

        Returns:
            ``{name: value}``, ready for ``fit(model, train, val=val, **config.fit_kwargs())``.

        Example:
            >>> Config(optimizer="adam", beta2=0.99, steps=10).fit_kwargs("optimizer", "epochs", "steps", "beta2")
            {'optimizer': 'adam', 'epochs': None, 'steps': 10, 'beta2': 0.99}
        """
        options = self.optimizer_options()
        kwargs = {name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if (name := fit_name(f)) is not None and not f.metadata["option"]}
        kwargs.update(zip(("epochs", "steps"), self.budget()))
        kwargs.update(options)
        unknown = [key for key in only if key not in kwargs and key not in OPTIMIZER_OPTIONS]
        if unknown:
            known = (*(k for k in kwargs if k not in OPTIMIZER_OPTIONS), *OPTIMIZER_OPTIONS)
            raise InvalidParameter("fit_kwargs name", unknown[0], f"one of {', '.join(known)}")
        return {key: kwargs[key] for key in only if key in kwargs} if only else kwargs

    def budget(self) -> tuple[int | None, int | None]:
        """``(epochs, steps)`` with the default of :data:`DEFAULT_EPOCHS` when neither is set."""
        if self.epochs is None and self.steps is None:
            return DEFAULT_EPOCHS, None
        return self.epochs, self.steps

    def validate(self) -> None:
        """Check every setting (:func:`check_settings`) and keep the values it normalises (``batch_size="64"`` ->
        64, ``precision="bf16"`` -> ``"bf16-mixed"``); raises :class:`InvalidParameter`."""
        for key, value in check_settings(**dataclasses.asdict(self)).items():
            setattr(self, key, value)


OPTIMIZER_OPTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["option"])
"""The optimizer's options a config carries, passed to ``fit`` (and ``optim.make``) only when set."""


def fit_name(setting: dataclasses.Field[Any] | str) -> str | None:
    """The :func:`gdlab.fit` parameter a :class:`Config` field (or its name) becomes, or None for a field that is no
    ``fit`` argument (its metadata's ``via`` says what uses it).

    Example:
        >>> fit_name("batch_size"), fit_name("hidden")
        ('batch_size', None)
    """
    f = FIELDS[setting] if isinstance(setting, str) else setting
    return None if f.metadata["via"] else (f.metadata["fit"] or f.name)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
"""Config's fields by name."""


def help_text(key: str, *, default: bool = True) -> str:
    """A setting's help, with its default (``[default: 32]``) where the field shows it and ``default`` is true."""
    f = FIELDS[key]
    text = f.metadata["help"]
    if not (default and f.metadata["shown"]):
        return str(text)
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[operator]
    shown = ",".join(map(str, value)) if isinstance(value, list) else value
    return f"{text} [default: {shown}]"


HELP = {key: help_text(key) for key in FIELDS}
"""Each setting's help as ``gdlab train --help`` shows it (the flags are declared with ``help=HELP[key]``)."""


# -- the one check of the settings -----------------------------------------------------------------------------


def _switch(key: str) -> Any:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidParameter(key, value, "True or False")
        return value
    return check


def _count(key: str, *, least: int = 1, expected: str | None = None, optional: bool = True) -> Any:
    def check(value: Any) -> int | None:
        return None if value is None and optional else check_int(value, key, least=least, expected=expected)
    return check


def _choice(key: str, choices: tuple[str, ...], *, or_list: bool = False) -> Any:
    def check(value: Any) -> Any:  # or_list: a list (of instruments) is taken as it is
        if (isinstance(value, str) or not or_list) and value not in choices:
            raise UnknownChoice(key, value, choices)
        return value
    return check


def _tol(value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                              not (math.isfinite(value) and value > 0)):
        raise InvalidParameter("tol", value, "a finite number > 0")
    return value


def _restarts(value: Any) -> int:
    if check_int(value, "restarts", least=0, expected="0 (none) or a count >= 2") == 1:
        raise InvalidParameter("restarts", value, "0 (none) or a count >= 2")
    return int(value)


def _lr_select(value: Any) -> str:
    if value not in ("sweep", "range-test"):
        raise InvalidParameter("lr_select", value, "sweep or range-test")
    return str(value)


def _task(value: Any) -> str | None:
    if value not in (None, *TASKS):
        raise InvalidParameter("task", value, '"classification", "regression" or "multilabel"')
    return value


def _data_options(value: Any) -> dict[str, Any]:
    if "seed" in value:
        raise InvalidParameter("data option", "seed", "no seed among the data options (give --seed instead)")
    return dict(value)


def _hidden(value: Any) -> list[int]:
    if any(h <= 0 for h in value):
        raise InvalidParameter("hidden", value, "positive layer sizes, e.g. 128,64")
    return list(value)


RULES: dict[str, Any] = {
    "batch_size": parse_batch_size,
    "lr": lambda value: value if value == "auto" else check_lr(value),
    "lr_select": _lr_select,
    "momentum": check_momentum,
    "precision": resolve_precision,
    "threads": check_threads,
    "seed": check_seed,
    "instruments": _choice("instruments", INSTRUMENT_LEVELS, or_list=True),  # fit, watch: or a list
    "remedy": _choice("remedy", REMEDY_MODES),
    "restarts": _restarts,
    "tol": _tol,
    "task": _task,
    "data_options": _data_options,
    "hidden": _hidden,
    **{key: _count(key) for key in ("epochs", "steps", "patience", "checkpoint_every")},
    "step_rows": _count("step_rows", least=0, expected="0 (keep every step) or a positive integer", optional=False),
    **{key: _count(key, optional=False) for key in ("log_every", "grad_norm_every")},  # fit's and watch's cadences
    **{key: _switch(key) for key in ("doctor", "standardize", "standardize_target", "drop_last", "nesterov",
                                     "ranks", "rollback")},
}
"""The check of each setting that needs one (a value in, the value normalised out, or :class:`InvalidParameter`):
Config's fields, and ``fit``'s and ``watch``'s own (``log_every``, ``grad_norm_every``, ``ranks``, ``rollback``)."""


def check_settings(**settings: Any) -> dict[str, Any]:
    """Check the settings given, each by its one rule (:data:`RULES`), then the ones that depend on each other
    (among those given): the one check that :class:`Config`, :func:`gdlab.fit`, :func:`gdlab.watch` and the
    ``Doctor`` share, so the same value gets the same one-line error everywhere.

    Returns:
        The settings, normalised (``batch_size="64"`` -> 64, ``precision="bf16"`` -> ``"bf16-mixed"``).

    Raises:
        InvalidParameter: naming the first setting refused, its value and what was expected.

    Example:
        >>> check_settings(batch_size="64", remedy="suggest")
        {'batch_size': 64, 'remedy': 'suggest'}
        >>> check_settings(restarts=4, remedy="suggest")
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid restarts 4: expected remedy auto with it (remedy="auto", --remedy \
auto): restarts are a remedy the doctor applies
    """
    unknown = [key for key in settings if key not in RULES and key not in FIELDS]
    if unknown:
        raise InvalidParameter("setting", unknown[0], f"one of {', '.join(sorted({*FIELDS, *RULES}))}")
    checked = {key: RULES[key](value) if key in RULES else value for key, value in settings.items()}
    remedy, lr = checked.get("remedy", "auto"), checked.get("lr", "auto")
    if checked.get("restarts") and remedy != "auto":
        raise InvalidParameter("restarts", checked["restarts"], 'remedy auto with it (remedy="auto", --remedy auto): '
                               "restarts are a remedy the doctor applies")
    if checked.get("rollback") and remedy != "auto":
        raise InvalidParameter("rollback", checked["rollback"], 'remedy="auto" (a rollback is a remedy the doctor '
                               "applies)")
    if checked.get("lr_select", "sweep") != "sweep" and lr != "auto":
        raise InvalidParameter("lr_select", checked["lr_select"], "lr auto with it (--lr auto): it says how the "
                               "learning rate is chosen")
    if isinstance(checked.get("schedule"), str):  # the form is checked now; lr and length when training
        schedules.parse(checked["schedule"], lr if isinstance(lr, float) else 0.1, 100)
    return checked


def _check_types(values: dict[str, Any], source: str) -> None:
    """Every key a Config field, every value of its field's type; else :class:`InvalidParameter` naming
    ``source``."""
    hints = typing.get_type_hints(Config)
    for key, value in values.items():
        if key not in hints:
            raise InvalidParameter(f"{source} key", key, f"one of {', '.join(hints)}")
        if not _is_instance(value, hints[key]):
            raise InvalidParameter(f"{source} {key}", value, _type_name(hints[key]))


def _check_file(values: dict[str, Any], source: str) -> None:
    """A settings file's own values, before flags override any: keys and types, then each value by its rule
    (:data:`RULES`; the rules between settings wait for the merged values), the refusal naming the file."""
    _check_types(values, source)
    for key, value in values.items():
        if key in RULES:
            try:
                RULES[key](value)
            except InvalidParameter as e:
                raise InvalidParameter(f"{source} {key}", value, str(e).partition(": expected ")[2] or str(e)) from None


def _is_instance(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "none"}
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        return "a list of integers"
    if origin is dict:
        return "a table"
    return names.get(hint, str(hint))
