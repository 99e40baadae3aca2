"""Lightning: the instruments and the doctor in a ``lightning.pytorch.Trainer``, as a callback.

::

    from gdlab.integrations.lightning import Doctor

    doctor = Doctor(store="gdlab-runs")
    trainer = lightning.pytorch.Trainer(max_epochs=10, callbacks=[doctor])
    trainer.fit(module, train_loader, val_loader)
    doctor.report.findings   # a gdlab Result, as gdlab.watch's close() returns it

:class:`Doctor` is built on :func:`gdlab.watch`: at the fit's start it watches the LightningModule and the trainer's
first optimizer; each optimizer step ends a gdlab step with the training step's loss (``outputs["loss"]``, or
``outputs`` when ``training_step`` returns a tensor); each training epoch's end (after its validation, in
Lightning 2) closes a gdlab epoch with ``val_loss`` and the other ``val_...`` metrics from
``trainer.callback_metrics``, and logs the mean of every step column of the epoch (the instruments', the loss, the
learning rate, the gradient norm) to the trainer's loggers as ``gdlab/<column>``. At the fit's end the doctor
diagnoses the run: its story (root causes first, each with its evidence, remedy and consequences, and the run id) is
printed as every gdlab front door prints it (:func:`gdlab.doctor.story_lines`), and kept in :attr:`Doctor.report`.

With gradient accumulation, a gdlab step is an optimizer step (``trainer.global_step`` moved): its loss is the sum of
the accumulated batches' losses (Lightning divides each by the accumulation), their mean. Lightning calls the
optimizer with a closure (the forward and backward pass run inside ``optimizer.step``), so the optimizer's step
hooks are not used: a step starts at the module's forward pass (call ``self(x)`` in ``training_step`` so that the
periodic instruments ride on it) and ends after the update, when the gradients are still the step's.

With several devices (``strategy="ddp"``, ``"ddp_spawn"``), only global rank zero watches, reports, logs and stores
(the other ranks train unwatched; the gradient norms it reads are after DDP's all-reduce). Its decisions reach every
rank through ``trainer.strategy.broadcast``: the stop after a divergence (``trainer.should_stop`` on every rank at
the same step) and, with ``remedy="auto"``, the learning rate and momentum the doctor set and the norm its
``clip_norm`` remedy clips to (applied by the callback in ``on_before_optimizer_step``, after the backward pass that
Lightning runs inside ``optimizer.step(closure)``).

It needs the ``lightning`` package (``pip install 'gdlab[lightning]'``); without it, importing this module raises
:class:`~gdlab.errors.MissingExtra` naming that command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdlab.doctor.story import finding_lines, report_text
from gdlab.errors import MissingExtra, check_int

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the extra is installed in the tests
    raise MissingExtra("gdlab.integrations.lightning needs the lightning package: "
                       "pip install 'gdlab[lightning]'") from None

import torch

from gdlab.loop import Result
from gdlab.run import describe
from gdlab.store import Store
from gdlab.watching import GRAD_NORM_EVERY, LOG_EVERY, Watch, hyperparameters, max_norm, watch

__all__ = ["Doctor", "PREFIX", "finding_line"]

PREFIX = "gdlab/"
_POSITION = {"step", "epoch"}  # the x axis, not a metric
_UNUSED_BATCH_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward",
                       "on_before_zero_grad", "on_validation_batch_start", "on_validation_batch_end")


def _loaders(loaders: Any) -> list[Any]:
    """A trainer's data loaders (one, a list, a dict of them, or None) as a list."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def _size(dataset: Any) -> int | None:
    """A data set's length, None where it has none (an iterable data set)."""
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _scalar(value: Any) -> float | None:
    """A logged metric as a float (a tensor is read here, at an epoch's end only), or None when it is not one."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach().item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def finding_line(finding: Any) -> str:
    """A finding as one line: the story printer's lines of it (:func:`gdlab.doctor.story.finding_lines`: its
    severity, code, step, explanation, evidence and remedy) joined by `` | ``."""
    return " | ".join(str(line).strip() for line in finding_lines(finding))


class Doctor(Callback):
    """A Lightning callback: :func:`gdlab.watch` on the trainer's module and first optimizer.

    Args:
        instruments: ``"default"``, ``"cheap"``, ``"full"``, ``"none"`` or a list, as :func:`gdlab.watch` takes.
        doctor: diagnose the run at the fit's end (``report.findings``).
        remedy: ``"suggest"`` (the default), ``"off"`` or ``"auto"`` (the doctor changes the learning rate in the
            optimizer's ``param_groups``; a scheduler of Lightning's may set it again).
        store: a :class:`~gdlab.store.Store` or its folder: the run is recorded there (``gdlab show``...).
        name, config: the stored run's name and settings.
        loss_fn: the loss ``(output, target) -> loss`` for the instruments that need a pass of their own (with
            ``batch=True``), as :func:`gdlab.watch` takes it.
        batch: give each step's batch (``(inputs, target)``) to the doctor, for those instruments.
        log: log the epoch's mean of each step column to the trainer's loggers (``gdlab/<column>``).
        echo: print the findings at the fit's end.
        log_every: steps between host reads of the loss and gradient norms (60, as :func:`gdlab.watch` reads).
        grad_norm_every: steps between readings of the gradient norms, as :func:`gdlab.watch` takes it.
        stop_on_divergence: set ``trainer.should_stop`` when the run diverged and nothing repaired it (with several
            devices, on every rank: rank zero's verdict is broadcast every ``log_every`` steps and at each epoch's
            end).

    After the fit, :attr:`report` is the :class:`~gdlab.loop.Result` (None on ranks other than zero).
    """

    def __init__(self, *, instruments: str | Sequence[Any] = "default", doctor: bool = True, remedy: str = "suggest",
                 store: Store | str | Path | None = None, name: str | None = None,
                 config: dict[str, Any] | None = None, loss_fn: Any = None, batch: bool = False, log: bool = True,
                 echo: bool = True, log_every: int = LOG_EVERY, stop_on_divergence: bool = True,
                 grad_norm_every: int = GRAD_NORM_EVERY) -> None:
        super().__init__()
        self.options: dict[str, Any] = {"instruments": instruments, "doctor": doctor, "remedy": remedy,
                                        "store": store, "name": name, "config": config, "loss_fn": loss_fn,
                                        "log_every": check_int(log_every, "log_every"),
                                        "grad_norm_every": grad_norm_every}
        self.batch, self.log, self.echo, self.stop_on_divergence = batch, log, echo, stop_on_divergence
        self.watch: Watch | None = None
        self.report: Result | None = None
        self._loss: Any = None  # the accumulated batches' losses, on the device
        self._global_step = 0
        self._steps = 0  # optimizer steps in this fit, on every rank
        self._clip: float | None = None  # the doctor's clip_norm remedy's norm, applied on every rank
        self._logged = 0  # step rows already logged
        # Lightning calls each callback's hooks on every batch (in a profiler context each) unless the attribute is
        # not callable: the per-batch hooks this callback does not use cost nothing as None
        for hook in _UNUSED_BATCH_HOOKS:
            if getattr(type(self), hook, None) is getattr(Callback, hook, None):  # not a subclass's own
                setattr(self, hook, None)

    # -- Lightning's hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.report, self.watch, self._loss, self._logged, self._steps, self._clip = None, None, None, 0, 0, None
        self._global_step = trainer.global_step  # on every rank: each counts the optimizer steps
        if not trainer.is_global_zero or not trainer.optimizers:
            return
        optimizer = trainer.optimizers[0]
        config = self.options["config"] or describe(
            pl_module, optimizer, lr=optimizer.param_groups[0].get("lr"),
            momentum=optimizer.param_groups[0].get("momentum"), loop="lightning",
            accumulate_grad_batches=trainer.accumulate_grad_batches)
        # on rank zero alone: the ranks agree through the trainer (_agree), not through the watch
        self.watch = watch(pl_module, optimizer, **{**self.options, "config": config}, hooks=False, ranks=False)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """The data sets' sizes, as ``fit`` gives them to the doctor: the training samples (``samples``) and the
        validation samples behind each ``val_loss`` (``val_samples``: the noise of a validation point)."""
        watched = self.watch
        if watched is None:
            return
        meta = watched.history.meta
        for key, loaders in (("samples", trainer.train_dataloader), ("val_samples", trainer.val_dataloaders)):
            sizes = [_size(getattr(d, "dataset", None)) for d in _loaders(loaders)]
            if sizes and all(n is not None for n in sizes):
                meta[key] = sum(n for n in sizes if n is not None)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """The step starts with its batch (:meth:`gdlab.Watch.inputs`): where ``training_step`` calls a submodule
        (``self.net(x)``), not ``self(x)``, the periodic instruments ride on its forward pass all the same."""
        if self.watch is not None and self.watch.report is None and self.watch.stop_reason is None:
            self.watch.inputs(batch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        watched = self.watch
        if watched is not None and watched.report is None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                loss = loss.detach()
                self._loss = loss if self._loss is None else self._loss + loss
        global_step = trainer.global_step
        if global_step == self._global_step:  # accumulating: the optimizer has not stepped yet
            return
        self._global_step = global_step
        self._steps += 1
        if watched is not None and watched.report is None:
            if watched.stop_reason is None:
                # the first step's batch always: the doctor learns the task, classes and inputs' scales from it
                watched.step(self._loss, batch=batch if self.batch or self._steps == 1 else None)
            self._loss = None
            self._clip = max_norm(watched)
        # the ranks agree where rank zero may have decided something: with remedy="auto" at every step (its
        # learning rate), else where the watch reads the host (a divergence is seen there)
        if self.options["remedy"] == "auto" or self._steps % self.options["log_every"] == 0:
            self._agree(trainer)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """The doctor's ``clip_norm`` remedy, on every rank. Lightning runs the backward pass inside
        ``optimizer.step(closure)``, where a clip before the step would come too early, so the norm is clipped
        here: after the backward pass (and DDP's all-reduce), before the update."""
        if self._clip is not None:
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                           self._clip)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        watched = self.watch
        if watched is not None and watched.report is None:
            metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
            values = {k: v for k, v in metrics.items() if v is not None}
            val_loss = values.pop("val_loss", None)
            watched.epoch_end(val_loss=val_loss, **values)
            if self.log:
                self._log(trainer)
        self._agree(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        watched = self.watch
        if watched is not None and watched.report is None:
            watched.__exit__(type(exception), exception, None)  # the hooks come off; a stored run is marked failed
            self.watch = None

    # -- ours ----------------------------------------------------------------------------------------------------
    def _agree(self, trainer: Any) -> None:
        """Rank zero's decisions reach every rank: the stop after a divergence nothing repaired (``should_stop``
        set on every rank, else the others would wait for it in their next all-reduce) and, with
        ``remedy="auto"``, the optimizer's hyperparameters (the learning rate, the momentum the doctor set) and the
        norm its ``clip_norm`` remedy clips to. One
        ``trainer.strategy.broadcast`` with several devices; nothing to exchange on one."""
        watched = self.watch
        auto = self.options["remedy"] == "auto"
        if trainer.world_size == 1:
            if self.stop_on_divergence and watched is not None and watched.stop_reason is not None:
                trainer.should_stop = True
            return
        if not (auto or self.stop_on_divergence):
            return
        decision: dict[str, Any] | None = None
        if trainer.is_global_zero:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            decision = {"stop": self.stop_on_divergence and watched is not None and watched.stop_reason is not None,
                        "groups": hyperparameters(optimizer) if auto and optimizer is not None else None,
                        "clip": self._clip}
        decision = trainer.strategy.broadcast(decision, src=0)
        if not isinstance(decision, dict):
            return
        if decision.get("stop"):
            trainer.should_stop = True
        groups = decision.get("groups")
        if groups and not trainer.is_global_zero and trainer.optimizers:
            for group, values in zip(trainer.optimizers[0].param_groups, groups):
                group.update(values)
            self._clip = decision.get("clip")

    def _close(self, trainer: Any) -> None:
        watched = self.watch
        if watched is None:
            return
        if watched.report is None:
            self.report = watched.close()
            if self.log:
                self._log(trainer)
        else:
            self.report = watched.report
        if self.echo:
            self.print_findings()

    def print_findings(self) -> None:
        """Print the doctor's story of the run, as every gdlab front door prints it
        (:func:`gdlab.doctor.story_lines`: the root causes first, each with its evidence, remedy and the
        consequences it explains; the run id), its text as text (control characters escaped:
        :func:`gdlab.guard.printable`)."""
        if self.report is None:
            return
        print(report_text(self.report))

    def epoch_means(self) -> dict[str, float]:
        """The mean of each step column over the rows recorded since the last call (NaN skipped), by column."""
        if self.watch is None:
            return {}
        steps = self.watch.history.steps
        start, end = self._logged, len(steps)
        self._logged = end
        means: dict[str, float] = {}
        if end <= start:
            return means
        for key, column in steps.columns.items():
            if key in _POSITION:
                continue
            values = [v for v in column[start:end] if math.isfinite(v)]
            if values:
                means[key] = sum(values) / len(values)
        return means

    def _log(self, trainer: Any) -> None:
        """The epoch's means to the trainer's loggers, on rank zero (the caller's check)."""
        loggers = getattr(trainer, "loggers", None) or []
        if not loggers and self.watch is not None:  # nobody to log to: the rows are passed over, not averaged
            self._logged = len(self.watch.history.steps)
            return
        means = self.epoch_means()
        if not means:
            return
        metrics = {PREFIX + k: v for k, v in means.items()}
        for logger in loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
