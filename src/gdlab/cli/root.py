"""The root of the ``gdlab`` command, light enough to answer ``gdlab --version`` and ``gdlab --help`` without
importing torch: the typer app and its consoles, ``--version``, and the table of commands, each loaded from its
module when it is run (or its own ``--help`` is asked for).

A command module registers its commands on :data:`app` when imported (``@app.command()``); :data:`COMMANDS` says
which module holds each command and its one-line summary for ``gdlab --help``, in the order listed there.
``tests/test_cli.py`` checks the table against the commands the modules register.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from gdlab import __version__
from gdlab.guard import printable

__all__ = ["COMMANDS", "app", "err", "load_all", "out", "safe"]

COMMANDS: dict[str, tuple[str, str]] = {  # command -> (its module in gdlab.cli, the first sentence of its docstring)
    "train": ("train", "Train a model (an MLP on digits by default) and record the run."),
    "sweep": ("population", "Train one member per point of a grid (learning rates x momenta x seeds) at once, as "
                            "one population."),
    "restarts": ("population", "Train from many random initial points at once: how many different minima does "
                               "training end in?"),
    "lr-find": ("population", "The learning-rate range test: raise the lr exponentially over one short run and "
                              "read the loss curve."),
    "runs": ("stored", "List stored runs."),  # cli/stored.py: no torch, so that it answers at once
    "show": ("runs", "Show a run (config, plan, status, final metrics, findings) or a sweep (its table)."),
    "plot": ("runs", "Plot a run's losses (per epoch and per step), or with --instruments the instruments' "
                     "dashboard."),
    "gradflow": ("runs", "Draw the gradient flow of a run: per-layer gradient norms over training, first layer to "
                         "last."),
    "doctor": ("runs", "Run the doctor's detectors again on a stored run and tell their story: root causes first."),
    "compare": ("runs", "Runs side by side: settings and final metrics, the differences marked (*) and highlighted."),
    "report": ("report", "Write a run, several runs or a sweep as one HTML page that opens offline: charts to hover "
                         "and zoom, the doctor's findings marked at their steps, the remedies applied; --all writes "
                         "an index of the store."),
    "predict": ("predict", "Predict with a stored run's model: one row per sample (class and probabilities, or "
                "values)."),
    "export": ("predict", "Export a stored run: its model as .safetensors (--model; load it with "
               "gdlab.models.load(path), which unpickles nothing), its per-step and per-epoch history, findings and "
               "remedies (--out, --format csv|json|parquet), or all of that as TensorBoard event files "
               "(--tensorboard)."),
    "datasets": ("listings", "List the built-in datasets and the data files gdlab reads."),
    "models": ("listings", "List the built-in models."),
    "optimizers": ("listings", "List the optimizers: what each is, its defaults, its update rule and the lr range "
                               "--lr auto searches."),
    "functions": ("listings", "List the 2-D test functions of gdlab lab, with their domains and global minima."),
    "lab": ("lab", "Walk optimizers over a 2-D test function: a contour plot of the paths, an animated GIF, and a "
                   "table."),
    "explain": ("lab", "Local and global gradients of every node of an expression (the backward pass), checked "
                       "against autograd."),
    "landscape": ("lab", "The loss landscape around a stored run's trained model: a line or a plane of "
                         "filter-normalised directions."),
}
MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))
"""The command modules, in the order of :data:`COMMANDS`."""


def load_all() -> None:
    """Import every command module (each registers its commands on :data:`app`)."""
    for module in MODULES:
        importlib.import_module(f"gdlab.cli.{module}")


class LazyGroup(TyperGroup):
    """The root group: lists the commands from :data:`COMMANDS` and imports a command's module only when that
    command is looked up to run (or for its own help)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            module = COMMANDS.get(cmd_name, (None, ""))[0]
            if module is not None:
                importlib.import_module(f"gdlab.cli.{module}")
            else:  # a command this table does not list yet (the table's test says so): look in every module
                load_all()
            self._add_registered()
        return self.commands.get(cmd_name)

    def _add_registered(self) -> None:
        for info in app.registered_commands:
            command = typer.main.get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                       rich_markup_mode=app.rich_markup_mode)
            if command.name and command.name not in self.commands:
                self.commands[command.name] = command
        # a command with subcommands (gdlab runs rm); typer's keywords differ between its versions
        wanted = inspect.signature(typer.main.get_group_from_info).parameters
        options: dict[str, Any] = {"pretty_exceptions_short": app.pretty_exceptions_short,
                                   "rich_markup_mode": app.rich_markup_mode,
                                   "suggest_commands": getattr(app, "suggest_commands", True)}
        for group_info in app.registered_groups:
            group = typer.main.get_group_from_info(group_info, **{k: v for k, v in options.items() if k in wanted})
            if group.name and group.name not in self.commands:
                self.commands[group.name] = group

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The commands' summaries as ``gdlab --help`` lists them, without importing a command's module."""
        listed = self.commands  # a loaded command speaks for itself; the others by their line in COMMANDS
        self.commands = {name: listed.get(name) or TyperCommand(name=name, help=COMMANDS[name][1])
                         for name in self.list_commands(ctx)}
        try:
            super().format_commands(ctx, formatter)
        finally:
            self.commands = listed


app = typer.Typer(
    name="gdlab",
    cls=LazyGroup,
    help="Train models by gradient descent, and see and fix what goes wrong in training.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True, emoji=False)  # a pipe gets whole lines, not rich's 80-column wrap
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def safe(text: object, *, newlines: bool = False) -> str:
    """``text`` from a store, a file, a config or a user, ready for these consoles (and a table's cells): every
    control character written as an escape (:func:`gdlab.guard.printable`; newlines too unless ``newlines``) and
    Rich markup escaped, so it prints as the characters it holds, inside markup of ours or alone. A last
    backslash is written ``\\x5c``: markup after it (``[/]``) would read it as an escape.

    Example:
        >>> safe("\\x1b]0;title\\x07[bold red]RED[/]")
        '\\\\x1b]0;title\\\\x07\\\\[bold red]RED\\\\[/]'
        >>> out.print(f"[bold]run[/] {safe('[link=http://x/]a[/link]')}")
        run [link=http://x/]a[/link]
    """
    shown = printable(text, newlines=newlines)
    if shown.endswith("\\"):
        shown = shown[:-1] + "\\x5c"
    return escape(shown)


def _version(value: bool) -> None:
    if value:
        out.print(f"gdlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Train models by gradient descent, and see and fix what goes wrong in training."""
