"""``gdlab runs``, ``show``, ``plot``, ``gradflow`` and ``doctor``: the commands that read the run store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from gdlab.cli.common import (
    JsonFlag,
    StoreFlag,
    app,
    err,
    friendly,
    num,
    out,
    parse_figure_path,
    parsed,
    safe,
    status_text,
    to_json,
    wide,
)
from gdlab.cli.population import show_sweep
from gdlab.cli.stored import resolve
from gdlab.cli.stored import run_payload as run_payload  # gdlab runs' (in cli/stored.py: it imports no torch)
from gdlab.cli.stored import runs_table as runs_table
from gdlab.cli.train import print_doctor
from gdlab.errors import InvalidParameter, RunNotFound

RunArgument = typer.Argument(..., help="Run id, id prefix, name, or 'last'.")


@app.command()
@friendly
def show(
    run: str = typer.Argument(..., help="Run or sweep id, id prefix, name, or 'last'."),
    store: StoreFlag = "gdlab-runs",
    as_json: JsonFlag = False,
) -> None:
    """Show a run (config, plan, status, final metrics, findings) or a sweep (its table)."""
    from gdlab.store import Store

    db = Store(store, create=False)
    try:
        r, others = resolve(db, run)
    except RunNotFound:
        if not db.sweeps():
            raise
        try:
            show_sweep(db.get_sweep(run), as_json)
            return
        except RunNotFound as missing:
            if "ambiguous" in str(missing):
                raise
            raise RunNotFound(f"unknown run or sweep {run!r} in store '{store}': expected an id, id prefix or "
                              "name (see gdlab runs)") from None
    if as_json:
        print(to_json({"run_id": r.id, "name": r.name, "created": r.created, "status": r.status,
                       "config": r.config, "plan": r.plan, "final": r.final, "lr": r.lr, "seconds": r.seconds,
                       "steps": r.steps, "stop_reason": r.stop_reason, "error": r.error, "findings": r.findings,
                       "remedies": r.remedies, "same_name": others}))
        return
    if others:  # a name finds the newest run of that name: say so, and how to see the others
        err.print(f"[yellow]note:[/] {len(others) + 1} runs are named {safe(repr(run))}; this is the newest, "
                  f"{safe(r.id)}; the other{'s' if len(others) > 1 else ''}: {safe(', '.join(others))} (gdlab show "
                  "ID shows one)")
    print_run(r)


def print_run(r: Any) -> None:
    """A stored run: status, plan, config, final metrics, the doctor's findings, its files."""
    out.print(f"[bold]run[/] {safe(r.id)}" + (f" ({safe(r.name)})" if r.name else "")
              + f"   {status_text(r.status)}   {safe(r.created)}")
    if r.error:  # a stored error may be a traceback: its lines kept, its escapes and markup shown as text
        out.print(f"[red]error: {safe(r.error, newlines=True)}[/]")
    if r.stop_reason:
        out.print(f"stopped early: {safe(r.stop_reason)}")
    if r.plan:
        from gdlab.data import BatchPlan

        plan = BatchPlan(**{k: r.plan[k] for k in BatchPlan.__dataclass_fields__ if k in r.plan})
        out.print(f"[bold]plan[/]   {safe(plan.describe())}")
    out.print("[bold]config[/]")
    for key, value in r.config.items():
        if key == "lr_selection" and isinstance(value, dict):
            out.print(safe(f"  {'lr chosen':<17}{num(value.get('lr'))}: {value.get('reason', '')}"))
        elif value not in (None, {}, False):
            out.print(safe(f"  {key:<17}{value}"))
    out.print("[bold]final[/]")
    for key, value in (r.final or {}).items():
        out.print(safe(f"  {key:<17}{'-' if value is None else num(value)}"))
    if r.steps is not None:
        out.print(safe(f"  {'steps':<17}{r.steps}"))
    if r.seconds is not None:
        out.print(f"  {'seconds':<17}{r.seconds:.2f}")
    from gdlab.doctor import explain

    print_doctor(explain(r.findings, run_id=r.id, remedies=r.remedies, steps=r.steps), undiagnosed=undiagnosed(r))
    for label, path in (("checkpoint", r.checkpoint), ("plot", r.dir / "loss.png")):
        if path.exists():
            out.print(f"[bold]{label}[/] {safe(path)}")


def undiagnosed(r: Any) -> str | None:
    """Why the doctor never read a stored run with no findings (it did not finish, or trained with the doctor
    off), and where to read it; None for a run the doctor read at its end."""
    closed = r.status in ("finished", "stopped") and r.final is not None  # it reached its end (the doctor's turn)
    if closed and r.config.get("doctor") is not False:
        return None
    why = ("the run is still running" if r.status == "running" else "the run was trained with --no-doctor"
           if closed else f"the run {r.status} before its end")
    return f"not diagnosed: {why}; gdlab doctor {r.id} reads what it recorded"


@app.command()
@friendly
def plot(
    run: str = RunArgument,
    store: StoreFlag = "gdlab-runs",
    out_path: Optional[Path] = typer.Option(None, "--out", help="A .png, .pdf or .svg path [default: the run's "
                                            "folder/loss.png].", callback=parsed(parse_figure_path, "--out")),
    instruments: bool = typer.Option(False, "--instruments", help="The instruments' dashboard, with the findings "
                                     "marked at their steps [default path: the run's folder/instruments.png]."),
) -> None:
    """Plot a run's losses (per epoch and per step), or with --instruments the instruments' dashboard."""
    from gdlab.plots import plot_instruments, plot_losses
    from gdlab.store import Store

    s = Store(store, create=False)
    r = s.get(run)
    target = out_path or r.dir / ("instruments.png" if instruments else "loss.png")
    history = s.history(r.id)  # a damaged store is the store's error, not --out's
    try:
        if instruments:
            path = plot_instruments(history, target, findings=r.findings, title=f"run {r.id}")
        else:
            path = plot_losses(history, target, title=f"run {r.id} ({r.status})")
    except (OSError, ValueError) as e:
        raise InvalidParameter("--out", str(target), f"a writable .png path ({e})") from None
    out.print(safe(path))


@app.command()
@friendly
def gradflow(
    run: str = RunArgument,
    store: StoreFlag = "gdlab-runs",
    out_path: Optional[Path] = typer.Option(None, "--out", help="A .png, .pdf or .svg path [default: the run's "
                                            "folder/gradflow.png].", callback=parsed(parse_figure_path, "--out")),
) -> None:
    """Draw the gradient flow of a run: per-layer gradient norms over training, first layer to last."""
    from gdlab.plots import plot_gradflow
    from gdlab.store import Store

    s = Store(store, create=False)
    r = s.get(run)
    target = out_path or r.dir / "gradflow.png"
    history = s.history(r.id)  # a damaged store is the store's error, not --out's
    try:
        path = plot_gradflow(history, target, title=f"run {r.id}: gradient flow")
    except ValueError:
        raise InvalidParameter("run", r.id, "a run trained with instruments (--instruments cheap or more): this one "
                               "recorded no per-layer gradients") from None
    except OSError as e:
        raise InvalidParameter("--out", str(target), f"a writable .png path ({e})") from None
    out.print(safe(path))


def steps_read(history: Any) -> str:
    """How many steps a stored run's history covers, and how many of them the store merged into buckets."""
    steps = history.steps
    merged = max((sum(map(math.isfinite, v)) for k, v in steps.columns.items() if k.startswith("max:")), default=0)
    if not merged:
        return f"{len(steps)} steps"
    last, through = int(steps["step"][-1]), int(steps["step"][merged - 1])
    return f"{last} steps (the first {through} merged into {merged} rows of mean, min and max)"


@app.command("doctor")
@friendly
def doctor_command(
    run: str = RunArgument,
    store: StoreFlag = "gdlab-runs",
    as_json: JsonFlag = False,
) -> None:
    """Run the doctor's detectors again on a stored run and tell their story: root causes first, each with its
    evidence, its remedy and the consequences it explains."""
    from gdlab.doctor import diagnose, explain
    from gdlab.store import Store

    db = Store(store, create=False)
    r = db.get(run)
    history = db.history(r.id)
    meta = r.config.get("doctor_meta") or {}
    history.meta.update({"lr": r.config.get("lr"), "momentum": r.config.get("momentum"), **meta})
    findings = [f.to_dict() for f in diagnose(history)]
    story = explain(findings, run_id=r.id, remedies=r.remedies, steps=r.steps)
    if as_json:
        print(to_json({"run_id": r.id, "findings": findings, "diagnosis": story.to_dict(), "remedies": r.remedies}))
        return
    out.print(f"[bold]run[/] {safe(r.id)}" + (f" ({safe(r.name)})" if r.name else "")
              + f": {steps_read(history)}, {len(history.epochs)} epochs")
    print_doctor(story)


@app.command()
@friendly
def compare(
    refs: list[str] = typer.Argument(..., help="Two or more runs: ids, id prefixes, names, or 'last'."),
    store: StoreFlag = "gdlab-runs",
    as_json: JsonFlag = False,
    all_settings: bool = typer.Option(False, "--all", help="Every setting, not only those that differ."),
) -> None:
    """Runs side by side: settings and final metrics, the differences marked (*) and highlighted."""
    from gdlab.store import Store

    if len(refs) < 2:
        raise InvalidParameter("runs", " ".join(refs), "two or more runs to compare")
    db = Store(store, create=False)
    found = [db.get(ref) for ref in refs]
    settings = sorted({k for r in found for k in r.config if k not in ("doctor_meta",)})
    finals = sorted({k for r in found for k in (r.final or {})})
    rows: list[tuple[str, list[Any]]] = [("status", [r.status for r in found]), ("steps", [r.steps for r in found]),
            ("seconds", [round(r.seconds, 2) if r.seconds is not None else None for r in found])]
    config_rows = [(k, [r.config.get(k) for r in found]) for k in settings]
    final_rows = [(k, [(r.final or {}).get(k) for r in found]) for k in finals]

    def differ(values: list[Any]) -> bool:
        return any(v != values[0] for v in values[1:])

    if as_json:
        print(to_json({"runs": [r.id for r in found],
                       "settings": {k: v for k, v in config_rows},
                       "final": {k: v for k, v in final_rows},
                       "differ": sorted(k for k, v in (*config_rows, *final_rows, *rows) if differ(v))}))
        return
    table = Table(box=None, header_style="bold")
    table.add_column("")
    table.add_column("")
    for r in found:
        table.add_column(safe(r.id + (f" ({r.name})" if r.name else "")), justify="right")

    def cell(v: Any) -> str:
        return safe("-" if v is None else num(v) if isinstance(v, float) else v)

    def section(title: str, entries: list[tuple[str, list[Any]]], only_differences: bool) -> None:
        shown = [(k, v) for k, v in entries if differ(v) or not only_differences]
        table.add_row(f"[bold]{title}[/]", "", *[""] * len(found))
        if not shown:
            table.add_row("  (the same)", "", *[""] * len(found))
        for key, values in shown:
            mark = differ(values)
            table.add_row(f"  {safe(key)}", "*" if mark else "", *(cell(v) for v in values),
                          style="bold yellow" if mark else None)

    section("run", rows, False)
    section("settings", config_rows, not all_settings)
    section("final", final_rows, False)
    wide().print(table)
    same = sum(1 for _, v in config_rows if not differ(v))
    if not all_settings and same:
        out.print(f"{same} other settings are the same (--all shows them)")
