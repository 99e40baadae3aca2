"""The ``gdlab`` command line (an edge: it parses, calls the library, prints), one module per task.

- :mod:`~gdlab.cli.common`: the typer app, consoles, the error wrapper, the shared flags, parsers and printers;
- :mod:`~gdlab.cli.train`: ``train``;
- :mod:`~gdlab.cli.population`: ``sweep``, ``restarts``, ``lr-find``;
- :mod:`~gdlab.cli.runs`: ``runs``, ``show``, ``plot``, ``gradflow``, ``doctor`` (the run store);
- :mod:`~gdlab.cli.predict`: ``predict``, ``export`` (a stored run's model put to use);
- :mod:`~gdlab.cli.listings`: ``datasets``, ``models``, ``optimizers``, ``functions``;
- :mod:`~gdlab.cli.lab`: ``lab``, ``explain``, ``landscape``.

Every error a user can cause prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from gdlab.cli.common import app, err

# importing a task's module registers its commands on app, in this order in gdlab --help
# isort: off
from gdlab.cli import train as train
from gdlab.cli import population as population
from gdlab.cli import runs as runs
from gdlab.cli import predict as predict
from gdlab.cli import listings as listings
from gdlab.cli import lab as lab
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: usage errors, like gdlab's own, are one line and exit code 2."""
    # typer 0.2x carries its own copy of click; older typers use click itself
    where = "click.exceptions" if importlib.util.find_spec("click") else "typer._click.exceptions"
    usage_error = importlib.import_module(where).UsageError

    try:
        code = app(standalone_mode=False)
    except usage_error as e:
        err.print(f"error: {e.format_message()}", markup=False)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
