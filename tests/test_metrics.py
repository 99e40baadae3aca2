"""Every target gets a sensible default: its loss, and validation metrics beside the loss under any loss
(accuracy for classes, accuracy and exact match for 0/1 labels, MAE and R² for regression), checked against
closed-form references."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import gdlab
from gdlab.data import TensorData, infer_task
from gdlab.data.source import Source
from gdlab.errors import DataError, ModelError
from gdlab.metrics import Metrics, chunk_sums, threshold
from gdlab.problem import Problem, evaluate

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _labels(n: int = 800, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five 0/1 labels, each a linear rule of the 8 features (learnable by a linear model)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    W = torch.randn(8, k, generator=torch.Generator().manual_seed(99))
    return X, (X @ W > 0).float()


def _regression(n: int = 300, offset: float = 0.0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [-1.0, 1.0]], dtype=torch.float64)
    y[:, 1] *= 10  # columns of different spread: the pooled R² differs from the mean of the per-column ones
    return X, y + offset + torch.randn(n, 2, generator=g, dtype=torch.float64)


# -- which task, which loss ---------------------------------------------------------------------------------------


def test_targets_are_judged_by_dtype_and_values() -> None:
    assert infer_task(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])) == "multilabel"
    assert infer_task(torch.tensor([0.0, 1.0, 1.0])) == "multilabel"  # one 0/1 column: binary, by one logit
    assert infer_task(torch.tensor([[0, 1], [1, 1]])) == "multilabel"  # integer multi-hot rows
    assert infer_task(torch.tensor([[0.0, 1.0], [1.0, 0.5]])) == "regression"
    assert infer_task(torch.zeros(4, 1)) == "regression"  # a single value: nothing says labels
    assert infer_task(torch.tensor([0, 1, 1])) == "classification"
    assert infer_task(torch.tensor([True, False])) == "classification"
    data = TensorData(torch.zeros(3, 2), torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert (data.task, data.num_classes, data.n_outputs, data.y.dtype) == ("multilabel", None, 2, torch.float32)
    assert TensorData(torch.zeros(2, 2), torch.tensor([[0, 1], [1, 0]])).y.dtype == torch.float32
    assert TensorData(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]), task="regression").task == "regression"
    with pytest.raises(DataError, match="y has 3 values per sample but the task is classification"):
        TensorData(torch.zeros(2, 2), torch.tensor([[0, 1, 2], [1, 0, 0]]))
    with pytest.raises(DataError, match="multilabel targets are not all between 0 and 1"):
        TensorData(torch.zeros(2, 2), torch.tensor([[0.0, 2.0], [1.0, 0.0]]), task="multilabel")


def test_auto_loss_follows_the_task() -> None:
    X, Y = _labels(20)
    assert Problem.make(nn.Linear(8, 5), (X, Y), device="cpu").loss_name == "bce"
    assert Problem.make(nn.Linear(8, 1), (X, Y[:, 0]), device="cpu").loss_name == "bce"  # binary
    assert Problem.make(nn.Linear(8, 5), TensorData(X, Y, task="regression"), device="cpu").loss_name == "mse"
    assert Problem.make(nn.Linear(8, 1), (X, X[:, :1]), device="cpu").loss_name == "mse"
    assert Problem.make(nn.Linear(8, 2), (X, Y[:, 0].long()), device="cpu").loss_name == "cross_entropy"


def test_validation_targets_follow_the_training_task() -> None:
    X, Y = _labels(60)
    all_off = torch.zeros(4, 5)  # alone this would read as regression (one value)
    result = gdlab.fit(nn.Linear(8, 5), (X, Y), val=(X[:4], all_off), epochs=1, progress=False,
                       instruments="none", doctor=False)
    assert set(result.final) == {"train_loss", "val_loss", "val_accuracy", "val_subset_accuracy"}
    y = X[:, :2].clone()
    result = gdlab.fit(nn.Linear(8, 2), (X, y), val=(X[:4], Y[:4, :2]), epochs=1, progress=False,
                       instruments="none", doctor=False)
    assert set(result.final) == {"train_loss", "val_loss", "val_mae", "val_r2"}
    with pytest.raises(ModelError, match="the validation data is classification but the training data is "
                                         "multilabel"):
        gdlab.fit(nn.Linear(8, 5), (X, Y), val=(X[:4], torch.zeros(4).long()), epochs=1, progress=False)


def test_a_dataset_of_label_vectors_is_multilabel() -> None:
    X, Y = _labels(100)

    class Labelled(Dataset):
        def __len__(self) -> int:
            return len(X)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return X[i], Y[i]

    assert Source(Labelled(), torch.device("cpu"), torch.float32).task == "multilabel"
    result = gdlab.fit(nn.Linear(8, 5), Labelled(), val=Labelled(), optimizer="adam", lr=0.05, epochs=3,
                       progress=False, instruments="none", doctor=False)
    assert result.final["val_accuracy"] is not None and result.final["val_subset_accuracy"] is not None


# -- the metrics, against references ------------------------------------------------------------------------------


def test_regression_reports_mae_and_r2_equal_to_sklearn() -> None:
    X, y = _regression(offset=1e4)  # far from zero: R² must not lose its digits to cancellation
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        model.bias.copy_(y[:200].mean(0))
    result = gdlab.fit(model, (X[:200], y[:200]), val=(X[200:], y[200:]), optimizer="adam", lr=0.5, epochs=40,
                       batch_size=50, progress=False, instruments="none", doctor=False)
    with torch.no_grad():
        pred = model(X[200:]).numpy()
    truth = y[200:].numpy()
    r2 = sklearn_metrics.r2_score(truth, pred, multioutput="variance_weighted")  # 1 - sum SSE / sum SST
    mae = sklearn_metrics.mean_absolute_error(truth, pred)
    assert result.final["val_r2"] == pytest.approx(r2, rel=1e-9)
    assert result.final["val_mae"] == pytest.approx(mae, rel=1e-9)
    assert r2 != pytest.approx(sklearn_metrics.r2_score(truth, pred), rel=1e-3)  # not the mean of column R²s
    epochs = result.history.epochs
    assert len(epochs["val_r2"]) == 40 and epochs["val_r2"][-1] == result.final["val_r2"]
    # computed over the whole data, not as a mean over chunks: the same at any chunk size
    for size in (7, 64, 4096):
        chunked = evaluate(model, (X[200:], y[200:]), batch_size=size)
        assert chunked["r2"] == pytest.approx(r2, rel=1e-9) and chunked["mae"] == pytest.approx(mae, rel=1e-9)
        assert chunked["loss"] == pytest.approx(float(((pred - truth) ** 2).mean()), rel=1e-9)


def test_r2_is_nan_for_targets_that_do_not_vary() -> None:
    values = evaluate(nn.Linear(2, 1), (torch.randn(5, 2), torch.full((5, 1), 3.0)))
    assert math.isnan(values["r2"]) and values["mae"] > 0


def test_multilabel_classifier_learns_with_bce_by_default() -> None:
    X, Y = _labels()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    result = gdlab.fit(model, (X[:600], Y[:600]), val=(X[600:], Y[600:]), optimizer="adam", lr=0.01, epochs=30,
                       progress=False)
    assert result.history.meta["task"] == "multilabel"
    with torch.no_grad():
        logits = model(X[600:])
    right = (torch.sigmoid(logits) > 0.5) == (Y[600:] > 0.5)
    assert result.final["val_accuracy"] == pytest.approx(float(right.float().mean()))
    assert result.final["val_subset_accuracy"] == pytest.approx(float(right.all(1).float().mean()))
    assert result.final["val_accuracy"] > 0.95 and result.final["val_subset_accuracy"] > 0.8
    assert result.final["val_loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, Y[600:])),
                                                     rel=1e-5)
    assert "val_mae" not in result.final


def test_binary_float_targets_train_one_logit_and_report_accuracy() -> None:
    X, Y = _labels(400)
    y = Y[:, 2]  # [N] floats in {0, 1}
    torch.manual_seed(0)
    result = gdlab.fit(nn.Linear(8, 1), (X[:300], y[:300]), val=(X[300:], y[300:]), optimizer="adam", lr=0.05,
                       epochs=20, progress=False, instruments="none", doctor=False)
    with torch.no_grad():
        right = (result.model(X[300:]).squeeze(1) > 0) == (y[300:] > 0.5)
    assert result.final["val_accuracy"] == pytest.approx(float(right.float().mean())) and \
        result.final["val_accuracy"] > 0.9
    assert result.final["val_subset_accuracy"] == result.final["val_accuracy"]  # one label: the same


def _classes(n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, 6, generator=g)
    return X, (X @ torch.randn(6, 3, generator=g)).argmax(1)  # linearly separable classes


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(X)
    out = getattr(out, "logits", out)
    return float((out.argmax(1) == y).float().mean())


@pytest.mark.parametrize("loss", [
    partial(F.cross_entropy, label_smoothing=0.1),
    lambda out, y: F.cross_entropy(out, y, weight=torch.tensor([1.0, 2.0, 0.5])),
    lambda out, y: ((1 - torch.exp(-F.cross_entropy(out, y, reduction="none"))) ** 2
                    * F.cross_entropy(out, y, reduction="none")).mean(),  # focal loss, gamma 2
], ids=["label_smoothing", "class_weights", "focal"])
def test_a_classifier_reports_accuracy_under_any_loss(loss: Any) -> None:
    X, y = _classes()
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    result = gdlab.fit(model, (X[:400], y[:400]), val=(X[400:], y[400:]), loss=loss, optimizer="adam", lr=0.05,
                       epochs=10, progress=False, instruments="none", doctor=False)
    assert result.final["val_accuracy"] == pytest.approx(_accuracy(model, X[400:], y[400:]))
    assert result.final["val_accuracy"] > 0.8
    assert len(result.history.epochs["val_accuracy"]) == 10


class OwnLoss(nn.Module):
    """A classifier computing its own loss given the labels: an object with .loss and .logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.net(x)
        return SimpleNamespace(loss=F.cross_entropy(logits, labels) if labels is not None else None, logits=logits)


def test_a_model_computing_its_own_loss_reports_accuracy_from_its_logits() -> None:
    X, y = _classes()
    torch.manual_seed(0)
    model = OwnLoss()
    result = gdlab.fit(model, (X[:400], y[:400]), val=(X[400:], y[400:]), loss="model", optimizer="adam", lr=0.05,
                       epochs=10, progress=False, instruments="none", doctor=False)
    assert result.final["val_accuracy"] == pytest.approx(_accuracy(model, X[400:], y[400:]))

    class LossOnly(OwnLoss):  # returns the loss alone: nothing to measure, and nothing made up
        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:  # type: ignore[override]
            return super().forward(x, labels).loss

    result = gdlab.fit(LossOnly(), (X[:400], y[:400]), val=(X[400:], y[400:]), loss="model", epochs=1,
                       progress=False, instruments="none", doctor=False)
    assert result.final["val_loss"] is not None and result.final["val_accuracy"] is None


def test_chunk_sums_leave_out_ignored_targets_and_mismatched_outputs() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, -100])  # -100: an ignore index
    metrics = Metrics("classification")
    metrics.add(logits, y)
    assert float(metrics.result()["accuracy"]) == pytest.approx(2 / 3)
    assert chunk_sums("classification", torch.zeros(4, 1), y) == {}  # one column: no classes to compare
    assert chunk_sums("regression", torch.zeros(3, 2), torch.zeros(4, 1)) == {}
    assert chunk_sums("multilabel", None, torch.zeros(4, 2)) == {}
    sequence = torch.randn(2, 3, 5)  # torch's [batch, classes, positions] beside targets [batch, positions]
    tokens = sequence.argmax(1)
    whole = Metrics("classification")
    whole.add(sequence, tokens)
    assert float(whole.result()["accuracy"]) == 1.0


def test_multilabel_threshold_follows_the_loss() -> None:
    assert threshold(F.binary_cross_entropy_with_logits, "bce") == 0.0
    assert threshold(F.mse_loss, "mse") == 0.5 and threshold(F.binary_cross_entropy, "binary_cross_entropy") == 0.5
    X, Y = _labels(200)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 5), nn.Sigmoid())  # probabilities, fitted by least squares
    result = gdlab.fit(model, (X, Y), val=(X, Y), loss="mse", optimizer="adam", lr=0.05, epochs=20,
                       progress=False, instruments="none", doctor=False)
    with torch.no_grad():
        right = (model(X) > 0.5) == (Y > 0.5)
    assert result.final["val_accuracy"] == pytest.approx(float(right.float().mean()))


# -- populations, sweeps and restarts -----------------------------------------------------------------------------


def test_population_members_report_the_metrics_fit_reports() -> None:
    X, y = (t.float() for t in _regression())
    train, val = (X[:200], y[:200]), (X[200:], y[200:])
    pop = gdlab.population.train(lambda: nn.Linear(4, 2), train, seeds=[0, 1, 2], optimizer="adam",
                                 hyper={"lr": [0.01, 0.1, 0.3]}, epochs=5, batch_size=50, val=val, progress=False)
    assert set(pop.val_metrics) == {"mae", "r2"} and pop.val_accuracy is None
    for i in range(3):
        alone = evaluate(pop.member(i), val)
        assert pop.val_metrics["mae"][i] == pytest.approx(alone["mae"], rel=1e-5)
        assert pop.val_metrics["r2"][i] == pytest.approx(alone["r2"], rel=1e-5)

    X, Y = _labels(400)
    pop = gdlab.population.train(lambda: nn.Linear(8, 5), (X[:300], Y[:300]), seeds=[0, 1], optimizer="adam",
                                 hyper={"lr": 0.05}, epochs=5, val=(X[300:], Y[300:]), progress=False)
    assert set(pop.val_metrics) == {"accuracy", "subset_accuracy"} and pop.val_accuracy == pop.val_metrics["accuracy"]
    for i in range(2):
        alone = evaluate(pop.member(i), (X[300:], Y[300:]))
        assert pop.val_accuracy[i] == pytest.approx(alone["accuracy"])
        assert pop.val_metrics["subset_accuracy"][i] == pytest.approx(alone["subset_accuracy"])

    Xc, yc = _classes()
    smoothing = partial(F.cross_entropy, label_smoothing=0.1)
    pop = gdlab.population.train(lambda: nn.Linear(6, 3), (Xc[:400], yc[:400]), seeds=[0, 1], optimizer="adam",
                                 hyper={"lr": 0.05}, epochs=3, val=(Xc[400:], yc[400:]), loss=smoothing,
                                 progress=False)
    assert pop.val_accuracy is not None
    for i in range(2):
        assert pop.val_accuracy[i] == pytest.approx(_accuracy(pop.member(i), Xc[400:], yc[400:]))


def test_sweep_rows_and_restarts_on_new_targets() -> None:
    X, y = (t.float() for t in _regression())
    grid = gdlab.sweep(lambda: nn.Linear(4, 2), (X[:200], y[:200]), val=(X[200:], y[200:]), lr=[0.01, 0.1],
                       epochs=3, progress=False)
    row = grid.table[1]
    assert row["metric"] is None and row["val_r2"] == pytest.approx(grid.population.val_metrics["r2"][1])
    assert row["val_mae"] is not None
    X, Y = _labels(300)
    found = gdlab.restarts(lambda: nn.Linear(8, 5), (X[:200], Y[:200]), val=(X[200:], Y[200:]), seeds=4, lr=0.5,
                           epochs=20, progress=False)
    assert len(found.clusters) == 4 and max(found.clusters) == 0  # a convex loss: one end point
    assert found.sweep.table[0]["metric"] > 0.9 and found.sweep.table[0]["val_subset_accuracy"] is not None


# -- the command line and the store -------------------------------------------------------------------------------


def test_cli_json_show_and_store_carry_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from gdlab.cli import app
    from gdlab.store import Store

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    X, y = _regression()
    np.savez(tmp_path / "reg.npz", X=X.float().numpy(), y=y.float().numpy())
    X, Y = _labels(300)
    np.savez(tmp_path / "labels.npz", X=X.numpy(), y=Y.numpy())
    common = ["--model", "linear", "--optimizer", "adam", "--lr", "0.5", "--epochs", "20", "--val-split", "0.25",
              "--store", "s", "--quiet", "--no-plot", "--instruments", "none"]
    reg = json.loads(runner.invoke(app, ["train", "--data", "reg.npz", "--json", *common]).stdout)
    assert set(reg["final"]) == {"train_loss", "val_loss", "val_mae", "val_r2"} and reg["final"]["val_r2"] > 0.5
    labels = json.loads(runner.invoke(app, ["train", "--data", "labels.npz", "--json", *common]).stdout)
    assert set(labels["final"]) == {"train_loss", "val_loss", "val_accuracy", "val_subset_accuracy"}
    assert labels["final"]["val_accuracy"] > 0.8

    db = Store("s", create=False)
    history = db.history(reg["run_id"])
    assert history.epochs["val_r2"][-1] == pytest.approx(reg["final"]["val_r2"])
    assert db.get(labels["run_id"]).config["doctor_meta"]["task"] == "multilabel"
    shown = json.loads(runner.invoke(app, ["show", reg["run_id"], "--store", "s", "--json"]).stdout)
    assert shown["final"] == reg["final"]
    printed = runner.invoke(app, ["show", reg["run_id"], "--store", "s"]).stdout
    assert "val_mae" in printed and "val_r2" in printed
    listed = runner.invoke(app, ["runs", "--store", "s"], env={"COLUMNS": "250"}).stdout
    assert "val r2" in listed and f"{reg['final']['val_r2']:.4g}" in listed
    summary = runner.invoke(app, ["train", "--data", "reg.npz", *common[:-4], "--no-plot"]).stdout
    assert "val MAE" in summary and "val R²" in summary
    assert runner.invoke(app, ["train", "--data", "labels.npz", "--task", "regression", "--json",
                               *common]).stdout.count("val_r2") == 1
