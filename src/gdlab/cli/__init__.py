"""The ``gdlab`` command line (an edge: it parses, calls the library, prints), one module per task.

- :mod:`~gdlab.cli.root`: the typer app, its consoles, ``--version`` and the table of commands: a command's module
  is imported only when that command runs, so ``gdlab --version`` and ``gdlab --help`` do not import torch;
- :mod:`~gdlab.cli.common`: the error wrapper, the shared flags, parsers and printers;
- :mod:`~gdlab.cli.train`: ``train``;
- :mod:`~gdlab.cli.population`: ``sweep``, ``restarts``, ``lr-find``;
- :mod:`~gdlab.cli.stored`: ``runs``, ``runs rm`` (the store's listing: no torch; :mod:`~gdlab.cli.shared`
  holds what it shares with the other commands);
- :mod:`~gdlab.cli.runs`: ``show``, ``plot``, ``gradflow``, ``doctor``, ``compare`` (the run store);
- :mod:`~gdlab.cli.report`: ``report`` (HTML pages of runs, sweeps and the store's index);
- :mod:`~gdlab.cli.listings`: ``datasets``, ``models``, ``optimizers``, ``functions``;
- :mod:`~gdlab.cli.lab`: ``lab``, ``explain``, ``landscape``.

Every error a user can cause prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from gdlab.cli.root import app, err, safe

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: usage errors, like gdlab's own, are one line and exit code 2."""
    # typer 0.2x carries its own copy of click (click itself may be installed beside it, for other packages);
    # older typers use click itself: catch the usage errors of whichever is there
    usage_error = tuple(importlib.import_module(f"{where}.exceptions").UsageError
                        for where in ("typer._click", "click") if importlib.util.find_spec(where))

    try:
        code = app(standalone_mode=False)
    except usage_error as e:
        err.print(f"error: {safe(e.format_message())}")  # it may echo what the user typed
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        from gdlab.cli.ranks import quiet_rank

        if not quiet_rank():  # under --nproc, rank 0 says it once
            err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # a crash: under --nproc, the launching command shows the first rank's
        from gdlab.cli.ranks import record_error

        if record_error(e):  # its traceback is kept for the stored run, not printed
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)
