"""Where a run's batches come from: in-memory tensors batched by index on the device, or a Dataset through a
DataLoader fed the same index batches (so both paths train bit-identically)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gdlab.data.batching import BatchPlan, TensorData, as_tensor_data, batches, loader
from gdlab.errors import InvalidParameter

__all__ = ["Source"]


class Source:
    """Training or validation data with its device path: index batching for tensors, else a DataLoader.

    Args:
        data: a Dataset or an ``(X, y)`` pair. In-memory data (:class:`~gdlab.data.TensorData`, an ``(X, y)``
            pair, a two-tensor ``TensorDataset``) is moved to ``device`` once and batched there by index.
        device: where batches are served.
        dtype: the model's floating dtype; float inputs (and regression targets) are cast to it.

    Example:
        >>> source = Source((torch.randn(10, 3), torch.arange(10) % 2), torch.device("cpu"), torch.float32)
        >>> len(source), source.task, source.num_classes
        (10, 'classification', 2)
    """

    def __init__(self, data: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        tensors = as_tensor_data(data)
        self.dataset: Dataset | None = None if tensors is not None else data
        if tensors is not None:
            self.tensors: TensorData | None = tensors.to(device)
            if self.tensors.X.dtype != dtype:
                self.tensors.X = self.tensors.X.to(dtype)
            if self.tensors.task == "regression" and self.tensors.y.dtype != dtype:
                self.tensors.y = self.tensors.y.to(dtype)
            self.task: str = tensors.task
            self.num_classes = tensors.num_classes
        else:
            self.tensors = None
            if len(data) == 0:
                raise InvalidParameter("data", type(data).__name__, "a Dataset with at least one sample")
            _, y = data[0]
            y = torch.as_tensor(y)
            self.task = "regression" if torch.is_floating_point(y) else "classification"
            self.num_classes = None

    def __len__(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.dataset)  # type: ignore[arg-type]

    def _move(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, self.dtype)
        return x, y.to(self.device, self.dtype if torch.is_floating_point(y) else None)

    def batches(self, plan: BatchPlan, seed: int, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The epoch's batches from iteration ``start``, on the device."""
        if self.tensors is not None:
            X, y = self.tensors.X, self.tensors.y
            if plan.mode == "full":  # one batch of everything: no copy
                yield X, y
                return
            for index in batches(plan, seed, epoch, start):
                index = index.to(self.device)
                # index_select copies whole rows, faster than X[index] on the CPU (docs/benchmarks.md, loader)
                yield X.index_select(0, index), y.index_select(0, index)
        else:
            for x, y in loader(self.dataset, plan, seed, epoch, start):  # type: ignore[arg-type]
                yield self._move(x, y)

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training samples drawn by ``seed`` (its own generator: the run's randomness is untouched)."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        if self.tensors is not None:
            index = index.to(self.device)
            return self.tensors.X.index_select(0, index), self.tensors.y.index_select(0, index)
        xs, ys = zip(*(self.dataset[int(i)] for i in index))  # type: ignore[index]
        return self._move(torch.stack([torch.as_tensor(x) for x in xs]), torch.stack([torch.as_tensor(y) for y in ys]))

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """All samples in order, ``size`` at a time, for evaluation."""
        if self.tensors is not None:
            for i in range(0, len(self.tensors), size):
                yield self.tensors.X[i : i + size], self.tensors.y[i : i + size]
        else:
            for x, y in DataLoader(self.dataset, batch_size=size):  # type: ignore[arg-type]
                yield self._move(x, y)
