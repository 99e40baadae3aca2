"""What every ``gdlab`` command shares: the typer app and its consoles (from :mod:`~gdlab.cli.root`), the error
wrapper, the data and model flags of train, sweep, restarts and lr-find (declared once, parsed where declared),
value parsers and small printers.

A flag that needs parsing says so in its declaration (``callback=parsed(parse_int_list, "--hidden")``), so a
command body reads as: load, call the library, print. A parser raises gdlab's own errors; :func:`parsed` turns
them, like :func:`friendly` does for a command body, into one line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gdlab.cli.root import app as app  # re-exported: the command modules register their commands on it
from gdlab.cli.root import err as err
from gdlab.cli.root import out as out
from gdlab.cli.root import safe as safe  # the printers' one escaper, re-exported
from gdlab.cli.shared import JsonFlag as JsonFlag  # what needs no torch, re-exported (gdlab runs imports it alone)
from gdlab.cli.shared import StoreFlag as StoreFlag
from gdlab.cli.shared import fail as fail
from gdlab.cli.shared import friendly as friendly
from gdlab.cli.shared import num as num
from gdlab.cli.shared import status_text as status_text
from gdlab.cli.shared import to_json as to_json
from gdlab.cli.shared import wide as wide
from gdlab.config import HELP, Config, help_text
from gdlab.errors import GdlabError, InvalidParameter

STORE_HELP = help_text("store", default=False)
"""The store's help, for every command's ``--store`` (train shows its default too: ``HELP["store"]``): the reading
commands' flag, :data:`~gdlab.cli.shared.StoreFlag`, declared where it needs no torch."""


# -- errors ----------------------------------------------------------------------------------------------------


def parsed(parse: Callable[..., Any], *args: Any) -> Callable[[Any], Any]:
    """A typer option callback: the flag's value becomes ``parse(value, *args)`` (None stays None), and gdlab's
    errors are one line and exit code 2, as in a command body."""

    def callback(value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value, *args)
        except GdlabError as e:
            fail(e)

    return callback


# -- value parsers ---------------------------------------------------------------------------------------------


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"128,64"`` -> ``[128, 64]``: positive integers."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidParameter(flag, text, "comma-separated positive integers, e.g. 128,64") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidParameter(flag, text, "comma-separated positive integers, e.g. 128,64")
    return values


def parse_number(text: str, flag: str, expected: str = "a number, e.g. 0.01") -> float:
    """A float, or an error naming ``flag`` and what was ``expected``."""
    try:
        return float(text)
    except ValueError:
        raise InvalidParameter(flag, text, expected) from None


def parse_number_or_auto(text: str, flag: str, expected: str) -> float | str:
    """``"auto"`` as it is, else a number (a learning rate that may be chosen for the user)."""
    return text if text == "auto" else parse_number(text, flag, expected)


def parse_key_value(item: str) -> tuple[str, Any]:
    """``"condition=1000"`` -> ``("condition", 1000)``: the value an int, a float or else text."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InvalidParameter("--data-opt", item, "KEY=VALUE, e.g. condition=1000")
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    return key.strip(), value


def parse_data_options(items: Iterable[str]) -> list[tuple[str, Any]] | None:
    """The ``--data-opt KEY=VALUE`` flags as ``(key, value)`` pairs, or None when none was given (pairs, not a
    dict: typer keeps a repeated option's value a list; :func:`given_flags` makes the dict)."""
    return [parse_key_value(item) for item in items] or None


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
"""The figure files a command's ``--out`` may name (matplotlib writes each by its suffix)."""


def parse_figure_path(path: Path, flag: str, force: bool = False) -> Path:
    """A path matplotlib can write a figure to, and gdlab may write over (:func:`gdlab.guard.check_out`: never a
    store's own file or a folder; an existing file only if it is a figure of that kind, or with ``force``)."""
    from gdlab.guard import check_out

    return check_out(path, flag, FIGURE_SUFFIXES, force=force)


# -- the data and model flags of train, sweep, restarts and lr-find --------------------------------------------
# typer reads each flag's type from the annotation (the text on the command line); a callback's value is the
# parsed one (``--hidden 128,64`` arrives as [128, 64]). Each flag's help is its Config field's (config.HELP).

DataFlag = Annotated[Optional[str], typer.Option("--data", help=HELP["data"])]
TargetFlag = Annotated[Optional[str], typer.Option("--target", help=HELP["target"])]
TaskFlag = Annotated[Optional[str], typer.Option("--task", help=HELP["task"])]
ValFlag = Annotated[Optional[str], typer.Option("--val", help=HELP["val"])]
ValSplitFlag = Annotated[Optional[float], typer.Option("--val-split", help=HELP["val_split"])]
StandardizeFlag = Annotated[Optional[bool], typer.Option("--standardize/--no-standardize", help=HELP["standardize"])]
StandardizeTargetFlag = Annotated[Optional[bool], typer.Option("--standardize-target/--no-standardize-target",
                                                               help=HELP["standardize_target"])]
DataOptionsFlag = Annotated[Optional[list[str]], typer.Option(
    "--data-opt", metavar="KEY=VALUE", callback=parsed(parse_data_options),
    help=HELP["data_options"])]  # (key, value) pairs, or None
TrustStoreFlag = Annotated[bool, typer.Option(
    "--trust-store", help="Import and run the module:function a stored run names (its model or data): only for a "
    "store you trust.")]
ModelFlag = Annotated[Optional[str], typer.Option("--model", help=HELP["model"])]
HiddenFlag = Annotated[Optional[str], typer.Option(
    "--hidden", callback=parsed(parse_int_list, "--hidden"), help=HELP["hidden"])]  # a list[int], or None
ActivationFlag = Annotated[Optional[str], typer.Option("--activation", help=HELP["activation"])]
InitFlag = Annotated[Optional[str], typer.Option("--init", help=HELP["init"])]
LossFlag = Annotated[Optional[str], typer.Option("--loss", help=HELP["loss"])]
OptimizerFlag = Annotated[Optional[str], typer.Option("--optimizer", help=HELP["optimizer"])]
MomentumFlag = Annotated[Optional[float], typer.Option("--momentum", help=HELP["momentum"])]
Beta1Flag = Annotated[Optional[float], typer.Option("--beta1", help=HELP["beta1"])]
Beta2Flag = Annotated[Optional[float], typer.Option("--beta2", help=HELP["beta2"])]
EpsFlag = Annotated[Optional[float], typer.Option("--eps", help=HELP["eps"])]
WeightDecayFlag = Annotated[Optional[float], typer.Option("--weight-decay", help=HELP["weight_decay"])]
NesterovFlag = Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help=HELP["nesterov"])]
ClipNormFlag = Annotated[Optional[float], typer.Option("--clip-norm", help=HELP["clip_norm"])]
BatchSizeFlag = Annotated[Optional[str], typer.Option("--batch-size", help=HELP["batch_size"])]
DeviceFlag = Annotated[Optional[str], typer.Option("--device", help=HELP["device"])]

DATA_AND_MODEL = ("data", "target", "task", "val", "val_split", "standardize", "data_options", "model", "hidden",
                  "activation", "init", "loss")
"""The Config keys of the flags above that every training command takes."""

QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]


def given_flags(flags: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The Config values of the flags among ``keys`` that were given, from a command's ``locals()`` (each flag
    named as its Config key)."""
    given = {key: flags[key] for key in keys if flags[key] is not None}
    if "data_options" in given:
        given["data_options"] = dict(given["data_options"])
    return given


def config_from(flags: dict[str, Any], *keys: str) -> Config:
    """A Config from the flags that were given among the data and model ones and ``keys``."""
    return Config.from_dict(given_flags(flags, (*DATA_AND_MODEL, *keys)), source="option")


# -- small printers --------------------------------------------------------------------------------------------


