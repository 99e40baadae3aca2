"""The doctor: each pathology built on purpose is named (and healthy twins are not); auto repairs the
recoverable ones."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gdlab
from gdlab.data import TensorData
from gdlab.data.datasets import load
from gdlab.doctor import CODES, DETECTORS, REMEDY_RULES, Doctor, diagnose
from gdlab.doctor.remedies import Window, add_momentum_on_plateau, halve_when_noisy
from gdlab.errors import InvalidParameter, UnknownChoice
from gdlab.records import History
from gdlab.store import Store


@pytest.fixture(scope="module")
def moons() -> tuple[TensorData, TensorData]:
    return load("moons")


def _mlp(act: type[nn.Module] = nn.ReLU, hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, hidden), act(), nn.Linear(hidden, 2))


def _unbudgeted() -> list[Any]:
    """The default instruments with no wall-clock budget: their readings fall on the same steps however loaded the
    machine is."""
    from gdlab.instruments import Cheap, Periodic

    return [Cheap(budget=math.inf), Periodic(budget=math.inf)]


def _codes(result: Any, at_least: str = "warning") -> set[str]:
    levels = ("info", "warning", "error")
    return {f.code for f in result.findings if levels.index(f.severity) >= levels.index(at_least)}


def _below(consequences: Any) -> list[Any]:
    """Every consequence of a story's cause, nested ones included."""
    return [x for c in consequences for x in (c, *_below(c.consequences))]


def test_every_code_has_a_detector() -> None:
    assert set(DETECTORS) == set(CODES)


@pytest.mark.parametrize(("act", "optimizer", "lr"), [(nn.Tanh, "adam", 0.01), (nn.ReLU, "momentum", 0.05)])
def test_healthy_runs_get_no_warning(moons: Any, act: type[nn.Module], optimizer: str, lr: float) -> None:
    train, val = moons
    result = gdlab.fit(_mlp(act), train, val=val, optimizer=optimizer, lr=lr, epochs=20, progress=False)
    assert _codes(result) == set() and result.final["val_accuracy"] > 0.9


def test_healthy_regression_gets_no_warning() -> None:
    train, val = load("linear")
    torch.manual_seed(0)
    result = gdlab.fit(nn.Linear(10, 1), train, val=val, optimizer="sgd", lr=0.1, epochs=10, progress=False)
    assert _codes(result) == set()


def test_non_finite_is_an_error_with_a_lower_lr(moons: Any) -> None:
    result = gdlab.fit(_mlp(), moons[0], optimizer="sgd", lr=1e8, epochs=2, progress=False)
    finding = next(f for f in result.findings if f.code == "non_finite")
    assert finding.severity == "error" and finding.remedy == {"action": "set_lr", "lr": pytest.approx(1e7),
                                                               "rollback": True}
    assert "not_learning" not in _codes(result)


def test_lr_too_low_and_not_learning(moons: Any) -> None:
    result = gdlab.fit(_mlp(nn.Tanh), moons[0], optimizer="sgd", lr=1e-5, epochs=5, progress=False)
    assert {"lr_too_low", "not_learning"} <= _codes(result)
    low = next(f for f in result.findings if f.code == "lr_too_low")
    assert low.evidence["update_ratio_median"] < 5e-4 and low.remedy["lr"] > 1e-5


def test_lr_too_high_against_the_stability_limit(moons: Any) -> None:
    result = gdlab.fit(_mlp(), moons[0], optimizer="sgd", lr=8.0, epochs=5, progress=False, instruments="full")
    finding = next(f for f in result.findings if f.code == "lr_too_high")
    assert finding.evidence["sharpness"] > finding.evidence["stability_limit"]
    assert finding.remedy["lr"] < 8.0


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4, 10))


def test_a_sharp_start_is_no_lr_too_high() -> None:
    """A healthy BatchNorm CNN on digits: the sharpness at initialisation is above the stability limit, the later
    readings far under it. One reading at the start raised lr_too_high; it takes corroboration now."""
    train, val = load("digits")
    result = gdlab.fit(_bn_cnn(), train, val=val, optimizer="sgd", lr=0.1, epochs=3, progress=False,
                       instruments="full")
    steps = result.history.steps
    measured = [(int(st), s, lim) for st, s, lim in zip(steps["step"], steps["sharpness"], steps["stability_limit"])
                if math.isfinite(s)]
    assert measured[0][0] == 1 and measured[0][1] > 1.1 * measured[0][2]  # the reading that raised the alarm
    assert len(measured) >= 3 and all(s < lim for _, s, lim in measured[1:])
    assert "lr_too_high" not in _codes(result) and result.final["val_accuracy"] > 0.9


def test_sharpness_needs_two_readings_past_the_opening() -> None:
    def history(readings: dict[int, float]) -> History:
        h = _history([1.0 - 0.004 * i for i in range(150)], lr=1.0)
        for step, value in readings.items():
            h.steps.columns.setdefault("sharpness", [math.nan] * 150)[step - 1] = value
            h.steps.columns.setdefault("stability_limit", [math.nan] * 150)[step - 1] = 2.0
        return h

    def codes(readings: dict[int, float]) -> set[str]:
        return {f.code for f in diagnose(history(readings))}

    assert "lr_too_high" not in codes({1: 50.0, 50: 1.0, 100: 1.0})  # the opening alone
    assert "lr_too_high" not in codes({1: 50.0, 50: 5.0, 100: 1.0})  # one reading past it
    assert "lr_too_high" not in codes({50: 5.0, 75: 1.0, 100: 1.0, 125: 5.0, 150: 1.0})  # a minority of them
    (finding,) = [f for f in diagnose(history({1: 1.0, 50: 5.0, 100: 6.0})) if f.code == "lr_too_high"]
    # the finding's step is its evidence's (the latest reading over the limit); the first is since_step
    assert finding.step == 100 and finding.evidence["since_step"] == 50
    assert finding.evidence["readings_over"] == 2 and finding.evidence["sharpness"] == 6.0
    assert finding.remedy == {"action": "set_lr", "lr": pytest.approx(1.0 * 2.0 / 6.0 / 2)}


def test_per_layer_findings_need_two_readings() -> None:
    h = _history([1.0] * 60)
    h.steps.columns["dead_share/0"] = [math.nan] * 60
    h.steps.columns["dead_share/0"][0] = 0.9  # one reading: dead at the first step, then never measured again
    assert "dead_relu" not in {f.code for f in diagnose(h)}
    h.steps.columns["dead_share/0"][25] = 0.8
    (finding,) = [f for f in diagnose(h) if f.code == "dead_relu"]
    assert finding.evidence == {"dead_share": {"0": 0.8}, "since_step": 1} and finding.step == 26
    h.steps.columns["dead_share/0"][50] = 0.1  # revived: the latest readings disagree
    assert "dead_relu" not in {f.code for f in diagnose(h)}
    for row, first in ((10, 1e-5), (35, 1e-5)):
        h.steps.columns.setdefault("grad_out/0", [math.nan] * 60)[row] = first
        h.steps.columns.setdefault("grad_out/2", [math.nan] * 60)[row] = 1.0
    (finding,) = [f for f in diagnose(h) if f.code == "vanishing_gradients"]
    assert finding.step == 36 and finding.evidence["since_step"] == 11
    assert finding.evidence["first_over_last"] == pytest.approx(1e-5)
    h.steps.columns["grad_out/0"][35] = 0.5
    assert "vanishing_gradients" not in {f.code for f in diagnose(h)}


def test_dead_relu(moons: Any) -> None:
    model = _mlp(hidden=16)
    with torch.no_grad():
        model[0].bias.fill_(-50.0)
    result = gdlab.fit(model, moons[0], optimizer="sgd", lr=0.01, epochs=2, progress=False,
                       instruments=_unbudgeted())
    assert "dead_relu" in _codes(result)
    # the story: the dead units are the one root cause; the small steps and the vanishing ratio hang beneath them
    (cause,) = result.diagnosis.causes
    assert cause.code == "dead_relu" and cause.remedy["activation"] == "leaky_relu"
    below = {c.finding.code for c in _below(cause.consequences)}
    assert {"lr_too_low", "vanishing_gradients"} <= below and below == _codes(result, "info") - {"dead_relu"}


def test_saturated_activations_and_ill_conditioned_inputs(moons: Any) -> None:
    train = moons[0]
    big = TensorData(train.X * 100, train.y, num_classes=2)
    result = gdlab.fit(_mlp(nn.Tanh), big, optimizer="sgd", lr=0.01, epochs=2, progress=False,
                       instruments=_unbudgeted())
    assert "saturated_activations" in _codes(result) and "ill_conditioned_inputs" not in _codes(result)
    skewed = TensorData(train.X * torch.tensor([1.0, 1000.0]), train.y, num_classes=2)
    result = gdlab.fit(_mlp(nn.Tanh), skewed, optimizer="sgd", lr=1e-4, epochs=2, progress=False)
    finding = next(f for f in result.findings if f.code == "ill_conditioned_inputs")
    assert finding.evidence["ratio"] > 100 and finding.remedy == {"action": "standardize"}


def test_vanishing_gradients_in_a_deep_sigmoid_network(moons: Any) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(2, 16), nn.Sigmoid()]
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 2))
    result = gdlab.fit(model, moons[0], optimizer="sgd", lr=0.01, steps=30, progress=False,
                       instruments=_unbudgeted())
    finding = next(f for f in result.findings if f.code == "vanishing_gradients")
    assert finding.evidence["first_over_last"] < 1e-3


def test_overfitting(moons: Any) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, generator=g)
    y = torch.randint(0, 2, (40,), generator=g)  # labels with nothing to learn: memorised, never generalised
    val = TensorData(torch.randn(200, 2, generator=g), torch.randint(0, 2, (200,), generator=g), num_classes=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
    result = gdlab.fit(model, (X, y), val=val, optimizer="adam", lr=0.01, epochs=60, batch_size="full",
                       progress=False)
    codes = _codes(result)
    # the validation accuracy never left chance: labels its inputs do not predict, not a model that overfits
    assert "labels_do_not_fit" in codes and "overfitting" not in codes


# -- detectors on constructed histories (pure functions of History) ----------------------------------------------


def _history(losses: list[float], grads: list[float] | None = None, **meta: Any) -> History:
    h = History()
    for i, loss in enumerate(losses):
        row = {"step": i + 1, "loss": loss, "lr": meta.get("lr", 0.1)}
        if grads is not None:
            row["grad_norm"] = grads[i]
        h.steps.append(row)
    h.meta.update(meta)
    return h


def test_flat_windows_are_the_stretches_where_the_loss_and_the_gradient_stay_low() -> None:
    from gdlab.doctor.detectors import _flat_windows

    ema = [2.0 - 0.1 * i for i in range(10)] + [1.0] * 30 + [0.5 - 0.01 * i for i in range(10)]
    grads = [5.0] * 10 + [3.0] * 5 + [0.1] * 25 + [3.0] * 10
    # the loss is flat over each 5-row window inside rows 10-39; the gradient is low (under a fifth of its peak)
    # in those from row 15 on
    assert _flat_windows(ema, [], 5) == [(10, 39)]
    assert _flat_windows(ema, grads, 5) == [(15, 39)]
    assert _flat_windows(ema[:12], grads[:12], 5) == []
    # a row that is not finite ends the windows that reach it: row 20 at a window's end, then at its start
    assert _flat_windows(ema[:20] + [math.nan] + ema[21:], [], 5) == [(10, 19), (16, 24), (21, 39)]
    assert _flat_windows([1.0] * 8, [], 3) == [(0, 7)]  # flat to the end


def test_plateau_then_escape() -> None:
    losses = [2.0 - 0.01 * i for i in range(20)] + [1.8] * 100 + [1.8 * 0.97 ** i for i in range(80)]
    grads = [1.0] * 20 + [0.01] * 100 + [0.5] * 80
    found = {f.code: f for f in diagnose(_history(losses, grads, momentum=0.0))}
    assert "plateau" in found and found["plateau"].remedy == {"action": "set_momentum", "momentum": 0.9}
    assert 20 <= found["plateau"].evidence["from_step"] <= 40


def test_local_minimum_only_for_networks() -> None:
    losses = [2.0 * 0.97 ** i + 0.8 for i in range(150)] + [0.8 + 2.0 * 0.97 ** 150] * 100
    grads = [1.0 * 0.97 ** i for i in range(250)]
    assert "local_minimum" in {f.code for f in diagnose(_history(losses, grads))}
    assert "local_minimum" not in {f.code for f in diagnose(_history(losses, grads, convex=True))}


def test_exploding_gradient_spikes_and_gradient_noise() -> None:
    grads = [1.0] * 100
    grads[60] = 500.0
    found = {f.code: f for f in diagnose(_history([1.0 - 0.005 * i for i in range(100)], grads))}
    assert found["exploding_gradients"].remedy["action"] == "clip_norm"
    h = _history([0.69 + 0.1 * math.sin(i) for i in range(200)], [0.5] * 200, batch_size=1, samples=800)
    for i in range(0, 200, 25):
        h.steps.columns["grad_snr"] = h.steps.columns.get("grad_snr", [math.nan] * 200)
        h.steps.columns["grad_snr"][i] = 0.02
        h.steps.columns["noise_scale"] = h.steps.columns.get("noise_scale", [math.nan] * 200)
        h.steps.columns["noise_scale"][i] = 300.0
    finding = next(f for f in diagnose(h) if f.code == "gradient_noise")
    assert finding.remedy["action"] == "set_batch_size" and finding.remedy["batch_size"] == 300


def test_not_learning_at_chance_level() -> None:
    h = _history([math.log(10)] * 100, task="classification", num_classes=10)
    (finding,) = diagnose(h)
    assert finding.code == "not_learning" and finding.severity == "error"
    assert finding.evidence["chance_loss"] == pytest.approx(math.log(10))


def _with_readings(h: History, key: str, values: list[float], every: int = 40) -> History:
    """``h`` with a periodic column ``key``: ``values`` at every ``every``-th row (NaN between), as instruments
    write it."""
    n = len(h.steps)
    column = [math.nan] * n
    for k, v in enumerate(values):
        column[min(n - 1, k * every)] = v
    h.steps.write(key, range(n), column)
    return h


def _settled() -> tuple[list[float], list[float]]:
    """A loss that halves and settles, beside a gradient that falls to 5% of its peak: 250 steps."""
    losses = [0.4 + 0.6 * 0.97 ** i for i in range(250)]
    return losses, [1.0 if i < 20 else 0.05 for i in range(250)]


def test_local_minimum_needs_the_gradient_at_rest_against_its_noise() -> None:
    losses, grads = _settled()
    # the mini-batch gradient's signal-to-noise ratio stays near 1: the gradient still has a direction, the loss
    # only looks flat (the diabetes regression of the clinic): no local minimum
    moving = _with_readings(_history(losses, grads, batch_size=32), "grad_snr", [5.0, 1.2, 0.9, 1.1, 0.8, 1.0, 0.7])
    assert "local_minimum" not in {f.code for f in diagnose(moving)}
    # the same curve with the gradient all noise (SNR 0.02): at rest, and named with its evidence
    rest = _with_readings(_history(losses, grads, batch_size=32), "grad_snr", [5.0, 0.5, 0.05, 0.02, 0.02, 0.03, 0.02])
    (found,) = [f for f in diagnose(rest) if f.code == "local_minimum"]
    assert found.evidence["grad_snr"] == pytest.approx(0.03) and "signal-to-noise" in found.explanation
    # no SNR measured (full batch): the gradient must fall under 1% of its peak, not 5%
    assert "local_minimum" not in {f.code for f in diagnose(_history(losses, grads))}
    # a regression whose loss is within a quarter of its targets' variance explains most of it: no local minimum
    assert "local_minimum" not in {f.code for f in diagnose(_with_readings(
        _history(losses, grads, batch_size=32, task="regression", target_std=2.0), "grad_snr", [0.02] * 7))}


def test_unscaled_targets_are_named_when_the_loss_stays_at_its_start() -> None:
    """Prices around 3e5 under Adam: the loss stays at its start (no overflow, no fall). The cause is the targets'
    scale, and the remedy standardises them (not lr_find)."""
    flat = [9.0e10 + 1e9 * math.sin(i) for i in range(200)]
    h = _history(flat, task="regression", target_mean=3.0e5, target_std=4.0e4, standardize_target=False)
    (found,) = [f for f in diagnose(h) if f.code == "not_learning"]
    assert found.remedy is not None and found.remedy["action"] == "standardize_target"
    assert found.remedy["flag"] == "--standardize-target" and found.evidence["target_scale"] == pytest.approx(3e5)
    assert "out of scale (mean 3e+05" in found.explanation
    # targets on a unit scale, or standardised by the run: the generic finding, with its generic remedy
    for meta in ({"target_mean": 0.1, "target_std": 1.0}, {"target_mean": 3.0e5, "target_std": 4.0e4,
                                                         "standardize_target": True}):
        h = _history([1.0 + 0.01 * math.sin(i) for i in range(200)], task="regression", **meta)
        (found,) = [f for f in diagnose(h) if f.code == "not_learning"]
        assert found.remedy is not None and found.remedy["action"] == "lr_find"


def test_gradient_noise_from_the_two_readings_of_a_one_epoch_run() -> None:
    """Batch 1 for one epoch: the periodic instrument read the gradient noise twice; both say noise (SNR 0.04,
    B_simple 30x the batch) and the loss stalled over the second half, far above its floor."""
    losses = [2.3 * 0.99 ** i + 0.9 for i in range(300)] + [1.0 + 0.8 * math.sin(1.7 * i) for i in range(300)]
    h = _history(losses, batch_size=1, samples=600, task="classification", num_classes=10)
    h = _with_readings(_with_readings(h, "grad_snr", [0.044, 0.031], every=500), "noise_scale", [22.0, 32.0],
                       every=500)
    (found,) = [f for f in diagnose(h) if f.code == "gradient_noise"]
    assert found.evidence["noise_scale"] == pytest.approx(27.0) and found.remedy["batch_size"] == 27
    assert abs(found.evidence["loss_fall"]) < 3 * found.evidence["noise"]
    # one reading is no evidence
    one = _with_readings(_history(losses, batch_size=1, samples=600), "grad_snr", [0.03], every=500)
    assert "gradient_noise" not in {f.code for f in diagnose(one)}


def test_auto_reads_the_loss_at_the_loops_reads_only(moons: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """remedy="auto" judges each step's loss where the loop reads the host (every log_every steps), not by a read
    of its own per step: the reads stay a few per epoch (they were one per step)."""
    from gdlab import loop

    reads = []
    fetch = loop.StepLog.fetch

    def counted(self: Any, check: Any = None) -> list[float]:
        if self.rows or check:
            reads.append(len(self.rows))
        return fetch(self, check)

    monkeypatch.setattr(loop.StepLog, "fetch", counted)
    train, val = moons
    result = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=0.1, epochs=10, progress=False, remedy="auto",
                       log_every=50)
    assert result.steps == 250 and len(reads) < 25  # 250 steps: at most the loop's reads and a check a half epoch
    assert max(reads) > 1  # the loop's reads bring many steps at once


# -- remedies ----------------------------------------------------------------------------------------------------


def test_auto_recovers_from_divergence(moons: Any) -> None:
    train, val = moons
    suggested = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=1e8, epochs=10, progress=False)
    assert suggested.stop_reason is not None and suggested.stop_reason.startswith("diverged")
    result = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=1e8, epochs=10, progress=False, remedy="auto")
    assert result.stop_reason is None and result.final["val_accuracy"] > 0.9
    assert result.remedies[0].action == "rollback_and_set_lr" and result.remedies[0].params["lr"] < 1e8
    assert result.lr <= 1.0  # from 1e8, in steps of 10 at least (judged at the loop's reads: it stops at 1.0)


def test_auto_raises_a_learning_rate_that_is_too_low(moons: Any) -> None:
    train, val = moons
    suggested = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=1e-5, epochs=10, progress=False)
    result = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=1e-5, epochs=10, progress=False, remedy="auto",
                       instruments=_unbudgeted())
    raise_ = result.remedies[0]  # one move, found by a probe (not x3 a check)
    assert raise_.action == "set_lr" and raise_.params["probe"]["chosen"] == raise_.params["lr"] > 1e-2
    assert result.lr > 1e-3 and result.final["val_loss"] < 0.6 < suggested.final["val_loss"]


def test_auto_probes_a_learning_rate_far_too_low() -> None:
    """sgd at 1e-6 on digits: x3 a check reached only 6.6e-3 in 8 epochs (val loss 2.24). A probe of learning
    rates from the run's point takes it to one that learns at the first check."""
    train, val = load("digits")
    torch.manual_seed(0)
    model = gdlab.models.build("mlp", in_features=64, out_features=10)
    result = gdlab.fit(model, train, val=val, optimizer="sgd", lr=1e-6, epochs=8, progress=False, remedy="auto",
                       instruments=_unbudgeted())
    assert result.final["val_loss"] < 1.0 and min(result.history.epochs["val_loss"][:3]) < 1.0
    raises = [r for r in result.remedies if r.action == "set_lr"]
    assert len(raises) == 1 and raises[0].params["from_lr"] == 1e-6
    probe = raises[0].params["probe"]
    assert probe["lrs"][0] == 1e-6 and len(probe["lrs"]) == 9 and probe["chosen"] == raises[0].params["lr"]
    assert probe["vectorized"] and probe["from_step"] == raises[0].step and probe["steps"] == 36
    chosen = probe["lrs"].index(probe["chosen"])
    assert probe["losses"][chosen] < 0.9 * probe["losses"][0]
    assert raises[0].reason.startswith("the steps change the weights by ") and \
        f"probed lr 0.0001..10 (8 values, 36 steps each from step {raises[0].step}): chose " in raises[0].reason
    assert "lr_too_low" not in _codes(result) and "not_learning" not in _codes(result)


class _Branchy(nn.Module):
    """An MLP whose forward pass reads a value on the host: vmap cannot serve it, so populations train it one
    member after another."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if float(out.detach().abs().max()) < 1e6 else out.clamp(-1e6, 1e6)


@pytest.mark.parametrize("make", [_mlp, _Branchy])
def test_a_probe_leaves_the_run_as_it_was(moons: Any, make: Any) -> None:
    from gdlab.doctor.probe import probe_grid, probe_lr
    from gdlab.loop import LoopState
    from gdlab.problem import Problem

    model = make()
    problem = Problem.make(model, moons[0], batch_size=32, device="cpu")
    opt = gdlab.optim.make("momentum", model.parameters(), lr=1e-5)
    state = LoopState.start(problem, opt, total_steps=250, seed=3)
    state.step = 20
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    found = probe_lr(state, "momentum", probe_grid(1e-5, "momentum", points=5), steps=20)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 1e-5 and found.lrs[0] == 1e-5 and len(found.lrs) == 6
    assert found.vectorized == (make is _mlp) and found.steps == 20 and found.from_step == 20
    assert found.chosen is not None and found.chosen >= 1e-2
    assert probe_lr(state, "momentum", found.lrs[1:], steps=20).losses == found.losses  # its own draw, the same


def test_a_probe_keeps_a_learning_rate_none_beats(moons: Any) -> None:
    """At sgd's largest learning rates a probe finds nothing better: the run keeps its own, the record says so,
    and the verdict stands for two epochs (no probe, no x3 raise) however small the steps look."""
    from gdlab.doctor.remedies import raise_small_steps
    from gdlab.loop import LoopState
    from gdlab.problem import Problem

    model = _mlp()
    problem = Problem.make(model, moons[0], batch_size=32, device="cpu")
    state = LoopState.start(problem, gdlab.optim.make("sgd", model.parameters(), lr=3.0), total_steps=250)
    state.step = 40
    doc = Doctor("auto", optimizer="sgd")
    doc.on_fit_start(state)
    small = _window(median_ratio=1e-4, lr=3.0)
    assert raise_small_steps(doc, state, small)
    (record,) = doc.remedies
    assert record.action == "probe_lr" and record.params["probe"]["chosen"] is None
    assert record.params["probe"]["lrs"][0] == 3.0 and state.optimizer.param_groups[0]["lr"] == 3.0
    assert "probed lr 9 (1 value, 25 steps each from step 40): none beat the run's own" in record.reason
    state.step = 60
    assert not raise_small_steps(doc, state, small) and len(doc.remedies) == 1


def test_a_failed_probe_hands_over_to_fixed_steps(moons: Any) -> None:
    """A model that cannot be copied (it holds a lock) cannot be probed: the record says why, and the
    learning rate rises x3 a check as before."""
    import threading

    model = _mlp()
    model.lock = threading.Lock()  # type: ignore[assignment]
    result = gdlab.fit(model, moons[0], optimizer="sgd", lr=1e-5, epochs=3, progress=False, remedy="auto",
                       instruments=_unbudgeted())
    failed, *raises = result.remedies
    assert failed.action == "probe_lr" and "cannot pickle" in failed.params["failed"]
    assert failed.reason.startswith("the learning-rate probe failed (") and len(raises) >= 2
    assert all(r.action == "set_lr" and r.params == {"lr": pytest.approx(3 * r.params["from_lr"]),
                                                     "from_lr": r.params["from_lr"]} for r in raises)


def test_auto_quiets_noisy_stochastic_descent(moons: Any) -> None:
    train, val = moons
    suggested = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=0.3, batch_size="stochastic", epochs=3,
                          progress=False)
    result = gdlab.fit(_mlp(), train, val=val, optimizer="sgd", lr=0.3, batch_size="stochastic", epochs=3,
                       progress=False, remedy="auto", instruments=_unbudgeted())
    assert any(r.action == "set_lr" and r.params["lr"] < r.params["from_lr"] for r in result.remedies)
    assert result.final["val_loss"] < 0.15 < suggested.final["val_loss"]


def test_findings_and_remedies_are_stored(moons: Any, tmp_path: Path) -> None:
    result = gdlab.fit(_mlp(), moons[0], optimizer="sgd", lr=1e8, epochs=3, progress=False, remedy="auto",
                       store=tmp_path)
    run = Store(tmp_path).get(result.run_id)
    assert {f["code"] for f in run.findings} == {f.code for f in result.findings}
    assert [r["action"] for r in run.remedies] == [r.action for r in result.remedies]
    assert run.remedies[0]["reason"] and run.remedies[0]["params"]["lr"] < 1e8


def test_remedy_off_and_bad_mode(moons: Any) -> None:
    result = gdlab.fit(_mlp(), moons[0], optimizer="sgd", lr=1e-5, epochs=2, progress=False, remedy="off")
    assert result.findings and all(f.remedy is None for f in result.findings)
    nothing = gdlab.fit(_mlp(), moons[0], optimizer="sgd", lr=1e-5, epochs=1, progress=False, doctor=False)
    assert nothing.findings == []
    with pytest.raises(UnknownChoice, match="unknown remedy 'fix'"):
        gdlab.fit(_mlp(), moons[0], progress=False, remedy="fix")
    with pytest.raises(UnknownChoice):
        Doctor("maybe")


def test_auto_clipping_wraps_the_step_and_unwraps_at_the_end() -> None:
    from types import SimpleNamespace

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    original = opt.step
    doc = Doctor("auto")
    doc._install_clipping(SimpleNamespace(optimizer=opt), max_norm=1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm().item() == pytest.approx(1.0, rel=1e-4)  # lr 1 x the clipped gradient of norm 1
    doc.on_fit_end(SimpleNamespace(optimizer=opt, history=History()))
    assert opt.step == original


class _Wave(nn.Module):
    """y = sin(w x): fitting sin(3x), w has local minima; ``reset_parameters`` draws w from [0, 6]."""

    def __init__(self, w: float | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.reset_parameters()
        if w is not None:
            with torch.no_grad():
                self.w.fill_(w)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.w.uniform_(0.0, 6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w * x)


_X = torch.linspace(-2, 2, 256).unsqueeze(1)
_WAVE = (_X, torch.sin(3 * _X))


def test_auto_restarts_leave_a_local_minimum(tmp_path: Path) -> None:
    """w = 0.8 settles at w = -0.25 (loss 0.44): the doctor names it, suggests restarts, and with restarts asked
    trains them as one population and keeps the best, which finds w = 3 (loss 0)."""
    settings: dict[str, Any] = dict(optimizer="sgd", lr=0.1, batch_size="full", steps=200, progress=False,
                                    instruments="cheap")
    suggested = gdlab.fit(_Wave(0.8), _WAVE, **settings)
    (finding,) = [f for f in suggested.findings if f.code == "local_minimum"]
    assert finding.remedy == {"action": "restarts", "seeds": 8} and suggested.final["train_loss"] > 0.4
    model = _Wave(0.8)
    store = Store(tmp_path)
    result = gdlab.fit(model, _WAVE, remedy="auto", restarts=6, store=store, **settings)
    (record,) = [r for r in result.remedies if r.action == "restarts"]
    assert record.params["kept"] and record.params["seeds"] == [1, 2, 3, 4, 5, 6]
    assert record.params["from_loss"] == pytest.approx(suggested.final["train_loss"])
    assert result.final["train_loss"] < 1e-6 and float(model.w.detach()) == pytest.approx(3.0, abs=1e-3)
    stored = store.get(result.run_id)
    assert stored.final["train_loss"] < 1e-6 and [r["action"] for r in stored.remedies] == ["restarts"]


def test_restarts_need_auto_a_count_and_a_way_to_reinitialise() -> None:
    with pytest.raises(InvalidParameter, match="restarts 4: expected remedy"):
        gdlab.fit(_Wave(0.8), _WAVE, restarts=4, steps=1, progress=False)
    with pytest.raises(InvalidParameter, match="restarts 1: expected 0"):
        gdlab.fit(_Wave(0.8), _WAVE, restarts=1, remedy="auto", steps=1, progress=False)

    class Fixed(_Wave):
        reset_parameters = None  # type: ignore[assignment]

    model = Fixed.__new__(Fixed)
    nn.Module.__init__(model)
    model.w = nn.Parameter(torch.full((1,), 0.8))
    result = gdlab.fit(model, _WAVE, optimizer="sgd", lr=0.1, batch_size="full", steps=200, progress=False,
                       instruments="cheap", remedy="auto", restarts=4)
    (record,) = [r for r in result.remedies if r.action == "restarts"]
    assert not record.params["kept"] and "Fixed has no reset_parameters()" in record.reason


def test_a_converging_gradient_is_no_spike_and_one_layer_is_convex() -> None:
    """A gradient falling 1000-fold as the run converges is not 'exploding'; a late jump above the opening scale
    is. The local-minimum check knows a single linear layer (convex) from a one-parameter non-linear model."""
    losses = [1.0 * 0.97 ** i for i in range(200)]
    assert "exploding_gradients" not in {f.code for f in diagnose(_history(losses, [0.97 ** i for i in range(200)]))}
    grads = [0.9 ** i for i in range(200)]
    grads[150] = 0.5  # below the first steps' norms, but 500x the steps before
    assert "exploding_gradients" in {f.code for f in diagnose(_history(losses, grads))}
    grads[150] = 0.05  # a settled run's jump that stays below a tenth of the opening scale
    assert "exploding_gradients" not in {f.code for f in diagnose(_history(losses, grads))}
    X, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    linear = gdlab.fit(nn.Linear(3, 2), (X, y), steps=1, progress=False)
    assert linear.history.meta["convex"] is True
    assert gdlab.fit(_Wave(1.0), _WAVE, steps=1, progress=False).history.meta["convex"] is False


def test_restarts_keep_frozen_layers_skip_schedules_and_survive_an_interrupt(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gdlab import population
    from gdlab.doctor import fresh_models

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a pretrained layer
    make, why = fresh_models(model)
    assert make is not None and not why
    torch.manual_seed(1)
    fresh = make()
    assert torch.equal(fresh[0].weight, model[0].weight) and not torch.equal(fresh[2].weight, model[2].weight)

    settings: dict[str, Any] = dict(optimizer="sgd", lr=0.1, batch_size="full", steps=200, progress=False,
                                    instruments="cheap", remedy="auto", restarts=4)
    scheduled = gdlab.fit(_Wave(0.8), _WAVE, schedule="constant", **settings)
    (record,) = [r for r in scheduled.remedies if r.action == "restarts"]
    assert not record.params["kept"] and "schedule" in record.reason

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(population, "train", interrupted)
    store = Store(tmp_path)
    result = gdlab.fit(_Wave(0.8), _WAVE, store=store, **settings)
    (record,) = [r for r in result.remedies if r.action == "restarts"]
    assert not record.params["kept"] and "interrupted" in record.reason
    run = store.get(result.run_id)
    assert run.status == "finished" and run.final["train_loss"] == pytest.approx(0.4387, abs=1e-3)


# -- remedy rules on a constructed window ------------------------------------------------------------------------


def _window(**changes: Any) -> Window:
    calm: dict[str, Any] = dict(size=20, mean_loss=1.0, previous=1.0, best_before=1.0, raised_from=None, first=2.0,
                                lr=0.1, median_ratio=2e-3, median_snr=2.0, grads=[0.5] * 20, median_grad=0.5,
                                peak_grad=1.0, dead=0.0, opening_grad=1.0)
    return Window(**{**calm, **changes})


def test_the_remedy_rules_are_tried_in_their_order() -> None:
    assert [rule.__name__ for rule in REMEDY_RULES] == [
        "undo_failed_raise", "rollback_when_loss_rises", "restart_when_stuck", "raise_small_steps",
        "halve_when_noisy", "clip_spikes", "add_momentum_on_plateau", "keep_good_point"]


def test_a_rule_acts_on_its_window_and_records_why() -> None:
    from types import SimpleNamespace

    model = nn.Linear(2, 1)
    state = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), step=40,
                            history=History(), plan=SimpleNamespace(batch_size=32, iterations_per_epoch=40))
    doc = Doctor("auto")
    assert not halve_when_noisy(doc, state, _window())  # calm: nothing to do
    assert halve_when_noisy(doc, state, _window(median_snr=0.2, previous=1.0))
    (remedy,) = doc.remedies
    assert state.optimizer.param_groups[0]["lr"] == 0.05 and remedy.params == {"lr": 0.05, "from_lr": 0.1}
    assert remedy.reason == ("noise dominates the steps (gradient SNR 0.2) and the loss stalled at 1: halved the "
                             "learning rate 0.1 -> 0.05")
    plateau = _window(grads=[0.1] * 20, median_grad=0.1, first=1.5)
    assert add_momentum_on_plateau(doc, state, plateau) and state.optimizer.param_groups[0]["momentum"] == 0.9
    assert not add_momentum_on_plateau(doc, state, plateau)  # momentum is there already


# -- trust on ordinary runs: right or quiet where nothing is wrong --------------------------------------------------


def test_a_converged_run_is_no_plateau() -> None:
    """A healthy digits run (lr auto: 99.2% validation accuracy, train loss 0.002) got "plateau: triple the lr":
    its loss sat at 0.0022 for 270 steps, then dipped to 0.0011. A loss at its floor is no plateau."""
    losses = [2.3 * 0.9 ** i for i in range(60)] + [0.0022] * 300 + [0.0011] * 100
    grads = [1.0] * 60 + [0.01] * 400
    assert "plateau" not in {f.code for f in diagnose(_history(losses, grads, momentum=0.9))}
    # a classifier near zero loss (under 5% of chance's) is at its floor even from a low start
    low = [0.1 * 0.95 ** i for i in range(60)] + [0.009] * 300 + [0.005] * 100
    assert "plateau" in {f.code for f in diagnose(_history(low, grads, momentum=0.9))}
    assert "plateau" not in {f.code for f in diagnose(_history(low, grads, momentum=0.9, task="classification",
                                                                     num_classes=10))}


def test_a_flat_loss_with_validation_at_its_best_is_no_plateau() -> None:
    losses = [2.0 - 0.01 * i for i in range(20)] + [1.8] * 100 + [1.8 * 0.97 ** i for i in range(80)]
    grads = [1.0] * 20 + [0.01] * 100 + [0.5] * 80
    h = _history(losses, grads, momentum=0.0)
    for epoch, (step, val) in enumerate(((50, 0.9), (100, 0.5), (150, 0.52), (200, 0.55))):
        h.epochs.append({"epoch": epoch + 1, "step": step, "val_loss": val})
    assert "plateau" not in {f.code for f in diagnose(h)}  # the held-out loss was at its best on the flat stretch
    h.epochs.columns["val_loss"] = [0.9, 0.8, 0.5, 0.45]  # still far from it there: a plateau
    assert "plateau" in {f.code for f in diagnose(h)}


@pytest.mark.parametrize(("momentum", "remedy"), [(0.0, "set_momentum"), (0.9, "set_lr"), (None, "set_lr")])
def test_a_plateau_never_prescribes_the_momentum_a_run_has(momentum: Any, remedy: str) -> None:
    losses = [2.0 - 0.01 * i for i in range(20)] + [1.8] * 100 + [1.8 * 0.97 ** i for i in range(80)]
    grads = [1.0] * 20 + [0.01] * 100 + [0.5] * 80
    (finding,) = [f for f in diagnose(_history(losses, grads, momentum=momentum)) if f.code == "plateau"]
    assert finding.remedy is not None and finding.remedy["action"] == remedy


def test_a_resumed_run_tells_the_doctor_its_own_settings(moons: Any, tmp_path: Path) -> None:
    """A resumed run's history is the stored one, which kept no momentum: a plateau there prescribed momentum 0.9
    to a run at 0.9. The doctor reads the run's settings (momentum, activations) from the run itself."""
    store = Store(tmp_path)
    settings: dict[str, Any] = dict(optimizer="momentum", lr=0.05, progress=False, store=store, instruments="none")
    first = gdlab.fit(_mlp(), moons[0], epochs=1, **settings)
    resumed = gdlab.fit(_mlp(), moons[0], epochs=2, resume=first.run_id, **settings)
    assert resumed.steps > first.steps
    meta = resumed.history.meta
    assert meta["momentum"] == 0.9 and meta["activations"] == ["relu"] and meta["task"] == "classification"
    losses = [2.0 - 0.01 * i for i in range(20)] + [1.8] * 100 + [1.8 * 0.97 ** i for i in range(80)]
    plateau = _history(losses, [1.0] * 20 + [0.01] * 100 + [0.5] * 80)
    plateau.meta.update(meta)
    (finding,) = [f for f in diagnose(plateau) if f.code == "plateau"]
    assert finding.remedy is not None and finding.remedy["action"] != "set_momentum"


def test_a_layer_finding_is_dated_by_its_evidence_and_prescribes_what_the_model_lacks() -> None:
    """A ReLU network whose units died late: the depth reading at step 1 was a healthy 0.42, the ones from step
    1300 on vanishing. The finding is at its evidence's step, and does not prescribe the ReLU the model has."""
    n = 1400
    h = _history([1.0] * n, activations=["relu"])
    for row, first in ((0, 0.42), (500, 0.3), (1299, 1e-5), (1324, 2e-5)):
        h.steps.columns.setdefault("grad_out/0", [math.nan] * n)[row] = first
        h.steps.columns.setdefault("grad_out/2", [math.nan] * n)[row] = 1.0
    for row, share in ((0, 0.0), (1299, 0.9), (1324, 0.95)):
        h.steps.columns.setdefault("dead_share/1", [math.nan] * n)[row] = share
    found = {f.code: f for f in diagnose(h)}
    vanishing, dead = found["vanishing_gradients"], found["dead_relu"]
    assert vanishing.step == 1325 and vanishing.evidence["since_step"] == 1300
    assert vanishing.evidence["first_over_last"] == pytest.approx(2e-5)
    assert dead.step == 1325 and dead.evidence == {"dead_share": {"1": 0.95}, "since_step": 1300}
    for finding in (vanishing, dead):
        assert finding.remedy is not None and finding.remedy.get("activation") == "leaky_relu"
    h.meta["activations"] = ["sigmoid"]  # a saturating network: there ReLU is the remedy
    (vanishing,) = [f for f in diagnose(h) if f.code == "vanishing_gradients"]
    assert vanishing.remedy is not None and vanishing.remedy["activation"] == "relu"


def test_a_dead_relu_run_gets_no_relu_and_findings_at_their_readings(moons: Any) -> None:
    model = _mlp(hidden=16)
    with torch.no_grad():
        model[0].bias.fill_(-50.0)
    result = gdlab.fit(model, moons[0], optimizer="sgd", lr=0.01, epochs=2, progress=False,
                       instruments=_unbudgeted())
    steps = result.history.steps
    dead = next(f for f in result.findings if f.code == "dead_relu")
    row = list(steps["step"]).index(dead.step)
    assert {k: steps[f"dead_share/{k}"][row] for k in dead.evidence["dead_share"]} == dead.evidence["dead_share"]
    assert all((f.remedy or {}).get("activation") != "relu" for f in result.findings)
    assert result.history.meta["activations"] == ["relu"]


def test_auto_tells_a_divergence_from_noise_near_the_minimum() -> None:
    """Momentum at lr 5 on digits: after the first blow-up, the doctor read window-to-window noise at a loss
    near 0.02 ("the loss rose from 0.0193 to 0.0379") as a divergence and rolled back ten times, down to lr 3.3e-6.
    A rise must exceed the noise band and matter at the run's scale, and such cuts are capped."""
    train, val = load("digits")
    torch.manual_seed(0)
    model = gdlab.models.build("mlp", in_features=64, out_features=10, hidden=(128,))
    result = gdlab.fit(model, train, val=val, optimizer="momentum", lr=5.0, epochs=20, progress=False,
                       remedy="auto", instruments=_unbudgeted())
    rollbacks = [r for r in result.remedies if r.action == "rollback_and_set_lr"]
    assert 1 <= len(rollbacks) <= 4, [r.reason for r in rollbacks]
    assert result.lr >= 1e-2 and result.final["val_accuracy"] > 0.9
    rises = [r for r in rollbacks if r.reason.startswith("the loss rose")]
    assert len(rises) <= 3


def test_a_rise_within_the_noise_is_no_rollback() -> None:
    from types import SimpleNamespace

    from gdlab.doctor.remedies import rollback_when_loss_rises

    model = nn.Linear(2, 1)
    state = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), step=40,
                            history=History(), plan=SimpleNamespace(batch_size=32, iterations_per_epoch=40))
    doc = Doctor("auto", max_lr_cuts=2)
    doc.take_snapshot(state)
    near_minimum = _window(mean_loss=0.038, best_before=0.019, first=2.3, spread=0.05, size=22)
    assert not rollback_when_loss_rises(doc, state, near_minimum)  # 2x a tiny loss, well inside the noise
    assert not rollback_when_loss_rises(doc, state, _window(mean_loss=0.038, best_before=0.019, first=2.3,
                                                            spread=0.001, size=22))  # calm, but under 2% of start
    rising = _window(mean_loss=0.9, best_before=0.3, first=2.3, spread=0.1, size=22)
    assert rollback_when_loss_rises(doc, state, rising) and rollback_when_loss_rises(doc, state, rising)
    assert not rollback_when_loss_rises(doc, state, rising)  # two cuts a run at most
    assert [r.action for r in doc.remedies] == ["rollback_and_set_lr"] * 2
    assert doc.remedies[0].params == {"lr": pytest.approx(0.03), "from_lr": 0.1}


def test_a_loss_that_fell_once_the_lr_was_lowered_is_no_plateau() -> None:
    """lr 5 with auto: the loss sat at 0.33 at lr 0.5 until the doctor cut it to 0.15, then fell: the steps' noise
    floor, not a plateau to cross with a tripled lr."""
    losses = [2.0 - 0.01 * i for i in range(20)] + [1.8] * 100 + [1.8 * 0.97 ** i for i in range(80)]
    grads = [1.0] * 20 + [0.01] * 100 + [0.5] * 80
    h = _history(losses, grads, momentum=0.9)
    h.steps.columns["lr"] = [0.5] * 120 + [0.15] * 80
    assert "plateau" not in {f.code for f in diagnose(h)}


@pytest.mark.parametrize(("source", "quantity", "action", "said"), [
    (1.0, "inputs", "check_data", "the batch of step 2 has 3 NaN or inf values in its inputs"),
    (3.0, "parameters", "check_model", "the run started from a point that is not finite"),
    (4.0, "output", "check_model", "the model returned 3 NaN or inf values at step 2 for finite inputs"),
    (5.0, "loss", "scale_targets", "it overflowed on targets that reach 1e+30"),
])
def test_non_finite_names_where_the_loss_came_from(source: float, quantity: str, action: str, said: str) -> None:
    """issue 24: the loop writes the source of a non-finite loss (gdlab.problem.NON_FINITE_SOURCES); the finding
    names it, and blames the learning rate only where no source was found."""
    h = History()
    h.meta["lr"] = 0.1
    h.steps.append({"step": 1, "loss": 1.0, "lr": 0.1})
    h.steps.append({"step": 2, "loss": math.inf, "lr": 0.1, "bad_data": source, "bad_data_count": 3.0,
                    **({"bad_data_scale": 1e30} if source == 5.0 else {})})
    (finding,) = DETECTORS["non_finite"](h)
    assert finding.step == 2 and finding.evidence["quantity"] == quantity and finding.remedy["action"] == action
    assert said in finding.explanation and "learning rate is too large" not in finding.explanation
    h.steps.put("bad_data", 1, math.nan)  # no source: the steps grew
    assert DETECTORS["non_finite"](h)[0].remedy["action"] == "set_lr"


# -- curve findings against the curve's own noise (issue 26) ------------------------------------------------------


def _epochs(val: list[float], train: list[float], **meta: Any) -> History:
    h = History()
    for e, (v, t) in enumerate(zip(val, train)):
        h.epochs.append({"epoch": e + 1, "step": 10 * (e + 1), "val_loss": v, "train_loss": t})
    h.meta.update(meta)
    return h


# the validation loss of a healthy breast-cancer run (119 validation samples), which was called overfitting
_WOBBLE = [0.08, 0.124, 0.104, 0.098, 0.067, 0.057, 0.06, 0.076, 0.075, 0.075, 0.073, 0.05, 0.077, 0.047, 0.068,
           0.066, 0.057, 0.06, 0.07, 0.066, 0.069, 0.069, 0.071, 0.063, 0.081, 0.073, 0.069, 0.075, 0.067, 0.071,
           0.072, 0.074, 0.071, 0.076, 0.071, 0.074, 0.071, 0.07, 0.074, 0.075]


def test_a_wobbling_validation_loss_is_no_overfitting() -> None:
    train = [0.3 * 0.9 ** e for e in range(40)]
    assert "overfitting" not in {f.code for f in diagnose(_epochs(_WOBBLE, train, val_samples=119))}
    jumps = [3.0, 123.0, 5.0, 80.0, 3.5, 110.0, 4.0, 60.0, 9.0, 123.0, 3.2, 90.0, 7.0, 115.0, 4.0, 100.0]
    assert "overfitting" not in {f.code for f in diagnose(_epochs(jumps, [2.0 * 0.95 ** e for e in range(16)]))}


def test_a_validation_loss_rising_beyond_its_noise_is_overfitting() -> None:
    g = torch.Generator().manual_seed(0)
    val = [0.6 - 0.05 * e for e in range(6)] + [0.3 + 0.02 * e for e in range(34)]
    val = [v + 0.01 * float(torch.randn((), generator=g)) for v in val]
    (finding,) = [f for f in diagnose(_epochs(val, [0.5 * 0.9 ** e for e in range(40)], val_samples=500))
                  if f.code == "overfitting"]
    ev = finding.evidence
    assert ev["val_loss"] - ev["best_val_loss"] == pytest.approx(ev["rise"]) and ev["rise"] > 3 * ev["noise"] > 0
    assert str(round(ev["noise"], 3))[:4] in finding.explanation or f"{ev['noise']:.2g}" in finding.explanation
    # the same rise with 30 validation samples behind each point is within their sampling noise
    small = diagnose(_epochs([v / 5 + 0.5 for v in val], [0.5 * 0.9 ** e for e in range(40)], val_samples=30))
    assert "overfitting" not in {f.code for f in small}


def test_shuffled_labels_are_labels_do_not_fit() -> None:
    """Shuffled digits labels: the training loss falls, the validation loss rises and the validation accuracy
    stays at chance (9.7%). The only finding was dead_relu."""
    h = _epochs([2.31 + 0.012 * e for e in range(30)], [2.3 - 0.02 * e for e in range(30)], val_samples=359,
                task="classification", num_classes=10)
    h.epochs.columns["val_accuracy"] = [0.097 + 0.01 * math.sin(e) for e in range(30)]
    found = {f.code: f for f in diagnose(h)}
    assert "overfitting" not in found and found["labels_do_not_fit"].severity == "error"
    ev = found["labels_do_not_fit"].evidence
    assert ev["gap"] == pytest.approx((2.31 + 0.012 * 29) - (2.3 - 0.02 * 29)) and ev["chance_accuracy"] == 0.1
    # a classifier whose validation accuracy rises above chance is learning something: not this finding
    h.epochs.columns["val_accuracy"] = [0.1 + 0.02 * e for e in range(30)]
    assert "labels_do_not_fit" not in {f.code for f in diagnose(h)}


def test_a_divergence_that_recovers_is_lr_too_high() -> None:
    """An LM at lr 1.0, clipped at 1.0, cosine schedule: the loss rose from 4.1 to a mean of 8.8 (peak 23) in the
    middle of the run with the gradient norm pinned at the clip, then ended at 3.1. The doctor raised nothing."""
    losses = [4.17 - 0.001 * i for i in range(60)]
    losses += [8.8 + 14.0 * math.exp(-((i - 60) / 15) ** 2) for i in range(120)]
    losses += [8.8 - 5.7 * (1 - 0.97 ** i) for i in range(220)]
    grads = [0.8] * 60 + [1.0 + 5.0 * (i % 3) for i in range(120)] + [0.9] * 220
    lrs = [math.cos(math.pi * i / 800) for i in range(400)]
    h = _history(losses, grads, clip_norm=1.0)
    h.steps.columns["lr"] = lrs
    (finding,) = [f for f in diagnose(h) if f.code == "lr_too_high"]
    ev = finding.evidence
    assert ev["recovered"] and ev["clipped_share"] > 0.7 and ev["loss_peak"] > 20
    assert 6 < ev["loss_rise_mean"] < 15 and ev["loss_end"] < 3.5
    assert finding.remedy and finding.remedy["lr"] == pytest.approx(0.3)  # from the peak lr, not the decayed one
    assert "clip" in finding.explanation
    # the same run without the rise: a falling loss is quiet
    assert "lr_too_high" not in {f.code for f in diagnose(_history([4.17 * 0.995 ** i for i in range(400)], grads))}


def test_batch_size_one_noise_is_gradient_noise_not_lr_too_high() -> None:
    g = torch.Generator().manual_seed(0)
    losses = [0.7 * 0.9 ** i + 0.3 + 0.3 * abs(float(torch.randn((), generator=g))) * min(1.0, i / 100)
              for i in range(300)]
    h = _history(losses, [0.5] * 300, batch_size=1, samples=800)
    h.steps.columns["grad_snr"] = [0.01 if i % 25 == 0 else math.nan for i in range(300)]
    h.steps.columns["noise_scale"] = [100.0 if i % 25 == 0 else math.nan for i in range(300)]
    codes = {f.code for f in diagnose(h)}
    assert "gradient_noise" in codes and "lr_too_high" not in codes


def test_a_regression_with_unscaled_targets_is_not_learning() -> None:
    """gdlab train --data house.csv --target price --standardize, prices around 3e5: R^2 = -5.2 and "no problems
    found"."""
    h = _history([9e10 * 0.999 ** i for i in range(100)], task="regression", target_mean=3e5, target_std=8e4)
    for e in range(5):
        h.epochs.append({"epoch": e + 1, "step": 20 * (e + 1), "val_r2": -5.2 - e, "val_loss": 9e10})
    (finding,) = [f for f in diagnose(h) if f.code == "not_learning"]
    assert finding.remedy and finding.remedy["action"] == "standardize_target"
    assert "3e+05" in finding.explanation and "R^2" in finding.explanation
    h.meta.update(target_mean=0.2, target_std=1.0)  # targets in scale: not their fault
    (finding,) = [f for f in diagnose(h) if f.code == "not_learning"]
    assert finding.remedy and finding.remedy["action"] == "lr_find"
    h.epochs.columns["val_r2"] = [0.5, 0.6, 0.7, 0.8, 0.9]  # a regression that learned
    h.steps.columns["loss"] = [1.0 * 0.97 ** i for i in range(100)]
    assert "not_learning" not in {f.code for f in diagnose(h)}


# -- the story: which finding explains which (gdlab.doctor.story) ----------------------------------------------------

def _f(code: str, step: int | None, severity: str = "warning", remedy: dict[str, Any] | None = None,
       **evidence: Any) -> Any:
    from gdlab.doctor import Finding

    return Finding(code, severity, step, evidence, f"{code} explained", remedy or {"action": f"fix_{code}"})


def _tree(story: Any) -> dict[str, Any]:
    """The story as ``{cause: {consequence: {...}}}`` by code."""
    def nested(items: Any) -> dict[str, Any]:
        return {c.code: nested(c.consequences) for c in items}

    return nested(story.causes)


def test_a_large_lr_explains_dead_and_saturated_units_and_what_follows() -> None:
    from gdlab.doctor import explain

    high = _f("lr_too_high", 40, loss_min=0.3, loss_end=2.0)
    story = explain([_f("vanishing_gradients", 100, since_step=50), _f("dead_relu", 100, since_step=10),
                     _f("saturated_activations", 100, since_step=10), high, _f("exploding_gradients", 60)])
    # dead units (even those seen before the lr's evidence began: large steps kill them at once) and saturated
    # ones hang under the lr; the vanishing ratio that follows them under the nearest of its causes
    assert _tree(story) == {"lr_too_high": {"dead_relu": {"vanishing_gradients": {}}, "saturated_activations": {},
                                            "exploding_gradients": {}}}
    assert story.causes[0].remedy == high.remedy


def test_a_consequence_must_follow_its_cause_where_the_rule_says_so() -> None:
    from gdlab.doctor import explain

    # a vanishing ratio from step 1, before the lr's trouble began at step 40 and with no dead units: its own cause
    story = explain([_f("lr_too_high", 40), _f("vanishing_gradients", 100, since_step=1)])
    assert _tree(story) == {"lr_too_high": {}, "vanishing_gradients": {}}
    # dead units explain a vanishing ratio that starts with or after them, not one that began before them
    assert _tree(explain([_f("dead_relu", 90, since_step=25), _f("vanishing_gradients", 90, since_step=25)])) == \
        {"dead_relu": {"vanishing_gradients": {}}}
    assert _tree(explain([_f("dead_relu", 90, since_step=50), _f("vanishing_gradients", 90, since_step=25)])) == \
        {"dead_relu": {}, "vanishing_gradients": {}}


def test_bad_data_explains_the_non_finite_values_after_it() -> None:
    from gdlab.doctor import explain

    data = _f("non_finite", 30, "error", {"action": "check_data", "where": "inputs"}, quantity="inputs",
              source="data", count=4)
    blowup = _f("non_finite", 31, "error", quantity="loss")  # the overflow kind, blamed on the lr by its text
    story = explain([blowup, _f("lr_too_high", 35), _f("not_learning", 60, "error"), data,
                     _f("exploding_gradients", 10)])
    # the spike at step 10 came before the bad batch: its own; the blow-up and the lr's rise after it: the data's
    assert _tree(story) == {"non_finite": {"non_finite": {}, "lr_too_high": {"not_learning": {}}},
                            "exploding_gradients": {}}
    assert story.causes[0].finding is data and story.causes[0].remedy == {"action": "check_data", "where": "inputs"}


def test_an_unscaled_target_explains_the_huge_loss_and_the_lr() -> None:
    from gdlab.doctor import explain

    target = _f("not_learning", 200, "error", {"action": "standardize_target", "flag": "--standardize-target"},
                val_r2=-5.2, target_mean=3e5, target_std=1e5)
    overflow = _f("non_finite", 3, "error", {"action": "scale_targets", "target_scale": 4e5}, quantity="loss",
                  source="loss", target_scale=4e5)
    assert _tree(explain([_f("lr_too_high", 20), target])) == {"not_learning": {"lr_too_high": {}}}
    # a loss that overflowed on the targets is the same cause: the lr finding hangs under it
    assert _tree(explain([_f("lr_too_high", 2), overflow])) == {"non_finite": {"lr_too_high": {}}}


def test_a_specific_cause_outranks_not_learning_which_stands_alone_only_when_unexplained() -> None:
    from gdlab.doctor import explain

    assert _tree(explain([_f("not_learning", 99, "error"), _f("lr_too_low", 1)])) == \
        {"lr_too_low": {"not_learning": {}}}
    story = explain([_f("not_learning", 99, "error"), _f("vanishing_gradients", 60, since_step=1)])
    assert _tree(story) == {"vanishing_gradients": {"not_learning": {}}}
    assert story.causes[0].severity == "error"  # the cause of an error is grave: it leads the story
    alone = explain([_f("overfitting", 50), _f("not_learning", 99, "error")])
    assert [c.code for c in alone.causes] == ["not_learning", "overfitting"]  # nothing explains it: it stands


def test_the_rules_point_down_the_chain() -> None:
    from gdlab.doctor.story import KIND_ORDER, RULES

    for rule in RULES:  # no cycle: a cause always sits above what it explains
        for effect in rule.explains:
            assert KIND_ORDER[rule.cause] < KIND_ORDER[effect], (rule.cause, effect)


def test_a_stored_run_tells_the_same_story() -> None:
    from gdlab.doctor import explain, story_lines

    found = [_f("not_learning", 99, "error"), _f("dead_relu", 40, since_step=20, dead_share={"0": 0.9}),
             _f("lr_too_low", 1, update_ratio_median=1e-6)]
    live, stored = explain(found), explain([f.to_dict() for f in found])
    assert [str(x) for x in story_lines(live)] == [str(x) for x in story_lines(stored)]


def test_the_printer_lines() -> None:
    from gdlab.doctor import Diagnosis, explain, story_lines

    found = [_f("not_learning", 99, "error", start_loss=2.3, loss=2.29),
             _f("lr_too_low", 1, "warning", {"action": "set_lr", "lr": 0.003}, update_ratio_median=2.5e-7)]
    lines = story_lines(explain(found, run_id="20261207-abcd", steps=99,
                                remedies=[{"step": 5, "action": "set_lr", "params": {"lr": 0.01}, "reason": "small"}]))
    assert [str(x) for x in lines] == [
        "remedy applied at step 5: set_lr (lr 0.01) - small",
        "gdlab doctor: 2 findings in 99 steps, 1 root cause (run 20261207-abcd)",
        "warning lr_too_low (step 1): lr_too_low explained",
        "    evidence: update_ratio_median 2.5e-07",
        "    remedy:   set_lr (lr 0.003)",
        "    because of this:",
        "      error not_learning (step 99): not_learning explained",
        "          evidence: loss 2.29, start_loss 2.3",
        "          why: steps this small barely move the loss",
    ]  # the consequence's own remedy (fix_not_learning) is not given: the cause's is
    assert [x.severity for x in lines if x.kind in ("cause", "consequence")] == ["warning", "error"]
    assert [str(x) for x in story_lines(Diagnosis(), undiagnosed="not diagnosed: it failed")] == \
        ["gdlab doctor: not diagnosed: it failed"]


def test_fit_gives_the_story_beside_the_flat_findings(moons: Any) -> None:
    from gdlab.doctor import explain

    result = gdlab.fit(_mlp(nn.Tanh), moons[0], optimizer="sgd", lr=1e-5, epochs=5, progress=False)
    assert {"lr_too_low", "not_learning"} <= _codes(result)  # the flat list keeps both
    assert _tree(result.diagnosis)["lr_too_low"] == {"not_learning": {}}
    assert _tree(result.diagnosis) == _tree(explain(result.findings)) and result.diagnosis.steps == result.steps


# -- remedies that can work and are not in place already -------------------------------------------------------------

def _decayed(rising: bool = True) -> History:
    """A run under a linear decay to 0 (the Hugging Face Trainer's default) whose loss rose mid-run."""
    h = History()
    for s in range(1, 201):
        loss = 1.0 if s < 60 else (4.0 if s < 140 else 3.0)
        h.steps.append({"step": s, "lr": 0.5 * (1 - s / 200), "loss": loss if rising else 2.3})
    h.meta.update(lr=0.0, batch_size=32, task="classification", num_classes=10)
    return h


def test_an_lr_remedy_comes_from_the_peak_under_a_decayed_schedule() -> None:
    (high,) = DETECTORS["lr_too_high"](_decayed())
    assert high.remedy["action"] == "set_lr" and high.remedy["lr"] == pytest.approx(0.5 * (1 - 1 / 200) * 0.3)
    assert high.remedy["peak_lr"] == pytest.approx(0.5 * (1 - 1 / 200))
    h = _decayed(rising=False)
    h.steps.columns["loss"][150] = math.nan
    (blowup,) = DETECTORS["non_finite"](h)
    assert blowup.remedy["lr"] == pytest.approx(0.5 * (1 - 1 / 200) * 0.1) and blowup.remedy["rollback"]
    # no positive lr recorded at all: a factor, never "set_lr 0"
    for row in range(len(h.steps)):
        h.steps.columns["lr"][row] = 0.0
    (blowup,) = DETECTORS["non_finite"](h)
    assert blowup.remedy == {"action": "scale_lr", "factor": 0.1, "rollback": True}


class _Functional(nn.Module):
    """Activations called as functions in forward: no activation module to see."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(2, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.relu(self.a(x)))


def test_an_activation_called_as_a_function_is_seen(moons: Any) -> None:
    from gdlab.doctor import run_settings, trace_activations

    model = _Functional()
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.random.get_rng_state()
    assert trace_activations(model, lambda: model(torch.zeros(2, 2))) == ["relu"]
    assert torch.equal(torch.random.get_rng_state(), state) and model.training  # the run is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert run_settings(model, None) == {"activations": ["relu"], "activations_traced": True}
    result = gdlab.fit(_Functional(), moons[0], optimizer="sgd", lr=0.1, epochs=1, progress=False)
    assert result.history.meta["activations"] == ["relu"] and result.history.meta["activations_traced"]


def test_a_vanishing_remedy_never_prescribes_what_the_model_has_nor_guesses() -> None:
    h = History()
    for s in range(1, 61):
        h.steps.append({"step": s})
    for row in (10, 35):
        h.steps.columns.setdefault("grad_out/0", [math.nan] * 60)[row] = 1e-6
        h.steps.columns.setdefault("grad_out/2", [math.nan] * 60)[row] = 1.0

    def remedy(**meta: Any) -> dict[str, Any]:
        h.meta.clear()
        h.meta.update(meta)
        (finding,) = DETECTORS["vanishing_gradients"](h)
        return finding.remedy

    assert remedy(activations=["relu"], activations_traced=True)["activation"] == "leaky_relu"  # F.relu: seen
    assert remedy(activations=["sigmoid"], activations_traced=True)["activation"] == "relu"
    assert remedy(activations=["relu", "sigmoid"], activations_traced=True)["activation"] == "leaky_relu"
    unknown = remedy(activations=[], activations_traced=False)
    assert unknown["activation"].startswith("unknown") and "relu" not in unknown.get("init", "")
    assert "activation" not in remedy(activations=[], activations_traced=True)  # none at all: the init, the norms


def test_clipping_and_standardising_are_not_prescribed_to_a_run_that_has_them() -> None:
    h = History()
    for s in range(1, 101):
        h.steps.append({"step": s, "grad_norm": 1000.0 if s == 80 else 1.0, "lr": 0.1})
    h.meta["batch_size"] = 32
    (spike,) = DETECTORS["exploding_gradients"](h)
    assert spike.remedy == {"action": "clip_norm", "max_norm": pytest.approx(2.0)}
    h.meta["clip_norm"] = 1.0  # clipping on already, tighter than the remedy's: the steps are bounded, lower the lr
    (spike,) = DETECTORS["exploding_gradients"](h)
    assert spike.remedy["action"] == "set_lr" and spike.remedy["lr"] == pytest.approx(0.03)
    for row in (20, 45):
        h.steps.columns.setdefault("saturated/1", [math.nan] * 100)[row] = 0.9
    h.meta["feature_scales"] = [40.0, 1.0]
    (sat,) = DETECTORS["saturated_activations"](h)
    assert sat.remedy["action"] == "standardize"
    h.meta["feature_scales"] = [1.6, 2.1]  # standardised inputs already
    (sat,) = DETECTORS["saturated_activations"](h)
    assert sat.remedy["action"] != "standardize"


def test_tensorboard_shows_the_story(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from gdlab.doctor import explain, story_lines
    from gdlab.integrations.tensorboard import TensorBoard
    from test_tensorboard import _events, _texts

    found = [_f("not_learning", 99, "error"), _f("lr_too_low", 1, update_ratio_median=1e-6)]
    board = TensorBoard(tmp_path / "tb")
    board.close(found)
    texts = _texts(_events(tmp_path / "tb"))
    lines = [str(x) for x in story_lines(explain(found))]
    assert texts["doctor/story"][0][1] == "```\n" + "\n".join(lines) + "\n```"
    (step, cause), = texts["doctor/lr_too_low"]
    assert step == 1 and "because of this:" in cause and "remedy:   fix_lr_too_low" in cause
    (step, consequence), = texts["doctor/not_learning"]
    assert step == 99 and "explained by: lr_too_low (step 1)" in consequence and "remedy:" not in consequence


# -- a learning rate too large, read from a loss that held above its level (issue 26.3) ----------------------------

def _held_rise(bump: float, length: int = 160, seed: int = 0) -> History:
    """A char LM at a peak lr of 0.3 under warmup and cosine (the clinic's ``lm_lr_too_high_flat``): the loss falls
    fast to 3.0, climbs ``bump`` above it and holds there for ``length`` steps while the lr is high, then comes back
    to 3.0 as the lr decays; per-step noise 0.15."""
    g = torch.Generator().manual_seed(seed)
    noise = [0.15 * float(torch.randn((), generator=g)) for _ in range(300)]
    fall = [3.0 + 1.6 * 0.9 ** i for i in range(60)]
    held = [3.0 + bump * math.sin(math.pi * i / length) ** 0.5 if i < length else 3.0 for i in range(160)]
    end = [3.0 + 0.02 * (1 - i / 80) for i in range(80)]
    h = _history([a + b for a, b in zip(fall + held + end, noise)], [0.5] * 300)
    h.steps.columns["lr"] = [0.3 * min(1.0, (i + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * i / 300)))
                             for i in range(300)]
    return h


def test_a_loss_held_above_its_level_while_the_lr_was_high_is_lr_too_high() -> None:
    """lr 0.3 on a char LM never blew up: the loss fell to 3.0 by step 50, held about 3.3 while the lr was high, and
    came back only as the schedule lowered it. The doctor filed vanishing_gradients; the rise (0.3 over a noise of
    0.036 in the smoothed loss, for half the run) names the learning rate, with the remedy from its peak."""
    (finding,) = DETECTORS["lr_too_high"](_held_rise(0.35))
    ev = finding.evidence
    assert ev["recovered"] and ev["loss_peak"] < 1.5 * ev["loss_min"]  # not the steep rise of a divergence
    assert ev["loss_rise_mean"] - ev["loss_min"] > 5 * ev["noise"] and ev["to_step"] - ev["from_step"] > 30
    assert "divergence" not in finding.explanation
    assert f"as the learning rate fell from {ev['lr']:.3g} to 0.03" in finding.explanation
    # from the schedule's peak (0.297), never its decayed end
    assert ev["lr"] == pytest.approx(max(_held_rise(0.35).steps.columns["lr"])) and ev["lr"] > 0.29
    assert finding.remedy == {"action": "set_lr", "lr": pytest.approx(0.3 * ev["lr"]), "peak_lr": ev["lr"]}


@pytest.mark.parametrize(("bump", "length"), [(0.05, 160), (0.35, 20)])
def test_a_wobble_or_a_short_bump_is_no_lr_too_high(bump: float, length: int) -> None:
    """The same run with a rise within the noise (0.05 against 0.036 x 6), or a held rise over under a tenth of
    the run (20 of 300 steps, and under 1.5x its level): quiet."""
    assert DETECTORS["lr_too_high"](_held_rise(bump, length)) == []


def _killed(first_share: float, end: float) -> History:
    """SGD at lr 4 on digits (the clinic's ``mlp_lr_far_too_high``): the loss jumps from 2.3 to 5.5 at step 5, then
    comes down to ``end`` (per-step noise 0.06), while the ReLUs of layer 1 go from ``first_share`` dead at step 1
    to all dead by step 25 and the gradient reaching layer 0 vanishes."""
    g = torch.Generator().manual_seed(1)
    losses = [end + 0.06 * float(torch.randn((), generator=g)) + (0.6 * 0.95 ** (i - 3) if i >= 3 else 0.0)
              for i in range(360)]
    losses[:3] = [2.29, 2.25, 2.45]
    losses[4] = 5.5
    h = _history(losses, [0.3] * 360, lr=4.0, task="classification", num_classes=10)
    dead = [math.nan] * 360
    for row, share in ((0, first_share), (24, 0.94), (99, 0.98), (199, 1.0), (299, 1.0)):
        dead[row] = share
    h.steps.columns["dead_share/1"] = dead
    for name, value in (("grad_out/0", 0.0), ("grad_out/2", 0.03)):
        h.steps.columns[name] = [value if row in (199, 299) else math.nan for row in range(360)]
    return h


def test_units_killed_by_a_large_lr_hang_under_it() -> None:
    """The doctor said dead_relu only. The units responded at the start (9% dead) and died in the first 25 steps
    while the run learned nothing (it ended at the loss of guessing, ln 10): the lr is the root cause, the dead
    units and the vanishing ratio under it, and the remedy a tenth of the peak lr."""
    h = _killed(0.09, 2.3)
    (high,) = DETECTORS["lr_too_high"](h)
    assert high.evidence["share_start"] == 0.09 and high.evidence["at_chance"] and high.step == 25
    assert "ln" not in high.explanation and "loss of guessing (2.3)" in high.explanation
    story = gdlab.doctor.explain(diagnose(h))
    assert _tree(story) == {"lr_too_high": {"dead_relu": {"vanishing_gradients": {}}}}
    assert story.causes[0].remedy == {"action": "set_lr", "lr": pytest.approx(0.4)}


@pytest.mark.parametrize(("first_share", "end"), [(0.95, 2.3), (0.09, 0.4)])
def test_units_dead_from_the_start_or_a_run_that_learned_are_not_the_lr(first_share: float, end: float) -> None:
    """Units dead at the first reading were killed by the init (a bias of -10), not by the steps; units that died
    in a run whose loss fell to 0.4 did not stop it learning: neither names the learning rate."""
    assert DETECTORS["lr_too_high"](_killed(first_share, end)) == []
    assert "dead_relu" in {f.code for f in diagnose(_killed(first_share, end))}


def test_a_level_read_from_the_first_batch_is_as_noisy_as_a_batch() -> None:
    """SGD at lr 1e-5: the first batch's loss was 0.69, the next ones about 0.73 (per-step noise 0.02). The
    smoothed loss sat 0.04 above its first row for the whole run: 9x the smoothed loss's noise, but within the
    noise of a level read from one batch. No lr_too_high."""
    g = torch.Generator().manual_seed(0)
    losses = [0.694] + [0.733 + 0.02 * float(torch.randn((), generator=g)) for _ in range(124)]
    h = _history(losses, [0.1] * 125, lr=1e-5)
    assert DETECTORS["lr_too_high"](h) == []
    by_row = gdlab.doctor.series.ema_noise_by_row(h)
    assert by_row[0] > 4 * by_row[-1] and by_row[-1] == pytest.approx(gdlab.doctor.series.ema_noise(h), rel=1e-4)


def test_a_large_lr_explains_a_vanishing_gradient_for_its_own_reason() -> None:
    from gdlab.doctor import explain

    (cause,) = explain([_f("lr_too_high", 20), _f("vanishing_gradients", 100, since_step=60)]).causes
    (consequence,) = cause.consequences
    assert "little gradient back" in consequence.because and "numbers broke" not in consequence.because


def test_a_plateau_needs_a_later_fall_beyond_the_noise() -> None:
    """A loss flat at 3.0 with a small gradient, then noisy (each step 1.2 above or below) with a slow dip: a dip of
    1.2 takes the smoothed loss a third below the flat level, but within 3x its noise (0.38): no plateau. A dip of
    2.0 beats the noise: a plateau, whose evidence holds the noise it beat."""
    def run(dip: float) -> History:
        losses = [3.3 - 0.015 * i for i in range(20)] + [3.0] * 100
        losses += [3.0 + (1.2 if i % 2 else -1.2) - dip * math.sin(math.pi * min(1.0, max(0.0, (i - 80) / 40)))
                   for i in range(200)]
        return _history(losses, [1.0] * 20 + [0.01] * 100 + [0.5] * 200, momentum=0.0)

    wobble = run(1.2)
    ema = gdlab.doctor.series.smooth_loss(wobble)
    assert min(ema[120:]) < 0.7 * 3.0  # a fall of 30%: the fall alone would have called it a plateau
    assert "plateau" not in {f.code for f in diagnose(wobble)}
    (found,) = [f for f in diagnose(run(2.0)) if f.code == "plateau"]
    assert found.evidence["loss"] - found.evidence["loss_after"] > 3 * found.evidence["noise"] > 1.0
    assert f"(its noise {found.evidence['noise']:.2g})" in found.explanation
