"""``gdlab runs`` (the stored runs and sweeps) and ``gdlab runs rm``: the commands that list and delete runs, which
import no torch (only the store, :mod:`~gdlab.cli.shared` and the consoles), so that they answer at once.
``tests/test_cli.py`` runs ``gdlab runs`` in a new interpreter and checks that torch was not imported."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from gdlab.cli.root import app, out, safe
from gdlab.cli.shared import JsonFlag, StoreFlag, friendly, num, status_text, to_json, wide
from gdlab.errors import StoreError

__all__ = ["best_row", "ranked", "resolve", "run_payload", "runs_table", "sweeps_table"]

runs_app = typer.Typer(help="List stored runs (gdlab runs), or delete some (gdlab runs rm RUN...).",
                       invoke_without_command=True, no_args_is_help=False, add_completion=False,
                       rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(runs_app, name="runs")


@runs_app.callback()
@friendly
def runs(
    ctx: typer.Context,
    store: StoreFlag = "gdlab-runs",
    limit: int = typer.Option(20, help="Show at most this many runs, newest first."),
    as_json: JsonFlag = False,
) -> None:
    """List stored runs (and sweeps), newest first; gdlab runs rm RUN... deletes runs."""
    from gdlab.store import NoStore, Store

    if ctx.invoked_subcommand is not None:
        return
    try:
        db = Store(store, create=False)  # read only; a damaged store is an error, never an empty one
    except NoStore:
        if as_json:
            print(to_json({"runs": [], "sweeps": []}))
        else:
            out.print(f"no runs in {safe(store)} yet: start one with gdlab train")
        return
    listed = db.runs(limit=limit)
    stored_sweeps = db.sweeps(limit=limit)
    if as_json:
        print(to_json({"runs": [run_payload(r) for r in listed],
                       "sweeps": [{k: v for k, v in sw.items()} for sw in stored_sweeps]}))
        return
    if not listed and not stored_sweeps:
        out.print(f"no runs in {safe(store)} yet: start one with gdlab train")
        return
    if listed:
        wide().print(runs_table(listed))
    if stored_sweeps:
        out.print("[bold]sweeps and restarts[/]" if listed else "")
        wide().print(sweeps_table(db, stored_sweeps))


@runs_app.command("rm")
@friendly
def remove(
    refs: list[str] = typer.Argument(..., help="Runs to delete: ids, id prefixes or names (a name several runs "
                                     "share is refused: give their ids)."),
    store: StoreFlag = "gdlab-runs",
    force: bool = typer.Option(False, "--force", help="Delete a run marked running too (one whose process is "
                               "gone but could not be seen to be: killed in a container, on another machine)."),
) -> None:
    """Delete runs: their records and folders. A running run is refused (without --force); a run a live process
    holds is refused always; a name that several runs share is refused (give the id of the one to delete)."""
    from gdlab.store import Store

    db = Store(store, create=False, write=True)
    found = []
    for ref in refs:  # every name resolves (and every id is checked) before anything is deleted
        run, others = resolve(db, ref)
        if others:
            raise StoreError(f"run name {ref!r} is ambiguous: {len(others) + 1} runs have it ("
                             f"{', '.join([run.id, *others])}): give the id of the one to delete; nothing was deleted")
        found.append(run)
    running = [r for r in found if r.status == "running"]
    if running and not force:
        raise StoreError(f"run {running[0].id} is running: stop it first (or wait for it to finish), then delete "
                         "it; if no process runs it any more (killed in a container, on another machine), pass "
                         "--force; nothing was deleted")
    for r in {r.id: r for r in found}.values():
        db.delete_run(r.id, force=force)
        out.print(f"deleted run {safe(r.id)}" + (f" ({safe(r.name)})" if r.name else ""))


def resolve(db: Any, ref: str) -> tuple[Any, list[str]]:
    """The run ``ref`` names (:meth:`gdlab.store.Store.get`) and, when it was found by a name other runs share, their
    ids (newest first): the name picked the newest of them."""
    run = db.get(ref)
    by_name = ref == run.name and ref not in ("last", "latest") and not run.id.startswith(ref)
    return run, db.namesakes(run) if by_name else []


def run_payload(r: Any) -> dict[str, Any]:
    """A stored run as JSON (what gdlab show --json and gdlab runs --json print)."""
    return {"run_id": r.id, "name": r.name, "created": r.created, "status": r.status, "config": r.config,
            "plan": r.plan, "final": r.final, "lr": r.lr, "seconds": r.seconds, "steps": r.steps,
            "stop_reason": r.stop_reason, "error": r.error, "findings": r.findings, "remedies": r.remedies,
            "dir": str(r.dir)}


def runs_table(listed: list[Any]) -> Table:
    """The stored runs, one row each, newest first (every cell the store's text, escaped)."""
    table = Table(box=None, header_style="bold")
    for column in ("run", "name", "status", "created", "data", "model", "optimizer", "lr", "batch", "steps",
                   "train loss", "val loss", "val acc", "val r2", "time"):
        table.add_column(column, justify="right" if column in ("lr", "steps", "time") or "loss" in column
                         or "val" in column else "left")
    for r in listed:
        c, f = r.config, r.final or {}
        acc = f.get("val_accuracy")
        first = (safe(r.id), safe(r.name or ""), status_text(r.status))
        table.add_row(*first, *map(safe, (
            r.created, c.get("data", ""), c.get("model", ""), c.get("optimizer", ""), c.get("lr", ""),
            c.get("batch_size", ""), r.steps or "", num(f.get("train_loss")), num(f.get("val_loss")),
            f"{acc:.2%}" if acc is not None else "", num(f.get("val_r2")), f"{r.seconds:.1f}s" if r.seconds else "")))
    return table


def sweeps_table(db: Any, stored: list[dict[str, Any]]) -> Table:
    """The stored sweeps and restarts, one row each (for gdlab runs; every cell the store's text, escaped)."""
    table = Table(box=None, header_style="bold")
    for column in ("sweep", "name", "kind", "created", "members", "best", "val loss", "train loss", "time"):
        table.add_column(column, justify="right" if column in ("members", "val loss", "train loss", "time")
                         else "left")
    for sweep_row in stored:
        rows = db.get_sweep(sweep_row["id"])["rows"]
        best = best_row(rows)
        axes = [k for k in (sweep_row["config"].get("axes") or {}) if k != "seed"] or ["lr"]
        described = ", ".join(f"{k} {num(best[k])}" for k in axes if best and best.get(k) is not None)
        table.add_row(*map(safe, (sweep_row["id"], sweep_row["name"] or "", sweep_row["kind"], sweep_row["created"],
                                  sweep_row["members"], described, num(best.get("val_loss")) if best else "",
                                  num(best.get("train_loss")) if best else "",
                                  f"{sweep_row['seconds']:.1f}s" if sweep_row["seconds"] else "")))
    return table


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The member with the lowest final loss (validation, else training), or None when all diverged."""
    return next(iter(ranked(rows)), None)


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The members that trained, by final loss (validation, else training), lowest first; ties in grid order."""

    def score(row: dict[str, Any]) -> float:
        value = row.get("val_loss") if row.get("val_loss") is not None else row.get("train_loss")
        return float("inf") if row.get("diverged") or value is None else float(value)

    return sorted((r for r in rows if score(r) != float("inf")), key=score)
