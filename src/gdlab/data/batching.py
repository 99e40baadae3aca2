"""Batch plans and batching: how an epoch is cut into iterations (lecture, point 4).

``batch_size`` is ``"full"`` (batch gradient descent: one iteration per epoch over all samples),
``"stochastic"`` (one sample per iteration) or a positive integer (mini-batch). A :class:`BatchPlan` states the
arithmetic; :func:`batches` yields the index batches of one epoch, shuffled from the run's seed and the epoch
number alone, so that any epoch's order can be rebuilt (resume, populations) without replaying the others.

In-memory data (:class:`TensorData`, an ``(X, y)`` pair, a ``TensorDataset``, a dict of tensors; inputs may be
structures, see :mod:`~gdlab.data.structure`) is batched by indexing tensors on the target device;
any other ``torch.utils.data.Dataset`` goes through a ``DataLoader`` fed with the same index batches.

Example:
    >>> plan = BatchPlan.make(1000, 100)
    >>> plan.describe()
    '1000 samples, batch 100 -> 10 iterations per epoch'
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gdlab.data import structure
from gdlab.errors import DataError, GdlabError, InvalidParameter, check_int

__all__ = [
    "BatchSize",
    "BatchPlan",
    "TASKS",
    "Task",
    "TensorData",
    "as_tensor_data",
    "parse_batch_size",
    "epoch_order",
    "batches",
    "infer_task",
    "read_sample",
    "dataset_size",
    "standardize",
    "split",
]

BatchSize = int | Literal["full", "stochastic"]
Task = Literal["classification", "regression", "multilabel"]
TASKS: tuple[Task, ...] = ("classification", "regression", "multilabel")
"""The kinds of target: one class label per sample; real numbers; independent 0/1 labels (see :func:`infer_task`)."""

MAX_CLASSES = 1_000_000
"""The most classes a classification target may have: a larger label is read as a mistake (numbers as labels)."""

_BATCH_EXPECTED = '"full", "stochastic" or a positive integer'


def parse_batch_size(value: Any, *, param: str = "batch_size") -> BatchSize:
    """Check a batch size given as ``"full"``, ``"stochastic"``, an int or a string of digits."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("full", "stochastic"):
            return text  # type: ignore[return-value]
        if text.lstrip("+-").isdigit():
            value = int(text)
    return check_int(value, param, expected=_BATCH_EXPECTED)


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch is cut into iterations.

    Attributes:
        samples: number of training samples.
        batch_size: samples per iteration (``samples`` for full batch, 1 for stochastic).
        iterations_per_epoch: updates per pass over the data.
        last_batch: size of the last batch of an epoch (equal to ``batch_size`` when it divides evenly).
        drop_last: whether a short last batch is dropped.
        mode: ``"full"``, ``"stochastic"`` or ``"mini-batch"``.
        shuffle: whether the order is reshuffled each epoch.
        ranks: the processes a global batch is split over (data-parallel training, :mod:`gdlab.distributed`);
            ``batch_size`` is the global batch, and rank ``rank`` takes its slice of each one (the first
            ``batch % ranks`` ranks one sample more).
        rank: this process's rank.
    """

    samples: int
    batch_size: int
    iterations_per_epoch: int
    last_batch: int
    drop_last: bool = False
    mode: str = "mini-batch"
    shuffle: bool = True
    ranks: int = 1
    rank: int = 0

    @classmethod
    def make(cls, samples: int, batch_size: Any, *, drop_last: bool = False, shuffle: bool = True,
             ranks: int = 1, rank: int = 0) -> BatchPlan:
        """Plan ``samples`` samples at ``batch_size`` (``"full"``, ``"stochastic"`` or N), the global batch split
        over ``ranks`` processes (this one ``rank``)."""
        if samples <= 0:
            raise DataError("the training data has no samples: expected at least one")
        size = parse_batch_size(batch_size)
        mode = size if isinstance(size, str) else "mini-batch"
        n = samples if size == "full" else 1 if size == "stochastic" else min(int(size), samples)
        full, rest = divmod(samples, n)
        if rest and not drop_last:
            plan = cls(samples, n, full + 1, rest, drop_last, mode, shuffle, ranks, rank)
        else:
            plan = cls(samples, n, full, n, drop_last, mode, shuffle, ranks, rank)
        if ranks > 1:
            _check_split(plan, batch_size)
        return plan

    def share(self, iteration: int) -> tuple[int, int]:
        """``(this rank's samples, the global batch's)`` at ``iteration`` of an epoch."""
        size = self.last_batch if iteration == self.iterations_per_epoch - 1 else self.batch_size
        return size // self.ranks + (self.rank < size % self.ranks), size

    @property
    def dropped(self) -> int:
        """Samples left out of each epoch by ``drop_last``."""
        return self.samples - self.batch_size * self.iterations_per_epoch if self.drop_last else 0

    def describe(self) -> str:
        """One line for people: ``1000 samples, batch 100 -> 10 iterations per epoch``."""
        label = {"full": "full batch", "stochastic": "stochastic, batch 1"}.get(self.mode)
        if self.ranks > 1:
            low, high = self.batch_size // self.ranks, -(-self.batch_size // self.ranks)
            each = f"{low}" if low == high else f"{low}-{high}"
            label = f"{'full batch' if self.mode == 'full' else 'global batch'} {self.batch_size} = {self.ranks} " \
                    f"ranks x {each}"
        text = f"{self.samples} samples, {label or f'batch {self.batch_size}'}"
        text += f" -> {self.iterations_per_epoch} iteration{'s' if self.iterations_per_epoch != 1 else ''} per epoch"
        if self.dropped:
            text += f" ({self.dropped} dropped each epoch)"
        elif self.last_batch != self.batch_size:
            text += f" (last batch {self.last_batch})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready values."""
        return {
            "samples": self.samples,
            "batch_size": self.batch_size,
            "iterations_per_epoch": self.iterations_per_epoch,
            "last_batch": self.last_batch,
            "drop_last": self.drop_last,
            "mode": self.mode,
            **({"ranks": self.ranks} if self.ranks > 1 else {}),
        }


def _check_split(plan: BatchPlan, batch_size: Any) -> None:
    """Every rank gets at least one sample of every batch, or one line says why not."""
    if plan.mode == "stochastic":
        raise InvalidParameter("batch_size", "stochastic", f"a batch of at least {plan.ranks} samples to split over "
                               f"{plan.ranks} ranks", "stochastic descent takes one sample per step, which cannot be "
                               "split over ranks")
    if plan.batch_size < plan.ranks:
        raise InvalidParameter("batch_size", batch_size, f"at least {plan.ranks} samples per batch, one for each of "
                               f"the {plan.ranks} ranks")
    if plan.last_batch < plan.ranks:
        raise InvalidParameter("batch_size", batch_size, f"a last batch of at least {plan.ranks} samples for "
                               f"{plan.ranks} ranks (each epoch of {plan.samples} samples ends with a batch of "
                               f"{plan.last_batch})", "give another batch size, or drop_last (--drop-last)")


def epoch_order(plan: BatchPlan, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch`` (0-based): a permutation drawn from ``(seed, epoch)`` alone.

    Returns:
        int64 tensor ``[samples]`` on the CPU.
    """
    if not plan.shuffle or plan.mode == "full":  # one batch of all: order cannot matter
        return torch.arange(plan.samples)
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    return torch.randperm(plan.samples, generator=generator)


def batches(plan: BatchPlan, seed: int, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
    """Index batches of one epoch, from iteration ``start`` (for resuming mid-epoch)."""
    order = epoch_order(plan, seed, epoch)
    for i in range(start, plan.iterations_per_epoch):
        batch = order[i * plan.batch_size : (i + 1) * plan.batch_size]
        yield batch if plan.ranks == 1 else torch.tensor_split(batch, plan.ranks)[plan.rank]


def _mix(seed: int, epoch: int) -> int:
    # A fixed affine mix keeps (seed, epoch) pairs apart and inside the generator's 64-bit range.
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)


class TensorData(Dataset):
    """In-memory inputs ``X`` and targets ``y``, with what is known about the task.

    Args:
        X: inputs, ``[samples, ...]``: a tensor, or a tuple, list or dict of them (several inputs, token ids
            beside masks); every tensor has one row per sample. Integer and bool inputs keep their dtype.
        y: targets: int64 class labels ``[samples]`` for classification, floats ``[samples, outputs]`` for
            regression, 0/1 floats ``[samples, labels]`` for multilabel.
        task: ``"classification"``, ``"regression"`` or ``"multilabel"``; inferred from ``y`` when omitted
            (:func:`infer_task`: 0/1 float targets are multilabel, a single 0/1 column binary classification by one
            logit; give ``task="regression"`` to fit such targets by least squares).
        num_classes: for classification; inferred from ``y`` when omitted.
        feature_names: optional names of the feature columns.
        image_shape: ``(channels, height, width)`` when flat inputs are images (digits: ``(1, 8, 8)``).
        classes: the original label of each class index, when labels were renamed (CSV text labels).
        target_key: the key the target came from in dict samples (a model computing its own loss takes it back
            under that name).

    Example:
        >>> data = TensorData(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0]))
        >>> data.task, data.num_classes, len(data)
        ('classification', 2, 4)
        >>> TensorData((torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 2)), torch.zeros(4)).n_features
        7
    """

    def __init__(
        self,
        X: Any,
        y: torch.Tensor,
        *,
        task: Task | None = None,
        num_classes: int | None = None,
        feature_names: Sequence[str] | None = None,
        image_shape: tuple[int, ...] | None = None,
        classes: Sequence[Any] | None = None,
        target_key: str | None = None,
    ) -> None:
        n = structure.count(X)
        for t in structure.leaves(X):
            if len(t) != n:
                raise DataError(f"the inputs have different numbers of samples ({structure.describe(X)}): expected "
                                "one row per sample in every input")
        if len(y) != n:
            raise DataError(f"X has {n} samples but y has {len(y)}: expected the same number")
        if task is None:
            task = infer_task(y)
        if task not in TASKS:
            raise InvalidParameter("task", task, '"classification", "regression" or "multilabel"')
        if task == "classification":
            if y.dim() > 1 and y[0].numel() > 1:
                raise DataError(f"y has {y[0].numel()} values per sample but the task is classification: expected "
                                "one class label per sample, or 0/1 label columns for a multilabel task")
            y = y.long().reshape(-1)
            if num_classes is None:
                num_classes = int(y.max().item()) + 1 if len(y) else 0
            if num_classes > MAX_CLASSES:
                raise DataError(f"the class labels go up to {num_classes - 1}, {num_classes} classes, too many: "
                                f"expected labels 0 to N-1 for at most {MAX_CLASSES:,} classes (task='regression' "
                                "if the targets are numbers)")
        elif task == "multilabel":
            y = (y if torch.is_floating_point(y) else y.float()).reshape(len(y), -1)
            if not bool(((y >= 0) & (y <= 1)).all()):
                raise DataError("the multilabel targets are not all between 0 and 1: expected a 0/1 (or soft, in "
                                "[0, 1]) value per label")
        else:
            y = y.float() if not torch.is_floating_point(y) else y
            y = y.reshape(len(y), -1)
        self.X = X
        self.y = y
        self.task: Task = task
        self.num_classes = num_classes if task == "classification" else None
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.image_shape = image_shape
        self.classes = list(classes) if classes is not None else None
        self.target_key = target_key

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Any) -> tuple[Any, torch.Tensor]:
        return structure.tree_map(lambda t: t[index], self.X), self.y[index]

    @property
    def n_features(self) -> int:
        """Number of input features per sample (flattened, summed over the inputs)."""
        return sum(int(t.shape[1:].numel()) for t in structure.leaves(self.X))

    @property
    def n_outputs(self) -> int:
        """Model outputs this data needs: classes for classification, target columns for regression and
        multilabel."""
        return int(self.num_classes or 0) if self.task == "classification" else int(self.y.shape[1])

    def subset(self, index: torch.Tensor) -> TensorData:
        """The samples at ``index``, with the same metadata."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self._like(structure.take(self.X, index.to(self.y.device)), self.y[index.to(self.y.device)])

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on ``device``."""
        return self._like(structure.tree_map(lambda t: t.to(device), self.X), self.y.to(device))

    def _like(self, X: Any, y: torch.Tensor) -> TensorData:
        return TensorData(X, y, task=self.task, num_classes=self.num_classes, feature_names=self.feature_names,
                          image_shape=self.image_shape, classes=self.classes, target_key=self.target_key)


def infer_task(y: torch.Tensor) -> Task:
    """The task of targets ``y`` (``[samples, ...]``), from their dtype and values.

    ``multilabel`` when every value is 0 or 1 and both occur, for float targets of any number of columns (a single
    column is binary classification with one logit) and for integer or bool targets of two columns or more (multi-hot
    rows); else ``classification`` for integer and bool targets (one class label per sample) and ``regression`` for
    floats.

    Example:
        >>> infer_task(torch.tensor([[0.0, 1.0], [1.0, 1.0]])), infer_task(torch.tensor([0.5, 1.0]))
        ('multilabel', 'regression')
        >>> infer_task(torch.tensor([0, 2, 1])), infer_task(torch.tensor([[0, 1], [1, 0]]))
        ('classification', 'multilabel')
    """
    floating = torch.is_floating_point(y)
    columns = y[0].numel() if len(y) else 1
    if (floating or columns >= 2) and y.numel():
        ones, zeros = y == 1, y == 0
        if bool((ones | zeros).all()) and bool(ones.any()) and bool(zeros.any()):
            return "multilabel"
    return "regression" if floating else "classification"


def as_tensor_data(data: Any, target_key: str | None = None) -> TensorData | None:
    """``data`` as :class:`TensorData` when it is in memory, else None (a Dataset served by a DataLoader).

    In memory: a TensorData; a ``TensorDataset(*inputs, target)``; a tuple ``(X, y)`` or ``(*inputs, y)`` of
    tensors, where ``X`` may itself be a tuple or dict of tensors; a dict of tensors with a target key
    (``target_key``, else ``y``, ``label`` or ``labels``).
    """
    if isinstance(data, TensorData):
        return data
    tensors = getattr(data, "tensors", None)  # torch.utils.data.TensorDataset
    if isinstance(data, Dataset) and isinstance(tensors, tuple) and len(tensors) >= 2:
        return TensorData(*structure.split(tensors))
    if isinstance(data, Dataset):
        return None
    if isinstance(data, (tuple, list, Mapping)) and len(data) >= 2 and _all_tensors(data):
        inputs, target = structure.split(data, target_key)
        key = None
        if isinstance(data, Mapping):
            key = target_key or next(k for k in structure.TARGET_KEYS if k in data)
        return TensorData(inputs, target, target_key=key)
    raise InvalidParameter("data", type(data).__name__, "a torch Dataset, an (X, y) pair of tensors (X may be a "
                           "tuple or dict of tensors), or a dict of tensors with a target key")


def _all_tensors(tree: Any) -> bool:
    if isinstance(tree, torch.Tensor):
        return True
    if isinstance(tree, Mapping):
        return all(_all_tensors(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return len(tree) > 0 and all(_all_tensors(v) for v in tree)
    return False


def dataset_size(data: Any, what: str = "training data") -> int:
    """The number of samples of a user's Dataset, at least one: a Dataset whose ``len()`` fails or is 0 is one
    line (:class:`~gdlab.errors.InvalidParameter` for an empty one, :class:`~gdlab.errors.DataError` for a failing
    ``__len__``, naming the user's file and line).

    Example:
        >>> dataset_size(torch.utils.data.TensorDataset(torch.zeros(0, 2)))
        Traceback (most recent call last):
        ...
        gdlab.errors.InvalidParameter: invalid data 'TensorDataset': expected a Dataset with at least one sample
    """
    from gdlab.resolve import raised

    try:
        n = len(data)
    except GdlabError:
        raise
    except Exception as e:
        raise DataError(f"the {what} ({type(data).__name__}) raised {raised(e)} when its length was asked "
                        "(len): expected a Dataset with __len__") from None
    if n <= 0:
        raise InvalidParameter("data", type(data).__name__, "a Dataset with at least one sample")
    return n


def read_sample(data: Any, index: int, what: str = "training data") -> Any:
    """``data[index]`` of a user's Dataset; a ``__getitem__`` that raises is one :class:`~gdlab.errors.DataError`
    line naming the sample, the error and the user's file and line.

    Example:
        >>> class Broken(torch.utils.data.Dataset):
        ...     def __len__(self): return 3
        ...     def __getitem__(self, i): raise KeyError(i)
        >>> read_sample(Broken(), 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gdlab.errors.DataError: reading sample 2 of the training data failed: the Dataset Broken raised KeyError: ...
    """
    from gdlab.resolve import raised

    try:
        return data[index]
    except GdlabError:
        raise
    except Exception as e:
        raise DataError(f"reading sample {index} of the {what} failed: the Dataset {type(data).__name__} raised "
                        f"{raised(e)}") from None


def loader(dataset: Dataset, plan: BatchPlan, seed: int, epoch: int, start: int = 0) -> DataLoader:
    """A DataLoader serving ``dataset`` in exactly the plan's index batches for ``epoch``."""
    # Its own generator: a DataLoader iterator otherwise draws a seed from the global RNG, so a run resumed
    # mid-epoch (one more iterator) would see different dropout masks than one trained straight.
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches(plan, seed, epoch, start)],
                      generator=torch.Generator().manual_seed(seed))


def standardize(train: TensorData, *others: TensorData | None) -> tuple[TensorData | None, ...]:
    """Scale features to zero mean and unit variance with the training data's statistics.

    Constant features keep a scale of 1. Returns ``train`` then each of ``others`` transformed alike.
    Only floating-point inputs are scaled; token ids, categories and masks are left as they are.
    """
    stats: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for x in structure.leaves(train.X):
        if not x.is_floating_point():
            stats.append(None)
            continue
        mean = x.mean(0, keepdim=True)
        std = x.std(0, keepdim=True) if len(train) > 1 else torch.ones_like(mean)
        stats.append((mean, torch.where(std > 0, std, torch.ones_like(std))))

    def scaled(d: TensorData) -> TensorData:
        at = iter(stats)

        def one(x: torch.Tensor) -> torch.Tensor:
            stat = next(at)
            return x if stat is None else (x - stat[0]) / stat[1]

        return d._like(structure.tree_map(one, d.X), d.y)

    return tuple(None if d is None else scaled(d) for d in (train, *others))


def split(data: Dataset, fraction: float, seed: int) -> tuple[Any, Any]:
    """Split off ``fraction`` of ``data`` as validation, the samples drawn at random from ``seed``.

    TensorData splits into TensorData; any other Dataset into two ``torch.utils.data.Subset``.
    """
    if not 0 < fraction < 1 or not math.isfinite(fraction):
        raise InvalidParameter("val_split", fraction, "a fraction strictly between 0 and 1")
    n = len(data)  # type: ignore[arg-type]
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise InvalidParameter("val_split", fraction, f"a fraction that leaves training samples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if isinstance(data, TensorData):
        return data.subset(order[n_val:]), data.subset(order[:n_val])
    return Subset(data, order[n_val:].tolist()), Subset(data, order[:n_val].tolist())
