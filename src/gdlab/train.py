"""``fit``: train a model by gradient descent, watched by the instruments and the doctor, recorded in the store.

``fit`` composes the parts: the :class:`~gdlab.problem.Problem` (device, data, loss, plan, checks), the
optimizer (``lr="auto"`` chooses its learning rate first), the instruments and the doctor, the run's record in the
store, and the loop itself (:func:`gdlab.loop.run`), which reads like the lecture's four steps.

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> result = gdlab.fit(torch.nn.Linear(3, 1), (X, y), optimizer="sgd", lr=0.1, epochs=30, progress=False)
    >>> result.final["train_loss"] < 1e-3
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from gdlab import distributed, loop, optim
from gdlab.callbacks import POSITION, Recorder, Scheduler
from gdlab.config import DEFAULT_EPOCHS, Config, check_settings
from gdlab.data import BatchPlan, structure
from gdlab.data.source import Source
from gdlab.doctor import Doctor, explain, restart_remedy, run_settings, trace_activations
from gdlab.errors import InvalidParameter, StoreError
from gdlab.instruments import attach
from gdlab.loop import Callback, LoopState, Result
from gdlab.lr_select import select_lr
from gdlab.optim import schedules
from gdlab.optim.schedules import Schedule
from gdlab.problem import LossFn, Problem, TargetScale, check_budget, evaluate
from gdlab.records import input_scales
from gdlab.store import Store
from gdlab.threads import restored
from gdlab.threads import use as use_threads

__all__ = ["fit"]


@restored  # torch's thread count is put back as it was when fit returns or raises
def fit(
    model: nn.Module,
    train: Dataset | tuple[torch.Tensor, torch.Tensor],
    *,
    loss: str | LossFn = Config.loss,
    optimizer: optim.OptimizerSpec = Config.optimizer,
    lr: float | str = Config.lr,
    momentum: float | None = None,
    batch_size: int | str = Config.batch_size,
    epochs: int | None = None,
    steps: int | None = None,
    val: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = Config.seed,
    device: str | torch.device = Config.device,
    callbacks: Sequence[Callback] = (),
    store: Store | str | Path | None = None,
    progress: bool = True,
    drop_last: bool = False,
    tol: float | None = None,
    patience: int | None = None,
    checkpoint_every: int | None = None,
    step_rows: int = Config.step_rows,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    resume: str | None = None,
    schedule: str | Schedule | None = None,
    lr_select: str = Config.lr_select,
    instruments: str | Sequence[Any] = Config.instruments,
    doctor: bool = Config.doctor,
    remedy: str = Config.remedy,
    restarts: int = Config.restarts,
    model_fn: Callable[[], nn.Module] | None = None,
    log_every: int = loop.LOG_EVERY,
    precision: str = Config.precision,
    target_key: str | None = None,
    threads: int | str = Config.threads,
    tensorboard: str | Path | None = None,
    standardize_target: bool = False,
    **optimizer_options: Any,
) -> Result:
    """Train ``model`` on ``train`` by gradient descent.

    Args:
        model: any ``nn.Module``; trained in place.
        train: the training data: an ``(X, y)`` pair; a ``TensorDataset(*inputs, target)``; a pair whose inputs
            are a tuple (``model(*inputs)``) or a dict (``model(**inputs)``) of tensors; a dict of tensors with a
            target key; or any ``Dataset`` whose samples take one of those forms. In-memory data is batched by
            index on the device; any other Dataset goes through a DataLoader with the same index batches.
            Floating-point inputs follow the model's dtype; integer and bool inputs (token ids) keep theirs.
        loss: ``"auto"`` (cross-entropy for integer class targets, mean squared error otherwise), a name in
            ``LOSSES``, a callable ``(output, target) -> loss``, or ``"model"``: the model is given the target
            too (last positional argument, or ``labels=`` / the target's key for dict inputs) and returns its
            own loss, as a tensor or as ``.loss`` (Hugging Face models).
        optimizer: a name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``),
            a factory ``params -> Optimizer`` or a ``torch.optim.Optimizer``.
        lr: learning rate of a named optimizer, or ``"auto"``: chosen before training by a short parallel sweep
            (``lr_select="sweep"``, see :func:`gdlab.lr_select.select_lr`) or the range test
            (``lr_select="range-test"``); ``Result.lr_selection`` says what was tried and why the winner won.
        momentum: its momentum (None keeps the optimizer's default).
        batch_size: ``"full"`` (batch gradient descent), ``"stochastic"`` (one sample) or a positive integer.
        epochs, steps: the budget; the loop stops at whichever comes first (30 epochs, ``Config``'s, when neither
            is given).
        val: validation data, evaluated at the end of every epoch.
        seed: seeds data order and the parameter-free randomness (dropout): the same seed gives the same run.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.
        callbacks: objects with methods named after :data:`~gdlab.loop.EVENTS`.
        store: a :class:`Store` or its folder: the run, its metrics and checkpoints are recorded there.
        progress: show a progress bar (epoch, iteration, loss, speed) on stderr.
        drop_last: drop a short last batch each epoch.
        tol: stop when the epoch's train loss changes by less than ``tol``.
        patience: stop when the validation loss has not improved for ``patience`` epochs.
        checkpoint_every: steps between checkpoints (with a store); None checkpoints at every epoch's end.
        step_rows: with a store, the run's newest steps kept as recorded; the steps before them are merged into
            buckets holding each metric's mean, min and max (a spike survives as its bucket's max), so a long run's
            record stays bounded. 0 keeps every step.
        name: a name for the stored run. config: the settings to store with the run.
        resume: a stored run's id: continue it from its last checkpoint (needs ``store``).
        schedule: a learning-rate schedule: a function of the step, or text as ``--schedule`` takes it
            (``cosine``, ``step:EVERY:GAMMA``, ``one_cycle``, ``plateau``, ``warmup:N,cosine``...).
        instruments: ``"default"`` (cheap and periodic), ``"cheap"``, ``"full"`` (adds the expensive ones),
            ``"none"``, or a list of instruments (see :mod:`gdlab.instruments`).
        doctor: run the doctor's detectors at the end (``Result.findings``, see :mod:`gdlab.doctor`).
        remedy: ``"suggest"`` (findings carry a remedy), ``"auto"`` (the doctor acts during the run:
            ``Result.remedies``) or ``"off"``.
        restarts: with ``remedy="auto"``, when the doctor finds the run settled in a (perhaps local) minimum,
            train this many new initial points as one population with the same settings and keep the best if it
            beats the run (the model's parameters are replaced; ``Result.remedies`` says so). 0: only suggest.
        model_fn: builds a fresh model for the restarts (called after seeding torch); by default a copy of
            ``model`` whose modules re-draw their parameters with ``reset_parameters()``.
        log_every: steps between host reads of the loss and gradient norms. Between them the loop never waits
            for the device; a non-finite loss is caught at the next read and the parameters rolled back to the
            last good point (at most ``log_every`` steps before).
        precision: ``"32"`` (as the model is), ``"bf16-mixed"`` or ``"16-mixed"``, as Lightning names them: the
            forward pass and the loss run under ``torch.autocast`` in bfloat16 or float16 while parameters,
            gradients and updates keep the model's dtype; ``"16-mixed"`` also scales the loss with
            ``torch.amp.GradScaler`` (a step with non-finite gradients is skipped). Validation runs under the same
            autocast; the instruments' extra passes and their readings stay in full precision.
        target_key: the target's key in dict samples (default: ``y``, ``label`` or ``labels``, whichever is
            there); the other keys are the model's keyword inputs.
        threads: torch's CPU thread count for this run: ``"auto"`` (1 for a model too small to gain from more:
            parameters x batch size below ``gdlab.threads.AUTO_WORK``; else torch's count; a GPU run is left as
            it is) or a positive integer. Set when training starts (before ``lr="auto"`` chooses) and put back
            as it was when ``fit`` returns or raises.
        tensorboard: a folder to write TensorBoard event files into as the run trains: the loss, lr, validation
            metrics and every instrument column (at each epoch's end), the doctor's findings as text at their
            steps (at the end). Needs the ``tensorboard`` package (``pip install 'gdlab[tensorboard]'``).
        standardize_target: regression on in-memory data: train on targets scaled to mean 0 and std 1 (the
            training targets' statistics), with the model's outputs mapped back to the targets' units by a forward
            hook (:class:`~gdlab.problem.TargetScale`): predictions, MAE and R^2 are in the original units, the
            loss is the standardised one. For targets far from unit scale (prices around 3e5), which otherwise
            swamp the gradient: ``fit(model, (X, prices), standardize_target=True)``.
        **optimizer_options: ``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``nesterov``, ``clip_norm`` for a
            named optimizer.

    Under ``torchrun`` (or an initialised process group of several ranks), ``fit`` trains data-parallel
    (:mod:`gdlab.distributed`): ``batch_size`` is the global batch, each rank takes its slice of it, the model is
    wrapped in ``DistributedDataParallel``, and only rank 0 stores, prints and draws the bar; every rank returns
    the same ``Result``.

    Returns:
        A :class:`~gdlab.loop.Result`.
    """
    # (0) check everything before anything is stored
    epochs, steps = check_budget(epochs, steps, DEFAULT_EPOCHS)
    check_settings(tol=tol, patience=patience, checkpoint_every=checkpoint_every, log_every=log_every, doctor=doctor,
                   remedy=remedy, restarts=restarts, seed=seed, step_rows=step_rows, lr_select=lr_select,
                   standardize_target=standardize_target)  # the one check of the settings (gdlab.config)
    watching = attach(instruments)
    ranks = distributed.setup()  # None in one process
    if ranks is not None:
        if resume is not None and store is None and ranks.main:  # rank 0 reads the run; the others get it from it
            raise InvalidParameter("resume", resume, "a store holding the run (store=...)")
        device = ranks.device(device)
        progress = progress and ranks.main
        if not ranks.main:  # rank 0 alone stores and writes
            store = tensorboard = None
    board = None
    if tensorboard is not None:
        from gdlab.integrations.tensorboard import TensorBoard  # an edge: tensorboard is imported only when asked

        board = TensorBoard(tensorboard)
    physician = Doctor(remedy, optimizer=optimizer if isinstance(optimizer, str) else None) \
        if doctor or remedy == "auto" else None
    problem = Problem.make(model, train, val=val, loss=loss, batch_size=batch_size, drop_last=drop_last,
                           device=device, target_key=target_key, precision=precision,
                           ranks=(ranks.rank, ranks.world) if ranks is not None else (0, 1))
    if patience is not None and problem.val is None:
        raise InvalidParameter("patience", patience, "validation data to watch (val=..., or --val / --val-split)")
    target_scale = TargetScale.for_source(problem.source) if standardize_target else None
    if target_scale is not None:  # the loss on standardised targets, the outputs mapped back to their units
        problem.loss_fn = target_scale.loss(problem.loss_fn)
        target_scale.attach(problem.model)
    use_threads(threads, model, batch_size=problem.plan.batch_size, device=problem.device)
    total = problem.total_steps(epochs, steps)
    selection = None
    if isinstance(lr, str):
        lr, selection = _auto_lr(lr, lr_select, model, train, val, optimizer, momentum, total, batch_size, loss,
                                 seed, problem.device, progress, store, resume,
                                 {**optimizer_options, "target_key": target_key}, ranks.world if ranks else 1)
        if ranks is not None:  # every rank chose alike (the sweep spread over them); rank 0's choice stands for all
            lr = float(distributed.broadcast(lr))
    opt = optim.make(optimizer, model.parameters(), lr=lr, momentum=momentum, **optimizer_options)
    if isinstance(schedule, str):
        # the schedule's base: the named optimizer's lr, or the first group's of an optimizer given as an object
        schedule = schedules.parse(schedule, lr if isinstance(optimizer, str) else float(opt.param_groups[0]["lr"]),
                                   total)
    db = store if isinstance(store, Store) or store is None else Store(store)
    if resume is not None and db is None and ranks is None:
        raise InvalidParameter("resume", resume, "a store holding the run (store=...)")

    # (1) start from the model's parameters (or a stored run's last checkpoint)
    state = LoopState.start(problem, opt, total_steps=total, seed=seed)
    meta = _meta(model, opt, problem.source, problem.plan, scales=physician is not None)
    meta.update(val_samples=len(problem.val) if problem.val is not None else None,
                clip_norm=optimizer_options.get("clip_norm"), standardize_target=standardize_target)
    if physician is not None and problem.task == "regression" and problem.source.tensors is not None:
        meta.update((target_scale or TargetScale.for_source(problem.source)).meta())  # the targets' scale
    state.history.meta.update(meta)
    recorder = None
    if db is not None:
        described = dict(config or _describe(model, optimizer, lr, momentum, batch_size, epochs, steps, seed,
                                             problem.loss_name))
        if selection is not None:
            described["lr_selection"] = selection.to_dict()
        recorder = _open_record(db, resume, state, described, config, name, step_rows)
        state.history.meta.update(meta)  # a resumed run's history is the stored one: the doctor reads this run's
    if ranks is not None:
        _share_start(state, resume is not None)
    if resume is None:
        torch.manual_seed(seed)  # parameter-free randomness (dropout) follows the seed

    # (2)-(4) the loop: batches, loss and gradient, update, record; watched by the hooks
    hooks: list[Any] = [*([Scheduler(schedule)] if schedule is not None else []), *watching,
                        *([physician] if physician else []), *callbacks, *([recorder] if recorder else []),
                        *([board] if board else [])]
    if progress:
        from gdlab.progress import ProgressBar  # an edge: rich is imported only when a bar is wanted

        hooks.append(ProgressBar())
    agree = None
    if ranks is not None:
        agree = distributed.Agreement(ranks, (lambda: len(physician.remedies)) if physician else None)
    try:
        # the gradient norms feed the instruments and the doctor: a bare run does not read its gradients twice
        loop.run(problem, state, hooks, tol=tol, patience=patience, log_every=log_every,
                 grad_norms=bool(watching) or physician is not None,
                 checkpoint=recorder.checkpoint if recorder else None, checkpoint_every=checkpoint_every,
                 ranks=ranks, agree=agree)
    except BaseException as error:
        if recorder:
            recorder.fail(state, error, state.seconds)
        if board:
            board.write(state.history)
            board.close()
        raise

    # the end: final metrics, the restarts remedy, findings and the run's record closed
    final = loop.final_metrics(problem, state)
    status = "stopped" if state.interrupted else "finished"
    if physician and restarts and not state.interrupted and \
            any(f.code == "local_minimum" for f in physician.findings):
        # the lr the run ended with (the doctor's, if it changed it)
        final = _restart(physician, state, final, train, val, restarts, model_fn, optimizer, state.lr,
                         optimizer_options, loss, problem.device, progress, recorder, schedule)
        if ranks is not None:  # every rank restarted alike; rank 0's model stands for all
            distributed.share_state(state.model, state.optimizer)
    findings = physician.findings if physician and doctor else []
    remedies = physician.remedies if physician else []
    if recorder:
        recorder.finish(state, status, final, findings, remedies)
    if board:
        board.close(findings, remedies)
    if ranks is not None:  # the ranks leave fit together: none goes on (or exits) while a peer still speaks to it
        torch.distributed.barrier()
    return Result(model, state.history, final, state.lr, state.run_id, state.seconds, problem.plan, status,
                  state.stop_reason, state.step, findings=list(findings), lr_selection=selection,
                  remedies=list(remedies),
                  diagnosis=explain(findings, run_id=state.run_id, remedies=remedies, steps=state.step)
                  if physician and doctor else None)


def _share_start(state: LoopState, resumed: bool) -> None:
    """Data-parallel: every rank takes rank 0's run id and, for a resumed run, rank 0's restored parameters,
    optimizer state, position and history (rank 0 alone reads the store)."""
    if not resumed:
        state.run_id = distributed.broadcast(state.run_id)
        return
    main = distributed.is_main()
    shared = distributed.broadcast((state.run_id, {key: getattr(state, key) for key in POSITION}, state.history)
                                   if main else None)
    distributed.share_state(state.model, state.optimizer)
    if not main:
        state.run_id, position, state.history = shared
        for key, value in position.items():
            setattr(state, key, value)
        state.loss = state.history.steps.last("loss")


def _open_record(db: Store, resume: str | None, state: LoopState, described: dict[str, Any],
                 config: dict[str, Any] | None, name: str | None, step_rows: int) -> Recorder:
    """A new stored run, or the stored run ``resume`` restored into ``state`` from its last checkpoint."""
    if resume is not None:
        run = db.get(resume)
        if run.status == "running":
            raise StoreError(f"run {run.id} is still running in another process: stop it first (Ctrl-C), "
                             "then resume it; if no process runs it any more (killed in a container, on another "
                             "machine), resume it with gdlab train --resume RUN --force (Store.abandon)")
        recorder = Recorder(db, run.id, step_rows=step_rows)
        recorder.restore(state, config)
    else:
        described["doctor_meta"] = {k: v for k, v in state.history.meta.items() if k not in ("lr", "momentum")}
        recorder = Recorder(db, db.create_run(described, state.plan.to_dict(), name=name), step_rows=step_rows)
    state.run_id = recorder.run_id
    return recorder


def _meta(model: nn.Module, opt: torch.optim.Optimizer, source: Source, plan: BatchPlan, *,
          scales: bool) -> dict[str, Any]:
    """What the doctor reads besides the numbers: settings, the task and the scale of each input feature (the
    95th percentile of its absolute value, from ``records.stats.input_scales``; only when the doctor reads them)."""
    group = opt.param_groups[0]
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    linear_only = len(owners) == 1 and isinstance(owners[0], nn.Linear)  # one linear layer: a convex loss
    meta: dict[str, Any] = {"lr": group.get("lr"), "momentum": group.get("momentum"), "batch_size": plan.batch_size,
                            "samples": plan.samples, "task": source.task, "num_classes": source.num_classes,
                            "convex": linear_only}
    if scales:  # the doctor reads them: the activations one forward pass on 2 samples calls (F.relu seen), once
        trace_activations(model, lambda: structure.call(model, source.spread(2)[0], None, source.target_key))
    settings = run_settings(model, opt)
    meta.update(activations=settings["activations"], activations_traced=settings["activations_traced"])
    features = structure.float_features(source.tensors.X) if scales and source.tensors is not None else None
    if features is not None:  # the floating-point inputs only: token ids and categories have no scale
        meta["feature_scales"] = input_scales(features)
    return meta


def _auto_lr(lr: str, method: str, model: nn.Module, train: Any, val: Any, optimizer: Any, momentum: float | None,
             total: int, batch_size: Any, loss: Any, seed: int, dev: torch.device, progress: bool, store: Any,
             resume: str | None, options: dict[str, Any], workers: int = 1) -> tuple[float, Any]:
    """``lr="auto"``: the chosen learning rate and the record of the choice (a resumed run keeps its own); with
    ``workers`` ranks, the sweep's learning rates are spread over them."""
    if lr != "auto":
        raise InvalidParameter("lr", lr, 'a finite number > 0, or "auto"')
    if not isinstance(optimizer, str):
        raise InvalidParameter("lr", "auto", "a named optimizer (lr='auto' tunes gdlab's optimizers by name)")
    chosen = None
    if resume is not None and store is not None:
        db = store if isinstance(store, Store) else Store(store)
        chosen = (db.get(resume).config.get("lr_selection") or {}).get("lr")
    if resume is not None and workers > 1:  # rank 0 alone reads the store: its answer for every rank
        chosen = distributed.broadcast(chosen)
    if chosen is not None:
        return float(chosen), None
    extra = {k: v for k, v in {**options, "momentum": momentum}.items() if v is not None and k != "clip_norm"}
    selection = select_lr(model, train, optimizer=optimizer, method=method, total_steps=total,
                          batch_size=batch_size, val=val, loss=loss, seed=seed, device=dev, progress=progress,
                          workers=workers, **extra)
    return selection.lr, selection


def _restart(physician: Any, state: LoopState, final: dict[str, float | None], train: Any, val: Any,
             restarts: int, model_fn: Callable[[], nn.Module] | None, optimizer: Any, lr: float,
             options: dict[str, Any], loss: Any, dev: torch.device, progress: bool,
             recorder: Recorder | None, schedule: Any) -> dict[str, float | None]:
    """The ``local_minimum`` remedy: restarts as one population; the best replaces the model if it beats it."""
    score = final["val_loss"] if val is not None else final["train_loss"]
    group = state.optimizer.param_groups[0]
    hyper = {"lr": lr, **options}
    if group.get("momentum") is not None:  # the optimizers that take momentum keep it in their group
        hyper["momentum"] = group["momentum"]
    record, best = restart_remedy(score if score is not None else math.inf, state.model, train, restarts=restarts,
                                  seed=state.seed, model_fn=model_fn, optimizer=optimizer, hyper=hyper,
                                  batch_size=state.plan.batch_size, steps=state.step, loss=loss, val=val,
                                  device=dev, progress=progress, step=state.step, schedule=schedule,
                                  target_key=state.target_key)
    physician.remedies.append(record)
    if best is None:
        return final
    state.model.load_state_dict(best.state_dict())
    if recorder:
        recorder.checkpoint(state)  # the stored model is the one kept
    kept = dict(final)
    if val is not None:
        kept.update({f"val_{k}": v for k, v in evaluate(state.model, val, loss).items()})
    kept["train_loss"] = evaluate(state.model, train, loss)["loss"]
    return kept


def _describe(model: nn.Module, optimizer: Any, lr: float, momentum: float | None, batch_size: Any,
              epochs: int | None, steps: int | None, seed: int, loss: str) -> dict[str, Any]:
    return {"model": type(model).__name__, "optimizer": optimizer if isinstance(optimizer, str) else
            type(optimizer).__name__, "lr": lr, "momentum": momentum, "batch_size": batch_size, "epochs": epochs,
            "steps": steps, "seed": seed, "loss": loss}
