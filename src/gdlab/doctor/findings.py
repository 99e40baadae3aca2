"""What the doctor reports: a :class:`Finding` (a named problem with its numbers and remedy), a :class:`Remedy` (an
action taken during a run), and the registry of detectors by finding code.

Example:
    >>> from gdlab.records import History
    >>> h = History()
    >>> for s in range(1, 101): h.steps.append({"step": s, "loss": 2.3})
    >>> h.meta.update(lr=1e-6, task="classification", num_classes=10)
    >>> [f.code for f in diagnose(h)]
    ['not_learning']
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from gdlab.config import REMEDY_MODES
from gdlab.records import History

__all__ = ["Finding", "Remedy", "CODES", "SEVERITIES", "REMEDY_MODES", "Detector", "DETECTORS", "detector",
           "diagnose", "run_settings", "trace_activations"]

CODES = ("non_finite", "lr_too_high", "lr_too_low", "plateau", "local_minimum", "vanishing_gradients",
         "exploding_gradients", "dead_relu", "saturated_activations", "gradient_noise", "ill_conditioned_inputs",
         "overfitting", "not_learning", "labels_do_not_fit", "grads_not_zeroed",
         "optimizer_has_no_trainable_params", "grads_in_no_param_group", "training_in_eval_mode",
         "loss_given_probabilities", "target_shape_broadcasts", "same_batch_every_step", "labels_sorted",
         "update_changes_nothing", "schedule_ends_early", "validation_in_train_mode", "dropout_in_eval",
         "replicas_out_of_step")
SEVERITIES = ("info", "warning", "error")
# REMEDY_MODES: named in config, the lowest layer, which checks the settings (re-exported here)


@dataclass
class Finding:
    """A named problem: ``code`` (one of :data:`CODES`), ``severity`` (info, warning, error), ``step`` (where
    its evidence is), ``evidence`` (the numbers), a one-sentence ``explanation`` and a ``remedy`` (an action with its
    parameters, e.g. ``{"action": "set_lr", "lr": 0.008}``).

    Example:
        >>> Finding("plateau", "warning", 40, {"loss": 0.7}, "the loss stayed flat").to_dict()["code"]
        'plateau'
    """

    code: str
    severity: str
    step: int | None
    evidence: dict[str, Any]
    explanation: str
    remedy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain data (what the store keeps)."""
        return asdict(self)


@dataclass
class Remedy:
    """An action the doctor took during a run (``remedy="auto"``): at ``step``, ``action`` with ``params``, and
    the ``reason`` in one sentence.

    Example:
        >>> Remedy(120, "set_lr", {"lr": 0.03, "from_lr": 0.01}, "the steps were small").to_dict()["action"]
        'set_lr'
    """

    step: int
    action: str
    params: dict[str, Any]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The remedy as plain data (what the store keeps)."""
        return asdict(self)


_ACTIVATIONS = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "GELU": "gelu",
                "SiLU": "silu", "ELU": "elu", "SELU": "selu", "CELU": "celu", "PReLU": "prelu", "ReLU6": "relu6",
                "Softplus": "softplus", "Mish": "mish", "Hardtanh": "hardtanh", "Softsign": "softsign",
                "Hardswish": "hardswish", "Hardsigmoid": "hardsigmoid"}


_FUNCTIONS = frozenset(_ACTIVATIONS.values())
# what a model's traced forward pass called, by model (kept while the model lives): run_settings adds it to the
# activations its modules show, wherever it is asked (fit's start, the Doctor's end)
_TRACED: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()
# the dropout the traced pass still applied with every module in eval mode (its rates), by model: a forward that
# calls F.dropout(x, p) (whose default is training=True) or with training=True whatever self.training says
_DROPPED: weakref.WeakKeyDictionary[Any, tuple[float, ...]] = weakref.WeakKeyDictionary()
_DROPOUTS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                       "feature_dropout"})


class _Calls(TorchFunctionMode):
    """Records the names of the activation functions called under it (``F.relu``, ``torch.tanh``,
    ``x.sigmoid()``, the in-place ``relu_``...; an ``nn.ReLU`` calls ``F.relu``)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.dropped: list[float] = []  # the rates of the dropout calls that still drop (training=True)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "").rstrip("_")
        if name in _FUNCTIONS:
            self.seen.add(name)
        elif name in _DROPOUTS:  # F.dropout(input, p=0.5, training=True, inplace=False), torch.dropout(input, p, train)
            given = {**dict(zip(("input", "p", "training"), args)), **(kwargs or {})}
            training, rate = given.get("training", given.get("train", True)), given.get("p", 0.5)
            if training is True and isinstance(rate, (int, float)) and rate > 0:
                self.dropped.append(float(rate))
        return func(*args, **(kwargs or {}))


def trace_activations(model: Any, forward: Callable[[], Any]) -> list[str] | None:
    """The activations one forward pass calls, as functions or modules (``F.relu``, ``F.gelu``, ``torch.tanh``
    inside ``forward`` are seen), recorded with a ``torch.overrides.TorchFunctionMode`` while ``forward()`` runs:
    once, at a run's start, in eval mode and without gradients, the global RNGs restored after it (so the run is
    the run without it); kept for :func:`run_settings`. None when the pass raised (the run's own first step will
    say why).

    Example:
        >>> import torch.nn.functional as F
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return torch.tanh(F.relu(self.fc(x)))
        >>> net = Net()
        >>> trace_activations(net, lambda: net(torch.zeros(1, 2)))
        ['relu', 'tanh']
        >>> run_settings(net, None)["activations"]
        ['relu', 'tanh']
    """
    modules = list(model.modules()) if hasattr(model, "modules") else []
    training = [m.training for m in modules]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}) \
        if hasattr(model, "parameters") else []
    calls = _Calls()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for m in modules:
                m.training = False
            with calls:
                forward()
    except Exception:  # a forward that fails here fails at the first step too, and is named there
        return None
    finally:
        for m, mode in zip(modules, training):
            m.training = mode
    _TRACED[model] = frozenset(calls.seen)
    _DROPPED[model] = tuple(calls.dropped)
    return sorted(calls.seen)


def run_settings(model: Any, optimizer: Any) -> dict[str, Any]:
    """What a remedy must not prescribe again, read from the run itself: the model's activations (by the names of
    ``gdlab.models.ACTIVATIONS``, from its modules and, where :func:`trace_activations` traced its forward pass,
    the functions it called: ``F.relu`` is seen then), whether it was traced (``activations_traced``: without it an
    empty list means "unknown"), the dropout that traced pass still applied with every module in eval mode
    (``dropout_in_eval``, only where it did: a forward calling ``F.dropout(x, p)``, whose default is
    ``training=True``), and the optimizer's momentum now (None for an optimizer without one, such as Adam).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> run_settings(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        {'activations': ['relu'], 'activations_traced': False, 'momentum': 0.9}
    """
    out: dict[str, Any] = {}
    if model is not None and hasattr(model, "modules"):
        traced = _TRACED.get(model)
        out["activations"] = sorted({_ACTIVATIONS[type(m).__name__] for m in model.modules()
                                     if type(m).__name__ in _ACTIVATIONS} | (traced or frozenset()))
        out["activations_traced"] = traced is not None
        dropped = _DROPPED.get(model)
        if dropped:  # the traced pass, every module in eval mode, still dropped: dropout active in eval()
            out["dropout_in_eval"] = {"step": 1, "calls": len(dropped), "rates": sorted(set(dropped))}
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        momentum = groups[0].get("momentum")
        out["momentum"] = float(momentum) if isinstance(momentum, (int, float)) else None
    return out


Detector = Callable[[History], list[Finding]]
DETECTORS: dict[str, Detector] = {}


def detector(code: str) -> Callable[[Detector], Detector]:
    """Register a detector for ``code`` (one of :data:`CODES`): a pure function ``History -> list[Finding]``.

    Example:
        >>> detector("no_such_code")
        Traceback (most recent call last):
        ...
        ValueError: unknown finding code 'no_such_code'
    """
    if code not in CODES:
        raise ValueError(f"unknown finding code {code!r}")

    def register(fn: Detector) -> Detector:
        DETECTORS[code] = fn
        return fn

    return register


def diagnose(history: History, codes: tuple[str, ...] | None = None) -> list[Finding]:
    """Run the detectors on a run's columns.

    Args:
        history: what the run recorded (steps, epochs and meta).
        codes: the finding codes to look for (all when None).

    Returns:
        The findings, by severity (errors first), then step: every one found, those another explains too (the
        story of which explains which is :func:`gdlab.doctor.story.explain`'s, ``Result.diagnosis``).

    Example:
        >>> diagnose(History())
        []
    """
    found: list[Finding] = []
    for code, fn in DETECTORS.items():
        if codes is None or code in codes:
            found.extend(fn(history))
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(found, key=lambda f: (rank[f.severity], f.step or 0))
