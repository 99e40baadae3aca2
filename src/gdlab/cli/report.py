"""``gdlab report``: a run, several runs or a sweep as one self-contained HTML page; ``--all``: an index of the
store, each run and sweep with its own page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gdlab.cli.common import StoreFlag, app, friendly, out, safe


@app.command()
@friendly
def report(
    runs: Optional[list[str]] = typer.Argument(None, metavar="RUN", help="Runs (ids, id prefixes, names, 'last'), "
                                               "or one sweep or restarts (its id or name)."),
    store: StoreFlag = "gdlab-runs",
    out_path: Optional[Path] = typer.Option(None, "--out", help="The HTML file [default: the run's folder/"
                                            "report.html for one run, else report.html]; with --all, the folder "
                                            "[default: <store>/report]."),
    every: bool = typer.Option(False, "--all", help="An index page of every run and sweep in the store, sortable, "
                               "each linked to its own page."),
    force: bool = typer.Option(False, "--force", help="Write over an existing .html file that is not a gdlab page "
                               "(never over the store's own files)."),
) -> None:
    """Write a run, several runs or a sweep as one HTML page that opens offline: charts to hover and zoom, the
    doctor's findings marked at their steps, the remedies applied; --all writes an index of the store."""
    from gdlab.reports import report as write_report

    path = write_report(list(runs or []) or None, out_path, store=store, all_runs=every, force=force)
    out.print(safe(path))
