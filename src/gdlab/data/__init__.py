"""Data: batch plans and index batches (:mod:`~gdlab.data.batching`), the built-in datasets
(:mod:`~gdlab.data.datasets`) and the source of a run's batches (:class:`~gdlab.data.source.Source`).

Example:
    >>> BatchPlan.make(1000, 100).describe()
    '1000 samples, batch 100 -> 10 iterations per epoch'
"""

from gdlab.data.batching import (
    TASKS,
    BatchPlan,
    BatchSize,
    Task,
    TensorData,
    as_tensor_data,
    batches,
    epoch_order,
    infer_task,
    loader,
    parse_batch_size,
    split,
    standardize,
)

__all__ = [
    "BatchPlan",
    "BatchSize",
    "TASKS",
    "Task",
    "TensorData",
    "as_tensor_data",
    "batches",
    "epoch_order",
    "infer_task",
    "loader",
    "parse_batch_size",
    "split",
    "standardize",
]
