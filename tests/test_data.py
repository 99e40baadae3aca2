from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

from gdlab.data import (
    BatchPlan,
    TensorData,
    as_tensor_data,
    batches,
    epoch_order,
    parse_batch_size,
    split,
    standardize,
)
from gdlab.errors import DataError, InvalidParameter


def test_lecture_arithmetic_1000_samples_batch_100_is_10_iterations() -> None:
    plan = BatchPlan.make(1000, 100)
    assert (plan.iterations_per_epoch, plan.last_batch) == (10, 100)
    assert plan.describe() == "1000 samples, batch 100 -> 10 iterations per epoch"


@pytest.mark.parametrize(
    ("samples", "batch", "drop_last", "iterations", "last"),
    [
        (1797, 32, False, 57, 5),
        (1797, 32, True, 56, 32),
        (10, "full", False, 1, 10),
        (10, "stochastic", False, 10, 1),
        (10, 64, False, 1, 10),  # a batch larger than the data is the whole data
        (3, 2, False, 2, 1),  # the lecture's DataLoader(batch_size=2) on 3 samples
    ],
)
def test_plan_arithmetic(samples: int, batch: object, drop_last: bool, iterations: int, last: int) -> None:
    plan = BatchPlan.make(samples, batch, drop_last=drop_last)
    assert (plan.iterations_per_epoch, plan.last_batch) == (iterations, last)
    seen = torch.cat(list(batches(plan, seed=0, epoch=0)))
    assert len(seen) == samples - plan.dropped
    assert len(set(seen.tolist())) == len(seen)


def test_describe_mentions_last_batch_and_dropped() -> None:
    assert BatchPlan.make(1797, 32).describe().endswith("57 iterations per epoch (last batch 5)")
    assert BatchPlan.make(1797, 32, drop_last=True).describe().endswith("(5 dropped each epoch)")
    assert BatchPlan.make(3, "full").describe() == "3 samples, full batch -> 1 iteration per epoch"


@pytest.mark.parametrize("bad", [0, -3, "0", "abc", 2.5, None, True, "1e3"])
def test_bad_batch_size_names_parameter_value_and_expectation(bad: object) -> None:
    with pytest.raises(InvalidParameter, match=r"invalid batch_size .*expected \"full\", \"stochastic\" or a "
                                               "positive integer"):
        parse_batch_size(bad)


def test_batch_size_accepts_strings_of_digits_and_names() -> None:
    assert parse_batch_size("64") == 64
    assert parse_batch_size(" FULL ") == "full"
    assert parse_batch_size("stochastic") == "stochastic"


def test_order_is_a_function_of_seed_and_epoch() -> None:
    plan = BatchPlan.make(50, 8)
    assert torch.equal(epoch_order(plan, 1, 3), epoch_order(plan, 1, 3))
    assert not torch.equal(epoch_order(plan, 1, 3), epoch_order(plan, 1, 4))
    assert not torch.equal(epoch_order(plan, 1, 3), epoch_order(plan, 2, 3))
    resumed = torch.cat(list(batches(plan, 1, 3, start=4)))
    assert torch.equal(resumed, epoch_order(plan, 1, 3)[32:])


def test_empty_data_is_an_error() -> None:
    with pytest.raises(DataError, match="no samples"):
        BatchPlan.make(0, 4)


def test_tensor_data_infers_task_and_shapes() -> None:
    cls = TensorData(torch.zeros(4, 2, 2), torch.tensor([0, 2, 1, 0]))
    assert (cls.task, cls.num_classes, cls.n_features, cls.n_outputs) == ("classification", 3, 4, 3)
    reg = TensorData(torch.zeros(4, 3), torch.zeros(4))
    assert (reg.task, reg.y.shape, reg.n_outputs) == ("regression", (4, 1), 1)
    with pytest.raises(DataError, match="X has 4 samples but y has 3"):
        TensorData(torch.zeros(4, 3), torch.zeros(3))


def test_as_tensor_data_accepts_pairs_and_tensor_datasets() -> None:
    X, y = torch.zeros(5, 2), torch.zeros(5, 1)
    assert isinstance(as_tensor_data((X, y)), TensorData)
    assert isinstance(as_tensor_data(torch.utils.data.TensorDataset(X, y)), TensorData)
    assert as_tensor_data(Subset(torch.utils.data.TensorDataset(X, y), [0, 1])) is None
    with pytest.raises(InvalidParameter, match="a torch Dataset, an \\(X, y\\) pair"):
        as_tensor_data([1, 2, 3])


def test_standardize_uses_training_statistics_and_keeps_constant_columns() -> None:
    train = TensorData(torch.tensor([[1.0, 5.0], [3.0, 5.0]]), torch.zeros(2, 1))
    val = TensorData(torch.tensor([[5.0, 5.0]]), torch.zeros(1, 1))
    s_train, s_val = standardize(train, val)
    assert torch.allclose(s_train.X.mean(0), torch.zeros(2))
    assert torch.allclose(s_train.X[:, 0].std(), torch.tensor(1.0))
    assert s_val.X[0, 0].item() == pytest.approx(3 / 2**0.5)  # (5 - mean 2) / sample std sqrt(2)
    assert s_val.X[0, 1] == 0.0  # a constant column is centred, not divided by zero


def test_split_is_disjoint_deterministic_and_checked() -> None:
    data = TensorData(torch.arange(20.0).reshape(10, 2), torch.arange(10) % 2)
    a_train, a_val = split(data, 0.3, seed=4)
    b_train, b_val = split(data, 0.3, seed=4)
    assert len(a_val) == 3 and len(a_train) == 7 and torch.equal(a_val.X, b_val.X)
    assert not set(a_val.X[:, 0].tolist()) & set(a_train.X[:, 0].tolist())
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(InvalidParameter, match="val_split"):
            split(data, bad, seed=0)
