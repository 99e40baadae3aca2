"""gdlab.watch: the doctor in a loop the user wrote names the same pathologies as fit on the same model, data and
seed; its report is fit's kind; its stored run reads as fit's; it never waits for the device each step."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import gdlab
from gdlab import watching
from gdlab.cli import app
from gdlab.data import TensorData
from gdlab.data.datasets import load
from gdlab.errors import InvalidParameter
from gdlab.loop import Result
from test_loop import counting_syncs


@pytest.fixture(scope="module")
def moons() -> tuple[TensorData, TensorData]:
    return load("moons")


def _mlp(act: type[nn.Module] = nn.ReLU, hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, hidden), act(), nn.Linear(hidden, 2))


def _deep_sigmoid() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(2, 16), nn.Sigmoid()]
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(16, 2))


def _dead() -> nn.Module:
    model = _mlp(hidden=16)
    with torch.no_grad():
        model[0].bias.fill_(-50.0)  # type: ignore[index]
    return model


def _codes(findings: list[Any]) -> set[str]:
    return {f.code for f in findings if f.severity in ("warning", "error")}


def _user_loop(model: nn.Module, data: TensorData, optimizer: torch.optim.Optimizer, *, epochs: int | None = None,
               steps: int | None = None, batch_size: int = 32, seed: int = 0, step_line: bool = True,
               give_batch: bool = False, val: TensorData | None = None, **options: Any) -> Result:
    """A hand-written loop: shuffled mini-batches, cross-entropy, zero_grad / backward / step, watched."""
    doctor = gdlab.watch(model, optimizer, **options)
    g = torch.Generator().manual_seed(seed)
    done = 0
    for _ in range(epochs or 10**6):
        order = torch.randperm(len(data.y), generator=g)
        for i in range(0, len(order), batch_size):
            x, y = data.X[order[i:i + batch_size]], data.y[order[i:i + batch_size]]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step_line:
                doctor.step(loss, batch=(x, y) if give_batch else None)
            done += 1
            if doctor.stop_reason or (steps is not None and done >= steps):
                break
        if val is not None:
            with torch.no_grad():
                out = model(val.X)
                doctor.epoch_end(val_loss=float(F.cross_entropy(out, val.y)),
                                 val_accuracy=float((out.argmax(1) == val.y).float().mean()))
        else:
            doctor.epoch_end()
        if doctor.stop_reason or (steps is not None and done >= steps):
            break
    return doctor.close()


SCENARIOS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any], float]] = {
    # name: (model, fit's budget, lr); plain SGD
    "divergence": (_mlp, {"epochs": 2}, 1e8),
    "lr_too_low": (lambda: _mlp(nn.Tanh), {"epochs": 5}, 1e-5),
    "vanishing": (_deep_sigmoid, {"steps": 30}, 0.01),
    "dead_relu": (_dead, {"epochs": 2}, 0.01),
    "healthy": (lambda: _mlp(nn.Tanh), {"epochs": 8}, 0.5),
}
EXPECTED = {"divergence": {"non_finite"}, "lr_too_low": {"lr_too_low", "not_learning"},
            "vanishing": {"vanishing_gradients"}, "dead_relu": {"dead_relu"}, "healthy": set()}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_watch_names_what_fit_names(moons: Any, scenario: str) -> None:
    make, budget, lr = SCENARIOS[scenario]
    train = moons[0]
    fitted = gdlab.fit(make(), train, optimizer="sgd", lr=lr, batch_size=32, progress=False, **budget)
    model = make()
    watched = _user_loop(model, train, torch.optim.SGD(model.parameters(), lr=lr), **budget)
    assert EXPECTED[scenario] <= _codes(fitted.findings)
    assert _codes(watched.findings) == _codes(fitted.findings), scenario
    if scenario == "divergence":
        assert watched.stop_reason is not None and watched.stop_reason.startswith("diverged")


def test_the_report_is_fits_kind(moons: Any) -> None:
    model = _mlp(nn.Tanh)
    report = _user_loop(model, moons[0], torch.optim.SGD(model.parameters(), lr=1e-5), epochs=3, val=moons[1])
    fitted = gdlab.fit(_mlp(nn.Tanh), moons[0], val=moons[1], optimizer="sgd", lr=1e-5, epochs=3, progress=False)
    assert isinstance(report, Result) and type(report.findings[0]) is type(fitted.findings[0])
    assert [f.code for f in report.findings] == [f.code for f in fitted.findings]
    mine, theirs = report.findings[0].to_dict(), fitted.findings[0].to_dict()
    assert mine.keys() == theirs.keys() and mine["evidence"].keys() == theirs["evidence"].keys()
    assert mine["remedy"]["action"] == theirs["remedy"]["action"]
    assert set(report.final) == set(fitted.final) and report.final["val_accuracy"] is not None
    assert report.steps == fitted.steps and report.model is model
    # the per-step columns the instruments write are fit's
    assert {k for k in fitted.history.steps.columns if not k.startswith(("noise", "grad_snr"))} <= \
        set(report.history.steps.columns)


def test_a_stored_run_reads_as_fits(moons: Any, tmp_path: Any) -> None:
    model = _mlp(nn.Tanh)
    report = _user_loop(model, moons[0], torch.optim.SGD(model.parameters(), lr=1e-5), epochs=3,
                        store=tmp_path, name="mine")
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "mine", "--store", str(tmp_path), "--json"])
    assert shown.exit_code == 0, shown.output
    stored = json.loads(shown.output)
    assert stored["status"] == "finished" and stored["steps"] == report.steps
    assert {f["code"] for f in stored["findings"]} == {f.code for f in report.findings}
    diagnosed = runner.invoke(app, ["doctor", "mine", "--store", str(tmp_path), "--json"])
    assert diagnosed.exit_code == 0, diagnosed.output
    assert {f["code"] for f in json.loads(diagnosed.output)["findings"]} == {f.code for f in report.findings}
    plotted = runner.invoke(app, ["plot", "mine", "--store", str(tmp_path), "--instruments",
                                  "--out", str(tmp_path / "i.png")])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "i.png").exists()


def _syncs(steps: int) -> int:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with counting_syncs() as counts:
        doctor = gdlab.watch(model, optimizer, instruments="cheap", doctor=False)
        for i in range(steps):
            x, t = X[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]
            loss = F.mse_loss(model(x), t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            doctor.step(loss)
        doctor.close()
    return counts["n"]


def test_no_host_sync_per_step() -> None:
    short, long = _syncs(200), _syncs(800)
    assert long - short <= 600 / 50 + 2  # a read every log_every steps, not one per step


@pytest.mark.parametrize("kind", ["torch", "gdlab"])
def test_torch_and_gdlab_optimizers_both_work(moons: Any, kind: str) -> None:
    model = _mlp(nn.Tanh)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5) if kind == "torch" else \
        gdlab.optim.make("sgd", model.parameters(), lr=1e-5)
    report = _user_loop(model, moons[0], optimizer, epochs=3)
    assert {"lr_too_low", "not_learning"} <= _codes(report.findings)
    steps = report.history.steps
    assert "grad_norm/0" in steps
    _assert_norms_every(steps, watching.GRAD_NORM_EVERY)


def _assert_norms_every(steps: Any, k: int) -> None:
    """The gradient norms are read at the first step and every k-th (the periodic instruments' steps may add
    more): finite there, NaN (not measured) at the other steps, the per-layer norms alike."""
    rows = {i for i, s in enumerate(steps["step"]) if s == 1 or s % k == 0}
    for key in ("grad_norm", "grad_norm/0"):
        assert all(math.isfinite(steps[key][i]) for i in rows)
        if k > 1:
            assert any(math.isnan(v) for v in steps[key])


@pytest.mark.parametrize("every", [1, 3])
def test_grad_norm_every_sets_which_steps_read_the_norms(moons: Any, every: int) -> None:
    model = _mlp(nn.Tanh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    X, y = moons[0].X, moons[0].y
    doctor = gdlab.watch(model, optimizer, instruments="cheap", grad_norm_every=every)
    norms = []
    for i in range(0, 32 * 10, 32):
        loss = F.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
        optimizer.step()
        doctor.step(loss)
    steps = doctor.close().history.steps
    _assert_norms_every(steps, every)
    for i, s in enumerate(steps["step"]):  # the readings are the gradients' own norms, at their steps
        if s == 1 or s % every == 0:
            assert steps["grad_norm"][i] == pytest.approx(norms[i], rel=1e-5)
        else:
            assert math.isnan(steps["grad_norm"][i])


def test_sparse_norms_read_nan_as_not_measured_and_inf_as_non_finite() -> None:
    """In a run that read the norms every k-th step, the NaN rows between are "not measured" for the doctor; a norm
    that was measured and not finite reads inf and is named."""
    from gdlab.doctor import diagnose
    from gdlab.records import History

    def history(grads: list[float]) -> History:
        h = History()
        for i, g in enumerate(grads):
            h.steps.append({"step": i + 1, "loss": 1.0, "lr": 0.1, "grad_norm": g})
        h.meta.update(grad_norm_every=8, lr=0.1, batch_size=32)
        return h

    gaps = [1.0 if (i + 1) % 8 == 0 or i == 0 else math.nan for i in range(40)]
    assert "non_finite" not in _codes(diagnose(history(gaps)))
    gaps[15] = math.inf
    found = [f for f in diagnose(history(gaps)) if f.code == "non_finite"]
    assert found and found[0].step == 16 and found[0].evidence["quantity"] == "gradients"


def test_a_measured_gradient_norm_that_is_nan_reads_inf() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, optimizer, instruments="cheap", doctor=False)
    loss = model(torch.randn(4, 2)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    assert model.weight.grad is not None
    model.weight.grad[0, 0] = math.nan
    optimizer.step()
    doctor.step(loss)
    steps = doctor.close().history.steps
    assert steps["grad_norm"][0] == math.inf and math.isfinite(steps["loss"][0])


@pytest.mark.parametrize("key", ["doctor", "ranks"])
def test_the_switches_take_true_or_false_only(key: str) -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(InvalidParameter, match=f"invalid {key} 'yes': expected True or False"):
        gdlab.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **{key: "yes"})


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_grad_norm_every_refuses_bad_values(bad: Any) -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(InvalidParameter, match="grad_norm_every"):
        gdlab.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_norm_every=bad)


def test_without_the_step_line_the_optimizers_hooks_end_each_step(moons: Any) -> None:
    model = _deep_sigmoid()
    report = _user_loop(model, moons[0], torch.optim.SGD(model.parameters(), lr=0.01), steps=30, step_line=False)
    steps = report.history.steps
    assert report.steps == 30 and len(steps) == 30 and "loss" not in steps  # no loss: no loss-based findings
    assert "grad_out/0" in steps
    _assert_norms_every(steps, watching.GRAD_NORM_EVERY)  # the optimizer's hooks read them as step() would
    assert _codes(report.findings) == {"vanishing_gradients"}  # the per-layer ones work all the same


def test_a_batch_and_a_loss_serve_the_instruments_that_need_them(moons: Any) -> None:
    model = _mlp(nn.Tanh)
    report = _user_loop(model, moons[0], torch.optim.SGD(model.parameters(), lr=0.1), steps=4, give_batch=True,
                        loss_fn=nn.CrossEntropyLoss(), instruments="full")
    steps = report.history.steps
    assert len(steps) == 4 and report.steps == 4  # the instruments' own passes are no steps of the loop
    assert math.isfinite(steps["noise_scale"][0]) and math.isfinite(steps["sharpness"][0])
    model = _mlp(nn.Tanh)
    bare = _user_loop(model, moons[0], torch.optim.SGD(model.parameters(), lr=0.1), steps=4, instruments="full")
    assert "sharpness" not in bare.history.steps and "saturated/1" in bare.history.steps  # skipped quietly


def test_auto_remedy_changes_the_users_lr_without_rollback(moons: Any) -> None:
    model = _mlp(nn.Tanh)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    report = _user_loop(model, moons[0], optimizer, epochs=3, remedy="auto")
    # the steps are tiny: the doctor raises the user's lr (x3 a check: no probe outside fit); no rollback
    first = report.remedies[0]
    assert first.action == "set_lr" and first.params["lr"] == pytest.approx(3e-5)
    assert all(r.action in ("set_lr", "clip_norm", "set_momentum") for r in report.remedies)
    assert report.lr == optimizer.param_groups[0]["lr"]
    with pytest.raises(gdlab.GdlabError):
        gdlab.watch(model, optimizer, rollback=True)  # a rollback is a remedy: remedy="auto" only


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(2, 8)
        self.out = nn.Sequential(nn.Tanh(), nn.Linear(8, 2))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(u) + self.b(v))


def test_structured_batches_a_loader_and_a_failing_loop(moons: Any, tmp_path: Any) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(moons[0].X, moons[0].X.flip(1), moons[0].y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = _TwoInputs()
    optimizer = gdlab.optim.make("adam", model.parameters(), lr=0.01)
    with gdlab.watch(model, optimizer, loss_fn=F.cross_entropy, loader=loader, store=tmp_path, name="two") as doctor:
        for u, v, y in loader:
            loss = F.cross_entropy(model(u, v), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            doctor.step(loss, batch=(u, v, y))  # (*inputs, target)
        doctor.epoch_end()
    report = doctor.report
    assert report is not None and report.steps == len(loader) and report.plan.iterations_per_epoch == len(loader)
    assert "noise_scale" in report.history.steps and report.history.meta["num_classes"] == 2
    assert gdlab.Store(tmp_path).get("two").plan["iterations_per_epoch"] == len(loader)
    with pytest.raises(RuntimeError, match="boom"), gdlab.watch(model, optimizer, store=tmp_path, name="bad") as doctor:
        for u, v, y in loader:
            loss = F.cross_entropy(model(u, v), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            doctor.step(loss)
            raise RuntimeError("boom")
    assert gdlab.Store(tmp_path).get("bad").status == "failed"
    assert not model._forward_pre_hooks and not optimizer._optimizer_step_post_hooks  # the hooks came off


def test_a_first_batch_with_nan_is_a_data_error_as_in_fit() -> None:
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    x[3, 1] = float("nan")
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with pytest.raises(gdlab.GdlabError, match="the first batch has 1 non-finite value in its inputs"):
        doctor.step(loss, batch=(x, y))
    assert not model._forward_pre_hooks  # the hooks came off


def test_once_step_ends_the_steps_each_step_gets_only_the_hooks_it_needs(moons: Any) -> None:
    """After the first doctor.step: the forward pre-hook's full work only on the steps the periodic instrument
    measures (the hook itself stays on: it holds each step's inputs till the loss is read), the step pre-hook only
    where the gradient norms are due (in a lane too: on for its step, off after), no step post-hook; the rows still
    have every step."""
    train, _ = moons
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    periodic = gdlab.instruments.Periodic(every=5, budget=math.inf)
    doctor = gdlab.watch(model, opt, instruments=[gdlab.instruments.Cheap(), periodic], grad_norm_every=4)
    seen: list[tuple[int, bool, bool, bool]] = []  # (step, forward hook, step pre-hook, step post-hook)
    checking: list[int] = []  # the steps the loop's zero_grad check (its own post-hook) was still on
    for step, i in enumerate(range(0, 640, 32), 1):  # (state.step counts a lane's steps when it ends)
        assert model._forward_pre_hooks
        if doctor._zero_check is not None:
            checking.append(step)
        updating = doctor._update_check is not None and doctor._update_check.hooked  # the update check's pair
        own = len(opt._optimizer_step_post_hooks) - (doctor._zero_check is not None) - updating  # less the checks'
        if updating:
            checking.append(step)
        seen.append((step, doctor._forward_wanted, len(opt._optimizer_step_pre_hooks) > updating, own > 0))
        loss = F.cross_entropy(model(train.X[i:i + 32]), train.y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.step(loss)
    report = doctor.close()
    assert seen[0] == (1, True, True, True)  # before the first step(): the hooks of a loop that may never call it
    for step, forward, pre, post in seen[1:]:
        assert forward == (step % 5 == 0), step
        assert pre == (step % 5 == 0 or step % 4 == 0), step
        assert not post
    assert checking and max(checking) <= 8  # the invariant check's hooks: the first updates only
    steps = report.history.steps
    assert len(steps) == 20 and list(steps["step"]) == list(range(1, 21))
    measured = [int(s) for s, v in zip(steps["step"], steps["grad_out/0"]) if not math.isnan(v)]
    assert measured == [1, 5, 10, 15, 20]
    normed = [int(s) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)]
    assert normed == [1, 4, 5, 8, 10, 12, 15, 16, 20]
    assert not model._forward_pre_hooks and not opt._optimizer_step_pre_hooks


def test_a_steps_unseen_batch_is_counted_at_the_planned_size(moons: Any) -> None:
    """Steps without the forward hook count their samples from the plan: the loader's short last batch at its
    size, so the epoch's train_loss is the sample-weighted mean of the step losses, as fit records it."""
    train, _ = moons
    data = torch.utils.data.TensorDataset(train.X[:70], train.y[:70])
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt, instruments="cheap", loader=loader)
    losses: list[tuple[float, int]] = []
    for x, y in loader:
        losses.append(_watched_step(model, opt, doctor, x, y))
    doctor.epoch_end()
    report = doctor.close()
    assert [n for _, n in losses] == [32, 32, 6]
    expected = sum(v * n for v, n in losses) / 70
    assert report.history.epochs["train_loss"][0] == pytest.approx(expected, rel=1e-6)


def _watched_step(model: nn.Module, opt: torch.optim.Optimizer, doctor: Any, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[float, int]:
    """One step of a hand-written loop, watched: its loss (read after the step, for the test) and batch size."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    doctor.step(loss)
    return float(loss.detach()), len(y)


def test_the_periodic_interval_is_a_power_of_two_times_every() -> None:
    periodic = gdlab.instruments.Periodic(every=25)
    for ratio, interval in ((0.3, 25), (1.0, 25), (1.01, 50), (2.0, 50), (2.5, 100), (7.9, 200)):
        periodic._fix_interval(ratio)
        assert periodic.interval == interval, ratio
        assert [s for s in range(1, 450) if periodic.scheduled(s)] == [1, *range(interval, 450, interval)]


def test_without_a_loader_the_last_batch_of_an_epoch_is_seen_once_the_epoch_is_known(moons: Any) -> None:
    """No loader: the first epoch_end tells the epoch's length, and from then on each epoch's last step gets the
    forward hook, so a short last batch counts at its size (the first epoch's counts at the planned size)."""
    train, _ = moons
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt, instruments="cheap")
    epochs: list[list[tuple[float, int]]] = []
    for _ in range(2):
        losses = []
        for i in range(0, 70, 32):
            x, y = train.X[i:min(i + 32, 70)], train.y[i:min(i + 32, 70)]
            losses.append(_watched_step(model, opt, doctor, x, y))
        doctor.epoch_end()
        epochs.append(losses)
    report = doctor.close()
    first, second = report.history.epochs["train_loss"]
    assert first == pytest.approx(sum(v for v, _ in epochs[0]) / 3, rel=1e-6)  # 6 samples counted as 32
    assert [n for _, n in epochs[1]] == [32, 32, 6]
    assert second == pytest.approx(sum(v * n for v, n in epochs[1]) / 70, rel=1e-6)


class _EveryStep:
    """A user's callback with an on_step_end: the steps it sees, and the lr each ran at."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_step_end(self, state: Any) -> None:
        self.seen.append((state.step, state.optimizer.param_groups[0]["lr"]))


def _scheduled_loop(model: nn.Module, data: TensorData, steps: int, *, order: str = "update_first",
                    loss_shape: str = "scalar", read_every: int = 0, zero_after: bool = False, batch_every: int = 0,
                    **options: Any) -> tuple[Result, list[float]]:
    """A loop with a per-step lr schedule; the losses it saw (as floats, read after the run). ``zero_after``: the
    loop zeroes the gradients after the update (before step()); ``batch_every``: step() gets the batch on every
    such step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.01 * s))
    doctor = gdlab.watch(model, opt, **options)
    losses: list[torch.Tensor] = []
    for i in range(steps):
        at = (i * 32) % (len(data.y) - 32)
        x, y = data.X[at:at + 32], data.y[at:at + 32]
        loss = F.cross_entropy(model(x), y)
        if not zero_after:
            opt.zero_grad()
        loss.backward()
        filed = loss.reshape(1) if loss_shape == "one" else loss.bfloat16() if loss_shape == "bf16" else loss
        batch = (x, y) if batch_every and (i + 1) % batch_every == 0 else None
        if order == "step_first":
            doctor.step(filed, batch=batch)
            opt.step()
        else:
            opt.step()
            if zero_after:
                opt.zero_grad()
            doctor.step(filed, batch=batch)
        schedule.step()
        losses.append(filed.detach().float().reshape(()))
        if read_every and (i + 1) % read_every == 0:  # a read of the history mid-run sees every step so far
            assert list(doctor.history.steps["step"]) == [float(s) for s in range(1, i + 2)]
    return doctor.close(), [float(v) for v in losses]


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-6)
                                    for x, y in zip(a, b))


def _unbudgeted(level: str) -> list[Any]:
    """The level's instruments without their time budgets (which grant readings by the machine's load)."""
    cheap = gdlab.instruments.Cheap(budget=math.inf)
    return [cheap] if level == "cheap" else [cheap, gdlab.instruments.Periodic(budget=math.inf)]


@pytest.mark.parametrize("level", ["cheap", "default"])
def test_the_lane_records_what_the_full_path_records(moons: Any, level: str) -> None:
    """The quiet steps filed in blocks (the lane) give the history step by step filing gives: a user's callback
    with an on_step_end (no on_steps_end) keeps every step on the full path, and sees every step."""
    train, _ = moons
    fast, losses = _scheduled_loop(_mlp(), train, 130, instruments=_unbudgeted(level))
    everyone = _EveryStep()
    slow, _ = _scheduled_loop(_mlp(), train, 130, instruments=_unbudgeted(level), callbacks=[everyone])
    assert [s for s, _ in everyone.seen] == list(range(1, 131))
    fast_steps, slow_steps = fast.history.steps, slow.history.steps
    assert set(fast_steps.columns) == set(slow_steps.columns)
    for key in fast_steps.columns:
        if key.startswith(("noise_scale", "grad_snr")):
            continue  # per-sample statistics of the same steps, up to summation order
        assert _same(fast_steps[key], slow_steps[key]), key
    assert _same(fast_steps["loss"], losses)
    assert fast_steps["lr"] == pytest.approx([lr for _, lr in everyone.seen])  # the scheduled lr of each step
    assert [f.code for f in fast.findings] == [f.code for f in slow.findings]
    assert fast.final["train_loss"] == pytest.approx(slow.final["train_loss"], rel=1e-6)


def test_a_read_mid_lane_sees_every_step(moons: Any) -> None:
    train, _ = moons
    report, losses = _scheduled_loop(_mlp(), train, 90, instruments="cheap", read_every=7)
    assert _same(report.history.steps["loss"], losses)
    assert report.history.steps["step"] == [float(s) for s in range(1, 91)]


def test_step_before_the_update_reads_each_steps_own_norms(moons: Any) -> None:
    """step() before optimizer.step(): the lane stays shut for the norms (the pre-hook would come after step()),
    and the norms read are each step's own, as the loop that calls step() after the update reads them."""
    train, _ = moons
    before, _ = _scheduled_loop(_mlp(), train, 70, order="step_first", instruments=_unbudgeted("cheap"))
    after, _ = _scheduled_loop(_mlp(), train, 70, instruments=_unbudgeted("cheap"))
    for key in ("loss", "grad_norm", "grad_norm/0", "lr"):
        assert _same(before.history.steps[key], after.history.steps[key]), key
    # the movement's readings on the same rows (before the update, step() sees the step before's movement)
    assert [math.isnan(v) for v in before.history.steps["update_ratio"]] == \
        [math.isnan(v) for v in after.history.steps["update_ratio"]]
    normed = [int(s) for s, v in zip(after.history.steps["step"], after.history.steps["grad_norm"])
              if not math.isnan(v)]
    assert normed == [1, *range(watching.GRAD_NORM_EVERY, 71, watching.GRAD_NORM_EVERY)]


@pytest.mark.parametrize("batch_every, lane", [(1, True), (3, True), (0, False)])
def test_a_loop_that_zeroes_after_the_update_keeps_the_norms_read_before_it(moons: Any, batch_every: int,
                                                                           lane: bool) -> None:
    """A loop that zeroes the gradients after the update, and gives step() its batch (on every step, or on some;
    such a step leaves the lane) or keeps every step on the full path (a callback with an on_step_end): the norms
    the optimizer's pre-hook read before the update are that step's, in its row (they read 0 once)."""
    train, _ = moons
    reference, _ = _scheduled_loop(_mlp(), train, 70, instruments=_unbudgeted("cheap"))
    report, _ = _scheduled_loop(_mlp(), train, 70, zero_after=True, batch_every=batch_every,
                                instruments=_unbudgeted("cheap"), callbacks=[] if lane else [_EveryStep()])
    for key in ("loss", "grad_norm", "grad_norm/0", "update_ratio"):
        assert _same(report.history.steps[key], reference.history.steps[key]), key
    assert all(v > 0 for v in report.history.steps["grad_norm"] if not math.isnan(v))


def test_an_update_skipped_at_a_due_step_loses_that_reading_only(moons: Any) -> None:
    """A loop that skips the update on some steps (torch.amp.GradScaler does on an overflow: no optimizer.step(),
    so no step hook): that step's row has no norms, and the later due steps of the same lane still read theirs."""
    train, _ = moons
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt, instruments="none")  # the doctor's norms alone: lanes of up to 60 steps
    skipped = {40, 100}  # due steps (every 20th), inside lanes that read later steps' norms too
    for step in range(1, 131):
        at = (step * 32) % (len(train.y) - 32)
        loss = F.cross_entropy(model(train.X[at:at + 32]), train.y[at:at + 32])
        opt.zero_grad()
        loss.backward()
        if step not in skipped:
            opt.step()
        doctor.step(loss)
    steps = doctor.close().history.steps
    normed = [int(s) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)]
    assert normed == [1, 20, 60, 80, 120], normed
    assert len(steps) == 130


class _TinyLM(nn.Module):
    """Token ids in, next-token logits out: the output layer's weight tied to the embedding's, a frozen position
    table."""

    def __init__(self, vocab: int = 50, width: int = 16, length: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.1, requires_grad=False)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(input_ids) + self.pos)))


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def test_a_token_id_lm_with_accumulation_clipping_bf16_and_dict_batches() -> None:
    """The loop of a language model: token ids, tied and frozen weights, bfloat16 autocast, two micro-batches per
    update, the norm clipped to 1 in the loop, the gradients zeroed after the update, dict batches."""
    torch.manual_seed(0)
    tokens = (torch.randint(0, 50, (512, 1)) + torch.arange(9)) % 50  # each token the one before plus one
    model = _TinyLM()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    doctor = gdlab.watch(model, optimizer, loss_fn=_lm_loss, target_key="labels")
    clipped = []
    for _ in range(3):
        for j, i in enumerate(range(0, 512, 16)):
            x, y = tokens[i:i + 16, :-1], tokens[i:i + 16, 1:]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = _lm_loss(model(x), y)
            (loss / 2).backward()
            if j % 2 == 1:
                clipped.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) > 1.0)
                optimizer.step()
                optimizer.zero_grad()
                doctor.step(loss, batch={"input_ids": x, "labels": y})
        doctor.epoch_end()
    report = doctor.close()
    steps = report.history.steps
    assert report.steps == len(steps) == 48  # a step of the record is an update
    norms = [(int(s), v) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)]
    assert [s for s, _ in norms][:3] == [1, 20, 25] and all(0 < v <= 1.0 + 1e-5 for _, v in norms)  # after the clip
    assert clipped[0] and norms[0][1] == pytest.approx(1.0, rel=1e-4)  # the first step's was clipped: pinned at 1
    layers = {k.split("/", 1)[1] for k in steps.columns if k.startswith("grad_norm/")}
    assert layers == {"emb", "mid"}  # the tied weight once, under its first module; the frozen table not at all
    assert "noise_scale" in steps and "non_finite" not in {f.code for f in report.findings}
    first, last = report.history.epochs["train_loss"][0], report.history.epochs["train_loss"][-1]
    assert last < 0.8 * first  # it learns


def test_step_after_every_micro_batch_records_micro_batches() -> None:
    """Gradient accumulation (3 micro-batches an update) with doctor.step after every micro-batch: a row per
    micro-batch, and the norms read by the optimizer's pre-hook on the due rows where an update happened."""
    torch.manual_seed(0)
    X = torch.randn(1024, 8)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, optimizer, instruments="cheap")
    for j, i in enumerate(range(0, 1024, 8)):
        loss = F.cross_entropy(model(X[i:i + 8]), y[i:i + 8])
        (loss / 3).backward()
        if j % 3 == 2:
            optimizer.step()
            optimizer.zero_grad()
        doctor.step(loss)
    steps = doctor.close().history.steps
    assert len(steps) == 128
    normed = [int(s) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)]
    assert normed == [1, 60, 120]  # the first step's at its end; then the 20th steps that are updates


def test_a_compiled_model_is_watched_as_its_module() -> None:
    """torch.compile (the eager backend: dynamo's tracing and graph breaks, without a compiler's minutes): the
    columns are named by the compiled module's layers, the periodic instruments' hooks stay out of the graphs (no
    dynamo warning), and the record is the uncompiled run's."""
    def run(compiled: bool) -> Result:
        torch.manual_seed(0)
        X = torch.randn(512, 8)
        y = (X[:, 0] > 0).long()
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        model = torch.compile(net, backend="eager") if compiled else net
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        doctor = gdlab.watch(model, optimizer, instruments=_unbudgeted("default"))
        for _ in range(3):
            for i in range(0, 512, 32):
                loss = F.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                doctor.step(loss)
            doctor.epoch_end()
        return doctor.close()

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run(True)
    assert not [w for w in caught if "ynamo" in str(w.message)], [str(w.message)[:200] for w in caught]
    plain = run(False).history.steps
    steps = compiled.history.steps
    assert {"grad_out/0", "grad_out/2", "dead_share/1", "grad_norm/0"} <= set(steps.columns)
    assert not [k for k in steps.columns if "_orig_mod" in k]
    for key in ("loss", "grad_norm", "grad_out/0", "dead_share/1"):
        assert _same(steps[key], plain[key]), key


def test_step_takes_a_scalar_loss_or_a_number_and_refuses_the_rest(moons: Any) -> None:
    train, _ = moons
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, optimizer, instruments="cheap")
    losses = F.cross_entropy(model(train.X[:32]), train.y[:32], reduction="none")
    optimizer.zero_grad()
    losses.mean().backward()
    optimizer.step()
    with pytest.raises(InvalidParameter, match=r"invalid loss 'a tensor of shape \[32\]'.*losses.mean\(\)"):
        doctor.step(losses)
    with pytest.raises(InvalidParameter, match="invalid loss 'dict'"):
        doctor.step({"loss": losses.mean()})
    doctor.step(float(losses.mean()))  # a number: taken
    seen = [float(losses.mean())]
    for i in range(32, 32 * 20, 32):
        loss = F.cross_entropy(model(train.X[i:i + 32]), train.y[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        doctor.step(loss.item() if i % 64 else loss)  # numbers and tensors mixed
        seen.append(loss.item())
    report = doctor.close()
    assert _same(report.history.steps["loss"], seen)


def test_a_grad_scaler_that_skips_an_update() -> None:
    """float16 autocast with torch.amp.GradScaler on the CPU: an overflow at a due step makes the scaler skip that
    update; the row has its loss and no norms, the later due steps have theirs, and nothing is a finding."""
    torch.manual_seed(0)
    X = torch.randn(2048, 8)
    y = (X[:, 0] + X[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    doctor = gdlab.watch(model, optimizer, instruments="cheap")
    skipped = []
    for step, i in enumerate(range(0, 2048, 16), 1):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(X[i:i + 16]), y[i:i + 16])
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if step == 40:
            model[0].weight.grad[0, 0] = math.inf  # an overflow
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < scale:
            skipped.append(step)
        doctor.step(loss)
    report = doctor.close()
    steps = report.history.steps
    assert skipped == [40] and len(steps) == 128
    normed = [int(s) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)]
    assert 40 not in normed and {20, 60, 80, 100, 120} <= set(normed)
    assert math.isfinite(steps["loss"][39]) and not report.findings


@pytest.mark.parametrize("shape", ["one", "bf16"])
def test_losses_of_one_element_or_bf16_in_the_lane(moons: Any, shape: str) -> None:
    train, _ = moons
    report, losses = _scheduled_loop(_mlp(), train, 60, loss_shape=shape, instruments="cheap")
    assert _same(report.history.steps["loss"], losses)
    assert math.isfinite(report.final["train_loss"] or math.nan)


def test_the_lane_keeps_every_step_and_the_due_readings_whatever_the_schedules() -> None:
    """Random schedules (norm and read intervals, the instruments' intervals, a known or learned epoch length,
    short last batches, epoch_end or not, reads of the history mid-run): every step has its row, every due step
    its gradient norm, and the update ratios only the cheap instrument's steps."""
    import random

    rng = random.Random(2)
    for trial in range(30):
        torch.manual_seed(trial)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        cheap = gdlab.instruments.Cheap(every=rng.randint(2, 30), budget=math.inf)
        instruments = rng.choice([
            "none", "cheap", "default", [gdlab.instruments.Cheap(every=1)], [cheap],
            [cheap, gdlab.instruments.Periodic(every=rng.randint(2, 30), budget=math.inf)]])
        every = rng.randint(1, 30)
        options: dict[str, Any] = {"grad_norm_every": every, "log_every": rng.randint(1, 60),
                                   "doctor": rng.random() < 0.7}
        if rng.random() < 0.5:
            options["steps_per_epoch"] = rng.randint(3, 20)
        epoch = options.get("steps_per_epoch", 13)
        reads = rng.random() < 0.3
        doctor = gdlab.watch(model, opt, instruments=instruments, **options)
        for _ in range(4):
            for i in range(epoch):
                x = torch.randn(16 if i < epoch - 1 else 5, 4)
                loss = F.cross_entropy(model(x), torch.randint(0, 3, (len(x),)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                doctor.step(loss)
                if reads and rng.random() < 0.2:
                    assert len(doctor.history.steps["loss"]) == doctor.state.step, trial
            if rng.random() < 0.8:
                doctor.epoch_end()
        steps = doctor.close().history.steps
        total = 4 * epoch
        assert steps["step"] == [float(s) for s in range(1, total + 1)], trial
        assert all(math.isfinite(v) for v in steps["loss"]), trial
        if instruments != "none" or options["doctor"]:
            normed = {int(s) for s, v in zip(steps["step"], steps["grad_norm"]) if not math.isnan(v)}
            assert {s for s in range(1, total + 1) if s == 1 or s % every == 0} <= normed, (trial, normed)
        if instruments == [cheap]:
            column = steps.columns.get("update_ratio", [math.nan] * len(steps))  # absent before its first reading
            ratios = [int(s) for s, v in zip(steps["step"], column) if not math.isnan(v)]
            assert ratios == list(range(cheap.every, total + 1, cheap.every)), (trial, ratios)


def test_the_cheap_budgets_decisions_hold_once_taken(moons: Any) -> None:
    """The lane asks the cheap instrument ahead whether a step is measured; the budget decides once and the answer
    stands. With no budget at all, the two free readings (steps 20 and 40) are taken and none after."""
    train, _ = moons
    report, _ = _scheduled_loop(_mlp(), train, 130, instruments=[gdlab.instruments.Cheap(budget=0.0)])
    steps = report.history.steps
    assert [int(s) for s, v in zip(steps["step"], steps["update_ratio"]) if not math.isnan(v)] == [20, 40]


def _nan_batch_stop(result: Any) -> tuple[str, float, float]:
    steps = result.history.steps
    row = len(steps) - 1
    return re.sub(r"step \d+", "step N", result.stop_reason or ""), steps["bad_data"][row], \
        steps["bad_data_count"][row]


def _nan_at_step_7(*, give_batch: bool) -> tuple[torch.Tensor, torch.Tensor, Any, int]:
    """A watched loop of 20 steps whose 7th batch holds 2 NaN inputs: the data, the report and the most bytes of
    batches the watch held at once."""
    torch.manual_seed(0)
    X, y = torch.randn(320, 2), torch.randint(0, 2, (320,))
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt)
    most = 0
    for step, i in enumerate(range(0, 320, 16), 1):
        x = X[i:i + 16].clone()
        if step == 7:
            x[3] = float("nan")
        loss = F.cross_entropy(model(x), y[i:i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.step(loss, batch=(x, y[i:i + 16]) if give_batch else None)
        most = max(most, doctor._held.bytes)
    return X, y, doctor.close(), most


def test_a_nan_batch_mid_run_is_named_as_data_by_watch_as_by_fit() -> None:
    """Batch 7 holds NaN inputs (one sample, 2 values): watch, whose forward pre-hook holds each step's inputs till
    the loss is read (every 60 steps here), names the data with the count, as fit does: one check (loop.py's)."""
    X, y, watched, _ = _nan_at_step_7(give_batch=False)
    assert "the batch of step 7 has 2 NaN or inf values in its inputs" in (watched.stop_reason or "")
    assert watched.steps == 7 and "learning rate is likely" not in (watched.stop_reason or "")

    class Poisoned(torch.utils.data.Dataset):  # one sample turns NaN mid-run (after the data check read it)
        def __init__(self) -> None:
            self.reads = 0

        def __len__(self) -> int:
            return 320

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.reads += 1
            x = X[i].clone()
            if i == 5 and self.reads > 400:
                x[:] = float("nan")
            return x, y[i]

    fitted = gdlab.fit(_mlp(), Poisoned(), optimizer="sgd", lr=0.1, epochs=3, batch_size=16, progress=False)
    assert _nan_batch_stop(watched) == _nan_batch_stop(fitted)
    named = [[re.sub(r"step \d+", "step N", f.explanation) for f in r.findings if f.code == "non_finite"]
             for r in (watched, fitted)]
    assert named[0] and named[0] == named[1]


@pytest.mark.parametrize("held_bytes", [0, 1024])
def test_batches_past_the_held_bound_are_reduced_to_their_counts_and_still_named(monkeypatch: pytest.MonkeyPatch,
                                                                                 held_bytes: int) -> None:
    """Past HELD_BYTES a step's batch is not kept: its NaN count is taken on the device at once (no reference,
    no host read), and the check names the data with the same count as from a held batch."""
    from gdlab import loop

    monkeypatch.setattr(loop, "HELD_BYTES", held_bytes)
    _, _, watched, most = _nan_at_step_7(give_batch=True)
    assert most <= held_bytes  # never more held than the bound
    assert "the batch of step 7 has 2 NaN or inf values in its inputs" in (watched.stop_reason or "")


def test_watch_sees_activations_called_as_functions_as_fit_does() -> None:
    """A model whose forward calls F.relu (no activation module): watch traces one forward pass on 2 samples of
    its first batch, once, as fit does, and the doctor reads 'relu' (not 'unknown'); the traced pass is not a
    step of the loop."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = gdlab.watch(model, opt)
    for _ in range(5):
        x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.step(loss)
    report = doctor.close()
    assert report.history.meta["activations"] == ["relu"] and report.steps == 5
    assert report.diagnosis is not None


@pytest.mark.parametrize("loop", ["no_zero_grad", "no_zero_grad_clipped", "zero_before", "zero_before_in_place",
                                  "zero_after", "zero_after_in_place", "accumulate_3", "grad_scaler"])
def test_a_loop_that_never_zeroes_its_gradients_is_named_and_its_healthy_twins_are_not(loop: str) -> None:
    """The first backward pass after an update adding to the gradient that update used is a missing zero_grad():
    named at the first check as the root cause, with its one-line fix; zeroing before or after the update, in
    place or to None, accumulation over 3 micro-batches, clipping and a GradScaler are not."""
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu") if loop == "grad_scaler" else None
    doctor = gdlab.watch(model, opt, instruments="none")
    for _ in range(8):
        micro = 3 if loop == "accumulate_3" else 1
        if loop == "zero_before":
            opt.zero_grad()
        elif loop == "zero_before_in_place":
            opt.zero_grad(set_to_none=False)
        for _ in range(micro):
            x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
            loss = F.cross_entropy(model(x), y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if loop == "no_zero_grad_clipped":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        else:
            opt.step()
        if loop in ("zero_after", "accumulate_3"):
            opt.zero_grad()
        elif loop == "zero_after_in_place":
            opt.zero_grad(set_to_none=False)
        doctor.step(loss)
    report = doctor.close()
    named = [f for f in report.findings if f.code == "grads_not_zeroed"]
    if loop.startswith("no_zero_grad"):
        assert named and named[0].step == 2 and "zero_grad()" in named[0].remedy["fix"]
        assert report.diagnosis.causes[0].code == "grads_not_zeroed"
    else:
        assert not named


def test_inputs_start_a_step_whose_forward_pass_is_a_submodules() -> None:
    """A LightningModule-like wrapper whose training step calls ``self.net(x)``, never ``self(x)``: the watched
    module's forward pre-hook never fires, so nothing rides on the step; told the batch (``Watch.inputs``, as the
    Lightning callback tells it), the periodic instruments measure the dead units of a first layer biased to -10."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
            with torch.no_grad():
                self.net[0].bias.fill_(-10.0)

    def run(tell: bool) -> gdlab.Result:
        model = Wrapper()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(0)
        with gdlab.watch(model, opt, store=None) as w:
            for _ in range(40):
                x, y = torch.rand(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
                if tell:
                    w.inputs((x, y))
                loss = F.cross_entropy(model.net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.step(loss, batch=(x, y) if tell else None)
        assert w.report is not None
        return w.report

    assert not any(k.startswith("dead_share/") for k in run(False).history.steps.columns)
    told = run(True)
    dead = [v for v in told.history.steps["dead_share/net.1"] if math.isfinite(v)]
    assert len(dead) >= 2 and all(v == 1.0 for v in dead)
    assert told.history.meta["task"] == "classification" and told.history.meta["num_classes"] == 3
    assert "dead_relu" in {f.code for f in told.findings}


def _tuned_net() -> nn.Module:
    """A backbone (linear, batch norm, dropout) and a head, as a fine-tuning script builds one."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


SETUP_BUGS = {"head_frozen": "optimizer_has_no_trainable_params", "backbone_left_out": "grads_in_no_param_group",
              "never_train_mode": "training_in_eval_mode"}


@pytest.mark.parametrize("loop", [*SETUP_BUGS, "backbone_frozen_on_purpose", "train_then_eval_to_validate",
                                  "batch_norm_frozen_on_purpose"])
def test_a_loop_set_up_wrong_is_named_at_the_first_check_and_its_healthy_twins_are_not(loop: str) -> None:
    """The loop's setup, looked at once at the first update: an optimizer handed only the frozen head (every
    parameter frozen but batch norm's, pytorch-forum 84911), a backbone that gets gradients but is in no param
    group, a model trained in eval() are each named at the first check (log_every steps) as the root cause with
    their one-line fix; a backbone frozen on purpose, eval() for validation only under no_grad before each epoch, and
    batch norm put in eval() on purpose inside a model in train() are not."""
    model = _tuned_net()
    backbone, head = list(model[:4].parameters()), list(model[4].parameters())
    params: Any = model.parameters()
    if loop == "head_frozen":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("1."))  # batch norm's only
        params = head
    elif loop == "backbone_left_out":
        params = head
    elif loop == "backbone_frozen_on_purpose":
        for p in backbone:
            p.requires_grad_(False)
        params = head
    opt = torch.optim.SGD(params, lr=0.05)
    if loop == "never_train_mode":
        model.eval()  # a sanity-check evaluation before training, and no model.train() after it
    doctor = gdlab.watch(model, opt, instruments="none", log_every=5)
    g = torch.Generator().manual_seed(0)
    x_val, y_val = torch.randn(64, 2, generator=g), torch.randint(0, 2, (64,), generator=g)
    seen_at_first_check: dict[str, Any] = {}
    for epoch in range(3):
        if loop == "train_then_eval_to_validate":  # validated before each epoch (the first too), in eval()
            model.eval()
            with torch.no_grad():
                F.cross_entropy(model(x_val), y_val)
        if loop != "never_train_mode":
            model.train()
        if loop == "batch_norm_frozen_on_purpose":
            model[1].eval()
        for _ in range(5):
            x, y = torch.randn(16, 2, generator=g), torch.randint(0, 2, (16,), generator=g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.step(loss)
        if epoch == 0:
            seen_at_first_check = {code: doctor.state.history.meta.get(code) for code in SETUP_BUGS.values()}
    report = doctor.close()
    named = [f for f in report.findings if f.code in SETUP_BUGS.values()]
    if loop in SETUP_BUGS:
        code = SETUP_BUGS[loop]
        assert [f.code for f in named] == [code] and named[0].step == 1
        assert seen_at_first_check[code] is not None  # in the meta at the first read (step 5)
        assert report.diagnosis is not None and report.diagnosis.causes[0].code == code
        fix = named[0].remedy["fix"]
        if loop == "head_frozen":  # the parameters that do get gradients (batch norm's) are named in it
            assert "p.requires_grad" in fix and named[0].evidence["parameters"] == ["1.weight", "1.bias"]
        elif loop == "backbone_left_out":
            assert fix == "pass model.parameters() to the optimizer"
            assert named[0].evidence["parameters"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
        else:
            assert fix == "call model.train() before the training loop" and named[0].evidence["modules"] == ["1", "3"]
    else:
        assert not named and not any(seen_at_first_check.values())


_LOSS_FED = {"probabilities": "loss_given_probabilities", "probabilities_loss_fn": "loss_given_probabilities",
             "broadcast": "target_shape_broadcasts", "broadcast_reverse": "target_shape_broadcasts",
             "same_batch": "same_batch_every_step", "sorted": "labels_sorted"}


@pytest.mark.parametrize("loop", [*_LOSS_FED, "logits", "log_of_probabilities", "column_target", "squeezed",
                                  "shuffled", "multi_class_batch"])
def test_a_loss_fed_the_wrong_thing_and_data_that_does_not_move_are_named_at_the_first_check(loop: str) -> None:
    """Probabilities given to a cross-entropy, a [N] target broadcast against a [N, 1] output, the same batch every
    step and data sorted by label: each is named at the first check (watch's first read, after 5 steps here) as
    the root cause, with its one-line fix; the healthy twins (logits, log-probabilities to nll_loss, a [N, 1]
    target, a squeezed output, shuffled data, a batch of several classes) are quiet."""
    torch.manual_seed(0)
    regression = loop in ("broadcast", "broadcast_reverse", "column_target", "squeezed")
    head: list[nn.Module] = [nn.Softmax(dim=1)] if loop.startswith(("probabilities", "log_of")) else \
        [nn.Flatten(0)] if loop == "broadcast_reverse" else []  # the model's output [N]
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1 if regression else 3), *head)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x_all, y_all, w = torch.randn(300, 4), torch.randint(0, 3, (300,)), torch.randn(4)
    if loop == "sorted":
        y_all, order = y_all.sort()
        x_all = x_all[order]
    loss_fn = "cross_entropy" if loop == "probabilities_loss_fn" else None
    doctor = gdlab.watch(model, opt, instruments="none", log_every=5, loss_fn=loss_fn)
    for i in range(5):
        at = slice(0, 16) if loop == "same_batch" else slice(16 * i, 16 * i + 16)
        x, y = x_all[at], y_all[at]
        opt.zero_grad()
        out = model(x)
        if regression:
            y = x @ w  # [N]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns of the broadcast: the loop's author did not read it
                if loop == "broadcast":
                    loss = F.mse_loss(out, y)
                elif loop == "broadcast_reverse":
                    y = y.view(-1, 1)
                    loss = F.l1_loss(out, y)
                elif loop == "column_target":
                    y = y.view(-1, 1)
                    loss = F.mse_loss(out, y)
                else:
                    loss = F.mse_loss(out.squeeze(-1), y)
        elif loop == "log_of_probabilities":
            loss = F.nll_loss(torch.log(out), y)
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        doctor.step(loss, batch=(x, y))
    seen = dict(doctor.history.meta)  # read at the first check, before close()
    report = doctor.close()
    codes = [f.code for f in report.findings]
    mine = set(_LOSS_FED.values())
    if loop in _LOSS_FED:
        code = _LOSS_FED[loop]
        assert code in seen and report.diagnosis.causes[0].code == code
        finding = next(f for f in report.findings if f.code == code)
        assert finding.step <= 5 and finding.remedy["fix"] == {
            "loss_given_probabilities": "give CrossEntropyLoss the logits: remove the softmax at the end of the model",
            "target_shape_broadcasts": "target.view(-1, 1) (or output.squeeze(-1))",
            "same_batch_every_step": "draw a new batch each step",
            "labels_sorted": "shuffle: DataLoader(..., shuffle=True)"}[code]
        if code == "target_shape_broadcasts":
            assert finding.evidence["pairs"] == [16, 16]
        if code == "labels_sorted":
            assert finding.evidence["labels"] == [0, 0, 0] and finding.evidence["classes"] == 3
    else:
        assert not mine & set(codes) and not mine & set(seen)
