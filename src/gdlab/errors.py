"""The one exception hierarchy of gdlab.

Every error a user can cause derives from :class:`GdlabError`. Its message is one line that names the
parameter, the value and what was expected, so the CLI can print it as is and exit with code 2.

Example:
    >>> try:
    ...     raise InvalidParameter("batch_size", 0, '"full", "stochastic" or a positive integer')
    ... except GdlabError as e:
    ...     print(e)
    invalid batch_size 0: expected "full", "stochastic" or a positive integer
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "GdlabError",
    "InvalidParameter",
    "UnknownChoice",
    "MissingParameter",
    "DataError",
    "ModelError",
    "StoreError",
    "RunNotFound",
    "MissingExtra",
    "check_int",
    "check_number",
    "check_seed",
    "shorten",
    "SEED_LIMIT",
]

SEED_LIMIT = 2**63
"""Seeds are integers in ``[0, SEED_LIMIT)``: what ``torch.manual_seed`` and ``torch.Generator`` accept."""


class GdlabError(Exception):
    """Base of every error gdlab raises on purpose; its message is one line."""


class InvalidParameter(GdlabError, ValueError):
    """A parameter has a value outside what it accepts.

    Args:
        param: the parameter's name as the user wrote it (``batch_size``, ``--lr``).
        value: the value received.
        expected: what would have been accepted.
        hint: an optional fix, appended after a semicolon.
    """

    def __init__(self, param: str, value: Any, expected: str, hint: str | None = None) -> None:
        self.param, self.value, self.expected = param, value, expected
        message = f"invalid {param} {_show(value)}: expected {expected}"
        super().__init__(message + (f"; {hint}" if hint else ""))


class UnknownChoice(InvalidParameter):
    """A name that is not among the registered choices (dataset, model, optimizer, loss...)."""

    def __init__(self, param: str, value: Any, choices: Iterable[str], extra: str = "") -> None:
        listed = ", ".join(choices)
        super().__init__(param, value, f"one of {listed}{extra}")
        self.message = f"unknown {param} {_show(value)}: expected one of {listed}{extra}"
        self.args = (self.message,)


class MissingParameter(InvalidParameter):
    """A parameter that is needed here was not given (``missing target: expected ...``)."""

    def __init__(self, param: str, expected: str) -> None:
        super().__init__(param, None, expected)
        self.args = (f"missing {param}: expected {expected}",)


class DataError(GdlabError, ValueError):
    """Data that cannot be used: a missing file or column, a non-numeric or non-finite cell, no rows."""


class ModelError(GdlabError, ValueError):
    """A model that cannot serve the data: wrong feature count, wrong output size, not an nn.Module."""


class StoreError(GdlabError, OSError):
    """The run store cannot be opened, written or read."""


class RunNotFound(StoreError):
    """No stored run matches the id, prefix or name given."""


class MissingExtra(GdlabError, ImportError):
    """An option needs a package that is not installed; the message names the ``pip install`` that adds it."""


def check_int(value: Any, param: str, *, least: int = 1, expected: str | None = None) -> int:
    """``value`` if it is an integer (not a bool) of at least ``least``, else :class:`InvalidParameter`.

    Example:
        >>> check_int(3, "steps")
        3
        >>> check_int(1.5, "steps")
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid steps 1.5: expected a positive integer
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        default = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise InvalidParameter(param, value, expected or default)
    return value


def check_number(value: Any, param: str, *, above: float | None = None, least: float | None = None,
                 below: float | None = None, expected: str | None = None) -> float:
    """``value`` as a float if it is a finite number (not a bool) ``> above``, ``>= least`` and ``< below``
    (each where given), else :class:`InvalidParameter`.

    Example:
        >>> check_number(0.5, "tol", above=0)
        0.5
        >>> check_number(float("nan"), "tol", above=0)
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid tol nan: expected a finite number > 0
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
        (above is None or value > above) and (least is None or value >= least) and (below is None or value < below)
    if not ok:
        bounds = [f"> {above:g}" if above is not None else "", f">= {least:g}" if least is not None else "",
                  f"< {below:g}" if below is not None else ""]
        raise InvalidParameter(param, value, expected or " ".join(["a finite number", *filter(None, bounds)]))
    return float(value)


def check_seed(value: Any, param: str = "seed") -> int:
    """``value`` if it is an integer seed torch accepts (``0 <= seed < 2**63``), else :class:`InvalidParameter`.

    Example:
        >>> check_seed(2**70)
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid seed 1180591620717411303424: expected an integer from 0 to 2**63 - 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise InvalidParameter(param, value, "an integer from 0 to 2**63 - 1")
    return value


def shorten(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis: user input echoed in a message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(shorten(value)) if len(value) > 80 or "\n" in value else repr(value)
    text = str(value)
    return shorten(text) if len(text) > 80 else text
