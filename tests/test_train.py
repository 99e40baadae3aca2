from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gdlab
from gdlab.data import TensorData, datasets
from gdlab.errors import InvalidParameter, ModelError, UnknownChoice
from gdlab.loop import EVENTS, Callback, LoopState
from gdlab.problem import evaluate
from gdlab.train import fit


def _linear64(n_in: int = 4) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(n_in, 1).double()


def test_full_batch_descent_matches_the_closed_form_update(regression: TensorData) -> None:
    """Batch gradient descent on mean squared error: w <- w - lr * 2/n X^T (Xw + b - y)."""
    model = _linear64()
    w, b = model.weight.detach().clone().T, model.bias.detach().clone()
    X, y = regression.X, regression.y
    lr, n = 0.05, len(X)
    for _ in range(25):
        residual = X @ w + b - y  # [samples, 1]
        w, b = w - lr * 2 / n * X.T @ residual, b - lr * 2 / n * residual.sum(0)
    result = fit(model, regression, optimizer="sgd", lr=lr, batch_size="full", steps=25, progress=False)
    assert torch.allclose(model.weight.T, w, rtol=1e-12, atol=1e-14)
    assert torch.allclose(model.bias, b, rtol=1e-12, atol=1e-14)
    assert result.steps == 25 and len(result.history.epochs) == 25


def test_minibatch_descent_matches_torch_optim_on_the_same_batches(regression: TensorData) -> None:
    from gdlab.data import BatchPlan, batches

    reference = _linear64()
    opt = torch.optim.SGD(reference.parameters(), lr=0.02, momentum=0.9)
    plan = BatchPlan.make(len(regression), 10)
    for epoch in range(3):
        for index in batches(plan, seed=7, epoch=epoch):
            loss = nn.functional.mse_loss(reference(regression.X[index]), regression.y[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model = _linear64()
    fit(model, regression, optimizer="momentum", lr=0.02, batch_size=10, epochs=3, seed=7, progress=False)
    for p, q in zip(model.parameters(), reference.parameters()):  # gdlab's transforms: equal up to rounding
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("batch_size", "per_epoch"), [("full", 1), ("stochastic", 64), (10, 7), (64, 1)])
def test_batch_modes_give_the_planned_iterations(regression: TensorData, batch_size: object,
                                                 per_epoch: int) -> None:
    result = fit(_linear64(), regression, lr=0.001, batch_size=batch_size, epochs=2, progress=False)
    assert result.plan.iterations_per_epoch == per_epoch
    assert result.steps == 2 * per_epoch and len(result.history.steps) == 2 * per_epoch
    assert result.history.steps["epoch"] == [1.0] * per_epoch + [2.0] * per_epoch


def test_dataloader_path_equals_index_path(classes: TensorData) -> None:
    """Any Dataset goes through a DataLoader fed with the same index batches: the same run, to the bit."""
    from torch.utils.data import Subset

    def train(data: object) -> nn.Module:
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        fit(model, data, optimizer="adam", lr=0.01, batch_size=7, epochs=3, seed=5, progress=False)
        return model

    wrapped = Subset(classes, list(range(len(classes))))  # not TensorData: served by a DataLoader
    for p, q in zip(train(classes).parameters(), train(wrapped).parameters()):
        assert torch.equal(p, q)


def test_same_seed_same_run_and_different_seed_different_order(classes: TensorData) -> None:
    def run(seed: int) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        return fit(model, classes, lr=0.1, batch_size=8, epochs=2, seed=seed, progress=False).history.steps["loss"]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_history_and_result_fields(classes: TensorData) -> None:
    train, val = classes.subset(torch.arange(40)), classes.subset(torch.arange(40, 60))
    result = fit(nn.Linear(4, 3), train, val=val, lr=0.1, batch_size=16, epochs=3, progress=False)
    steps, epochs = result.history.steps, result.history.epochs
    assert {"step", "epoch", "loss", "lr", "grad_norm"} <= set(steps.columns)
    assert {"epoch", "step", "train_loss", "val_loss", "val_accuracy", "seconds"} <= set(epochs.columns)
    assert steps["step"] == list(map(float, range(1, 10))) and epochs["step"] == [3.0, 6.0, 9.0]
    assert all(lr == 0.1 for lr in steps["lr"]) and all(g > 0 for g in steps["grad_norm"])
    manual = evaluate(result.model, val)
    assert result.final["val_loss"] == pytest.approx(manual["loss"])
    assert result.final["val_accuracy"] == pytest.approx(manual["accuracy"])
    # the epoch's train loss is the sample-weighted mean of its step losses (batches 16, 16, 8)
    last = steps["loss"][-3:]
    assert epochs["train_loss"][-1] == pytest.approx((16 * last[0] + 16 * last[1] + 8 * last[2]) / 40)
    assert result.lr == 0.1 and result.run_id is None and result.findings == []


def test_gradient_norm_matches_autograd(regression: TensorData) -> None:
    model = _linear64()
    loss = nn.functional.mse_loss(model(regression.X), regression.y)
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]).norm()
    result = fit(model, regression, lr=0.01, batch_size="full", steps=1, progress=False)
    assert result.history.steps["grad_norm"][0] == pytest.approx(expected.item(), rel=1e-12)


def test_events_fire_in_declared_order(regression: TensorData) -> None:
    seen: list[str] = []

    class Recorder(Callback):
        pass

    for event in EVENTS:
        setattr(Recorder, event, lambda self, state, e=event: seen.append(e))
    fit(_linear64(), regression, lr=0.01, batch_size=32, epochs=2, progress=False, callbacks=[Recorder()])
    step = ["on_step_start", "on_step_end"]
    per_epoch = ["on_epoch_start", *step, *step, "on_epoch_end"]
    assert seen == ["on_fit_start", *per_epoch, *per_epoch, "on_fit_end"]


def test_callback_can_stop_and_change_the_learning_rate(regression: TensorData) -> None:
    class Halve(Callback):
        def on_step_end(self, state: LoopState) -> None:
            for group in state.optimizer.param_groups:
                group["lr"] /= 2
            if state.step == 5:
                state.stop("enough")

    result = fit(_linear64(), regression, lr=0.08, batch_size=16, epochs=10, progress=False, callbacks=[Halve()])
    assert result.steps == 5 and result.stop_reason == "enough"
    assert result.history.steps["lr"] == [0.08, 0.04, 0.02, 0.01, 0.005]


def test_tol_and_patience_stop_early(regression: TensorData, classes: TensorData) -> None:
    result = fit(_linear64(), regression, lr=0.1, batch_size="full", epochs=500, tol=1e-9, progress=False)
    assert result.stop_reason.startswith("converged") and result.steps < 500
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 3))
    train, val = classes.subset(torch.arange(10)), classes.subset(torch.arange(10, 60))
    result = fit(big, train, val=val, optimizer="adam", lr=0.05, batch_size=5, epochs=200, patience=3,
                 progress=False)
    assert result.stop_reason.startswith("early stop") and len(result.history.epochs) < 200
    losses = result.history.epochs["val_loss"]
    assert min(losses[-3:]) >= min(losses[:-3])


def test_divergence_stops_without_poisoning_the_parameters() -> None:
    train, _ = datasets.load("seed")  # unscaled inputs: lr 0.1 blows up, as the lecture warns
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    result = fit(model, train, lr=0.1, batch_size="full", epochs=1000, progress=False)
    assert result.stop_reason.startswith("diverged") and result.steps < 1000
    assert not math.isfinite(result.history.steps["loss"][-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_lecture_dataset_trains_through_a_dataloader(user_modules: Path) -> None:
    train, _ = datasets.load("lecture:CustomDataset")
    torch.manual_seed(0)
    result = fit(nn.Linear(3, 1), train, lr=0.001, batch_size=2, epochs=50, progress=False)
    assert result.plan.describe() == "3 samples, batch 2 -> 2 iterations per epoch (last batch 1)"
    assert result.history.epochs["train_loss"][-1] < result.history.epochs["train_loss"][0]


def test_float64_model_trains_on_float32_data(regression: TensorData) -> None:
    data = TensorData(regression.X.float(), regression.y.float())
    model = _linear64()
    fit(model, data, lr=0.05, batch_size="full", steps=3, progress=False)
    assert model.weight.dtype == torch.float64


def test_optimizer_instances_and_factories_are_accepted(regression: TensorData) -> None:
    model = _linear64()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    assert fit(model, regression, optimizer=opt, epochs=1, progress=False).lr == 0.01
    factory = lambda params: torch.optim.RMSprop(params, lr=0.003)
    assert fit(_linear64(), regression, optimizer=factory, epochs=1, progress=False).lr == 0.003


def test_transforms_are_accepted_and_show_their_lr(regression: TensorData) -> None:
    from gdlab.optim import aliases, inject

    bare = fit(_linear64(), regression, optimizer=aliases.adam(0.02), epochs=2, progress=False)
    shown = fit(_linear64(), regression, optimizer=inject(aliases.adam, lr=0.02), epochs=2, progress=False)
    assert bare.lr == 0.02 and shown.lr == 0.02  # every alias shows its hyperparameters in param_groups
    for a, b in zip(bare.model.parameters(), shown.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": 0}, InvalidParameter, r"invalid lr 0: expected a finite number > 0"),
        ({"lr": -1.0}, InvalidParameter, r"invalid lr -1.0"),
        ({"lr": float("inf")}, InvalidParameter, r"invalid lr inf"),
        ({"lr": float("nan")}, InvalidParameter, r"invalid lr nan"),
        ({"batch_size": 0}, InvalidParameter, r"invalid batch_size 0"),
        ({"batch_size": "big"}, InvalidParameter, r"invalid batch_size 'big'"),
        ({"epochs": 0}, InvalidParameter, r"invalid epochs 0: expected a positive integer"),
        ({"steps": 2.5}, InvalidParameter, r"invalid steps 2.5"),
        ({"optimizer": "adamax"}, UnknownChoice, r"unknown optimizer 'adamax': expected one of sgd, momentum"),
        ({"optimizer": "adam", "momentum": 0.9}, InvalidParameter, r"no momentum with optimizer 'adam'"),
        ({"momentum": 1.0}, InvalidParameter, r"invalid momentum 1.0: expected a number in \[0, 1\)"),
        ({"loss": "hinge"}, UnknownChoice, r"unknown loss 'hinge'"),
        ({"patience": 2}, InvalidParameter, r"invalid patience 2: expected validation data"),
        ({"device": "tpu"}, InvalidParameter, r"invalid device 'tpu'"),
        ({"resume": "abc"}, InvalidParameter, r"invalid resume 'abc': expected a store"),
    ],
)
def test_bad_arguments_are_named(regression: TensorData, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fit(_linear64(), regression, progress=False, **kwargs)


def test_model_that_does_not_fit_the_data_fails_before_training(classes: TensorData) -> None:
    with pytest.raises(ModelError, match=r"does not accept the data: mat1 and mat2 shapes cannot be multiplied .*; "
                       r"the batch is inputs tensor\[2, 4\] float32, target tensor\[2\] int64"):
        fit(nn.Linear(7, 3), classes, progress=False)
    with pytest.raises(ModelError, match=r"outputs of shape \[2\] but the data has 3 classes"):
        fit(nn.Linear(4, 2), classes, progress=False)
    with pytest.raises(ModelError, match="gives 2 outputs per sample but the targets have 1"):
        fit(nn.Linear(4, 2), (classes.X, classes.X[:, :1]), progress=False)


def test_progress_bar_runs_and_closes(regression: TensorData, capsys: pytest.CaptureFixture[str]) -> None:
    fit(_linear64(), regression, lr=0.01, batch_size=8, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "it 8/8" in err


def test_public_fit_is_the_same_object() -> None:
    assert gdlab.fit is fit


def test_gradient_norm_with_a_shared_parameter_matches_autograd() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), layer)  # the same weights used twice
    X = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 3, dtype=torch.float64)
    loss = nn.functional.mse_loss(model(X), y)
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]).norm()
    result = fit(model, (X, y), lr=0.01, batch_size="full", steps=1, progress=False)
    assert result.history.steps["grad_norm"][0] == pytest.approx(expected.item(), rel=1e-12)


def test_a_schedule_keeps_each_param_groups_ratio(regression: TensorData) -> None:
    model = _linear64()
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.05}, {"params": [model.bias], "lr": 0.01}])
    seen: list[tuple[float, float]] = []

    class Watch(gdlab.Callback):
        def on_step_end(self, state: Any) -> None:
            seen.append((state.optimizer.param_groups[0]["lr"], state.optimizer.param_groups[1]["lr"]))

    fit(model, regression, optimizer=opt, schedule="cosine", epochs=2, progress=False, callbacks=[Watch()])
    assert 0.04 < seen[0][0] < 0.05 and seen[-1][0] < 0.01  # cosine from the first group's own lr (0.05)
    assert all(b == pytest.approx(a / 5) for a, b in seen)


def test_standardize_target_trains_on_scaled_targets_and_predicts_in_their_units() -> None:
    """Prices around 3e5 swamp the gradient (the run overflows at lr 0.1); standardised, the model learns them, and
    its predictions, MAE and R^2 are in the original units."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 4, generator=g)
    y = (3e5 + 8e4 * (X @ torch.tensor([1.0, 0.5, -0.3, 0.2])) + 1e4 * torch.randn(300, generator=g)).reshape(-1, 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    result = gdlab.fit(model, (X[:240], y[:240]), val=(X[240:], y[240:]), epochs=20, progress=False,
                       standardize_target=True)
    assert result.final["val_r2"] > 0.9 and result.final["val_mae"] < 3e4  # in the prices' units
    assert result.final["train_loss"] < 0.2  # the loss is the standardised one
    with torch.no_grad():
        predicted = model(X[240:])
    assert abs(float(predicted.mean()) - float(y[240:].mean())) < 2e4  # the model predicts prices
    assert result.history.meta["standardize_target"] is True and result.history.meta["val_samples"] == 60
    with pytest.raises(InvalidParameter, match="standardize_target"):
        gdlab.fit(torch.nn.Linear(4, 2), (X, torch.arange(300) % 2), epochs=1, progress=False,
                  standardize_target=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_select": "guess"}, "invalid lr_select 'guess': expected sweep or range-test"),
        ({"standardize_target": "yes"}, "invalid standardize_target 'yes': expected True or False"),
        ({"restarts": 1, "remedy": "auto"}, r"invalid restarts 1: expected 0 \(none\) or a count >= 2"),
        ({"tol": math.inf}, "invalid tol inf: expected a finite number > 0"),
        ({"seed": -1}, "invalid seed -1"),
    ],
)
def test_settings_are_checked_by_the_one_check_before_anything_is_stored(regression: TensorData, tmp_path: Path,
                                                                         kwargs: dict, message: str) -> None:
    from gdlab.config import check_settings
    from gdlab.store import Store

    with pytest.raises(InvalidParameter, match=message):
        check_settings(**kwargs)  # the words fit gives are the shared check's
    with pytest.raises(InvalidParameter, match=message):
        fit(_linear64(), regression, progress=False, store=tmp_path / "runs", **kwargs)
    assert not (tmp_path / "runs").exists() or Store(tmp_path / "runs").runs() == []
