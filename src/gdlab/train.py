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
from gdlab.callbacks import Recorder, Scheduler
from gdlab.config import DEFAULT_EPOCHS, Config, check_settings
from gdlab.data import structure
from gdlab.doctor import Doctor, restart_remedy, run_settings, trace_activations
from gdlab.errors import InvalidParameter
from gdlab.instruments import attach
from gdlab.loop import Callback, LoopState, Result
from gdlab.lr_select import select_lr
from gdlab.optim import schedules
from gdlab.optim.schedules import Schedule
from gdlab.problem import LossFn, Problem, TargetScale, check_budget, evaluate
from gdlab.records import input_scales
from gdlab.run import Run, describe, start_meta
from gdlab.store import Store
from gdlab.threads import restored
from gdlab.threads import use as use_threads
from gdlab.watching.loopchecks import LoopChecks

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
        threads: torch's CPU thread count for this run: ``"auto"`` (measured: the first training steps alternate
            1 thread and torch's count, and the faster is kept, :class:`gdlab.threads.ThreadChooser`; a GPU run is
            left as it is) or a positive integer. Put back as it was when ``fit`` returns or raises. Like
            ``cudnn.benchmark``, a measured choice may differ between two runs, and with it the last bits of sums
            split over threads: for bit-identical reruns, give a number.
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
    # (0) check everything before anything is stored; the problem: device, data, loss, plan, the model's checks
    epochs, steps = check_budget(epochs, steps, DEFAULT_EPOCHS)
    check_settings(tol=tol, patience=patience, checkpoint_every=checkpoint_every, log_every=log_every, doctor=doctor,
                   remedy=remedy, restarts=restarts, seed=seed, step_rows=step_rows, lr_select=lr_select,
                   standardize_target=standardize_target)  # the one check of the settings (gdlab.config)
    watching = attach(instruments)
    ranks = distributed.setup()  # None in one process; else rank 0 alone stores, prints and writes
    if ranks is not None and resume is not None and store is None and ranks.main:
        raise InvalidParameter("resume", resume, "a store holding the run (store=...)")
    main = ranks is None or ranks.main
    physician = Doctor(remedy, optimizer=optimizer if isinstance(optimizer, str) else None) \
        if doctor or remedy == "auto" else None
    problem = _problem(model, train, val, loss, batch_size, drop_last, ranks.device(device) if ranks else device,
                       target_key, precision, ranks, patience, standardize_target)
    chooser = use_threads(threads, device=problem.device)  # "auto": timed on the first steps (ThreadChooser)
    total = problem.total_steps(epochs, steps)
    selection = None
    if isinstance(lr, str):  # lr="auto": chosen by a short parallel sweep (or the range test) before training
        lr, selection = _auto_lr(lr, lr_select, model, train, val, optimizer, momentum, total, batch_size, loss,
                                 seed, problem.device, progress and main, store, resume,
                                 {**optimizer_options, "target_key": target_key}, ranks.world if ranks else 1)
        if ranks is not None:  # every rank chose alike (the sweep spread over them); rank 0's choice stands for all
            lr = float(distributed.broadcast(lr))
    opt = optim.make(optimizer, model.parameters(), lr=lr, momentum=momentum, **optimizer_options)
    if isinstance(schedule, str):  # its base: the named optimizer's lr, or the first group's of an optimizer object
        schedule = schedules.parse(schedule, lr if isinstance(optimizer, str) else float(opt.param_groups[0]["lr"]),
                                   total)
    if resume is not None and store is None and ranks is None:
        raise InvalidParameter("resume", resume, "a store holding the run (store=...)")

    # (1) start from the model's parameters (or a stored run's last checkpoint): the run, recorded in the store
    state = LoopState.start(problem, opt, total_steps=total, seed=seed)
    state.history.meta.update(_meta(model, opt, problem, scales=physician is not None,
                                    clip_norm=optimizer_options.get("clip_norm"),
                                    standardize_target=standardize_target))
    run = Run(state, doctor=physician, diagnose=doctor, callbacks=callbacks, store=store if main else None,
              watching=[*([chooser] if chooser else []), *([Scheduler(schedule)] if schedule else []), *watching,
                        *([LoopChecks()] if physician else [])],  # the loop's own bugs (watching/loopchecks.py)
              tensorboard=tensorboard if main else None, progress=progress and main, ranks=ranks, step_rows=step_rows,
              checkpoint_share=Recorder.CHECKPOINT_SHARE if checkpoint_every is None else None)  # paced: at most 2%
    described = dict(config or describe(model, optimizer, lr=lr, momentum=momentum, batch_size=batch_size,
                                        epochs=epochs, steps=steps, seed=seed, loss=problem.loss_name))
    run.record({**described, **({"lr_selection": selection.to_dict()} if selection else {})},
               plan=problem.plan.to_dict(), name=name, resume=resume, config=config)
    run.share_start(resume is not None)
    if resume is None:
        torch.manual_seed(seed)  # parameter-free randomness (dropout) follows the seed

    # (2)-(4) the loop: batches, loss and gradient, update, record; watched by the hooks
    try:  # the gradient norms feed the instruments and the doctor: a bare run does not read its gradients twice
        loop.run(problem, state, run.hooks, tol=tol, patience=patience, log_every=log_every,
                 grad_norms=bool(watching) or physician is not None, checkpoint_every=checkpoint_every,
                 checkpoint=run.recorder.checkpoint if run.recorder else None, ranks=ranks, agree=run.agreement())
    except BaseException as error:
        run.fail(error)
        raise

    # the end: final metrics, the restarts remedy (a run settled in a perhaps local minimum), the run's record closed
    final = loop.final_metrics(state, loop.val_metrics(problem))
    if physician and restarts and not state.interrupted and \
            any(f.code == "local_minimum" for f in physician.findings):
        final = _restart(physician, state, final, train, val, restarts, model_fn, optimizer, state.lr,
                         optimizer_options, loss, problem.device, progress, run.recorder, schedule)
        if ranks is not None:  # every rank restarted alike; rank 0's model stands for all
            distributed.share_state(state.model, state.optimizer)
    return run.end(final, "stopped" if state.interrupted else "finished", lr_selection=selection, model=model)


def _problem(model: nn.Module, train: Any, val: Any, loss: Any, batch_size: Any, drop_last: bool,
             device: str | torch.device, target_key: str | None, precision: str, ranks: distributed.Ranks | None,
             patience: int | None, standardize_target: bool) -> Problem:
    """The model and its data made ready and checked (:meth:`Problem.make`); with ``standardize_target``, the loss
    on standardised targets and the outputs mapped back to their units (:class:`TargetScale`)."""
    problem = Problem.make(model, train, val=val, loss=loss, batch_size=batch_size, drop_last=drop_last,
                           device=device, target_key=target_key, precision=precision,
                           ranks=(ranks.rank, ranks.world) if ranks is not None else (0, 1))
    if patience is not None and problem.val is None:
        raise InvalidParameter("patience", patience, "validation data to watch (val=..., or --val / --val-split)")
    if standardize_target:
        target_scale = TargetScale.for_source(problem.source)
        problem.loss_fn = target_scale.loss(problem.loss_fn)
        target_scale.attach(problem.model)
    return problem


def _meta(model: nn.Module, opt: torch.optim.Optimizer, problem: Problem, *, scales: bool,
          **settings: Any) -> dict[str, Any]:
    """What the doctor reads besides the numbers: the start's (:func:`gdlab.run.start_meta`), the plan, the task,
    ``settings``; where the doctor reads them (``scales``), the activations one forward pass on 2 samples calls, the
    scale of each floating-point input feature (the 95th percentile of its absolute value) and, for regression,
    the targets' scale."""
    source, plan = problem.source, problem.plan
    meta: dict[str, Any] = {**start_meta(model, opt), "batch_size": plan.batch_size, "samples": plan.samples,
                            "task": source.task, "num_classes": source.num_classes, **settings,
                            "val_samples": len(problem.val) if problem.val is not None else None}
    if scales:  # the activations the forward pass calls (F.relu seen), once
        trace_activations(model, lambda: structure.call(model, source.spread(2)[0], None, source.target_key))
    traced = run_settings(model, opt)
    meta.update(activations=traced["activations"], activations_traced=traced["activations_traced"])
    features = structure.float_features(source.tensors.X) if scales and source.tensors is not None else None
    if features is not None:  # the floating-point inputs only: token ids and categories have no scale
        meta["feature_scales"] = input_scales(features)
    if scales and problem.task == "regression" and source.tensors is not None:
        meta.update(TargetScale.for_source(source).meta())  # the targets' scale
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
