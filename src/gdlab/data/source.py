"""Where a run's batches come from: in-memory tensors batched by index on the device, or a Dataset through a
DataLoader fed the same index batches (so both paths train bit-identically).

A batch is ``(inputs, target)``: the inputs are a tensor or a structure of them (:mod:`gdlab.data.structure`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from gdlab.data import structure
from gdlab.data.batching import (
    BatchPlan,
    TensorData,
    as_tensor_data,
    batches,
    dataset_size,
    infer_task,
    loader,
    read_sample,
)
from gdlab.errors import DataError, InvalidParameter

__all__ = ["Batch", "SPREAD", "Source", "dataset_task"]

SPREAD = 64
"""Samples of a Dataset (spread evenly over it) whose targets decide whether float or multi-column targets are 0/1
labels (multilabel); in-memory data is judged on all of its targets."""

Batch = tuple[Any, torch.Tensor]
"""``(inputs, target)``: inputs a tensor, a tuple or list of tensors, or a dict of them."""


class Source:
    """Training or validation data with its device path: index batching for tensors, else a DataLoader.

    Args:
        data: a Dataset, an ``(X, y)`` pair, a ``TensorDataset(*inputs, target)`` or a dict of tensors (see
            :func:`gdlab.data.as_tensor_data`). In-memory data is moved to ``device`` once and batched there by
            index.
        device: where batches are served.
        dtype: the model's floating dtype; floating inputs (and regression and multilabel targets) are cast to
            it, integer and bool inputs keep theirs.
        target_key: the target's key in dict samples (default: ``y``, ``label`` or ``labels``).

    Example:
        >>> source = Source((torch.randn(10, 3), torch.arange(10) % 2), torch.device("cpu"), torch.float32)
        >>> len(source), source.task, source.num_classes
        (10, 'classification', 2)
    """

    def __init__(self, data: Any, device: torch.device, dtype: torch.dtype, target_key: str | None = None) -> None:
        self.device, self.dtype = device, dtype
        tensors = as_tensor_data(data, target_key)
        self.dataset: Dataset | None = None if tensors is not None else data
        self.target_key = target_key
        if tensors is not None:
            moved = tensors.to(device)
            moved.X = structure.to(moved.X, device, dtype)
            if moved.task != "classification" and moved.y.dtype != dtype:
                moved.y = moved.y.to(dtype)
            self.tensors: TensorData | None = moved
            self.task: str = tensors.task
            self.num_classes = tensors.num_classes
            self.target_key = tensors.target_key or target_key
        else:
            self.tensors = None
            dataset_size(data)  # a user's Dataset: an empty one, or one that fails to read, is one line
            sample = read_sample(data, 0)
            if isinstance(sample, dict) and target_key is None:
                self.target_key = next((k for k in structure.TARGET_KEYS if k in sample), None)
            self.task = dataset_task(data, self.target_key)
            self.num_classes = None

    def __len__(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.dataset)  # type: ignore[arg-type]

    def retask(self, task: str) -> None:
        """Read float targets as ``task`` (``regression`` or ``multilabel``: the same ``[samples, k]`` floats), as
        validation data follows the training data's task."""
        if {task, self.task} != {"regression", "multilabel"}:
            raise InvalidParameter("task", task, f"regression or multilabel for {self.task} targets")
        self.task = task
        if self.tensors is not None:
            self.tensors.task = task  # type: ignore[assignment]

    def _move(self, batch: Any) -> Batch:
        x, y = structure.split(batch, self.target_key)
        x = structure.to(x, self.device, self.dtype)
        return x, y.to(self.device, self.dtype if torch.is_floating_point(y) else None)

    def batches(self, plan: BatchPlan, seed: int, epoch: int, start: int) -> Iterator[Batch]:
        """The epoch's batches from iteration ``start``, on the device."""
        if self.tensors is not None:
            X, y = self.tensors.X, self.tensors.y
            if plan.mode == "full" and plan.ranks == 1:  # one batch of everything: no copy
                yield X, y
                return
            for index in batches(plan, seed, epoch, start):
                index = index.to(self.device)
                # index_select copies whole rows, faster than X[index] on the CPU (docs/benchmarks.md, loader)
                yield structure.take(X, index), y.index_select(0, index)
        else:
            for batch in loader(self.dataset, plan, seed, epoch, start):  # type: ignore[arg-type]
                yield self._move(batch)

    def sample(self, n: int, seed: int) -> Batch:
        """``n`` training samples drawn by ``seed`` (its own generator: the run's randomness is untouched)."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        if self.tensors is not None:
            index = index.to(self.device)
            return structure.take(self.tensors.X, index), self.tensors.y.index_select(0, index)
        return self._move(collate([read_sample(self.dataset, int(i)) for i in index]))

    def spread(self, n: int) -> Batch:
        """Up to ``n`` samples spread evenly over the data, in order, on the device: what is checked of a Dataset
        before training (in-memory data is all there)."""
        total = len(self)
        k = max(1, min(n, total))
        index = sorted({i * total // k for i in range(k)})
        if self.tensors is not None:
            at = torch.tensor(index, device=self.device)
            return structure.take(self.tensors.X, at), self.tensors.y.index_select(0, at)
        return self._move(collate([read_sample(self.dataset, i) for i in index]))

    def chunks(self, size: int) -> Iterator[Batch]:
        """All samples in order, ``size`` at a time, for evaluation."""
        if self.tensors is not None:
            for i in range(0, len(self.tensors), size):
                yield structure.rows(self.tensors.X, i, i + size), self.tensors.y[i : i + size]
        else:
            for batch in DataLoader(self.dataset, batch_size=size):  # type: ignore[arg-type]
                yield self._move(batch)

    def all(self) -> Batch:
        """Every sample as one batch on the device (a Dataset is read once, in order)."""
        if self.tensors is not None:
            return self.tensors.X, self.tensors.y
        parts = list(self.chunks(4096))
        if len(parts) == 1:
            return parts[0]
        return _cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def dataset_task(data: Dataset, target_key: str | None = None) -> str:
    """The task of a Dataset's targets (:func:`~gdlab.data.infer_task`): integer labels are classification from the
    first sample; float or multi-column targets are judged on :data:`SPREAD` samples spread evenly over the data."""
    _, y = structure.split(read_sample(data, 0), target_key)
    if not torch.is_floating_point(y) and y.numel() <= 1:
        return "classification"
    n = len(data)  # type: ignore[arg-type]
    spread = sorted({i * n // SPREAD for i in range(min(SPREAD, n))})
    return infer_task(torch.stack([structure.split(read_sample(data, i), target_key)[1] for i in spread]))


def collate(samples: list[Any]) -> Any:
    """Samples stacked into one batch as a DataLoader does (tuples, dicts and numbers included)."""
    try:
        return default_collate(samples)
    except (RuntimeError, TypeError) as e:
        raise DataError(f"the samples cannot be stacked into a batch: {str(e).splitlines()[0]}; expected samples of "
                        "the same shapes") from None


def _cat(parts: list[Any]) -> Any:
    """Batches of the same structure joined along the samples."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
