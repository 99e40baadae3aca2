"""``gdlab sweep``, ``gdlab restarts`` and ``gdlab lr-find``: the commands that train many members at once.

They take ``gdlab train``'s data and model flags; the values a sweep varies take lists (``--lr 1e-4:1:16`` is 16
log-spaced values, ``--momentum 0,0.9`` two).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gdlab.cli import STORE_HELP, _friendly, _int_list, _json, _key_value, _num, _wide, app, err, out
from gdlab.errors import InvalidParameter

# the data and model flags of gdlab train, shared by these commands
DATA = typer.Option(None, help="Built-in dataset, a .csv/.npz file, or module:function. [default: digits]")
TARGET = typer.Option(None, help="Target column of a CSV file.")
TASK = typer.Option(None, help="classification or regression (inferred by default).")
VAL = typer.Option(None, help="Validation file, in the training file's format.")
VAL_SPLIT = typer.Option(None, help="Hold out this fraction of a file for validation.")
STANDARDIZE = typer.Option(None, "--standardize/--no-standardize", help="Scale inputs to mean 0, std 1.")
DATA_OPT = typer.Option(None, "--data-opt", metavar="KEY=VALUE", help="Option of a built-in dataset.")
MODEL = typer.Option(None, help="linear, logistic, mlp, cnn, or module:function. [default: mlp]")
HIDDEN = typer.Option(None, help="Hidden sizes of mlp, comma-separated. [default: 128]")
ACTIVATION = typer.Option(None, help="relu, tanh, sigmoid or leaky_relu. [default: relu]")
INIT = typer.Option(None, help="default, xavier, kaiming, normal or zeros.")
LOSS = typer.Option(None, help="auto, mse, cross_entropy, l1, huber or bce.")
OPTIMIZER = typer.Option(None, help="gdlab optimizers lists them. [default: momentum]")
BATCH = typer.Option(None, help="full, stochastic, or a positive integer. [default: 32]")
EPOCHS = typer.Option(None, help="Epochs per member (30 when neither --epochs nor --steps is given).")
STEPS = typer.Option(None, help="Steps per member.")
DEVICE = typer.Option(None, help="auto, cpu, cuda, mps. [default: auto]")
STORE = typer.Option("gdlab-runs", help=STORE_HELP)
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or table.")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout.")
OUT = typer.Option(None, "--out", help="PNG path [default: in the store folder].")
DATA_SEED = typer.Option(None, "--seed", help="Seed of the data (built-in datasets, validation splits); each member's "
                         "own seed comes from --seeds. [default: 0]")


def _settings(**given: Any) -> Any:
    """A Config from the data and model flags that were given (the optimizer's values are the command's)."""
    from gdlab.config import Config

    values = {k: v for k, v in given.items() if v is not None}
    if "hidden" in values:
        values["hidden"] = _int_list(values["hidden"], "--hidden")
    if "data_opt" in values:
        values["data_options"] = dict(_key_value(item) for item in values.pop("data_opt"))
    return Config.from_dict(values, source="option")


def _prepare(settings: Any) -> tuple[Any, Any, Any]:
    """``(model_fn, train, val)`` for the settings."""
    from gdlab.experiment import load_data, model_factory

    train, val = load_data(settings)
    return model_factory(settings, train), train, val


def _values(text: str | None, flag: str) -> list[float] | None:
    from gdlab.sweeps import parse_values

    return None if text is None else parse_values(text, flag)


def _one(values: list[float] | None) -> Any:
    return values[0] if values is not None and len(values) == 1 else values


def _seeds(text: str) -> list[int]:
    """``"4"`` is seeds 0..3; ``"0,5,9"`` those seeds."""
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise InvalidParameter("--seeds", text, "a count (e.g. 4) or a comma-separated list of seeds") from None
        if count < 1:
            raise InvalidParameter("--seeds", text, "a positive count, or a comma-separated list of seeds")
        return list(range(count))
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidParameter("--seeds", text, "a count (e.g. 4) or a comma-separated list of seeds") from None


def _budget(epochs: int | None, steps: int | None) -> tuple[int | None, int | None]:
    from gdlab.config import DEFAULT_EPOCHS

    return (DEFAULT_EPOCHS, None) if epochs is None and steps is None else (epochs, steps)


@app.command()
@_friendly
def sweep(
    data: str | None = DATA, target: str | None = TARGET, task: str | None = TASK,
    val: str | None = VAL, val_split: float | None = VAL_SPLIT, standardize: bool | None = STANDARDIZE,
    data_opt: list[str] | None = DATA_OPT, model: str | None = MODEL, hidden: str | None = HIDDEN,
    activation: str | None = ACTIVATION, init: str | None = INIT, loss: str | None = LOSS,
    optimizer: str = typer.Option("momentum", help="gdlab optimizers lists them."),
    lr: str = typer.Option("1e-4:1:9", help="Learning rates: a:b:n (n log-spaced values), a list, or one."),
    momentum: str | None = typer.Option(None, help="Momentum values, e.g. 0,0.9 (a second axis)."),
    beta1: str | None = typer.Option(None, help="Values of adam's beta1."),
    beta2: str | None = typer.Option(None, help="Values of adam's beta2."),
    weight_decay: str | None = typer.Option(None, help="Values of the weight decay."),
    seeds: str = typer.Option("1", help="A count of seeds (0..n-1) or a comma-separated list."),
    seed: int | None = DATA_SEED,
    shared_order: bool = typer.Option(False, "--shared-order", help="Every member sees the same batches."),
    batch_size: str | None = BATCH, epochs: int | None = EPOCHS, steps: int | None = STEPS,
    device: str | None = DEVICE, store: str = STORE,
    name: str | None = typer.Option(None, help="A name for the stored sweep."),
    quiet: bool = QUIET, as_json: bool = JSON,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the sweep's plot into the store."),
) -> None:
    """Train one member per point of a grid (learning rates x momenta x seeds) at once, as one population."""
    from gdlab.store import Store
    from gdlab.sweeps import sweep as run_sweep

    settings = _settings(data=data, target=target, task=task, val=val, val_split=val_split, standardize=standardize,
                         data_opt=data_opt, model=model, hidden=hidden, activation=activation, init=init,
                         loss=loss, optimizer=optimizer, batch_size=batch_size, epochs=epochs, steps=steps,
                         device=device, store=store, seed=seed)
    grid = {"lr": _one(_values(lr, "--lr")), "momentum": _one(_values(momentum, "--momentum")),
            "beta1": _one(_values(beta1, "--beta1")), "beta2": _one(_values(beta2, "--beta2")),
            "weight_decay": _one(_values(weight_decay, "--weight-decay"))}
    model_fn, train_data, val_data = _prepare(settings)
    e, s = _budget(epochs, steps)
    db = Store(store)
    result = run_sweep(model_fn, train_data, optimizer=optimizer, seeds=_seeds(seeds), batch_size=settings.batch_size,
                       epochs=e, steps=s, val=val_data, loss=settings.loss, device=settings.device,
                       shared_order=shared_order, progress=not quiet, store=db, name=name,
                       config={**settings.to_dict(), "grid": grid, "seeds": seeds},
                       **{k: v for k, v in grid.items() if v is not None})
    path = None
    if plot:
        from gdlab.plots import plot_sweep

        path = plot_sweep(result, db.root / str(result.sweep_id) / "sweep.png")
    trained = [r for r in result.table if not r["diverged"]]
    best = result.best() if trained else None
    if as_json:
        print(_json({"sweep_id": result.sweep_id, "axes": result.axes, "best": best, "table": result.table,
                     "vectorized": result.population.vectorized, "seconds": result.population.seconds,
                     "plot": str(path) if path else None}))
        return
    if not quiet:
        _print_table(result.table, best["member"] if best else -1)
        pop = result.population
        how = "as one population" if pop.vectorized else f"one by one ({pop.notice})"
        out.print(f"[bold]{len(pop)} member{'s' if len(pop) != 1 else ''}[/] trained {how} in {pop.seconds:.1f} s; "
                  f"{sum(pop.diverged)} diverged")
        if best is None:
            err.print("[yellow]every member diverged:[/] try smaller learning rates")
        else:
            out.print(f"[bold]best[/]  member {best['member']}: " + ", ".join(
                f"{k} {_num(best[k])}" for k in (*result.axes, "val_loss", "train_loss") if best.get(k) is not None))
        out.print(f"[bold]sweep[/] {result.sweep_id}")
        if path:
            out.print(f"[bold]plot[/]  {path}")


def _print_table(rows: list[dict[str, Any]], best: int) -> None:
    table = Table(box=None, header_style="bold")
    tail = ("train_loss", "val_loss", "metric", "diverged")
    keys = [k for k in rows[0] if k not in ("curve", "member", "seed", *tail)]
    columns = [k for k in ("member", "seed", *keys, *tail) if any(r.get(k) is not None for r in rows)]
    for column in columns:
        header = "val acc" if column == "metric" else column.replace("_", " ")
        table.add_column(header, justify="left" if column == "diverged" else "right")
    for row in rows:
        cells = []
        for column in columns:
            v = row.get(column)
            cells.append("yes" if v is True else "" if v is False or v is None else
                         f"{v:.2%}" if column == "metric" else _num(v) if isinstance(v, float) else str(v))
        table.add_row(*cells, style="bold green" if row["member"] == best else None)
    _wide().print(table)


@app.command()
@_friendly
def restarts(
    data: str | None = DATA, target: str | None = TARGET, task: str | None = TASK,
    val: str | None = VAL, val_split: float | None = VAL_SPLIT, standardize: bool | None = STANDARDIZE,
    data_opt: list[str] | None = DATA_OPT, model: str | None = MODEL, hidden: str | None = HIDDEN,
    activation: str | None = ACTIVATION, init: str | None = INIT, loss: str | None = LOSS,
    optimizer: str | None = OPTIMIZER,
    lr: float = typer.Option(0.1, help="Learning rate (one value: restarts vary the initial point)."),
    momentum: float | None = typer.Option(None, help="Momentum."),
    seeds: int = typer.Option(16, help="How many random initial points."),
    seed: int | None = DATA_SEED,
    tol: float = typer.Option(0.05, help="Relative tolerance for 'as good as the best' and for one end point."),
    batch_size: str | None = BATCH, epochs: int | None = EPOCHS, steps: int | None = STEPS,
    device: str | None = DEVICE, store: str = STORE,
    name: str | None = typer.Option(None, help="A name for the stored restarts."),
    quiet: bool = QUIET, as_json: bool = JSON,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the distribution plot into the store."),
) -> None:
    """Train from many random initial points at once: how many different minima does training end in?"""
    from gdlab.store import Store
    from gdlab.sweeps import restarts as run_restarts

    settings = _settings(data=data, target=target, task=task, val=val, val_split=val_split, standardize=standardize,
                         data_opt=data_opt, model=model, hidden=hidden, activation=activation, init=init,
                         loss=loss, optimizer=optimizer, lr=lr, momentum=momentum, batch_size=batch_size,
                         epochs=epochs, steps=steps, device=device, store=store, seed=seed)
    if seeds < 2:
        raise InvalidParameter("--seeds", seeds, "at least 2 restarts")
    model_fn, train_data, val_data = _prepare(settings)
    e, s = _budget(epochs, steps)
    db = Store(store)
    result = run_restarts(model_fn, train_data, seeds=seeds, tol=tol, optimizer=settings.optimizer, lr=settings.lr,
                          momentum=settings.momentum, batch_size=settings.batch_size, epochs=e, steps=s,
                          val=val_data, loss=settings.loss, device=settings.device, progress=not quiet, store=db,
                          name=name)
    path = None
    if plot:
        from gdlab.plots import plot_restarts

        path = plot_restarts(result, db.root / str(result.restarts_id) / "restarts.png")
    summary = result.summary()
    if as_json:
        print(_json({"restarts_id": result.restarts_id, **summary, "losses": result.losses,
                     "clusters": result.clusters, "plot": str(path) if path else None}))
        return
    if not quiet:
        what = "validation" if val_data is not None else "training"
        out.print(f"[bold]{summary['restarts']} restarts[/], final {what} loss: best {_num(result.best)}, "
                  f"median {_num(result.median)}, worst {_num(result.worst)} (spread {_num(result.spread)})")
        out.print(f"[bold]{result.distinct} distinct end points[/] (same loss within {tol:.0%} and the same "
                  f"predictions on held-out inputs); {result.within_tol:.0%} of restarts end within {tol:.0%} of "
                  f"the best" + (f"; {summary['diverged']} diverged" if summary["diverged"] else ""))
        sizes: dict[int, list[float]] = {}
        for c, v in zip(result.clusters, result.losses):
            if c >= 0:
                sizes.setdefault(c, []).append(v)
        for c, values in sorted(sizes.items()):
            out.print(f"  end point {c + 1}: {len(values)} restart{'s' if len(values) != 1 else ''}, "
                      f"loss {_num(min(values))} to {_num(max(values))}")
        out.print(f"[bold]stored[/] {result.restarts_id}")
        if path:
            out.print(f"[bold]plot[/]   {path}")


@app.command("lr-find")
@_friendly
def lr_find(
    data: str | None = DATA, target: str | None = TARGET, task: str | None = TASK,
    val: str | None = VAL, val_split: float | None = VAL_SPLIT, standardize: bool | None = STANDARDIZE,
    data_opt: list[str] | None = DATA_OPT, model: str | None = MODEL, hidden: str | None = HIDDEN,
    activation: str | None = ACTIVATION, init: str | None = INIT, loss: str | None = LOSS,
    optimizer: str = typer.Option("sgd", help="gdlab optimizers lists them."),
    momentum: float | None = typer.Option(None, help="Momentum."),
    start_lr: float = typer.Option(1e-7, help="The first learning rate of the ramp."),
    end_lr: float = typer.Option(10.0, help="The last learning rate of the ramp."),
    num_iter: int = typer.Option(100, help="Steps of the ramp."),
    batch_size: str | None = BATCH, seed: int | None = typer.Option(None, help="Seed. [default: 0]"),
    device: str | None = DEVICE, store: str = STORE,
    out_path: Path | None = OUT,
    quiet: bool = QUIET, as_json: bool = JSON,
) -> None:
    """The learning-rate range test: raise the lr exponentially over one short run and read the loss curve."""
    from gdlab.lr_select import lr_find as run_lr_find

    settings = _settings(data=data, target=target, task=task, val=val, val_split=val_split, standardize=standardize,
                         data_opt=data_opt, model=model, hidden=hidden, activation=activation, init=init,
                         loss=loss, optimizer=optimizer, momentum=momentum, batch_size=batch_size, seed=seed,
                         device=device)
    import torch

    if out_path is not None and out_path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InvalidParameter("--out", str(out_path), "a .png, .pdf or .svg path")
    model_fn, train_data, _ = _prepare(settings)
    torch.manual_seed(settings.seed)
    found = run_lr_find(model_fn(), train_data, optimizer=optimizer, start_lr=start_lr, end_lr=end_lr,
                        num_iter=num_iter, batch_size=settings.batch_size, loss=settings.loss, seed=settings.seed,
                        device=settings.device, progress=not quiet,
                        **({"momentum": momentum} if momentum is not None else {}))
    path = out_path or Path(store) / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    found.plot(path)
    if as_json:
        print(_json({"suggestions": found.suggestions, "warnings": found.warnings, "stopped": found.stopped,
                     "lrs": found.lrs, "losses": found.losses, "smoothed": found.smoothed, "plot": str(path)}))
        return
    if not quiet:
        out.print(f"[bold]range test[/] {optimizer}, {len(found.lrs)} steps from lr {start_lr:g}: {found.stopped}")
        for key, value in found.suggestions.items():
            out.print(f"  {key:9} lr {value:.3g}")
        for warning in found.warnings:
            err.print(f"[yellow]warning:[/] {warning}")
        out.print(f"[bold]plot[/] {path}")


def sweeps_table(db: Any, stored: list[dict[str, Any]]) -> Table:
    """The stored sweeps and restarts, one row each (for gdlab runs)."""
    table = Table(box=None, header_style="bold")
    for column in ("sweep", "name", "kind", "created", "members", "best", "val loss", "train loss", "time"):
        table.add_column(column, justify="right" if column in ("members", "val loss", "train loss", "time")
                         else "left")
    for sweep_row in stored:
        rows = db.get_sweep(sweep_row["id"])["rows"]
        best = _best_row(rows)
        axes = [k for k in (sweep_row["config"].get("axes") or {}) if k != "seed"] or ["lr"]
        described = ", ".join(f"{k} {_num(best[k])}" for k in axes if best and best.get(k) is not None)
        table.add_row(sweep_row["id"], sweep_row["name"] or "", sweep_row["kind"], sweep_row["created"],
                      str(sweep_row["members"]), described, _num(best.get("val_loss")) if best else "",
                      _num(best.get("train_loss")) if best else "",
                      f"{sweep_row['seconds']:.1f}s" if sweep_row["seconds"] else "")
    return table


def _best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    def score(row: dict[str, Any]) -> float:
        value = row.get("val_loss") if row.get("val_loss") is not None else row.get("train_loss")
        return float("inf") if row.get("diverged") or value is None else float(value)

    trained = [r for r in rows if score(r) != float("inf")]
    return min(trained, key=score) if trained else None


def show_sweep(stored: dict[str, Any], as_json: bool) -> None:
    """gdlab show for a sweep or restarts: its summary and table."""
    rows = stored["rows"]
    if as_json:
        print(_json({"sweep_id": stored["id"], "name": stored["name"], "kind": stored["kind"],
                     "created": stored["created"], "config": stored["config"], "summary": stored["summary"],
                     "seconds": stored["seconds"], "steps": stored["steps"], "table": rows}))
        return
    out.print(f"[bold]{stored['kind']}[/] {stored['id']}" + (f" ({stored['name']})" if stored["name"] else "")
              + f"   {stored['created']}   {len(rows)} members, {stored['steps']} steps each, "
              f"{stored['seconds'] or 0:.1f} s")
    for key, value in (stored["summary"] or {}).items():
        out.print(f"  {key:<20}{_num(value) if isinstance(value, float) else value}")
    best = _best_row(rows)
    if rows:
        _print_table(rows, best["member"] if best else -1)


START = typer.Option(None, help="The starting point x,y [default: the function's own].")
LAB_OUT = typer.Option(None, "--out", help="Folder for the plot and the GIF [default: gdlab-runs/lab/FUNCTION-TIME].")


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
    _wide().print(table)


@app.command("lab")
@_friendly
def lab_command(
    function: str = typer.Argument(..., help="A test function (gdlab functions lists them)."),
    optimizers: str = typer.Option("sgd,momentum,nesterov,adam", help="Comma-separated optimizer names."),
    steps: int = typer.Option(200, help="Steps of each walk."),
    lr: str = typer.Option("auto", help="A learning rate for all, or auto (tuned per optimizer)."),
    start: str | None = START,
    restarts: int = typer.Option(0, help="K random starts in the domain instead of one: which minimum each finds."),
    seed: int = typer.Option(0, help="Seed of the random starts."),
    tol: float = typer.Option(1e-3, help="How close to the minimum value counts as reached."),
    out_dir: Path | None = LAB_OUT,
    as_json: bool = JSON,
) -> None:
    """Walk optimizers over a 2-D test function: a contour plot of the paths, an animated GIF, and a table."""
    from gdlab.lab.walks import run as run_lab

    names = [n.strip() for n in optimizers.split(",") if n.strip()]
    rate: Any = lr if lr == "auto" else _float_flag(lr, "--lr")
    point = None
    if start is not None:
        parts = start.split(",")
        try:
            point = (float(parts[0]), float(parts[1]))
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise InvalidParameter("--start", start, "two numbers x,y, e.g. -1.5,2") from None
    result = run_lab(function, optimizers=names, steps=steps, lr=rate, start=point, restarts=restarts, seed=seed,
                     tol=tol, out=out_dir)
    if as_json:
        print(_json({"function": result.function.name, "table": result.table, "files": result.files}))
        return
    table = Table(box=None, header_style="bold")
    columns = [k for k in result.table[0] if k != "basins"]
    for column in columns:
        table.add_column(column.replace("_", " "), justify="left" if column == "optimizer" else "right")
    for row in result.table:
        cells = []
        for column in columns:
            v = row[column]
            cells.append("-" if v is None else f"({v[0]:.4g}, {v[1]:.4g})" if isinstance(v, list) else
                         f"{v:.0%}" if column == "reached_global" else _num(v) if isinstance(v, float) else str(v))
        table.add_row(*cells)
    _wide().print(table)
    for label, path in result.files.items():
        out.print(f"[bold]{label}[/] {path}")


def _float_flag(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidParameter(flag, text, "a number > 0, or auto") from None


EXPLAIN_OUT = typer.Option(None, "--out", help="PNG path of the graph [default: gdlab-runs/explain-TIME.png].")


@app.command("explain")
@_friendly
def explain_command(
    expression: str = typer.Argument(..., help='An expression, e.g. "x*y + sin(x)".'),
    at: str = typer.Option(..., "--at", help="The variables' values, e.g. x=1,y=2."),
    out_path: Path | None = EXPLAIN_OUT,
    as_json: bool = JSON,
) -> None:
    """Local and global gradients of every node of an expression (the backward pass), checked against autograd."""
    from gdlab.lab.explain import explain, parse_values

    graph = explain(expression, parse_values(at))
    path = out_path or Path("gdlab-runs") / f"explain-{time.strftime('%Y%m%d-%H%M%S')}.png"
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InvalidParameter("--out", str(path), "a .png, .pdf or .svg path")
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.plot(path)
    if as_json:
        print(_json({**graph.to_dict(), "plot": str(path)}))
        return
    table = Table(box=None, header_style="bold")
    for column in ("node", "expression", "value", "local gradients", "global gradient"):
        table.add_column(column, justify="right" if column in ("value", "global gradient") else "left")
    for n in graph.nodes:
        local = ", ".join(f"d/d{graph.nodes[i].text}: {v:.4g}" for i, v in zip(n.inputs, n.local))
        table.add_row(str(n.index), n.text, f"{n.value:.6g}", local, f"{n.grad:.6g}")
    _wide().print(table)
    agree = all(abs(graph.gradients[k] - graph.autograd[k]) <= 1e-9 * max(1.0, abs(graph.autograd[k]))
                for k in graph.gradients)
    out.print("[bold]gradients[/] " + ", ".join(f"d/d{k} = {v:.6g}" for k, v in graph.gradients.items())
              + ("  (torch.autograd agrees)" if agree else f"  (torch.autograd says {graph.autograd})"))
    out.print(f"[bold]graph[/] {path}")


LANDSCAPE_OUT = typer.Option(None, "--out", help="PNG path [default: the run's folder/landscape-KIND.png].")


@app.command("landscape")
@_friendly
def landscape_command(
    run: str = typer.Argument(..., help="Run id, id prefix, name, or 'last' (a run of gdlab train)."),
    kind: str = typer.Option("plane", help="line, plane or trajectory."),
    steps: int = typer.Option(25, help="Grid points along each direction."),
    distance: float = typer.Option(1.0, help="How far along each (filter-normalised) direction."),
    samples: int = typer.Option(1000, help="Training samples the loss is evaluated on."),
    seed: int = typer.Option(0, help="Seed of the random directions."),
    store: str = STORE,
    out_path: Path | None = LANDSCAPE_OUT,
    as_json: bool = JSON,
) -> None:
    """The loss landscape around a stored run's trained model: a line or a plane of filter-normalised directions,
    or (trajectory) the plane of the training path's two principal directions, with the path drawn on it (the run
    is replayed to keep snapshots: same config and seed, the same steps)."""
    from gdlab import checkpoint
    from gdlab.config import Config
    from gdlab.experiment import RECORDED, prepare
    from gdlab.lab import landscape
    from gdlab.store import Store

    if kind not in ("line", "plane", "trajectory"):
        raise InvalidParameter("--kind", kind, "line, plane or trajectory")
    r = Store(store, create=False).get(run)
    if "data" not in r.config:
        raise InvalidParameter("run", r.id, "a run of gdlab train (this one was recorded from Python: call "
                               "gdlab.landscape.plane(model, data) there)")
    if not r.checkpoint.is_file():
        raise InvalidParameter("run", r.id, "a run with a checkpoint (none was written)")
    config = Config.from_dict({k: v for k, v in r.config.items() if k not in RECORDED}, source=f"run {r.id}")
    model, train_data, val_data = prepare(config)
    saved = checkpoint.load(r.checkpoint)["model"]
    if kind == "trajectory":
        # the run is replayed (same config and seed: the same steps) to keep snapshots of its parameters
        import torch

        from gdlab.train import fit

        snaps = landscape.Snapshots(every=max(1, (r.steps or 1) // 50))
        epochs, budget = config.budget()
        fit(model, train_data, val=val_data, loss=config.loss, optimizer=config.optimizer,
            lr=(r.config.get("lr_selection") or {}).get("lr", config.lr), momentum=config.momentum,
            batch_size=config.batch_size, epochs=epochs, steps=r.steps or budget, seed=config.seed,
            device=config.device, progress=False, drop_last=config.drop_last, schedule=config.schedule,
            instruments="none", doctor=False, callbacks=[snaps], **config.optimizer_options())
        same = all(torch.allclose(a, b.to(a), rtol=1e-5, atol=1e-7) for a, b in zip(model.state_dict().values(),
                                                                                       saved.values()))
        if not same:
            err.print("[yellow]note:[/] the replay did not end at the stored parameters (a non-deterministic "
                      "device or a resumed run): the path is the replay's")
        land = landscape.trajectory(model, train_data, snaps, steps=steps, samples=samples, progress=True)
    else:
        model.load_state_dict(saved)
        make = landscape.plane if kind == "plane" else landscape.line
        land = make(model, train_data, steps=steps, distance=distance, samples=samples, seed=seed, progress=True)
    path = out_path or r.dir / f"landscape-{kind}.png"
    how = "its trajectory's two principal directions" if kind == "trajectory" else "filter-normalised directions"
    land.plot(str(path), title=f"run {r.id}: loss {kind} ({land.samples} samples, {how})")
    if as_json:
        print(_json({"run_id": r.id, "kind": kind, "center_loss": land.center_loss, "losses": land.losses.tolist(),
                     "alphas": land.alphas.tolist(), "plot": str(path)}))
        return
    low, high = float(land.losses.min()), float(land.losses.max())
    out.print(f"[bold]{kind}[/] {steps} points per direction x {land.samples} samples: loss {_num(low)} to "
              f"{_num(high)}, {_num(land.center_loss)} at the model")
    out.print(f"[bold]plot[/] {path}")
