"""What the ``gdlab`` commands share that needs no torch: the error wrapper (gdlab's errors as one line and exit code
2), the ``--store`` and ``--json`` flags and the small printers. :mod:`~gdlab.cli.common` re-exports them beside
the flags that read the settings (:mod:`gdlab.config`, which imports torch); a command that only reads the store
(``gdlab runs``) imports this module alone, and answers without loading torch.

Example:
    >>> num(0.123456), num(3), num(None), to_json({"loss": float("nan")})
    ('0.1235', '3', '', '{"loss": null}')
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from gdlab.cli.ranks import record_error
from gdlab.cli.root import err, out, safe
from gdlab.errors import GdlabError
from gdlab.store import STORE_HELP

__all__ = ["JsonFlag", "StoreFlag", "fail", "friendly", "num", "status_text", "to_json", "wide"]

F = TypeVar("F", bound=Callable[..., Any])

StoreFlag = Annotated[str, typer.Option("--store", help=STORE_HELP)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def wide() -> Console:
    """The console for tables: whole rows in a pipe or file rather than rich's 80-column squeeze."""
    return out if out.is_terminal else Console(highlight=False, width=240, emoji=False)


def fail(error: GdlabError) -> NoReturn:
    """Print ``error`` as one line on stderr and exit with code 2 (under ``--nproc``, also where the launching
    command reads a rank's failure)."""
    if not record_error(error):  # under --nproc, the launching command prints the first rank's
        err.print(f"error: {safe(error)}", soft_wrap=True)  # an error may echo what the user typed
    raise typer.Exit(2)


def friendly(command: F) -> F:
    """Turn gdlab's errors raised by a command into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except GdlabError as e:
            fail(e)

    return wrapper  # type: ignore[return-value]


def num(value: Any) -> str:
    """A number in 4 significant digits (an int as it is, nothing for None)."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_text(status: str) -> str:
    """A run's status, coloured (markup for a console; a status from a damaged store shows as it is)."""
    colour = {"finished": "green", "running": "cyan", "failed": "red", "stopped": "yellow"}.get(status, "white")
    return f"[{colour}]{safe(status)}[/]"


def to_json(value: Any) -> str:
    """Strict JSON: paths as strings, and null for NaN and infinities (a diverged run's losses)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return json.dumps(clean(value), allow_nan=False)
