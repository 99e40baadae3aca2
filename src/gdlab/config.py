"""``Config``: every knob of a training run, from CLI flags or a TOML file, checked with clear errors.

Precedence: the defaults below, then the TOML file (``--config FILE.toml``, flat keys as named here, plus an
optional ``[data_options]`` table), then flags given on the command line.

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
from gdlab.errors import InvalidParameter, UnknownChoice, check_seed
from gdlab.optim import check_lr, check_momentum, schedules
from gdlab.threads import check_threads

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "DEFAULT_EPOCHS", "PRECISIONS", "resolve_precision"]

MAX_CONFIG_BYTES = 1_000_000
"""The largest settings file read (a TOML file of settings is a few hundred bytes)."""

DEFAULT_EPOCHS = 30
"""Epochs trained when a config gives neither ``epochs`` nor ``steps``."""

OPTIMIZER_OPTIONS = ("beta1", "beta2", "eps", "weight_decay", "clip_norm", "nesterov")
"""The optimizer's options a config carries, passed to ``fit`` (and ``optim.make``) only when set."""


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


@dataclass
class Config:
    """The settings of one ``gdlab train`` run. Defaults train an MLP on digits to above 97% accuracy."""

    # data
    data: str = "digits"
    target: str | None = None
    task: str | None = None
    val: str | None = None
    val_split: float | None = None
    standardize: bool = False
    standardize_target: bool = False
    data_options: dict[str, Any] = field(default_factory=dict)
    # model
    model: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    init: str = "default"
    # optimisation
    loss: str = "auto"
    optimizer: str = "momentum"
    lr: float | str = 0.1
    lr_select: str = "sweep"
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    nesterov: bool = False
    clip_norm: float | None = None
    schedule: str | None = None
    batch_size: int | str = 32
    drop_last: bool = False
    epochs: int | None = None
    steps: int | None = None
    tol: float | None = None
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "32"
    threads: int | str = "auto"  # torch's CPU threads: auto (1 for a small model, see gdlab.threads) or a count
    # the doctor
    instruments: str = "default"
    doctor: bool = True
    remedy: str = "suggest"
    restarts: int = 0
    # the run store
    store: str = "gdlab-runs"
    name: str | None = None
    checkpoint_every: int | None = None
    step_rows: int = 20_000  # the newest steps kept as recorded; older ones merged into buckets; 0: keep every step
    tensorboard: str | None = None  # a folder for TensorBoard event files, written as the run trains

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Config:
        """Build from a dict, rejecting unknown keys and values of the wrong type."""
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in hints:
                raise InvalidParameter(f"{source} key", key, f"one of {', '.join(hints)}")
            if not _is_instance(value, hints[key]):
                raise InvalidParameter(f"{source} {key}", value, _type_name(hints[key]))
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
        """Read a TOML file (UTF-8, at most :data:`MAX_CONFIG_BYTES`), then apply ``overrides`` (flags given on the
        command line). A file that cannot be read, decoded or parsed is one line naming it."""
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
        """The optimizer options that were set (for ``optim.make`` / ``fit``)."""
        options = {k: getattr(self, k) for k in OPTIMIZER_OPTIONS if k != "nesterov"}
        return {**{k: v for k, v in options.items() if v is not None}, **({"nesterov": True} if self.nesterov
                                                                          else {})}

    def fit_kwargs(self, *only: str) -> dict[str, Any]:
        """The keyword arguments of :func:`gdlab.fit` that this config sets: the one mapping from a config to a
        training run (``epochs``/``steps`` from :meth:`budget`, the optimizer's options when set).

        Args:
            only: names of some of them, for a call that shares a few of ``fit``'s arguments (a sweep, the range
                test, a replay); an optimizer option that is not set is left out.

        Returns:
            ``{name: value}``, ready for ``fit(model, train, val=val, **config.fit_kwargs())``.

        Example:
            >>> Config(optimizer="adam", beta2=0.99, steps=10).fit_kwargs("optimizer", "epochs", "steps", "beta2")
            {'optimizer': 'adam', 'epochs': None, 'steps': 10, 'beta2': 0.99}
        """
        epochs, steps = self.budget()
        kwargs = {"loss": self.loss, "optimizer": self.optimizer, "lr": self.lr, "lr_select": self.lr_select,
                  "momentum": self.momentum, "schedule": self.schedule, "batch_size": self.batch_size,
                  "drop_last": self.drop_last, "epochs": epochs, "steps": steps, "tol": self.tol,
                  "patience": self.patience, "seed": self.seed, "device": self.device, "precision": self.precision,
                  "threads": self.threads,
                  "instruments": self.instruments, "doctor": self.doctor, "remedy": self.remedy,
                  "restarts": self.restarts, "checkpoint_every": self.checkpoint_every, "name": self.name,
                  "step_rows": self.step_rows, "tensorboard": self.tensorboard,
                  "standardize_target": self.standardize_target, **self.optimizer_options()}
        unknown = [key for key in only if key not in kwargs and key not in OPTIMIZER_OPTIONS]
        if unknown:
            raise InvalidParameter("fit_kwargs name", unknown[0], f"one of {', '.join((*kwargs, *OPTIMIZER_OPTIONS))}")
        return {key: kwargs[key] for key in only if key in kwargs} if only else kwargs

    def budget(self) -> tuple[int | None, int | None]:
        """``(epochs, steps)`` with the default of :data:`DEFAULT_EPOCHS` when neither is set."""
        if self.epochs is None and self.steps is None:
            return DEFAULT_EPOCHS, None
        return self.epochs, self.steps

    def validate(self) -> None:
        """Check ranges that types cannot express; raises :class:`InvalidParameter`."""
        self.batch_size = parse_batch_size(self.batch_size)
        if self.lr != "auto":
            self.lr = check_lr(self.lr)
        self.precision = resolve_precision(self.precision)
        self.threads = check_threads(self.threads)
        if self.instruments not in ("none", "cheap", "default", "full"):
            raise InvalidParameter("instruments", self.instruments, "none, cheap, default or full")
        if self.remedy not in ("off", "suggest", "auto"):
            raise InvalidParameter("remedy", self.remedy, "off, suggest or auto")
        if self.restarts < 0 or self.restarts == 1:
            raise InvalidParameter("restarts", self.restarts, "0 (none) or a count >= 2")
        if self.restarts and self.remedy != "auto":
            raise InvalidParameter("restarts", self.restarts, "remedy auto with it (--remedy auto): restarts are a "
                                   "remedy the doctor applies")
        if self.lr_select not in ("sweep", "range-test"):
            raise InvalidParameter("lr_select", self.lr_select, "sweep or range-test")
        if self.lr_select != "sweep" and self.lr != "auto":
            raise InvalidParameter("lr_select", self.lr_select, "lr auto with it (--lr auto): it says how the "
                                   "learning rate is chosen")
        self.momentum = check_momentum(self.momentum)
        check_seed(self.seed)
        for key in ("epochs", "steps", "patience", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise InvalidParameter(key, value, "a positive integer")
        if self.step_rows < 0:
            raise InvalidParameter("step_rows", self.step_rows, "0 (keep every step) or a positive integer")
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol > 0):
            raise InvalidParameter("tol", self.tol, "a finite number > 0")
        if self.task not in (None, *TASKS):
            raise InvalidParameter("task", self.task, '"classification", "regression" or "multilabel"')
        if "seed" in self.data_options:
            raise InvalidParameter("data option", "seed", "no seed among the data options (give --seed instead)")
        if self.schedule is not None:
            lr = self.lr if isinstance(self.lr, float) else 0.1
            schedules.parse(self.schedule, lr, 100)  # the form is checked now; lr and length when training
        if any(h <= 0 for h in self.hidden):
            raise InvalidParameter("hidden", self.hidden, "positive layer sizes, e.g. 128,64")


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
