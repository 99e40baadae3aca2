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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gdlab.records import History

__all__ = ["Finding", "Remedy", "CODES", "SEVERITIES", "REMEDY_MODES", "Detector", "DETECTORS", "detector",
           "diagnose", "run_settings"]

CODES = ("non_finite", "lr_too_high", "lr_too_low", "plateau", "local_minimum", "vanishing_gradients",
         "exploding_gradients", "dead_relu", "saturated_activations", "gradient_noise", "ill_conditioned_inputs",
         "overfitting", "not_learning")
SEVERITIES = ("info", "warning", "error")
REMEDY_MODES = ("off", "suggest", "auto")


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


def run_settings(model: Any, optimizer: Any) -> dict[str, Any]:
    """What a remedy must not prescribe again, read from the run itself: the model's activations (by the names of
    ``gdlab.models.ACTIVATIONS``, from its modules; a functional call such as ``F.relu`` is not seen) and the
    optimizer's momentum now (None for an optimizer without one, such as Adam).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> run_settings(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        {'activations': ['relu'], 'momentum': 0.9}
    """
    out: dict[str, Any] = {}
    if model is not None and hasattr(model, "modules"):
        out["activations"] = sorted({_ACTIVATIONS[type(m).__name__] for m in model.modules()
                                     if type(m).__name__ in _ACTIVATIONS})
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
        The findings, by severity (errors first), then step; one that another explains is left out.

    Example:
        >>> diagnose(History())
        []
    """
    found: list[Finding] = []
    for code, fn in DETECTORS.items():
        if codes is None or code in codes:
            found.extend(fn(history))
    codes_found = {f.code for f in found}
    # a finding that explains another: dead units make the steps small; a blown-up run is not "not learning"
    explained = {"lr_too_low"} if "dead_relu" in codes_found else set()
    if "non_finite" in codes_found or "lr_too_high" in codes_found:
        explained |= {"not_learning", "lr_too_low"}
    found = [f for f in found if f.code not in explained]
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(found, key=lambda f: (rank[f.severity], f.step or 0))
