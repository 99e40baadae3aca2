"""The range test (restores everything it touched; suggestions; warnings) and lr='auto' (vectorised, and one by one
for a model vmap cannot serve)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gdlab
from gdlab.data import TensorData
from gdlab.errors import InvalidParameter
from gdlab.lr_select import HALVING, _valley, lr_find, select_lr
from gdlab.store import Store


@pytest.fixture
def problem() -> TensorData:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 6, generator=g)
    y = (X @ torch.randn(6, 3, generator=g)).argmax(1)
    return TensorData(X, y, num_classes=3)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def test_model_optimizer_and_rng_are_restored_exactly(problem: TensorData) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(problem.X), problem.y).backward()
    opt.step()  # the optimizer has state (momentum buffers) to restore
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    found = lr_find(model, problem, optimizer=opt, num_iter=30, progress=False)
    assert len(found.lrs) > 5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == state["param_groups"][0]["lr"] == 0.1
    assert all(torch.equal(b, opt.state[p]["momentum_buffer"]) for b, p in zip(buffers, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())


def test_the_ramp_is_exponential_and_stops_at_divergence(problem: TensorData) -> None:
    found = lr_find(_model(), problem, start_lr=1e-4, end_lr=1e4, num_iter=80, progress=False)
    expected = [1e-4 * (1e8) ** (i / 79) for i in range(len(found.lrs))]
    assert found.lrs == pytest.approx(expected)
    assert len(found.lrs) < 80 and ("passed 4x" in found.stopped or "became" in found.stopped)
    smooth = found.smoothed
    assert smooth[-1] > 4 * min(smooth) or "became" in found.stopped
    # the smoothed curve is the bias-corrected moving average (beta 0.95) of the raw losses
    avg = 0.0
    for i, value in enumerate(found.losses[:10]):
        avg = 0.95 * avg + 0.05 * value
        assert smooth[i] == pytest.approx(avg / (1 - 0.95 ** (i + 1)))


def test_suggestions_train_well(problem: TensorData) -> None:
    found = lr_find(_model(), problem, optimizer="sgd", start_lr=1e-4, end_lr=100, num_iter=100, progress=False)
    assert set(found.suggestions) == {"steepest", "valley", "min/10"}
    lowest = found.lrs[min(range(len(found.smoothed)), key=lambda i: found.smoothed[i])]
    assert found.suggestions["min/10"] == pytest.approx(lowest / 10)
    for lr in found.suggestions.values():
        assert 1e-4 <= lr <= 100
    first = gdlab.fit(_model(), problem, optimizer="sgd", lr=found.suggestions["valley"], epochs=5,
                      progress=False).final["train_loss"]
    tiny = gdlab.fit(_model(), problem, optimizer="sgd", lr=1e-4, epochs=5, progress=False).final["train_loss"]
    assert first is not None and tiny is not None and first < 0.8 * tiny


def test_flat_curve_and_early_stop_warn(problem: TensorData) -> None:
    flat = lr_find(_model(), problem, start_lr=1e-9, end_lr=1e-8, num_iter=20, progress=False)
    assert any("flat" in w for w in flat.warnings) and any("never rose" in w for w in flat.warnings)
    at_once = lr_find(_model(), problem, start_lr=1e6, end_lr=1e9, num_iter=20, progress=False)
    assert at_once.suggestions == {} and "start_lr" in at_once.warnings[0]


def test_valley_is_halfway_down_the_descent() -> None:
    curve = [2.0] * 20 + [2.0 - 0.1 * i for i in range(11)] + [1.2, 3.0]  # flat, a fall, a blow-up
    assert _valley(curve) == 25


def test_plot(problem: TensorData, tmp_path: Path) -> None:
    found = lr_find(_model(), problem, num_iter=20, progress=False)
    assert found.plot(tmp_path / "lr.png").stat().st_size > 0


def test_bad_range_test_arguments(problem: TensorData) -> None:
    with pytest.raises(InvalidParameter, match="invalid end_lr 1e-08"):
        lr_find(_model(), problem, start_lr=1e-7, end_lr=1e-8, progress=False)
    with pytest.raises(InvalidParameter, match="invalid num_iter 2"):
        lr_find(_model(), problem, num_iter=2, progress=False)
    with pytest.raises(InvalidParameter, match="invalid start_lr -1"):
        lr_find(_model(), problem, start_lr=-1, progress=False)


def test_the_range_test_runs_on_the_loop(problem: TensorData, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps are gdlab.loop.run's: its history holds each step's lr (the ramp, set by the hook) and loss,
    the ones the result reports, without the gradient norms it does not need."""
    from gdlab import loop

    runs: list[loop.LoopState] = []
    real = loop.run

    def spy(problem_: object, state: loop.LoopState, hooks: object, **kwargs: object) -> None:
        runs.append(state)
        real(problem_, state, hooks, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "run", spy)
    found = lr_find(_model(), problem, start_lr=1e-4, end_lr=1e4, num_iter=80, progress=False, probe=False)
    (state,) = runs
    steps = state.history.steps
    assert state.step == len(found.lrs) < 80 and state.stop_reason == found.stopped
    assert steps["lr"] == pytest.approx(found.lrs) and steps["loss"] == found.losses
    assert "grad_norm" not in steps.columns or all(math.isnan(v) for v in steps["grad_norm"])


def test_everything_is_put_back_when_the_loop_fails(problem: TensorData) -> None:
    """A model that fails mid-test: the error is the loop's one line, and the parameters, buffers, gradients,
    the optimizer's state and learning rate, each module's mode and the RNG are as they were."""
    from gdlab.errors import ModelError

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.norm, self.calls = nn.Linear(6, 16), nn.BatchNorm1d(16), 0
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 12:
                raise RuntimeError("broken at the 12th call")
            return self.head(torch.relu(self.norm(self.body(x))))

    torch.manual_seed(0)
    model = Fails()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(problem.X), problem.y).backward()
    opt.step()  # momentum buffers to restore, and gradients left in place
    model.norm.eval()  # a frozen norm inside a model in train mode stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    with pytest.raises(ModelError, match="the forward pass of step .* broken at the 12th call"):
        lr_find(model, problem, optimizer=opt, num_iter=40, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(grads) == 6
    assert all(p.grad is not None and torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(torch.equal(m, opt.state[p]["momentum_buffer"]) for m, p in zip(momenta, model.parameters()))
    assert opt.param_groups[0]["lr"] == 0.1 and model.training and not model.norm.training
    assert torch.equal(rng, torch.get_rng_state())


def test_a_non_finite_loss_or_parameters_end_the_test_in_its_own_words() -> None:
    """The loop's divergence check does not speak for the range test: a loss that overflows ends it as "the loss
    became inf", parameters that overflow at an epoch's end (where the loop checks them) as they are."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 6, generator=g)
    torch.manual_seed(0)
    found = lr_find(nn.Linear(6, 1), (X, X @ torch.ones(6, 1)), optimizer="sgd", start_lr=1e-3, end_lr=1e9,
                    diverge=1e300, num_iter=80, progress=False, probe=False)
    assert found.stopped.startswith("the loss became ") and "diverged" not in found.stopped
    assert all(math.isfinite(v) for v in found.losses) and len(found.lrs) < 80
    small = X[:64]  # two steps an epoch: the loop checks the parameters every second step
    torch.manual_seed(0)
    found = lr_find(nn.Linear(6, 1), (small, small @ torch.ones(6, 1)), optimizer="sgd", start_lr=1e-3,
                    end_lr=1e20, diverge=1e300, num_iter=10, progress=False, probe=False)
    assert found.stopped in (f"the parameters became NaN or inf at lr {found.lrs[-1]:.3g}",
                             f"the loss became inf at lr {found.lrs[-1] * 1e23 ** (1 / 9):.3g}",
                             f"the loss became nan at lr {found.lrs[-1] * 1e23 ** (1 / 9):.3g}")
    assert all(math.isfinite(v) for v in found.losses) and len(found.lrs) < 10


def test_auto_lr_in_fit_is_recorded(problem: TensorData, tmp_path: Path) -> None:
    model = _model()
    result = gdlab.fit(model, problem, optimizer="momentum", lr="auto", epochs=4, progress=False, store=tmp_path)
    chosen = result.lr_selection
    assert chosen is not None and result.lr == pytest.approx(chosen.lr)
    assert len(chosen.tried) == 18 and "lowest training loss" in chosen.reason
    total = result.steps
    (share1, keep1), (share2, keep2) = HALVING  # successive halving: 18, then 5, then 3 learning rates
    first, second = round(share1 * total), round(share2 * total)
    assert chosen.cost == pytest.approx((18 * first + keep1 * (second - first) + keep2 * (total - second)) / total)
    assert sorted(t["steps"] for t in chosen.tried if not t["diverged"])[-keep2:] == [total] * keep2  # finalists
    finalists = [t for t in chosen.tried if t["steps"] == total and not t["diverged"]]
    assert chosen.lr == min(finalists, key=lambda t: t["loss"])["lr"]
    stored = Store(tmp_path).get(result.run_id).config["lr_selection"]
    assert stored["lr"] == pytest.approx(chosen.lr) and len(stored["tried"]) == 18
    # the run at the chosen lr is the finalist's run again: same start, same batches
    assert result.final["train_loss"] == pytest.approx(min(t["loss"] for t in finalists), rel=1e-5)


def test_auto_lr_picks_well_against_a_grid(problem: TensorData) -> None:
    """lr='auto' ends within 15% of the best final loss of an 8-point grid (the benchmark measures more)."""
    chosen = select_lr(_model(), problem, optimizer="sgd", total_steps=160, batch_size=32)
    finals = {}
    for lr in [*[10 ** (k / 2 - 3) for k in range(8)], chosen.lr]:
        finals[lr] = gdlab.fit(_model(), problem, optimizer="sgd", lr=lr, steps=160, progress=False).final[
            "train_loss"]
    best = min(v for k, v in finals.items() if k != chosen.lr)
    assert finals[chosen.lr] <= 1.15 * best


class _Sequences(nn.Module):
    """A tiny LSTM classifier: vmap cannot batch nn.LSTM, so a population trains it one member at a time. It counts
    the training steps taken on it (every copy together)."""

    steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        if self.training and torch.is_grad_enabled():  # after the LSTM: vmap's probe fails inside it, uncounted
            type(self).steps += 1
        return self.head(out[:, -1])


@pytest.fixture
def sequences() -> TensorData:
    """256 sequences of 6 steps of 3 features; the class: where the running difference of two features ends."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 6, 3, generator=g)
    s = X[:, :, 0].sum(1) - X[:, :, 1].sum(1)
    return TensorData(X, (s > 1).long() + (s > -1).long(), num_classes=3)


def _sequences() -> nn.Module:
    torch.manual_seed(0)
    return _Sequences()


def test_auto_lr_one_by_one_halves_the_field(sequences: TensorData) -> None:
    _Sequences.steps = 0
    # no instruments: the count is the sweep's and the run's training steps alone (some instruments run forwards)
    result = gdlab.fit(_sequences(), sequences, optimizer="adam", lr="auto", epochs=10, progress=False,
                       instruments="none", doctor=False)
    chosen = result.lr_selection
    total = result.steps
    assert total == 80 and "trained one by one" in chosen.reason and "successive halving" in chosen.reason
    assert not any(t["diverged"] for t in chosen.tried)  # so every member trains all of its share
    (share1, keep1), (share2, keep2) = HALVING
    first, second = round(share1 * total), round(share2 * total)
    planned = 18 * first + keep1 * (second - first) + keep2 * (total - second)  # 4.9 trainings, not 18
    assert sorted(t["steps"] for t in chosen.tried) == \
        [first] * (18 - keep1) + [second] * (keep1 - keep2) + [total] * keep2
    assert _Sequences.steps == planned + total  # the members' steps, then the run itself
    assert chosen.cost == pytest.approx(planned / total)
    finalists = [t for t in chosen.tried if t["steps"] == total]
    assert chosen.lr == min(finalists, key=lambda t: t["loss"])["lr"]
    # the run at the chosen lr is the finalist's run again: members resumed at the cuts exactly where they stood
    assert result.final["train_loss"] == pytest.approx(min(t["loss"] for t in finalists), rel=1e-6)


def test_auto_lr_one_by_one_picks_well_against_a_grid(sequences: TensorData) -> None:
    chosen = select_lr(_sequences(), sequences, optimizer="adam", total_steps=80)
    finals = {}
    for lr in [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, chosen.lr]:
        finals[lr] = gdlab.fit(_sequences(), sequences, optimizer="adam", lr=lr, steps=80, progress=False,
                               instruments="none", doctor=False).final["train_loss"]
    best = min(v for k, v in finals.items() if k != chosen.lr)
    assert finals[chosen.lr] <= 1.15 * best


def test_range_test_selection(problem: TensorData) -> None:
    result = gdlab.fit(_model(), problem, optimizer="sgd", lr="auto", lr_select="range-test", epochs=2,
                       progress=False)
    assert result.lr_selection.method == "range-test" and result.lr == result.lr_selection.lr


def test_bad_auto_lr(problem: TensorData) -> None:
    with pytest.raises(InvalidParameter, match="invalid lr 'fast'"):
        gdlab.fit(_model(), problem, lr="fast", progress=False)
    with pytest.raises(InvalidParameter, match="invalid lr_select 'grid'"):
        gdlab.fit(_model(), problem, lr="auto", lr_select="grid", progress=False)
    model = _model()
    with pytest.raises(InvalidParameter, match="a named optimizer"):
        gdlab.fit(model, problem, lr="auto", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)


def test_a_cut_ranks_by_the_level_of_the_recent_evaluations_not_the_one_at_the_cut() -> None:
    """The README's moons: the lr that ends best had 0.08 and 0.09 before a cut and 0.22 at it; one reading
    dropped it."""
    from gdlab.population.members import halving_score

    noisy_large_lr = [0.08, 0.09, 0.22]
    steady_small_lr = [0.13, 0.12, 0.12]
    score = halving_score(torch.tensor([noisy_large_lr, steady_small_lr], dtype=torch.float64).T)
    assert score.tolist() == [0.09, 0.12]
    older = torch.tensor([[0.01, 0.5]] * 5 + [[0.3, 0.2]] * 3, dtype=torch.float64)  # only the last 3 count
    assert halving_score(older).tolist() == [0.3, 0.2]
    cut_early = torch.tensor([[math.nan, math.nan], [0.4, 0.3]], dtype=torch.float64)  # no epoch before the cut
    assert halving_score(cut_early).tolist() == [0.4, 0.3]


def test_the_range_test_says_when_a_population_probe_disagrees_and_which_to_trust() -> None:
    from gdlab.lr_select import PROBE_SPAN, probe_suggestion

    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 4, generator=g)
    y = X @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]]) + 0.5 * torch.randn(256, 1, generator=g)  # floor 0.25
    far_too_small = probe_suggestion(nn.Linear(4, 1), (X, y), 1e-4, optimizer="sgd", steps=40)
    assert not far_too_small["agrees"] and far_too_small["best"] == pytest.approx(1e-4 * PROBE_SPAN[-1])
    assert "trust the probe" in far_too_small["note"] and "end of its span" in far_too_small["note"]
    losses = far_too_small["losses"]
    assert losses == sorted(losses, reverse=True)  # in 40 steps every larger lr of these got further
    fine = probe_suggestion(nn.Linear(4, 1), (X, y), 0.1, optimizer="sgd", steps=40)
    assert fine["agrees"] and fine["note"] == ""  # its neighbours reach the same floor, within 10%
    assert math.isinf(fine["losses"][-1])  # 10x diverges: a diverged lr is never the best
    model = nn.Linear(4, 1)
    before = [p.clone() for p in model.parameters()]
    found = lr_find(model, (X, y), optimizer="sgd", num_iter=60, progress=False)
    assert found.probe is not None and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (found.probe["note"] in found.warnings) == (not found.probe["agrees"])
    assert lr_find(nn.Linear(4, 1), (X, y), num_iter=60, progress=False, probe=False).probe is None
