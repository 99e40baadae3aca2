"""The ``gdlab`` command line (an edge: it parses, calls the library, prints).

Every error a user can cause prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gdlab import __version__
from gdlab.errors import GdlabError, InvalidParameter
from gdlab.optim import OPTIMIZERS
from gdlab.train import Callback

app = typer.Typer(
    name="gdlab",
    help="Train models by gradient descent, and see and fix what goes wrong in training.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True, emoji=False)  # a pipe gets whole lines, not rich's 80-column wrap
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _wide() -> Console:
    """The console for tables: whole rows in a pipe or file rather than rich's 80-column squeeze."""
    return out if out.is_terminal else Console(highlight=False, width=240, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])

STORE_HELP = "Run store folder (SQLite database and one folder per run)."


def _friendly(command: F) -> F:
    """Turn gdlab's errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except GdlabError as e:
            err.print(f"error: {e}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"gdlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Train models by gradient descent, and see and fix what goes wrong in training."""


# -- train -----------------------------------------------------------------------------------------------------

_TRAIN_FLAGS = (
    "data", "target", "task", "val", "val_split", "standardize", "model", "hidden", "activation", "init", "loss",
    "optimizer", "lr", "lr_select", "momentum", "beta1", "beta2", "eps", "weight_decay", "nesterov", "clip_norm",
    "schedule", "batch_size", "drop_last", "epochs", "steps", "tol", "patience", "seed",
    "device", "store", "name", "checkpoint_every", "instruments", "doctor", "remedy", "restarts",
)


@app.command()
@_friendly
def train(
    data: Optional[str] = typer.Option(None, help="Built-in dataset (gdlab datasets), a .csv/.npz file, or "
                                       "module:function returning a torch Dataset. [default: digits]"),
    target: Optional[str] = typer.Option(None, help="Target column of a CSV file."),
    task: Optional[str] = typer.Option(None, help="classification or regression (inferred by default)."),
    val: Optional[str] = typer.Option(None, help="Validation file, in the training file's format."),
    val_split: Optional[float] = typer.Option(None, help="Hold out this fraction of a file for validation."),
    standardize: Optional[bool] = typer.Option(None, "--standardize/--no-standardize",
                                               help="Scale inputs to mean 0, std 1."),
    data_opt: Optional[list[str]] = typer.Option(None, "--data-opt", metavar="KEY=VALUE",
                                                 help="Option of a built-in dataset, e.g. condition=1000."),
    model: Optional[str] = typer.Option(None, help="linear, logistic, mlp, cnn, or module:function. [default: mlp]"),
    hidden: Optional[str] = typer.Option(None, help="Hidden sizes of mlp, comma-separated. [default: 128]"),
    activation: Optional[str] = typer.Option(None, help="relu, tanh, sigmoid or leaky_relu. [default: relu]"),
    init: Optional[str] = typer.Option(None, help="default, xavier, kaiming, normal or zeros."),
    loss: Optional[str] = typer.Option(None, help="auto, mse, cross_entropy, l1, huber or bce."),
    optimizer: Optional[str] = typer.Option(None, help=f"{', '.join(OPTIMIZERS)}; gdlab optimizers describes "
                                            "them. [default: momentum]"),
    lr: Optional[str] = typer.Option(None, help="Learning rate, or auto (chosen by a short parallel sweep). "
                                     "[default: 0.1]"),
    lr_select: Optional[str] = typer.Option(None, help="How --lr auto chooses: sweep or range-test. "
                                            "[default: sweep]"),
    momentum: Optional[float] = typer.Option(None, help="Momentum for sgd, momentum, nesterov, rmsprop."),
    beta1: Optional[float] = typer.Option(None, help="Adam's / Lion's first beta."),
    beta2: Optional[float] = typer.Option(None, help="Adam's / Lion's second beta."),
    eps: Optional[float] = typer.Option(None, help="The epsilon of adagrad, rmsprop, adam, adamw."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (decoupled for adamw and lion)."),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov",
                                            help="Nesterov momentum (sgd, momentum)."),
    clip_norm: Optional[float] = typer.Option(None, help="Clip the gradient's global norm to this first."),
    schedule: Optional[str] = typer.Option(None, help="cosine, step:EVERY:GAMMA, exponential:GAMMA, one_cycle, "
                                           "plateau, constant, or warmup:N,<one of those>."),
    batch_size: Optional[str] = typer.Option(None, help="full, stochastic, or a positive integer. [default: 32]"),
    drop_last: Optional[bool] = typer.Option(None, "--drop-last/--no-drop-last", help="Drop a short last batch."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (30 when neither --epochs nor --steps is given)."),
    steps: Optional[int] = typer.Option(None, help="Steps (updates); stops at --epochs or --steps, first reached."),
    tol: Optional[float] = typer.Option(None, help="Stop when the epoch train loss changes by less than this."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val loss."),
    seed: Optional[int] = typer.Option(None, help="Seeds initialisation, data order and dropout. [default: 0]"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, mps. [default: auto]"),
    store: Optional[str] = typer.Option(None, help=STORE_HELP + " [default: gdlab-runs]"),
    name: Optional[str] = typer.Option(None, help="A name for the run."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default: each epoch)."),
    config: Optional[Path] = typer.Option(None, help="TOML file of settings; flags override it."),
    resume: Optional[str] = typer.Option(None, help="Continue a stored run (id, prefix or name)."),
    instruments: Optional[str] = typer.Option(None, help="What to measure each step: none, cheap, default "
                                              "(cheap + periodic) or full (+ sharpness and step size)."),
    doctor: Optional[bool] = typer.Option(None, "--doctor/--no-doctor", help="Name what goes wrong, at the end."),
    remedy: Optional[str] = typer.Option(None, help="off, suggest (the default) or auto: the doctor acts during "
                                         "the run."),
    restarts: Optional[int] = typer.Option(None, help="With --remedy auto: if the run settles in a (perhaps "
                                           "local) minimum, train this many restarts as one population and keep "
                                           "the best."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the loss plot into the run's folder."),
) -> None:
    """Train a model (an MLP on digits by default) and record the run."""
    from gdlab.config import Config
    from gdlab.experiment import resume as resume_run
    from gdlab.experiment import run

    given = {key: value for key, value in locals().items() if key in _TRAIN_FLAGS and value is not None}
    if "hidden" in given:
        given["hidden"] = _int_list(given["hidden"], "--hidden")
    if "lr" in given and given["lr"] != "auto":
        given["lr"] = _float(given["lr"], "--lr", "a number, e.g. 0.01, or auto")
    if data_opt:
        given["data_options"] = dict(_key_value(item) for item in data_opt)
    show = not (quiet or as_json)
    if resume is not None:
        extra = sorted(set(given) - {"epochs", "steps", "store"})
        if extra or config is not None:
            flag = "--" + (extra[0] if extra else "config").replace("_", "-")
            raise InvalidParameter(flag, given.get(extra[0]) if extra else str(config),
                                   "no settings with --resume: the run keeps its stored config (only --epochs, "
                                   "--steps and --store may be given)")
        result = resume_run(resume, store=given.get("store", "gdlab-runs"), epochs=epochs, steps=steps,
                            progress=not quiet, callbacks=(_ResumePrinter(),) if show else ())
        settings = None
    else:
        settings = Config.from_toml(config, given) if config else Config.from_dict(given, source="option")
        result = run(settings, progress=not quiet, callbacks=(_SetupPrinter(settings),) if show else ())
    _report(result, settings, store or (settings.store if settings else "gdlab-runs"), show, as_json, plot)


def _report(result: Any, settings: Any, store_path: str, show: bool, as_json: bool, plot: bool) -> None:
    from gdlab.store import Store

    store = Store(store_path)
    stored = store.get(result.run_id)
    plot_path = None
    if plot:
        from gdlab.plots import plot_losses

        plot_path = plot_losses(result.history, stored.dir / "loss.png", title=f"run {result.run_id}")
    if as_json:
        payload = {
            "run_id": result.run_id,
            "status": result.status,
            "lr": result.lr,
            "seconds": result.seconds,
            "steps": result.steps,
            "epochs": _epochs_done(result),
            "plan": {k: result.plan.to_dict()[k] for k in ("samples", "batch_size", "iterations_per_epoch",
                                                          "last_batch", "mode", "drop_last")},
            "final": result.final,
            "stop_reason": result.stop_reason,
            "findings": [dict(f) if isinstance(f, dict) else vars(f) for f in result.findings],
            "remedies": [r.to_dict() for r in result.remedies],
            "lr_selection": result.lr_selection.to_dict() if result.lr_selection is not None else None,
            "plot": str(plot_path) if plot_path else None,
            "checkpoint": str(stored.checkpoint),
        }
        print(_json(payload))
    elif show:
        _print_summary(result, stored, plot_path)
    if result.status == "stopped":
        err.print(f"stopped at step {result.steps}; continue with: gdlab train --resume {result.run_id}"
                  + (f" --store {store_path}" if store_path != "gdlab-runs" else ""))
        raise typer.Exit(130)


class _SetupPrinter(Callback):
    """Prints what is about to run (data, model, optimizer, batch plan) as the loop starts."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def on_fit_start(self, state: Any) -> None:
        s = self.settings
        parameters = sum(p.numel() for p in state.model.parameters())
        val = f", {state.val_samples} val" if state.val_samples else ", no validation"
        out.print(f"[bold]data[/]      {s.data}: {state.plan.samples} train{val}")
        out.print(f"[bold]model[/]     {s.model}, {parameters:,} parameters")
        momentum = f", momentum {s.momentum}" if s.momentum is not None else ""
        chosen = state.optimizer.param_groups[0].get("lr", s.lr)
        auto = " (auto)" if s.lr == "auto" else ""
        out.print(f"[bold]optimizer[/] {s.optimizer}, lr {chosen:.4g}{auto}{momentum}")
        out.print(f"[bold]plan[/]      {state.plan.describe()}")


class _ResumePrinter(Callback):
    """Says where a resumed run picks up."""

    def on_fit_start(self, state: Any) -> None:
        done = state.step >= state.total_steps
        out.print(f"[bold]resuming[/] run {state.run_id} at step {state.step} (epoch {state.epoch + 1}, iteration "
                  f"{state.iteration}) of {state.total_steps}" + ("; nothing left to train: give more --epochs "
                                                                   "or --steps" if done else ""))
        out.print(f"[bold]plan[/]      {state.plan.describe()}")


def _print_summary(result: Any, stored: Any, plot_path: Path | None) -> None:
    final = result.final
    if result.lr_selection is not None:
        chosen = result.lr_selection
        out.print(f"[bold]lr auto[/]   {chosen.lr:.4g}: {chosen.reason} (cost {chosen.cost:.2f} trainings)")
    epochs = _epochs_done(result)
    word = "stopped" if result.status == "stopped" else "finished"
    out.print(f"[bold]{word}[/] in {result.seconds:.1f} s: {epochs:g} epoch{'s' if epochs != 1 else ''}, "
              f"{result.steps} iteration{'s' if result.steps != 1 else ''}")
    if result.stop_reason and result.stop_reason != "interrupted":
        colour = "red" if result.stop_reason.startswith("diverged") else "yellow"
        out.print(f"[{colour}]{result.stop_reason}[/]")
    parts = [f"train loss {_num(final.get('train_loss'))}"]
    if final.get("val_loss") is not None:
        parts.append(f"val loss {_num(final['val_loss'])}")
    if final.get("val_accuracy") is not None:
        parts.append(f"val accuracy {final['val_accuracy']:.2%}")
    out.print("   ".join(parts))
    _print_doctor([vars(f) for f in result.findings], [r.to_dict() for r in result.remedies])
    out.print(f"[bold]run[/]  {result.run_id}   (gdlab show {result.run_id})")
    if plot_path:
        out.print(f"[bold]plot[/] {plot_path}")


_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


def _remedy_text(remedy: dict[str, Any] | None) -> str:
    if not remedy:
        return ""
    action = remedy.get("action", "")
    rest = ", ".join(f"{k} {_num(v) if isinstance(v, float) else v}" for k, v in remedy.items() if k != "action")
    return f"{action}" + (f" ({rest})" if rest else "")


def _print_doctor(findings: list[dict[str, Any]], remedies: list[dict[str, Any]]) -> None:
    """The doctor's findings, each with its evidence and remedy, and what it did."""
    for r in remedies:
        out.print(f"[bold]remedy[/] step {r['step']}: ", end="")
        out.print(f"{r['action']} - {r['reason']}", markup=False)
    if not findings:
        out.print("[bold]doctor[/] no problems found")
        return
    for f in findings:
        colour = _COLOURS.get(f["severity"], "white")
        out.print(f"[{colour}]{f['severity']}[/] {f['code']}" + (f" (step {f['step']})" if f.get("step") else "")
                  + f": {f['explanation']}")
        evidence = ", ".join(f"{k} {_num(v) if isinstance(v, float) else v}" for k, v in (f.get("evidence") or {}
                                                                                          ).items())
        if evidence:
            out.print(f"    evidence: {evidence}", markup=False)
        if f.get("remedy"):
            out.print(f"    remedy:   {_remedy_text(f['remedy'])}", markup=False)


# -- runs, show, plot ------------------------------------------------------------------------------------------


@app.command()
@_friendly
def runs(
    store: str = typer.Option("gdlab-runs", help=STORE_HELP),
    limit: int = typer.Option(20, help="Show at most this many runs, newest first."),
) -> None:
    """List stored runs."""
    from gdlab.store import Store

    table = Table(box=None, header_style="bold")
    for column in ("run", "name", "status", "created", "data", "model", "optimizer", "lr", "batch", "steps",
                   "train loss", "val loss", "val acc", "time"):
        table.add_column(column, justify="right" if column in ("lr", "steps", "time") or "loss" in column
                         or "acc" in column else "left")
    if not (Path(store) / "gdlab.db").is_file():
        out.print(f"no runs in {store} yet: start one with gdlab train")
        return
    db = Store(store, create=False)
    listed = db.runs(limit=limit)
    for r in listed:
        c, f = r.config, r.final or {}
        acc = f.get("val_accuracy")
        table.add_row(r.id, r.name or "", _status(r.status), r.created, str(c.get("data", "")),
                      str(c.get("model", "")), str(c.get("optimizer", "")), f"{c.get('lr', '')}",
                      str(c.get("batch_size", "")), str(r.steps or ""), _num(f.get("train_loss")),
                      _num(f.get("val_loss")), f"{acc:.2%}" if acc is not None else "",
                      f"{r.seconds:.1f}s" if r.seconds else "")
    stored_sweeps = db.sweeps(limit=limit)
    if not listed and not stored_sweeps:
        out.print(f"no runs in {store} yet: start one with gdlab train")
        return
    if listed:
        _wide().print(table)
    if stored_sweeps:
        from gdlab.cli_population import sweeps_table

        out.print("[bold]sweeps and restarts[/]" if listed else "")
        _wide().print(sweeps_table(db, stored_sweeps))


@app.command()
@_friendly
def show(
    run: str = typer.Argument(..., help="Run or sweep id, id prefix, name, or 'last'."),
    store: str = typer.Option("gdlab-runs", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show a run (config, plan, status, final metrics, findings) or a sweep (its table)."""
    from gdlab.errors import RunNotFound
    from gdlab.store import Store

    db = Store(store, create=False)
    try:
        r = db.get(run)
    except RunNotFound:
        if not db.sweeps():
            raise
        from gdlab.cli_population import show_sweep

        try:
            show_sweep(db.get_sweep(run), as_json)
            return
        except RunNotFound as missing:
            if "ambiguous" in str(missing):
                raise
            raise RunNotFound(f"unknown run or sweep {run!r} in store '{store}': expected an id, id prefix or "
                              "name (see gdlab runs)") from None
    if as_json:
        print(_json({"run_id": r.id, "name": r.name, "created": r.created, "status": r.status,
                     "config": r.config, "plan": r.plan, "final": r.final, "lr": r.lr, "seconds": r.seconds,
                     "steps": r.steps, "stop_reason": r.stop_reason, "error": r.error, "findings": r.findings,
                     "remedies": r.remedies}))
        return
    out.print(f"[bold]run[/] {r.id}" + (f" ({r.name})" if r.name else "") + f"   {_status(r.status)}   {r.created}")
    if r.error:
        out.print(f"[red]error: {r.error}[/]", markup=True)
    if r.stop_reason:
        out.print(f"stopped early: {r.stop_reason}")
    if r.plan:
        from gdlab.data import BatchPlan

        plan = BatchPlan(**{k: r.plan[k] for k in BatchPlan.__dataclass_fields__ if k in r.plan})
        out.print(f"[bold]plan[/]   {plan.describe()}")
    out.print("[bold]config[/]")
    for key, value in r.config.items():
        if key == "lr_selection" and isinstance(value, dict):
            out.print(f"  {'lr chosen':<17}{_num(value.get('lr'))}: {value.get('reason', '')}", markup=False)
        elif value not in (None, {}, False):
            out.print(f"  {key:<17}{value}", markup=False)
    out.print("[bold]final[/]")
    for key, value in (r.final or {}).items():
        out.print(f"  {key:<17}{'-' if value is None else _num(value)}")
    if r.steps is not None:
        out.print(f"  {'steps':<17}{r.steps}")
    if r.seconds is not None:
        out.print(f"  {'seconds':<17}{r.seconds:.2f}")
    _print_doctor(r.findings, r.remedies)
    for label, path in (("checkpoint", r.checkpoint), ("plot", r.dir / "loss.png")):
        if path.exists():
            out.print(f"[bold]{label}[/] {path}")


@app.command()
@_friendly
def plot(
    run: str = typer.Argument(..., help="Run id, id prefix, name, or 'last'."),
    store: str = typer.Option("gdlab-runs", help=STORE_HELP),
    out_path: Optional[Path] = typer.Option(None, "--out", help="PNG path [default: the run's folder/loss.png]."),
    instruments: bool = typer.Option(False, "--instruments", help="The instruments' dashboard, with the findings "
                                     "marked where first seen [default path: the run's folder/instruments.png]."),
) -> None:
    """Plot a run's losses (per epoch and per step), or with --instruments the instruments' dashboard."""
    from gdlab.plots import plot_instruments, plot_losses
    from gdlab.store import Store

    s = Store(store, create=False)
    r = s.get(run)
    target = out_path or r.dir / ("instruments.png" if instruments else "loss.png")
    try:
        if instruments:
            path = plot_instruments(s.history(r.id), target, findings=r.findings, title=f"run {r.id}")
        else:
            path = plot_losses(s.history(r.id), target, title=f"run {r.id} ({r.status})")
    except (OSError, ValueError) as e:
        raise InvalidParameter("--out", str(target), f"a writable .png path ({e})") from None
    out.print(str(path))


@app.command()
@_friendly
def gradflow(
    run: str = typer.Argument(..., help="Run id, id prefix, name, or 'last'."),
    store: str = typer.Option("gdlab-runs", help=STORE_HELP),
    out_path: Optional[Path] = typer.Option(None, "--out", help="PNG path [default: the run's folder/gradflow.png]."),
) -> None:
    """Draw the gradient flow of a run: per-layer gradient norms over training, first layer to last."""
    from gdlab.plots import plot_gradflow
    from gdlab.store import Store

    s = Store(store, create=False)
    r = s.get(run)
    target = out_path or r.dir / "gradflow.png"
    try:
        path = plot_gradflow(s.history(r.id), target, title=f"run {r.id}: gradient flow")
    except ValueError:
        raise InvalidParameter("run", r.id, "a run trained with instruments (--instruments cheap or more): this one "
                               "recorded no per-layer gradients") from None
    except OSError as e:
        raise InvalidParameter("--out", str(target), f"a writable .png path ({e})") from None
    out.print(str(path))


# -- listings --------------------------------------------------------------------------------------------------


@app.command("doctor")
@_friendly
def doctor_command(
    run: str = typer.Argument(..., help="Run id, id prefix, name, or 'last'."),
    store: str = typer.Option("gdlab-runs", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Run the doctor's detectors again on a stored run and explain each finding."""
    from gdlab.doctor import diagnose
    from gdlab.store import Store

    db = Store(store, create=False)
    r = db.get(run)
    history = db.history(r.id)
    meta = r.config.get("doctor_meta") or {}
    history.meta.update({"lr": r.config.get("lr"), "momentum": r.config.get("momentum"), **meta})
    findings = [f.to_dict() for f in diagnose(history)]
    if as_json:
        print(_json({"run_id": r.id, "findings": findings, "remedies": r.remedies}))
        return
    out.print(f"[bold]run[/] {r.id}" + (f" ({r.name})" if r.name else "") + f": {len(history.steps)} steps, "
              f"{len(history.epochs)} epochs")
    _print_doctor(findings, r.remedies)


@app.command()
def datasets() -> None:
    """List the built-in datasets and the data files gdlab reads."""
    from gdlab.datasets import DATASETS

    table = Table("dataset", "description", "options", box=None, header_style="bold")
    for info in DATASETS.values():
        table.add_row(info.name, info.description,
                      ", ".join(f"{k}={v}" for k, v in info.options.items() if k != "seed"))
    _wide().print(table)
    out.print("files: FILE.csv --target COLUMN, FILE.npz (arrays X, y), module:function returning a Dataset")


@app.command()
def models() -> None:
    """List the built-in models."""
    from gdlab.models import ACTIVATIONS, INITS, MODELS

    table = Table("model", "description", box=None, header_style="bold")
    for info in MODELS.values():
        table.add_row(info.name, info.description)
    _wide().print(table)
    out.print(f"activations: {', '.join(ACTIVATIONS)}; inits: {', '.join(INITS)}; "
              "or module:function returning an nn.Module")


@app.command()
def optimizers() -> None:
    """List the optimizers: what each is, its defaults, its update rule and the lr range --lr auto searches."""
    table = Table("optimizer", "summary", "defaults", "update", "lr auto", box=None, header_style="bold")
    for info in OPTIMIZERS.values():
        table.add_row(info.name, info.summary, ", ".join(f"{k}={v}" for k, v in info.defaults.items()),
                      info.equation, "{:g}..{:g}".format(*info.lr_range))
    _wide().print(table)


# -- helpers ---------------------------------------------------------------------------------------------------


def _epochs_done(result: Any) -> float:
    """Epochs trained, with the fraction of one that a step budget or a stop cut short."""
    return round(result.steps / result.plan.iterations_per_epoch, 2)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidParameter(flag, text, "comma-separated positive integers, e.g. 128,64") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidParameter(flag, text, "comma-separated positive integers, e.g. 128,64")
    return values


def _float(text: str, flag: str, expected: str = "a number, e.g. 0.01") -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidParameter(flag, text, expected) from None


def _key_value(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InvalidParameter("--data-opt", item, "KEY=VALUE, e.g. condition=1000")
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    return key.strip(), value


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _status(status: str) -> str:
    colour = {"finished": "green", "running": "cyan", "failed": "red", "stopped": "yellow"}.get(status, "white")
    return f"[{colour}]{status}[/]"


def _json(value: Any) -> str:
    """Strict JSON: paths as strings, and null for NaN and infinities (a diverged run's losses)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return json.dumps(clean(value), allow_nan=False)


def main() -> None:
    """Console entry point: usage errors, like gdlab's own, are one line and exit code 2."""
    import importlib
    import importlib.util

    # typer 0.2x carries its own copy of click; older typers use click itself
    where = "click.exceptions" if importlib.util.find_spec("click") else "typer._click.exceptions"
    UsageError = importlib.import_module(where).UsageError

    try:
        code = app(standalone_mode=False)
    except UsageError as e:
        err.print(f"error: {e.format_message()}", markup=False)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


from gdlab import cli_population  # noqa: E402, F401  (registers sweep, restarts, lr-find on app)

if __name__ == "__main__":
    main()
