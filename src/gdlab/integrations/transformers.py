"""Hugging Face ``transformers``: the instruments and the doctor in a ``Trainer``, as a ``TrainerCallback``.

::

    from gdlab.integrations.transformers import Doctor

    doctor = Doctor()
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[doctor])
    trainer.train()
    doctor.report.findings   # a gdlab Result: findings, remedies, history

:class:`Doctor` is built on :func:`gdlab.watch`: at ``on_train_begin`` it watches the Trainer's model and
optimizer (the optimizer under accelerate's wrapper), so the optimizer's step hooks take the gradient norms before
each update and the instruments ride on the step's own forward and backward passes. The loss of each optimizer
step is the model's own ``loss`` output, taken by a forward hook on the model during training (the mean of the
micro-batches' losses under gradient accumulation, their sum when the Trainer passes ``num_items_in_batch``), filed
with ``Watch.step`` at ``on_step_end``; the Trainer's logged loss (``logs["loss"]``, an average over
``logging_steps``) is not used. Each evaluation's metrics (``eval_loss`` as ``val_loss``, ``eval_<name>`` as
``val_<name>``) close the epoch they follow. At ``on_train_end`` the doctor's story of the run is printed as every
gdlab front door prints it (:func:`gdlab.doctor.story_lines`) and kept in :attr:`Doctor.report`. Only the main
process (``state.is_world_process_zero``) watches, prints and stores; under
several processes its verdict on a divergence is broadcast, so that every process stops at the same step.
docs/watch.md, "Hugging Face Trainer", says what is measured.

It needs the ``transformers`` package (``pip install 'gdlab[transformers]'``); without it, making a
:class:`Doctor` raises :class:`~gdlab.errors.MissingExtra` naming that command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn

from gdlab import distributed
from gdlab.doctor.story import report_text
from gdlab.errors import InvalidParameter, MissingExtra, check_int
from gdlab.loop import Result
from gdlab.run import describe
from gdlab.watching import LOG_EVERY, Watch, watch

try:  # the callback's base class; without transformers the class still exists, and making one says what to install
    from transformers import TrainerCallback as _Base

    _HAVE = True
except ImportError:  # pragma: no cover - exercised without the extra
    _Base = object  # type: ignore[assignment,misc]
    _HAVE = False

__all__ = ["Doctor", "require"]

# the evaluation's bookkeeping, not metrics of the model
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")


def require() -> None:
    """Nothing with the ``transformers`` package installed; else :class:`MissingExtra` naming the pip install."""
    if not _HAVE:
        raise MissingExtra("gdlab.integrations.transformers.Doctor needs the transformers package: "
                           "pip install 'gdlab[transformers]'")


class Doctor(_Base):
    """A ``transformers.TrainerCallback`` that watches the training with :func:`gdlab.watch` and names its
    pathologies at the end (:attr:`report`: a :class:`~gdlab.loop.Result`, ``report.findings``...).

    Args:
        instruments, remedy, rollback, store, name, config, log_every, tensorboard: as :func:`gdlab.watch` takes
            them. ``remedy="auto"`` changes the learning rate in the optimizer's ``param_groups``: a learning-rate
            scheduler of the Trainer's sets it again at each step (the doctor's change lasts one step), so it is
            refused with more than one process (only the main process watches).
        stop_on_divergence: when the loss becomes non-finite and nothing repaired it (``Watch.stop_reason``), ask
            the Trainer to stop (``control.should_training_stop``).
        verbose: print the findings at ``on_train_end``.
        **watch_kwargs: any other argument of :func:`gdlab.watch` (``loss_fn``, ``callbacks``...).
    """

    def __init__(self, *, instruments: str | Sequence[Any] = "default", remedy: str = "suggest",
                 rollback: bool = False, store: Any = None, name: str | None = None,
                 config: dict[str, Any] | None = None, log_every: int | None = None,
                 tensorboard: str | Path | None = None, stop_on_divergence: bool = True, verbose: bool = True,
                 **watch_kwargs: Any) -> None:
        require()
        self.options: dict[str, Any] = {"instruments": instruments, "remedy": remedy, "rollback": rollback,
                                        "store": store, "name": name, "config": config, "tensorboard": tensorboard,
                                        **({"log_every": log_every} if log_every is not None else {}),
                                        **watch_kwargs}
        self.stop_on_divergence, self.verbose = stop_on_divergence, verbose
        self._log_every = check_int(log_every, "log_every") if log_every is not None else LOG_EVERY
        self.watch: Watch | None = None
        self.report: Result | None = None
        self._model: nn.Module | None = None
        self._handle: Any = None
        self._losses: list[Tensor] = []  # the model's loss of each forward pass in this optimizer step
        self._summed = False  # the Trainer passed num_items_in_batch: the micro-batches' losses add up
        self._epoch_open = False  # an epoch ended, its evaluation may follow (on_epoch_end comes before it)
        self._metrics: dict[str, float] = {}  # the latest evaluation's, not yet in an epoch's record

    # -- the Trainer's events -----------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.options["remedy"] == "auto" and getattr(args, "world_size", 1) > 1:
            raise InvalidParameter("remedy", "auto", '"suggest" or "off" with more than one process (only the main '
                                   "process watches, and its optimizer alone would change)")
        self._model = model
        if model is not None and optimizer is not None:
            self._attach(args, model, optimizer, kwargs.get("train_dataloader"))
        evaluated = getattr(kwargs.get("eval_dataloader"), "dataset", None)
        if self.watch is not None and isinstance(evaluated, Sized):  # the samples behind each val_loss, as fit
            self.watch.history.meta["val_samples"] = len(evaluated)  # gives them (the noise of a validation point)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                      optimizer: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._close_epoch()  # the last epoch's evaluation did not come: the epoch closes without it
        if self.watch is None and self.report is None:  # the optimizer was not there at on_train_begin
            model = model if model is not None else self._model
            if model is not None and optimizer is not None:
                self._attach(args, model, optimizer, kwargs.get("train_dataloader"))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            loss = self._step_loss()
            if loss is not None:
                self.watch.step(loss)
        # with several processes the ranks agree where the watch reads the host (a divergence is seen there)
        self._stop_if_diverged(args, control, agree=state.global_step % self._log_every == 0)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            self._epoch_open = True
            if str(getattr(args, "eval_strategy", "no")).split(".")[-1].lower() != "epoch":
                self._close_epoch()  # no evaluation follows this epoch's end
        self._stop_if_diverged(args, control, agree=True)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if self.watch is not None:
            self._metrics.update(_val_metrics(metrics or {}))
            self._close_epoch()
        self._stop_if_diverged(args, control, agree=True)  # every process evaluates

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is None:
            return
        self._close_epoch()
        try:
            self.report = self.watch.close()
        finally:
            self._unhook()
            self.watch = None
        if self.verbose:
            print(summary(self.report))

    # -- the ranks ------------------------------------------------------------------------------------------------
    def _stop_if_diverged(self, args: Any, control: Any, *, agree: bool) -> None:
        """Ask the Trainer to stop after a divergence nothing repaired. With several processes only the main one
        watches: its verdict is broadcast at the points where every rank asks (``agree``), so that all stop at
        the same step (a rank stopping alone would leave the others waiting in their next all-reduce)."""
        if not self.stop_on_divergence:
            return
        diverged = self.watch is not None and self.watch.stop_reason is not None
        if _processes() > 1:
            if not agree:
                return
            diverged = bool(distributed.broadcast(diverged))  # the main process's verdict, on every process
        if diverged:
            control.should_training_stop = True

    # -- the watch ------------------------------------------------------------------------------------------------
    def _attach(self, args: Any, model: nn.Module, optimizer: Any, loader: Any) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's
        options = dict(self.options)
        options.setdefault("batch_size", getattr(args, "per_device_train_batch_size", None))
        if loader is not None and getattr(args, "gradient_accumulation_steps", 1) == 1:
            options.setdefault("loader", loader)
        if options.get("config") is None:
            options["config"] = describe(model, inner, lr=getattr(args, "learning_rate", None),
                                         batch_size=options["batch_size"], loop="transformers.Trainer")
        # on the main process alone: the ranks agree through the Trainer's control (_stop_if_diverged), not the watch
        self.watch = watch(model, inner, **options, ranks=False)

        def on_forward(module: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if module.training and not self._closing() and output is not None:
                loss = _loss_of(output)
                if isinstance(loss, Tensor) and loss.dim() == 0 and loss.requires_grad:
                    self._losses.append(loss.detach())
                    self._summed = kwargs.get("num_items_in_batch") is not None

        self._handle = model.register_forward_hook(on_forward, with_kwargs=True)

    def _closing(self) -> bool:
        return self.watch is None

    def _step_loss(self) -> Tensor | None:
        losses, self._losses = self._losses, []
        if not losses:
            return None
        total = losses[0] if len(losses) == 1 else sum(losses[1:], losses[0])
        return total if self._summed or len(losses) == 1 else total / len(losses)

    def _close_epoch(self) -> None:
        if self.watch is None or not self._epoch_open:
            return
        self._epoch_open = False
        metrics, self._metrics = self._metrics, {}
        val_loss = metrics.pop("val_loss", None)
        self.watch.epoch_end(val_loss=val_loss, **metrics)

    def _unhook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._losses = []


def _processes() -> int:
    """The processes of the Trainer's process group (1 without ``torch.distributed`` set up)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _loss_of(output: Any) -> Any:
    """The loss a Hugging Face model returns (``output.loss`` / ``output["loss"]``), or None."""
    if isinstance(output, dict) or hasattr(output, "keys"):
        try:
            return output["loss"] if "loss" in output else None
        except (KeyError, TypeError):
            return None
    return getattr(output, "loss", None)


def _val_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """An evaluation's metrics as an epoch's record names them: ``eval_loss`` -> ``val_loss``."""
    out = {}
    for key, value in metrics.items():
        name = key[5:] if key.startswith("eval_") else key
        if name in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value) or name == "loss":
            out[f"val_{name}"] = float(value)
    return out


def summary(report: Result) -> str:
    """What :class:`Doctor` prints at the end of training: the doctor's story of the run as every gdlab front door
    prints it (:func:`gdlab.doctor.story.report_text`: the root causes first, each with its evidence, remedy and the
    consequences it explains, the run id; then why it stopped early), control characters escaped."""
    return report_text(report)
