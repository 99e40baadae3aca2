"""``Problem``: a model and its data made ready for training, checked once.

Everything that trains (``fit``, populations, the learning-rate selection, landscapes) starts from a
:class:`Problem`: the device, the training and validation sources, the loss, the batch plan, and a probe forward
pass so that a model that does not fit the data fails before anything runs or is stored.

Example:
    >>> X, y = torch.randn(40, 3), torch.arange(40) % 2
    >>> problem = Problem.make(torch.nn.Linear(3, 2), (X, y), batch_size=16, device="cpu")
    >>> problem.loss_name, problem.plan.describe()
    ('cross_entropy', '40 samples, batch 16 -> 3 iterations per epoch (last batch 8)')
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdlab.config import PRECISIONS, resolve_precision
from gdlab.data import BatchPlan, structure
from gdlab.data.source import Source
from gdlab.errors import DataError, InvalidParameter, ModelError, UnknownChoice, check_int
from gdlab.metrics import Metrics, accumulator_dtype, threshold
from gdlab.resources import check_fits, human

__all__ = ["LOSSES", "LossFn", "NON_FINITE_SOURCES", "Problem", "batch_loss", "check_budget", "check_data",
           "check_model", "check_module", "evaluate", "match_output", "model_loss", "NON_FINITE_CHUNK", "non_finite",
           "predicted", "prediction", "resolve_device", "resolve_loss", "TargetScale"]

DATASET_SAMPLE = 256
"""Samples of a Dataset (spread evenly over it) checked for non-finite values before training; in-memory data is
checked whole."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
    "bce": F.binary_cross_entropy_with_logits,
}


def model_loss(output: Any, target: Any = None) -> torch.Tensor:
    """``loss="model"``: the loss the model returned itself (given the target), as a tensor or as ``.loss`` /
    ``["loss"]`` of what it returned (Hugging Face models given ``labels``)."""
    loss = output if isinstance(output, torch.Tensor) else getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ModelError(f"loss='model' but the model returned {_kind(output)}: expected a one-element loss "
                         "tensor, or an object with .loss (a Hugging Face model given labels)")
    return loss.reshape(())


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}" + (" with no loss" if value is not None else "")


def prediction(output: Any) -> torch.Tensor | None:
    """The model's predictions in ``output``: the tensor itself, or ``.logits`` of a model output object."""
    if isinstance(output, torch.Tensor):
        return output if output.dim() > 0 else None
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def batch_loss(model: Callable[..., Any], x: Any, y: torch.Tensor, loss_fn: LossFn, loss_name: str,
               target_key: str | None = None) -> tuple[torch.Tensor, Any]:
    """``(loss, output)`` of ``model`` (a module or a functional call) on one batch: the model is called as
    ``model(x)``, ``model(*x)`` or ``model(**x)``, and also given the target when ``loss_name == "model"``."""
    output = structure.call(model, x, y if loss_name == "model" else None, target_key)
    return loss_fn(match_output(output, y, loss_name), y), output


@dataclass
class Problem:
    """A model and data made ready: where it runs, where batches come from, the loss and the batch plan.

    Attributes:
        model: the model, moved to ``device``.
        device: the torch device.
        source: the training data. val: the validation data, or None.
        loss_fn: ``(output, target) -> loss``. loss_name: its name (``custom`` for a callable without one).
        plan: how an epoch is cut into iterations.
        precision: ``32``, ``bf16-mixed`` or ``16-mixed`` (see :data:`PRECISIONS`).
    """

    model: nn.Module
    device: torch.device
    source: Source
    val: Source | None
    loss_fn: LossFn
    loss_name: str
    plan: BatchPlan
    precision: str = "32"

    @classmethod
    def make(cls, model: nn.Module, train: Any, *, val: Any = None, loss: str | LossFn = "auto",
             batch_size: int | str = 32, drop_last: bool = False, device: str | torch.device = "auto",
             target_key: str | None = None, precision: str = "32", ranks: tuple[int, int] = (0, 1)) -> Problem:
        """Resolve the device and the loss, serve the data, plan the epoch, and probe the model on both sources.

        ``target_key`` names the target in dict samples (default: ``y``, ``label`` or ``labels``); ``precision``
        is one of :data:`PRECISIONS`; ``ranks`` is ``(rank, world)`` when each global batch is split over ``world``
        data-parallel processes (:mod:`gdlab.distributed`)."""
        precision = resolve_precision(precision)
        check_module(model)
        dev = resolve_device(device)
        model.to(dev)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
        source = Source(train, dev, dtype, target_key)
        val_source = Source(val, dev, dtype, source.target_key) if val is not None else None
        loss_fn, loss_name = resolve_loss(loss, source.task)
        plan = BatchPlan.make(len(source), batch_size, drop_last=drop_last, rank=ranks[0], ranks=ranks[1])
        check_data(source)
        if val_source is not None:
            check_data(val_source, "validation data")
        check_model(model, source, loss_name, loss_fn=loss_fn)
        if val_source is not None:
            if {val_source.task, source.task} == {"regression", "multilabel"}:  # float targets either way: a few
                val_source.retask(source.task)  # validation rows of one value (or of 0s and 1s) follow training
            if val_source.task != source.task:
                raise ModelError(f"the validation data is {val_source.task} but the training data is {source.task}: "
                                 "expected the same kind of targets")
            check_model(model, val_source, loss_name, what="validation data", loss_fn=loss_fn)
        return cls(model, dev, source, val_source, loss_fn, loss_name, plan, precision)

    @property
    def task(self) -> str:
        """``classification``, ``regression`` or ``multilabel`` (:func:`gdlab.data.infer_task`)."""
        return self.source.task

    @property
    def mean_loss(self) -> bool:
        """Whether the loss is a built-in mean over the batch's samples (per-sample instruments rely on it)."""
        return self.loss_fn is LOSSES.get(self.loss_name)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass runs in: ``torch.autocast`` for a mixed precision, else nothing."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def forward(self, model: Callable[..., Any], x: Any, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``(loss, output)`` of ``model`` (the module, or a functional call of it) on the batch ``(x, y)``."""
        return batch_loss(model, x, y, self.loss_fn, self.loss_name, self.source.target_key)

    def batch_loss(self, model: Callable[..., Any], x: Any, y: torch.Tensor) -> torch.Tensor:
        """The loss of ``model`` on the batch ``(x, y)``."""
        return self.forward(model, x, y)[0]

    def total_steps(self, epochs: int | None, steps: int | None) -> int:
        """The budget in steps: whichever of ``epochs`` and ``steps`` ends first (one must be set)."""
        return int(min(steps or math.inf, (epochs or math.inf) * self.plan.iterations_per_epoch))


def check_module(model: Any) -> None:
    """A model gdlab can train: an ``nn.Module`` with parameters that hold data (not on the meta device), whose
    gradients and optimizer state fit in the free memory (one line each otherwise)."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"the model is a {type(model).__name__}: expected an nn.Module")
    params = list(model.parameters())
    if not params:
        raise ModelError(f"the model ({type(model).__name__}) has no parameters to train: expected a model with at "
                         "least one nn.Parameter (layers such as nn.Linear)")
    meta = sum(p.numel() for p in params if p.is_meta) + sum(b.numel() for b in model.buffers() if b.is_meta)
    if meta:
        raise ModelError(f"the model ({type(model).__name__}) has {meta:,} values on the meta device (shapes without "
                         "data): expected real tensors; build it outside torch.device('meta'), or call "
                         "model.to_empty(device=...) and load its weights first")
    size = sum(p.numel() * p.element_size() for p in params)
    check_fits(f"training the model ({sum(p.numel() for p in params):,} parameters, {human(size)})", 3 * size,
               device=params[0].device, hint="gradients and optimizer state need about 3 more copies of the weights")


NON_FINITE_SOURCES: dict[str, float] = {"inputs": 1.0, "targets": 2.0, "parameters": 3.0, "output": 4.0,
                                         "loss": 5.0}
"""Where a non-finite loss came from, as the loop writes it in the diverging step's ``bad_data`` column (the
doctor's ``non_finite`` finding reads it): the batch's inputs or targets held NaN or inf; the parameters the step
started from did; the model returned NaN or inf for finite inputs and parameters; or the loss overflowed from finite
outputs and targets (``bad_data_scale``: the targets' largest magnitude)."""


NON_FINITE_CHUNK = 1 << 20
"""Values counted at a time (by rows) when a tensor's sum is not finite: no temporary as large as the data."""


def non_finite(tree: Any) -> int:
    """The number of NaN and infinite values among the floating-point tensors of ``tree``.

    One pass and no full-size temporary: each tensor's sum (half precisions summed in float32) is finite exactly
    when every value is, bar an overflow of large finite values; only a sum that is not finite is followed by a
    count, :data:`NON_FINITE_CHUNK` values at a time (a 47-million-value float32 training set: 6 ms, where
    ``isfinite(X).sum()`` took 380 ms)."""
    return sum(_non_finite(t) for t in structure.leaves(tree) if t.is_floating_point())


def _non_finite(t: torch.Tensor) -> int:
    if bool(torch.isfinite(t.sum(dtype=torch.float32 if t.element_size() < 4 else None))):
        return 0
    if t.dim() == 0:
        return int(not torch.isfinite(t))
    rows = max(1, NON_FINITE_CHUNK * len(t) // max(t.numel(), 1))
    return sum(int((~torch.isfinite(part)).sum()) for part in t.split(rows))


def check_data(source: Source, what: str = "training data") -> None:
    """The data checked before training, each problem one :class:`DataError` line: non-finite inputs or targets
    (all of in-memory data, :data:`DATASET_SAMPLE` samples spread over a Dataset), and for the training data at least
    2 samples and, for class targets, at least 2 classes."""
    n = len(source)
    if what == "training data" and n < 2:
        raise DataError(f"the {what} has {n} sample: expected at least 2 (one sample trains to a loss of 0 and says "
                        "nothing)")
    if source.tensors is not None:
        x, y, checked = source.tensors.X, source.tensors.y, ""
    else:
        x, y = source.spread(DATASET_SAMPLE)
        checked = f" (in {len(y)} of its {n:,} samples checked)" if len(y) < n else ""
    for part, values in (("inputs", x), ("targets", y)):
        bad = non_finite(values)
        if bad:
            raise DataError(f"the {what} has {bad:,} non-finite value{'s' if bad != 1 else ''} in its {part} (NaN or "
                            f"inf){checked}: expected finite numbers; clean or impute them")
    if what == "training data" and source.task == "classification" and source.tensors is not None and len(y):
        classes = torch.unique(y)
        if len(classes) < 2:
            raise DataError(f"the {what}'s targets hold one class ({int(classes[0])}) in all {n:,} samples: expected "
                            "at least 2 classes to tell apart (a single class trains to a loss of 0)")


def check_budget(epochs: Any, steps: Any, default_epochs: int) -> tuple[int | None, int | None]:
    """``(epochs, steps)`` checked as positive integers, with ``default_epochs`` when neither is given."""
    for key, value in (("epochs", epochs), ("steps", steps)):
        if value is not None:
            check_int(value, key)
    return (default_epochs if epochs is None and steps is None else epochs), steps


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; anything else is checked by torch."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    expected = "auto, cpu, cuda, cuda:N or mps, on a machine that has it"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameter("device", str(device), expected) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidParameter("device", str(device), expected)
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError):
        raise InvalidParameter("device", str(device), expected + " (it is not available here)") from None
    return dev



def resolve_loss(loss: str | LossFn, task: str) -> tuple[LossFn, str]:
    """The loss function and its name: ``auto`` is cross-entropy for class targets, binary cross-entropy on
    logits (``bce``) for multilabel 0/1 targets, mse for regression; ``model`` is the loss the model returns itself
    when given the target (:func:`model_loss`)."""
    if callable(loss):
        return loss, getattr(loss, "__name__", "custom")
    if loss == "model":
        return model_loss, "model"
    auto = {"classification": "cross_entropy", "multilabel": "bce"}.get(task, "mse")
    name = auto if loss == "auto" else loss
    if name not in LOSSES:
        raise UnknownChoice("loss", loss, ["auto", "model", *LOSSES], ", or a callable")
    return LOSSES[name], name



def match_output(output: Any, y: torch.Tensor, loss_name: str) -> Any:
    """The model's output shaped as the loss wants it."""
    # Regression targets are [batch, outputs]; a model giving [batch] for one output is reshaped to match.
    if not isinstance(output, torch.Tensor) or loss_name == "model":
        return output
    if loss_name != "cross_entropy" and output.shape != y.shape and output.numel() == y.numel():
        return output.reshape(y.shape)
    return output



@torch.no_grad()
def check_model(model: nn.Module, source: Source, loss_name: str, what: str = "data",
                loss_fn: LossFn | None = None) -> None:
    """One forward pass on two samples, so a model that does not fit the data fails before anything runs.

    A model that rejects the batch is told by the real reason (dtype, shape, argument count), with the batch's
    structure shown."""
    x, y = next(source.chunks(2))
    was_training = model.training
    model.eval()
    try:
        output = _probe(lambda: structure.call(model, x, y if loss_name == "model" else None, source.target_key),
                        x, y, what, loss_name)
        if loss_name != "model":
            _check_outputs(output, x, y, source, loss_name, what)
        if loss_fn is not None:
            _probe(lambda: loss_fn(match_output(output, y, loss_name), y), x, y, what, loss_name)
    finally:
        model.train(was_training)


def _probe(run: Callable[[], Any], x: Any, y: torch.Tensor, what: str, loss_name: str) -> Any:
    try:
        return run()
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, ModelError):
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ""
        if any(not t.is_floating_point() for t in structure.leaves(x)) and "dtype" in detail.lower():
            hint = " (integer and bool inputs are passed as they are: token ids for an Embedding)"
        elif loss_name == "model" and "argument" in detail:
            hint = " (loss='model' passes the target to the model too)"
        raise ModelError(f"the model does not accept the {what}: {detail}{hint}; the batch is "
                         f"{structure.describe(x, y)}") from None


def _check_outputs(output: Any, x: Any, y: torch.Tensor, source: Source, loss_name: str, what: str) -> None:
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"the model returns a {type(output).__name__} on the {what}: expected a tensor of outputs, "
                         "or loss='model' for a model that computes its own loss")
    if loss_name == "cross_entropy":
        classes = source.num_classes
        if output.dim() != 2 or classes is not None and output.shape[1] < classes:
            raise ModelError(f"the model gives outputs of shape {list(output.shape[1:])} but the {what} has "
                             f"{classes} classes: expected {classes} outputs (one logit per class)")
        if source.tensors is not None and len(source.tensors.y) and int(source.tensors.y.min()) < 0:
            raise ModelError(f"the {what} has negative class labels: expected labels 0 to {output.shape[1] - 1}")
    elif loss_name in LOSSES and output.numel() != y.numel():
        n = structure.count(x)
        raise ModelError(f"the model gives {output.numel() // n} outputs per sample but the targets have "
                         f"{y.numel() // len(y)}: expected the same number")


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, loss_fn: LossFn | str = "auto", loss_name: str | None = None,
             *, batch_size: int = 4096) -> dict[str, float]:
    """Mean loss over ``data`` and the task's metrics (:mod:`gdlab.metrics`), in eval mode, without gradients.

    The metrics come from the model's predictions whatever the loss: ``accuracy`` for class targets,
    ``accuracy`` and ``subset_accuracy`` for multilabel targets, ``mae`` and ``r2`` for regression, each over the
    whole data (a metric the outputs hold no predictions for is left out).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> sorted(evaluate(model, (torch.zeros(4, 2), torch.zeros(4, 1))))
        ['loss', 'mae', 'r2']
    """
    source = data if isinstance(data, Source) else Source(data, next(model.parameters()).device,
                                                            next(model.parameters()).dtype)
    if isinstance(loss_fn, str):
        loss_fn, loss_name = resolve_loss(loss_fn, source.task)
    was_training = model.training
    model.eval()
    metrics = Metrics(source.task, threshold(loss_fn, loss_name))
    total: torch.Tensor | None = None
    count = 0
    try:
        for x, y in source.chunks(batch_size):
            loss, output = batch_loss(model, x, y, loss_fn, loss_name or "", source.target_key)
            part = loss.detach().reshape(()).to(accumulator_dtype(loss.device)) * len(y)
            total = part if total is None else total + part
            metrics.add(predicted(output, loss_name), y)
            count += len(y)
    finally:
        model.train(was_training)
    values = {"loss": total / max(count, 1) if total is not None else torch.tensor(math.nan), **metrics.result()}
    return dict(zip(values, torch.stack(list(values.values())).to("cpu", torch.float64).tolist()))  # one read


def predicted(output: Any, loss_name: str | None) -> torch.Tensor | None:
    """The predictions in a model's ``output`` (:func:`prediction`), or None where the output is the loss itself
    (``loss="model"`` and a bare tensor)."""
    if loss_name == "model" and isinstance(output, torch.Tensor):
        return None
    return prediction(output)


@dataclass
class TargetScale:
    """Regression targets standardised (``fit(standardize_target=True)``, ``--standardize-target``): the model
    learns outputs of mean 0 and std 1, and a forward hook maps them back to the targets' units, so the model's
    predictions, the metrics (MAE, R^2) and ``gdlab predict`` are in the original units, while the loss, and so
    the gradient, is taken on the standardised outputs and targets (a target of 3e5 neither swamps the gradient
    nor asks the outputs to grow 3e5-fold).

    Example:
        >>> model = torch.nn.Linear(1, 1)
        >>> scale = TargetScale.of(torch.tensor([[1e5], [3e5]]))
        >>> scale.attach(model)
        >>> with torch.no_grad(): _ = model.weight.zero_(), model.bias.zero_()
        >>> model(torch.zeros(1, 1)).item()  # an output of 0 is the targets' mean
        200000.0
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, y: torch.Tensor) -> TargetScale:
        """The mean and std of each target column (a std of 0 counts as 1)."""
        y = y.to(torch.float64)
        std = y.std(0) if len(y) > 1 else torch.ones_like(y[0])
        return cls(y.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    @classmethod
    def for_source(cls, source: Source) -> TargetScale:
        """The scale of an in-memory regression source's targets (a :class:`InvalidParameter` otherwise)."""
        if source.task != "regression" or source.tensors is None:
            raise InvalidParameter("standardize_target", True, "in-memory regression data (real-valued targets)")
        return cls.of(source.tensors.y)

    def _cast(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype)

    def _outputs(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return output
        mean, std = self._cast(output)
        if output.dim() == 1 and mean.numel() == 1:
            mean, std = mean.reshape(()), std.reshape(())
        return output * std + mean

    def attach(self, model: nn.Module) -> None:
        """Map ``model``'s outputs to the targets' units from now on (a scale attached before is replaced)."""
        old = getattr(model, "_gdlab_target_scale", None)
        if old is not None:
            old.remove()
        model._gdlab_target_scale = model.register_forward_hook(self._outputs)  # type: ignore[assignment]

    def loss(self, base: LossFn) -> LossFn:
        """``base`` taken on the standardised outputs and targets."""

        def scaled(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            mean, std = self._cast(target)
            if target.dim() == 1 and mean.numel() == 1:
                mean, std = mean.reshape(()), std.reshape(())
            return base((output - mean) / std, (target - mean) / std)

        scaled.__name__ = getattr(base, "__name__", "custom")
        return scaled

    def meta(self) -> dict[str, Any]:
        """What the doctor reads: the targets' mean and spread (largest over columns), as floats."""
        return {"target_mean": float(self.mean.abs().max()), "target_std": float(self.std.max())}
