"""``gdlab sweep``, ``gdlab restarts`` and ``gdlab lr-find``: the commands that train many members at once (or
probe learning rates), and the tables of stored sweeps.

They take ``gdlab train``'s data and model flags; the values a sweep varies take lists (``--lr 1e-4:1:16`` is 16
log-spaced values, ``--momentum 0,0.9`` two).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer
from rich.table import Table

from gdlab.cli import ranks
from gdlab.cli.common import (
    FIGURE_SUFFIXES,
    ActivationFlag,
    BatchSizeFlag,
    Beta1Flag,
    Beta2Flag,
    ClipNormFlag,
    DataFlag,
    DataOptionsFlag,
    DeviceFlag,
    EpsFlag,
    HiddenFlag,
    InitFlag,
    JsonFlag,
    LossFlag,
    ModelFlag,
    MomentumFlag,
    NesterovFlag,
    OptimizerFlag,
    QuietFlag,
    StandardizeFlag,
    StoreFlag,
    TargetFlag,
    TaskFlag,
    ValFlag,
    ValSplitFlag,
    WeightDecayFlag,
    app,
    config_from,
    err,
    friendly,
    given_flags,
    num,
    out,
    parsed,
    safe,
    to_json,
    wide,
)
from gdlab.cli.stored import best_row, ranked  # the sweeps' ranking, beside the store's listing: no torch
from gdlab.config import Config
from gdlab.errors import InvalidParameter
from gdlab.guard import check_out
from gdlab.optim import OPTIMIZERS
from gdlab.population.run import MAX_MEMBERS


def parse_grid_values(text: str, flag: str) -> float | list[float]:
    """One value, or the list a grid spans: ``a:b:n`` (n log-spaced values) or ``a,b,c``."""
    from gdlab.sweeps import parse_values

    values = parse_values(text, flag)
    return values[0] if len(values) == 1 else values


def parse_seeds(text: str) -> list[int]:
    """``"4"`` is seeds 0..3; ``"0,5,9"`` those seeds."""
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise InvalidParameter("--seeds", text, "a count (e.g. 4) or a comma-separated list of seeds") from None
        if not 1 <= count <= MAX_MEMBERS:
            raise InvalidParameter("--seeds", text, f"a count from 1 to {MAX_MEMBERS:,} (the most members of one "
                                   "population), or a comma-separated list of seeds")
        return list(range(count))
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidParameter("--seeds", text, "a count (e.g. 4) or a comma-separated list of seeds") from None


def parse_restarts(count: int) -> int:
    """A number of restarts: two at least, to compare."""
    if count < 2:
        raise InvalidParameter("--seeds", count, "at least 2 restarts")
    return count


def prepare(settings: Config) -> tuple[Any, Any, Any]:
    """``(model_fn, train, val)`` for the settings: the model built anew for each member, after its seed."""
    from gdlab.experiment import load_data, model_factory

    train, val = load_data(settings)
    return model_factory(settings, train), train, val


EpochsFlag = Annotated[Optional[int], typer.Option(
    "--epochs", help="Epochs per member (30 when neither --epochs nor --steps is given).")]
StepsFlag = Annotated[Optional[int], typer.Option("--steps", help="Steps per member.")]
DataSeedFlag = Annotated[Optional[int], typer.Option(
    "--seed", help="Seed of the data (built-in datasets, validation splits); each member's own seed comes from "
    "--seeds. [default: 0]")]
NameFlag = Annotated[Optional[str], typer.Option("--name", help="A name for the stored sweep.")]


TABLE_ROWS = 20
"""A sweep of at most this many members prints every row; a larger one its :data:`BEST_ROWS` best."""
BEST_ROWS = 10
"""The rows a large sweep's table prints: its best members, best first."""


def grid_option(default: str | None, flag: str, help: str) -> Any:
    """A flag whose values a sweep spans: ``float | list[float]`` once parsed."""
    return typer.Option(default, flag, help=help, callback=parsed(parse_grid_values, flag))


@app.command()
@friendly
def sweep(
    data: DataFlag = None, target: TargetFlag = None, task: TaskFlag = None,
    val: ValFlag = None, val_split: ValSplitFlag = None, standardize: StandardizeFlag = None,
    data_options: DataOptionsFlag = None, model: ModelFlag = None, hidden: HiddenFlag = None,
    activation: ActivationFlag = None, init: InitFlag = None, loss: LossFlag = None,
    optimizer: str = typer.Option("momentum", help=f"{', '.join(OPTIMIZERS)}; gdlab optimizers describes them."),
    lr: str = grid_option("1e-4:1:9", "--lr", "Learning rates: a:b:n (n log-spaced values), a list, or one."),
    momentum: Optional[str] = grid_option(None, "--momentum", "Momentum values, e.g. 0,0.9 (a second axis)."),
    beta1: Optional[str] = grid_option(None, "--beta1", "Values of adam's beta1."),
    beta2: Optional[str] = grid_option(None, "--beta2", "Values of adam's beta2."),
    weight_decay: Optional[str] = grid_option(None, "--weight-decay", "Values of the weight decay."),
    seeds: str = typer.Option("1", help="A count of seeds (0..n-1) or a comma-separated list.",
                              callback=parsed(parse_seeds)),
    seed: DataSeedFlag = None,
    shared_order: bool = typer.Option(False, "--shared-order", help="Every member sees the same batches."),
    batch_size: BatchSizeFlag = None, epochs: EpochsFlag = None, steps: StepsFlag = None,
    device: DeviceFlag = None, store: StoreFlag = "gdlab-runs", name: NameFlag = None,
    quiet: QuietFlag = False, as_json: JsonFlag = False,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the sweep's plot into the store."),
    nproc: Optional[str] = typer.Option(None, help="Spread the members over this many processes on this machine "
                                        "(launched through torch.distributed.run), each training its share as one "
                                        "population.", callback=parsed(ranks.parse_nproc)),
    every: bool = typer.Option(False, "--all", help=f"Print every member's row (a sweep of more than {TABLE_ROWS} "
                               f"members prints its {BEST_ROWS} best; --json holds them all)."),
) -> None:
    """Train one member per point of a grid (learning rates x momenta x seeds) at once, as one population."""
    from gdlab.store import Store
    from gdlab.sweeps import sweep as run_sweep

    rank = ranks.launched_rank()
    if nproc is not None and int(nproc) > 1 and rank is None:  # this process launches the ranks, and waits
        ranks.launch(int(nproc), "sweep")
    if rank:  # a rank other than 0 trains its share and says nothing
        quiet, as_json, plot = True, False, False
    settings = config_from(locals(), "optimizer", "batch_size", "epochs", "steps", "device", "store", "seed")
    grid: dict[str, Any] = {"lr": lr, "momentum": momentum, "beta1": beta1, "beta2": beta2,
                            "weight_decay": weight_decay}
    model_fn, train_data, val_data = prepare(settings)
    db = Store(store) if not rank else None
    result = run_sweep(model_fn, train_data, val=val_data, seeds=cast(list[int], seeds), shared_order=shared_order,
                       progress=not quiet, store=db, name=name, workers=_workers(rank),
                       config={**settings.to_dict(), "grid": grid, "seeds": seeds},
                       **settings.fit_kwargs("optimizer", "batch_size", "epochs", "steps", "loss", "device"),
                       **{k: v for k, v in grid.items() if v is not None})
    path = None
    if plot and db is not None:
        from gdlab.plots import plot_sweep

        path = plot_sweep(result, db.root / str(result.sweep_id) / "sweep.png")
    trained = [r for r in result.table if not r["diverged"]]
    best = result.best() if trained else None
    if as_json:
        print(to_json({"sweep_id": result.sweep_id, "axes": result.axes, "best": best, "table": result.table,
                       "vectorized": result.population.vectorized, "seconds": result.population.seconds,
                       "plot": str(path) if path else None}))
    elif not quiet:
        print_sweep(result, best, path, every)


def _workers(rank: int | None) -> int:
    """The ranks a population is spread over: torchrun's ``WORLD_SIZE`` in a launched rank, else 1."""
    return int(os.environ["WORLD_SIZE"]) if rank is not None else 1


def print_sweep(result: Any, best: dict[str, Any] | None, path: Path | None, every: bool = False) -> None:
    """A sweep's table (its best rows, or ``every`` one), how it trained, and its best member."""
    print_table(result.table, best["member"] if best else -1, every=every,
                hint="--all prints every member, --json gives them all")
    pop = result.population
    how = "as one population" if pop.vectorized else f"one by one ({safe(pop.notice)})"
    out.print(f"[bold]{len(pop)} member{'s' if len(pop) != 1 else ''}[/] trained {how} in {pop.seconds:.1f} s; "
              f"{sum(pop.diverged)} diverged")
    if best is None:
        err.print("[yellow]every member diverged:[/] try smaller learning rates")
    else:
        out.print(f"[bold]best[/]  member {safe(best['member'])}: " + safe(", ".join(
            f"{k} {num(best[k])}" for k in (*result.axes, "val_loss", "train_loss") if best.get(k) is not None)))
    out.print(f"[bold]sweep[/] {safe(result.sweep_id)}")
    if path:
        out.print(f"[bold]plot[/]  {safe(path)}")


def print_table(rows: list[dict[str, Any]], best: int, *, every: bool = False, hint: str = "") -> None:
    """The members of a sweep, one row each, the best in bold green (headers and cells escaped: a stored sweep's
    rows are the store's text). More than :data:`TABLE_ROWS` members, unless ``every``: the :data:`BEST_ROWS`
    best, best first, then a line saying how many are hidden and ``hint`` (how to see them all)."""
    shown = rows if every or len(rows) <= TABLE_ROWS else ranked(rows)[:BEST_ROWS] or rows[:BEST_ROWS]
    table = Table(box=None, header_style="bold")
    tail = ("train_loss", "val_loss", "val_mae", "val_r2", "val_subset_accuracy", "metric", "diverged")
    keys = [k for k in rows[0] if k not in ("curve", "member", "seed", *tail)]
    columns = [k for k in ("member", "seed", *keys, *tail) if any(r.get(k) is not None for r in rows)]
    for column in columns:
        header = {"metric": "val acc", "val_subset_accuracy": "val exact"}.get(column, column.replace("_", " "))
        table.add_column(safe(header), justify="left" if column == "diverged" else "right")
    for row in shown:
        cells = []
        for column in columns:
            v = row.get(column)
            cells.append("yes" if v is True else "" if v is False or v is None else
                         f"{v:.2%}" if column in ("metric", "val_subset_accuracy") else num(v) if isinstance(v, float)
                         else v)
        table.add_row(*map(safe, cells), style="bold green" if row["member"] == best else None)
    wide().print(table)
    if len(shown) < len(rows):
        diverged = sum(1 for r in rows if r.get("diverged"))
        by = "validation" if any(r.get("val_loss") is not None for r in rows) else "training"
        which = f"the {len(shown)} best" if best >= 0 else f"the first {len(shown)}"
        out.print(f"{which} of {len(rows)} members (by final {by} loss); {len(rows) - len(shown)} more hidden"
                  + (f", {diverged} of them diverged" if diverged else "") + (f": {safe(hint)}" if hint else ""))


@app.command()
@friendly
def restarts(
    data: DataFlag = None, target: TargetFlag = None, task: TaskFlag = None,
    val: ValFlag = None, val_split: ValSplitFlag = None, standardize: StandardizeFlag = None,
    data_options: DataOptionsFlag = None, model: ModelFlag = None, hidden: HiddenFlag = None,
    activation: ActivationFlag = None, init: InitFlag = None, loss: LossFlag = None,
    optimizer: OptimizerFlag = None,
    lr: float = typer.Option(0.1, help="Learning rate (one value: restarts vary the initial point)."),
    momentum: Optional[float] = typer.Option(None, help="Momentum."),
    seeds: int = typer.Option(16, help="How many random initial points.", callback=parsed(parse_restarts)),
    seed: DataSeedFlag = None,
    tol: float = typer.Option(0.05, help="Tolerance for 'as good as the best' (relative loss) and for one end "
                              "point (the distance in --space)."),
    space: str = typer.Option("function", help="Where end points are compared: function (predictions on "
                              "held-out inputs) or parameters (relative distance of the weights)."),
    batch_size: BatchSizeFlag = None, epochs: EpochsFlag = None, steps: StepsFlag = None,
    device: DeviceFlag = None, store: StoreFlag = "gdlab-runs",
    name: Optional[str] = typer.Option(None, help="A name for the stored restarts."),
    quiet: QuietFlag = False, as_json: JsonFlag = False,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the distribution plot into the store."),
    nproc: Optional[str] = typer.Option(None, help="Spread the restarts over this many processes on this machine "
                                        "(launched through torch.distributed.run).",
                                        callback=parsed(ranks.parse_nproc)),
) -> None:
    """Train from many random initial points at once: how many different minima does training end in?"""
    from gdlab.store import Store
    from gdlab.sweeps import restarts as run_restarts

    rank = ranks.launched_rank()
    if nproc is not None and int(nproc) > 1 and rank is None:  # this process launches the ranks, and waits
        ranks.launch(int(nproc), "restarts")
    if rank:  # a rank other than 0 trains its share and says nothing
        quiet, as_json, plot = True, False, False

    settings = config_from(locals(), "optimizer", "lr", "momentum", "batch_size", "epochs", "steps", "device",
                           "store", "seed")
    model_fn, train_data, val_data = prepare(settings)
    db = Store(store) if not rank else None
    result = run_restarts(model_fn, train_data, seeds=seeds, tol=tol, space=space, val=val_data,
                          progress=not quiet, store=db, name=name, workers=_workers(rank),
                          **settings.fit_kwargs("optimizer", "lr", "momentum", "batch_size", "epochs", "steps", "loss",
                                                "device"))
    path = None
    if plot and db is not None:
        from gdlab.plots import plot_restarts

        path = plot_restarts(result, db.root / str(result.restarts_id) / "restarts.png")
    summary = result.summary()
    if as_json:
        print(to_json({"restarts_id": result.restarts_id, **summary, "losses": result.losses,
                       "clusters": result.clusters, "plot": str(path) if path else None}))
    elif not quiet:
        print_restarts(result, summary, tol, "validation" if val_data is not None else "training", path)


def print_restarts(result: Any, summary: dict[str, Any], tol: float, what: str, path: Path | None) -> None:
    """How many end points the restarts found, and the losses of each."""
    out.print(f"[bold]{summary['restarts']} restarts[/], final {what} loss: best {num(result.best)}, "
              f"median {num(result.median)}, worst {num(result.worst)} (spread {num(result.spread)})")
    out.print(f"[bold]{result.distinct} distinct end point{'s' if result.distinct != 1 else ''}[/] in "
              f"{safe(result.space)} space (one end point: {safe(result.distance)}); {result.within_tol:.0%} of "
              f"restarts end within {tol:.0%} of the best loss"
              + (f"; {summary['diverged']} diverged" if summary["diverged"] else ""))
    sizes: dict[int, list[float]] = {}
    for c, v in zip(result.clusters, result.losses):
        if c >= 0:
            sizes.setdefault(c, []).append(v)
    for c, values in sorted(sizes.items()):
        out.print(f"  end point {c + 1}: {len(values)} restart{'s' if len(values) != 1 else ''}, "
                  f"loss {num(min(values))} to {num(max(values))}")
    out.print(f"[bold]stored[/] {safe(result.restarts_id)}")
    if path:
        out.print(f"[bold]plot[/]   {safe(path)}")


@app.command("lr-find")
@friendly
def lr_find(
    data: DataFlag = None, target: TargetFlag = None, task: TaskFlag = None,
    val: ValFlag = None, val_split: ValSplitFlag = None, standardize: StandardizeFlag = None,
    data_options: DataOptionsFlag = None, model: ModelFlag = None, hidden: HiddenFlag = None,
    activation: ActivationFlag = None, init: InitFlag = None, loss: LossFlag = None,
    optimizer: OptimizerFlag = None,
    momentum: MomentumFlag = None,
    beta1: Beta1Flag = None,
    beta2: Beta2Flag = None,
    eps: EpsFlag = None,
    weight_decay: WeightDecayFlag = None,
    nesterov: NesterovFlag = None,
    clip_norm: ClipNormFlag = None,
    start_lr: float = typer.Option(1e-7, help="The first learning rate of the ramp."),
    end_lr: float = typer.Option(10.0, help="The last learning rate of the ramp."),
    num_iter: int = typer.Option(100, help="Steps of the ramp."),
    batch_size: BatchSizeFlag = None, seed: Optional[int] = typer.Option(None, help="Seed. [default: 0]"),
    device: DeviceFlag = None,
    store: Optional[str] = typer.Option(None, help="Run store folder, where the plot goes. [default: gdlab-runs]"),
    config: Optional[Path] = typer.Option(None, help="TOML file of gdlab train's settings (its optimizer and "
                                          "options, data, model); flags override it."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="PNG path (or .pdf, .svg) [default: in the store "
                                            "folder]."),
    force: bool = typer.Option(False, "--force", help="Write over an existing --out file of another kind."),
    quiet: QuietFlag = False, as_json: JsonFlag = False,
) -> None:
    """The learning-rate range test: raise the lr exponentially over one short run and read the loss curve.

    It uses the optimizer gdlab train would use (momentum by default, or --optimizer and its options, or those
    of --config), so its suggestions fit the run."""
    import torch

    from gdlab.config import OPTIMIZER_OPTIONS
    from gdlab.lr_select import lr_find as run_lr_find

    if out_path is not None:
        check_out(out_path, "--out", FIGURE_SUFFIXES, force=force)  # before any work
    given = given_flags(locals(), (*LR_FIND_FLAGS, *OPTIMIZER_OPTIONS))
    settings = Config.from_toml(config, given) if config else Config.from_dict(given, source="option")
    model_fn, train_data, _ = prepare(settings)
    torch.manual_seed(settings.seed)
    found = run_lr_find(model_fn(), train_data, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter,
                        progress=not quiet, **settings.fit_kwargs("optimizer", "batch_size", "loss", "seed", "device",
                                                                  "momentum", *OPTIMIZER_OPTIONS))
    path = out_path or Path(settings.store) / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        found.plot(path)
    except OSError as e:
        raise InvalidParameter("--out", str(path), f"a writable figure path ({e.strerror or e})") from None
    options = {k: v for k, v in found.options.items() if k != "lr"}
    if as_json:
        print(to_json({"optimizer": found.optimizer, "optimizer_options": options, "suggestions": found.suggestions,
                       "warnings": found.warnings, "stopped": found.stopped, "lrs": found.lrs, "losses": found.losses,
                       "smoothed": found.smoothed, "plot": str(path)}))
    elif not quiet:
        described = ", ".join(f"{k} {num(v) if isinstance(v, float) else v}" for k, v in options.items())
        out.print(f"[bold]range test[/] for optimizer {safe(found.optimizer)}"
                  + (f" ({safe(described)})" if described else "")
                  + f": {len(found.lrs)} steps from lr {start_lr:g}: {safe(found.stopped)}")
        for key, value in found.suggestions.items():
            out.print(f"  {key:9} lr {value:.3g}")
        if "valley" in found.suggestions:
            out.print(f"the suggestions are for {safe(found.optimizer)} with the settings above, e.g. gdlab train "
                      f"--optimizer {safe(found.optimizer)} --lr {found.suggestions['valley']:.3g} (valley)")
        for warning in found.warnings:
            err.print(f"[yellow]warning:[/] {safe(warning)}")
        out.print(f"[bold]plot[/] {safe(path)}")


LR_FIND_FLAGS = ("data", "target", "task", "val", "val_split", "standardize", "data_options", "model", "hidden",
                 "activation", "init", "loss", "optimizer", "momentum", "batch_size", "seed", "device", "store")
"""The flags of gdlab lr-find that are Config keys (besides the optimizer's options)."""


def show_sweep(stored: dict[str, Any], as_json: bool) -> None:
    """gdlab show for a sweep or restarts: its summary and table."""
    rows = stored["rows"]
    if as_json:
        print(to_json({"sweep_id": stored["id"], "name": stored["name"], "kind": stored["kind"],
                       "created": stored["created"], "config": stored["config"], "summary": stored["summary"],
                       "seconds": stored["seconds"], "steps": stored["steps"], "table": rows}))
        return
    out.print(f"[bold]{safe(stored['kind'])}[/] {safe(stored['id'])}"
              + (f" ({safe(stored['name'])})" if stored["name"] else "")
              + f"   {safe(stored['created'])}   {len(rows)} members, {safe(stored['steps'])} steps each, "
              f"{stored['seconds'] or 0:.1f} s")
    for key, value in (stored["summary"] or {}).items():
        out.print(safe(f"  {key:<20}{num(value) if isinstance(value, float) else value}"))
    best = best_row(rows)
    if rows:
        print_table(rows, best["member"] if best else -1, hint=f"gdlab show {stored['id']} --json gives them all")
