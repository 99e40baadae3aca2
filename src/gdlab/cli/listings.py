"""``gdlab datasets``, ``models``, ``optimizers`` and ``functions``: what gdlab has built in."""

from __future__ import annotations

from rich.table import Table

from gdlab.cli.common import app, out, wide


@app.command()
def datasets() -> None:
    """List the built-in datasets and the data files gdlab reads."""
    from gdlab.data.datasets import DATASETS

    table = Table("dataset", "description", "options", box=None, header_style="bold")
    for info in DATASETS.values():
        table.add_row(info.name, info.description,
                      ", ".join(f"{k}={v}" for k, v in info.options.items() if k != "seed"))
    wide().print(table)
    out.print("files: FILE.csv --target COLUMN, FILE.npz (arrays X, y), module:function returning a Dataset")


@app.command()
def models() -> None:
    """List the built-in models."""
    from gdlab.models import ACTIVATIONS, INITS, MODELS

    table = Table("model", "description", box=None, header_style="bold")
    for info in MODELS.values():
        table.add_row(info.name, info.description)
    wide().print(table)
    out.print(f"activations: {', '.join(ACTIVATIONS)}; inits: {', '.join(INITS)}; "
              "or module:function returning an nn.Module")


@app.command()
def optimizers() -> None:
    """List the optimizers: what each is, its defaults, its update rule and the lr range --lr auto searches."""
    from gdlab.optim import OPTIMIZERS

    table = Table("optimizer", "summary", "defaults", "update", "lr auto", box=None, header_style="bold")
    for info in OPTIMIZERS.values():
        table.add_row(info.name, info.summary, ", ".join(f"{k}={v}" for k, v in info.defaults.items()),
                      info.equation, "{:g}..{:g}".format(*info.lr_range))
    wide().print(table)


@app.command("functions")
def functions_command() -> None:
    """List the 2-D test functions of gdlab lab, with their domains and global minima."""
    from gdlab.lab.functions import FUNCTIONS

    table = Table(box=None, header_style="bold")
    for column in ("function", "domain", "global minima", "start", "what it shows"):
        table.add_column(column)
    for f in FUNCTIONS.values():
        (x0, x1), (y0, y1) = f.domain
        minima = "; ".join(f"({x:g}, {y:g})" for x, y in f.minima) or "none (unbounded below)"
        table.add_row(f.name, f"[{x0:g}, {x1:g}] x [{y0:g}, {y1:g}]", minima, f"({f.start[0]:g}, {f.start[1]:g})",
                      f.description)
    wide().print(table)
