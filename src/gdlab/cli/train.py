"""``gdlab train``: train a model as the flags (or a TOML file) say, record the run, and print what happened."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from gdlab.cli import ranks
from gdlab.cli.common import (
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
    LossFlag,
    ModelFlag,
    MomentumFlag,
    NesterovFlag,
    OptimizerFlag,
    StandardizeFlag,
    StandardizeTargetFlag,
    TargetFlag,
    TaskFlag,
    TrustStoreFlag,
    ValFlag,
    ValSplitFlag,
    WeightDecayFlag,
    app,
    err,
    friendly,
    given_flags,
    num,
    out,
    parse_number_or_auto,
    parsed,
    safe,
    to_json,
)
from gdlab.config import HELP, Config
from gdlab.errors import InvalidParameter
from gdlab.integrations.tensorboard import check_logdir
from gdlab.loop import Callback, LoopState
from gdlab.threads import check_threads

TRAIN_FLAGS = (
    "data", "target", "task", "val", "val_split", "standardize", "data_options", "model", "hidden", "activation",
    "init", "loss", "optimizer", "lr", "lr_select", "momentum", "beta1", "beta2", "eps", "weight_decay", "nesterov",
    "clip_norm", "schedule", "batch_size", "drop_last", "epochs", "steps", "tol", "patience", "seed", "threads",
    "device", "precision", "store", "name", "checkpoint_every", "instruments", "doctor", "remedy", "restarts",
    "step_rows", "tensorboard", "standardize_target",
)
"""The flags of gdlab train that are Config keys (each named as its key, with its help: ``config.HELP[key]``)."""


@app.command()
@friendly
def train(
    data: DataFlag = None,
    target: TargetFlag = None,
    task: TaskFlag = None,
    val: ValFlag = None,
    val_split: ValSplitFlag = None,
    standardize: StandardizeFlag = None,
    standardize_target: StandardizeTargetFlag = None,
    data_options: DataOptionsFlag = None,
    model: ModelFlag = None,
    hidden: HiddenFlag = None,
    activation: ActivationFlag = None,
    init: InitFlag = None,
    loss: LossFlag = None,
    optimizer: OptimizerFlag = None,
    lr: Optional[str] = typer.Option(None, help=HELP["lr"],
                                     callback=parsed(parse_number_or_auto, "--lr", "a number, e.g. 0.01, or auto")),
    lr_select: Optional[str] = typer.Option(None, help=HELP["lr_select"]),
    momentum: MomentumFlag = None,
    beta1: Beta1Flag = None,
    beta2: Beta2Flag = None,
    eps: EpsFlag = None,
    weight_decay: WeightDecayFlag = None,
    nesterov: NesterovFlag = None,
    clip_norm: ClipNormFlag = None,
    schedule: Optional[str] = typer.Option(None, help=HELP["schedule"]),
    batch_size: BatchSizeFlag = None,
    drop_last: Optional[bool] = typer.Option(None, "--drop-last/--no-drop-last", help=HELP["drop_last"]),
    epochs: Optional[int] = typer.Option(None, help=HELP["epochs"]),
    steps: Optional[int] = typer.Option(None, help=HELP["steps"]),
    tol: Optional[float] = typer.Option(None, help=HELP["tol"]),
    patience: Optional[int] = typer.Option(None, help=HELP["patience"]),
    seed: Optional[int] = typer.Option(None, help=HELP["seed"]),
    device: DeviceFlag = None,
    precision: Optional[str] = typer.Option(None, help=HELP["precision"]),
    threads: Optional[str] = typer.Option(None, help=HELP["threads"], callback=parsed(check_threads)),
    store: Optional[str] = typer.Option(None, help=HELP["store"]),
    name: Optional[str] = typer.Option(None, help=HELP["name"]),
    checkpoint_every: Optional[int] = typer.Option(None, help=HELP["checkpoint_every"]),
    step_rows: Optional[int] = typer.Option(None, help=HELP["step_rows"]),
    tensorboard: Optional[str] = typer.Option(None, help=HELP["tensorboard"],
                                              callback=parsed(check_logdir, "--tensorboard")),
    config: Optional[Path] = typer.Option(None, help="TOML file of settings; flags override it."),
    resume: Optional[str] = typer.Option(None, help="Continue a stored run (id, prefix or name); with its stored "
                                         "module:function model or data given again (--model, --data) or "
                                         "--trust-store, to consent to running that code."),
    trust_store: TrustStoreFlag = False,
    force: bool = typer.Option(False, "--force", help="With --resume: resume a run marked running whose process is "
                               "gone but could not be seen to be (killed in a container, on another machine)."),
    instruments: Optional[str] = typer.Option(None, help=HELP["instruments"]),
    doctor: Optional[bool] = typer.Option(None, "--doctor/--no-doctor", help=HELP["doctor"]),
    remedy: Optional[str] = typer.Option(None, help=HELP["remedy"]),
    restarts: Optional[int] = typer.Option(None, help=HELP["restarts"]),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the loss plot into the run's folder."),
    html_report: bool = typer.Option(False, "--report", help="Write the run's HTML page (gdlab report) into its "
                                     "folder when training ends, and print its path."),
    nproc: Optional[str] = typer.Option(None, help=ranks.NPROC_HELP, callback=parsed(ranks.parse_nproc)),
) -> None:
    """Train a model (an MLP on digits by default) and record the run."""
    given = given_flags(locals(), TRAIN_FLAGS)
    rank = ranks.launched_rank()
    if nproc is not None and int(nproc) > 1 and rank is None:  # this process launches the ranks, and waits
        if resume is None:
            chosen = Config.from_toml(config, given) if config else Config.from_dict(given, source="option")
            ranks.check_batch(int(nproc), chosen.batch_size)
        ranks.launch(int(nproc), "train")
    if rank:  # a rank other than 0 trains and says nothing
        quiet, as_json, plot = True, False, False
    from gdlab.experiment import resume as resume_run
    from gdlab.experiment import run

    show = not (quiet or as_json)
    if resume is not None:
        extra = sorted(set(given) - {"epochs", "steps", "store", "model", "data"})  # model, data: consent
        if extra or config is not None:
            flag = "--" + (extra[0] if extra else "config").replace("_", "-")
            raise InvalidParameter(flag, given.get(extra[0]) if extra else str(config),
                                   "no settings with --resume: the run keeps its stored config (only --epochs, "
                                   "--steps and --store may be given)")
        if force and not rank:  # what no check can settle, the user does; rank 0 alone stores
            from gdlab.store import Store

            Store(given.get("store", "gdlab-runs"), create=False, write=True).abandon(resume)
        result = resume_run(resume, store=given.get("store", "gdlab-runs"), epochs=epochs, steps=steps,
                            progress=not quiet, callbacks=(ResumePrinter(),) if show else (),
                            model=given.get("model"), data=given.get("data"), trust_store=trust_store)
        settings = None
    else:
        if force:
            raise InvalidParameter("--force", True, "--resume RUN with it (it resumes a run marked running)")
        if trust_store:
            raise InvalidParameter("--trust-store", True, "--resume RUN with it (a new run's code is named on its "
                                   "command line)")
        settings = Config.from_toml(config, given) if config else Config.from_dict(given, source="option")
        result = run(settings, progress=not quiet, callbacks=(SetupPrinter(settings),) if show else ())
    if not rank:  # one process, or rank 0
        report(result, store or (settings.store if settings else "gdlab-runs"), show, as_json, plot, html_report)


def report(result: Any, store_path: str, show: bool, as_json: bool, plot: bool, html: bool = False) -> None:
    """Plot the run's losses into its folder (and with ``html`` write its HTML page there), print its summary (or
    JSON), and exit 130 when it was stopped."""
    from gdlab.store import Store

    db = Store(store_path)
    stored = db.get(result.run_id)
    plot_path = None
    if plot:
        from gdlab.plots import plot_losses

        plot_path = plot_losses(result.history, stored.dir / "loss.png", title=f"run {result.run_id}")
    page = None
    if html:
        from gdlab.reports import report as write_report

        page = write_report(result.run_id, stored.dir / "report.html", store=db)
    if as_json:
        print(to_json({**result_payload(result, stored, plot_path), **({"report": str(page)} if page else {})}))
    elif show:
        print_summary(result, plot_path)
    if page is not None and not as_json:
        out.print(f"[bold]report[/] {safe(page)}")
    if result.status == "stopped":
        err.print(f"stopped at step {result.steps}; continue with: gdlab train --resume {safe(result.run_id)}"
                  + (f" --store {safe(store_path)}" if store_path != "gdlab-runs" else ""))
        raise typer.Exit(130)


def result_payload(result: Any, stored: Any, plot_path: Path | None) -> dict[str, Any]:
    """What ``gdlab train --json`` prints."""
    return {
        "run_id": result.run_id,
        "status": result.status,
        "lr": result.lr,
        "seconds": result.seconds,
        "steps": result.steps,
        "epochs": epochs_done(result),
        "plan": {k: result.plan.to_dict()[k] for k in ("samples", "batch_size", "iterations_per_epoch",
                                                      "last_batch", "mode", "drop_last")},
        "final": result.final,
        "stop_reason": result.stop_reason,
        "findings": [dict(f) if isinstance(f, dict) else vars(f) for f in result.findings],
        "remedies": [r.to_dict() for r in result.remedies],
        "diagnosis": result.diagnosis.to_dict() if result.diagnosis is not None else None,
        "lr_selection": result.lr_selection.to_dict() if result.lr_selection is not None else None,
        "plot": str(plot_path) if plot_path else None,
        "checkpoint": str(stored.checkpoint),
    }


class SetupPrinter(Callback):
    """Prints what is about to run (data, model, optimizer, batch plan) as the loop starts."""

    def __init__(self, settings: Config) -> None:
        self.settings = settings

    def on_fit_start(self, state: LoopState) -> None:
        s = self.settings
        parameters = sum(p.numel() for p in state.model.parameters())
        val = f", {state.val_samples} val" if state.val_samples else ", no validation"
        out.print(f"[bold]data[/]      {safe(s.data)}: {state.plan.samples} train{val}")
        out.print(f"[bold]model[/]     {safe(s.model)}, {parameters:,} parameters")
        momentum = f", momentum {s.momentum}" if s.momentum is not None else ""
        chosen = state.optimizer.param_groups[0].get("lr", s.lr)
        auto = " (auto)" if s.lr == "auto" else ""
        out.print(f"[bold]optimizer[/] {safe(s.optimizer)}, lr {chosen:.4g}{auto}{safe(momentum)}")
        out.print(f"[bold]plan[/]      {state.plan.describe()}")


class ResumePrinter(Callback):
    """Says where a resumed run picks up."""

    def on_fit_start(self, state: LoopState) -> None:
        done = state.step >= state.total_steps
        out.print(f"[bold]resuming[/] run {safe(state.run_id)} at step {state.step} (epoch {state.epoch + 1}, "
                  f"iteration {state.iteration}) of {state.total_steps}"
                  + ("; nothing left to train: give more --epochs or --steps" if done else ""))
        out.print(f"[bold]plan[/]      {state.plan.describe()}")


def print_summary(result: Any, plot_path: Path | None) -> None:
    """The end of a run: time, why it stopped, final losses, the doctor's findings, where it is stored."""
    final = result.final
    if result.lr_selection is not None:
        chosen = result.lr_selection
        out.print(f"[bold]lr auto[/]   {chosen.lr:.4g}: {safe(chosen.reason)} (cost {chosen.cost:.2f} trainings)")
    epochs = epochs_done(result)
    word = "stopped" if result.status == "stopped" else "finished"
    out.print(f"[bold]{word}[/] in {result.seconds:.1f} s: {epochs:g} epoch{'s' if epochs != 1 else ''}, "
              f"{result.steps} iteration{'s' if result.steps != 1 else ''}")
    if result.stop_reason and result.stop_reason != "interrupted":
        colour = "red" if result.stop_reason.startswith("diverged") else "yellow"
        out.print(f"[{colour}]{safe(result.stop_reason)}[/]")
    def loss(value: Any) -> str:  # a loss that was not finite (NaN or inf: JSON null) reads "non-finite", never 0
        return "non-finite" if isinstance(value, float) and not math.isfinite(value) else num(value)

    parts = [f"train loss {loss(final.get('train_loss'))}"]
    if final.get("val_loss") is not None:
        parts.append(f"val loss {loss(final['val_loss'])}")
    if final.get("val_accuracy") is not None:
        parts.append(f"val accuracy {final['val_accuracy']:.2%}")
    if final.get("val_subset_accuracy") is not None:
        parts.append(f"val exact match {final['val_subset_accuracy']:.2%}")
    for key, label in (("val_mae", "val MAE"), ("val_r2", "val R²")):
        if final.get(key) is not None:
            parts.append(f"{label} {num(final[key])}")
    out.print("   ".join(parts))
    from gdlab.doctor.story import of_result

    print_doctor(of_result(result))
    out.print(f"[bold]run[/]  {safe(result.run_id)}   (gdlab show {safe(result.run_id)})")
    if plot_path:
        out.print(f"[bold]plot[/] {safe(plot_path)}")


def epochs_done(result: Any) -> float:
    """Epochs trained, with the fraction of one that a step budget or a stop cut short."""
    return round(result.steps / result.plan.iterations_per_epoch, 2)


COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


def print_doctor(story: Any, *, undiagnosed: str | None = None) -> None:
    """The doctor's story of a run (a :class:`gdlab.doctor.Diagnosis`: ``Result.diagnosis``, or
    :func:`gdlab.doctor.explain` on a stored run's findings): the remedies applied, a header (findings, steps, root
    causes, run id), then each root cause with its evidence, its remedy and the consequences it explains, as
    :func:`gdlab.doctor.story_lines` prints it (the one printer, the callbacks' lines), coloured here, their text
    printed as text; with no findings, ``undiagnosed`` (why the doctor did not read the run) when given."""
    from gdlab.doctor import story_lines

    for line in story_lines(story, undiagnosed=undiagnosed):
        out.print(styled(line))


def styled(line: Any) -> str:
    """One line of the story as console markup: a finding's severity in its colour, a label (``remedy:``,
    ``doctor:``...) in bold, the rest as text (:func:`gdlab.cli.root.safe`)."""
    text = line.text
    body = text.lstrip(" ")
    pad = text[: len(text) - len(body)]
    if line.severity:
        word, _, rest = body.partition(" ")
        return f"{pad}[{COLOURS.get(line.severity, 'white')}]{safe(word)}[/] {safe(rest)}"
    if line.kind in ("header", "none", "applied", "remedy", "because"):
        label, sep, rest = body.partition(":")
        return f"{pad}[bold]{safe(label)}{sep}[/]{safe(rest)}"
    return safe(text)
