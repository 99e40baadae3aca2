"""``gdlab lab``, ``gdlab explain`` and ``gdlab landscape``: optimizers walking over 2-D functions, the backward
pass of an expression, and the loss landscape around a trained run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from gdlab.cli.common import (
    FIGURE_SUFFIXES,
    JsonFlag,
    StoreFlag,
    TrustStoreFlag,
    app,
    err,
    friendly,
    num,
    out,
    parse_number_or_auto,
    parsed,
    safe,
    to_json,
    wide,
)
from gdlab.errors import InvalidParameter, shorten
from gdlab.guard import check_out

ForceFlag = Annotated[bool, typer.Option("--force", help="Write over an existing --out file of another kind.")]


def parse_names(text: str) -> list[str]:
    """``"sgd, adam"`` -> ``["sgd", "adam"]``."""
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_point(text: str, flag: str) -> tuple[float, float]:
    """``"-1.5,2"`` -> ``(-1.5, 2.0)``."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidParameter(flag, text, "two numbers x,y, e.g. -1.5,2") from None


def parse_kind(kind: str) -> str:
    """A kind of landscape."""
    if kind not in ("line", "plane", "trajectory"):
        raise InvalidParameter("--kind", kind, "line, plane or trajectory")
    return kind


@app.command("lab")
@friendly
def lab_command(
    function: str = typer.Argument(..., help="A test function (gdlab functions lists them)."),
    optimizers: str = typer.Option("sgd,momentum,nesterov,adam", help="Comma-separated optimizer names.",
                                   callback=parsed(parse_names)),
    steps: int = typer.Option(200, help="Steps of each walk."),
    lr: str = typer.Option("auto", help="A learning rate for all, or auto (tuned per optimizer).",
                           callback=parsed(parse_number_or_auto, "--lr", "a number > 0, or auto")),
    start: Optional[str] = typer.Option(None, help="The starting point x,y [default: the function's own].",
                                        callback=parsed(parse_point, "--start")),
    restarts: int = typer.Option(0, help="K random starts in the domain instead of one: which minimum each finds."),
    seed: int = typer.Option(0, help="Seed of the random starts."),
    tol: float = typer.Option(1e-3, help="How close to the minimum value counts as reached."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for the plot and the GIF [default: "
                                           "gdlab-runs/lab/FUNCTION-TIME]."),
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Walk optimizers over a 2-D test function: a contour plot of the paths, an animated GIF, and a table."""
    from gdlab.lab.walks import check_folder
    from gdlab.lab.walks import run as run_lab

    if out_dir is not None:
        check_folder(out_dir, "--out", force=force)  # before any walk
    result = run_lab(function, optimizers=optimizers, steps=steps, lr=lr, start=start,  # type: ignore[arg-type]
                     restarts=restarts, seed=seed, tol=tol, out=out_dir, force=force)
    if as_json:
        print(to_json({"function": result.function.name, "table": result.table, "files": result.files}))
        return
    table = Table(box=None, header_style="bold")
    columns = [k for k in result.table[0] if k != "basins"]
    for column in columns:
        table.add_column(safe(column.replace("_", " ")), justify="left" if column == "optimizer" else "right")
    for row in result.table:
        cells = []
        for column in columns:
            v = row[column]
            cells.append("-" if v is None else f"({v[0]:.4g}, {v[1]:.4g})" if isinstance(v, list) else
                         f"{v:.0%}" if column == "reached_global" else num(v) if isinstance(v, float) else v)
        table.add_row(*map(safe, cells))
    wide().print(table)
    for label, path in result.files.items():
        out.print(f"[bold]{safe(label)}[/] {safe(path)}")


@app.command("explain")
@friendly
def explain_command(
    expression: str = typer.Argument(..., help='An expression, e.g. "x*y + sin(x)".'),
    at: str = typer.Option(..., "--at", help="The variables' values, e.g. x=1,y=2."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="PNG path of the graph (or .pdf, .svg) [default: "
                                            "gdlab-runs/explain-TIME.png]."),
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Local and global gradients of every node of an expression (the backward pass), checked against autograd."""
    from gdlab.lab.explain import explain, parse_values

    if out_path is not None:
        check_out(out_path, "--out", FIGURE_SUFFIXES, force=force)
    graph = explain(expression, parse_values(at))
    not_drawn = graph.too_large_to_draw
    path: Path | None = None
    if not_drawn is None or out_path is not None:  # a picture asked for by --out is drawn, or refused in one line
        path = out_path or Path("gdlab-runs") / f"explain-{time.strftime('%Y%m%d-%H%M%S')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        graph.plot(path)
    if as_json:
        print(to_json({**graph.to_dict(), "plot": str(path) if path else None,
                       **({"not_drawn": not_drawn} if path is None else {})}))
        return
    table = Table(box=None, header_style="bold")
    for column in ("node", "expression", "value", "local gradients", "global gradient"):
        table.add_column(column, justify="right" if column in ("value", "global gradient") else "left")
    for n in graph.nodes:
        local = ", ".join(f"d/d{shorten(graph.nodes[i].text, 40)}: {v:.4g}" for i, v in zip(n.inputs, n.local))
        table.add_row(*map(safe, (n.index, shorten(n.text, 60), f"{n.value:.6g}", local, f"{n.grad:.6g}")))
    wide().print(table)
    agree = all(abs(graph.gradients[k] - graph.autograd[k]) <= 1e-9 * max(1.0, abs(graph.autograd[k]))
                for k in graph.gradients)
    out.print("[bold]gradients[/] " + safe(", ".join(f"d/d{k} = {v:.6g}" for k, v in graph.gradients.items())
                                          + ("  (torch.autograd agrees)" if agree
                                             else f"  (torch.autograd says {graph.autograd})")))
    if path is not None:
        out.print(f"[bold]graph[/] {safe(path)}")
    else:
        err.print(f"note: not drawn: {safe(not_drawn)}")


REPLAY_LEAVES_OUT = ("tol", "patience", "lr_select", "instruments", "doctor", "remedy", "restarts",
                     "checkpoint_every", "name", "tensorboard")
"""What a trajectory's replay does not take from the run's config: it trains the same steps, unwatched, unstored."""


@app.command("landscape")
@friendly
def landscape_command(
    run: str = typer.Argument(..., help="Run id, id prefix, name, or 'last' (a run of gdlab train)."),
    kind: str = typer.Option("plane", help="line, plane or trajectory.", callback=parsed(parse_kind)),
    steps: int = typer.Option(25, help="Grid points along each direction."),
    distance: float = typer.Option(1.0, help="How far along each (filter-normalised) direction."),
    samples: int = typer.Option(1000, help="Training samples the loss is evaluated on."),
    seed: int = typer.Option(0, help="Seed of the random directions."),
    store: StoreFlag = "gdlab-runs",
    out_path: Optional[Path] = typer.Option(None, "--out", help="PNG path (or .pdf, .svg) [default: the run's "
                                            "folder/landscape-KIND.png]."),
    force: ForceFlag = False,
    trust_store: TrustStoreFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """The loss landscape around a stored run's trained model: a line or a plane of filter-normalised directions,
    or (trajectory) the plane of the training path's two principal directions, with the path drawn on it (the run
    is replayed to keep snapshots: same config and seed, the same steps)."""
    from gdlab import checkpoint
    from gdlab.config import Config
    from gdlab.experiment import RECORDED, prepare
    from gdlab.lab import landscape
    from gdlab.store import Store

    landscape.check_size(steps, kind)  # sizes first: before the store is read, the data loaded or the run replayed
    if out_path is not None:
        check_out(out_path, "--out", FIGURE_SUFFIXES, force=force)
    r = Store(store, create=False).get(run)
    if "data" not in r.config:
        raise InvalidParameter("run", r.id, "a run of gdlab train (this one was recorded from Python: call "
                               "gdlab.landscape.plane(model, data) there)")
    if not r.checkpoint.is_file():
        raise InvalidParameter("run", r.id, "a run with a checkpoint (none was written)")
    from gdlab.resolve import consent

    consent(r.config, run_id=r.id, trust=trust_store)  # a stored module:function runs only with --trust-store
    config = Config.from_dict({k: v for k, v in r.config.items() if k not in RECORDED}, source=f"run {r.id}")
    model, train_data, val_data = prepare(config)
    saved = checkpoint.load(r.checkpoint)["model"]
    if kind == "trajectory":
        snaps = landscape.Snapshots(every=max(1, (r.steps or 1) // 50))
        replay(model, train_data, val_data, config, r, snaps, saved)
        land = landscape.trajectory(model, train_data, snaps, steps=steps, samples=samples, progress=True)
    else:
        model.load_state_dict(saved)
        make = landscape.plane if kind == "plane" else landscape.line
        land = make(model, train_data, steps=steps, distance=distance, samples=samples, seed=seed, progress=True)
    path = out_path or r.dir / f"landscape-{kind}.png"
    how = "its trajectory's two principal directions" if kind == "trajectory" else "filter-normalised directions"
    land.plot(str(path), title=f"run {r.id}: loss {kind} ({land.samples} samples, {how})")
    if as_json:
        print(to_json({"run_id": r.id, "kind": kind, "center_loss": land.center_loss, "losses": land.losses.tolist(),
                       "alphas": land.alphas.tolist(), "plot": str(path)}))
        return
    low, high = float(land.losses.min()), float(land.losses.max())
    out.print(f"[bold]{safe(kind)}[/] {steps} points per direction x {land.samples} samples: loss {num(low)} to "
              f"{num(high)}, {num(land.center_loss)} at the model")
    out.print(f"[bold]plot[/] {safe(path)}")


def replay(model: Any, train: Any, val: Any, config: Any, stored: Any, snaps: Any, saved: dict[str, Any]) -> None:
    """Train ``model`` again as the stored run did (same config and seed: the same steps), keeping ``snaps`` of
    its parameters; warn when it does not end where the run did."""
    import torch

    from gdlab.train import fit

    kwargs = {k: v for k, v in config.fit_kwargs().items() if k not in REPLAY_LEAVES_OUT}
    kwargs["lr"] = (stored.config.get("lr_selection") or {}).get("lr", config.lr)  # what lr="auto" chose
    kwargs["steps"] = stored.steps or kwargs["steps"]
    fit(model, train, val=val, progress=False, instruments="none", doctor=False, callbacks=[snaps], **kwargs)
    same = all(torch.allclose(a, b.to(a), rtol=1e-5, atol=1e-7) for a, b in zip(model.state_dict().values(),
                                                                                   saved.values()))
    if not same:
        err.print("[yellow]note:[/] the replay did not end at the stored parameters (a non-deterministic device "
                  "or a resumed run): the path is the replay's")
