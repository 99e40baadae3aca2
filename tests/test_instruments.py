"""Instruments: they measure what they promise (against autograd and closed forms) and leave no trace."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import gdlab
from gdlab.data import TensorData
from gdlab.errors import UnknownChoice
from gdlab.instruments import Cheap, Expensive, Periodic, attach


@pytest.fixture
def data() -> TensorData:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(256, 6, generator=g, dtype=torch.float64)
    y = (X[:, :3].sum(1) > 0).long()
    return TensorData(X, y, num_classes=2)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)).double()


def test_instruments_leave_the_run_unchanged(data: TensorData) -> None:
    """Measured or not, the run is the same: buffers, RNG (dropout) and the module's parameters untouched."""
    plain = _model()
    gdlab.fit(plain, data, optimizer="momentum", lr=0.05, epochs=3, batch_size=32, progress=False,
              instruments="none", doctor=False)
    watched = _model()
    gdlab.fit(watched, data, optimizer="momentum", lr=0.05, epochs=3, batch_size=32, progress=False,
              instruments=[Cheap(), Periodic(every=5, budget=math.inf),
                                           Expensive(every=7, iterations=5, budget=math.inf)])
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    assert all(isinstance(p, nn.Parameter) for p in watched.parameters())


def test_tied_weights_survive_per_sample_gradients() -> None:
    layer = nn.Linear(3, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), layer)
    X, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    result = gdlab.fit(model, (X, y), lr=0.01, batch_size="full", steps=3, progress=False,
                       instruments=[Periodic(every=1)])
    assert model(X).grad_fn is not None and math.isfinite(result.history.steps["noise_scale"][0])


def test_cheap_columns_match_hand_computation(data: TensorData) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    start = [p.detach().clone() for p in model.parameters()]
    result = gdlab.fit(model, data, optimizer="sgd", lr=0.1, batch_size="full", steps=2, progress=False,
                       instruments=[Cheap(every=1)], doctor=False)
    steps = result.history.steps
    # full batch, plain SGD: the second update is -lr * gradient at the first step's end point
    after_one = [p.detach().clone() for p in start]
    probe = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p, v in zip(probe.parameters(), start):
            p.copy_(v)
    loss = nn.functional.cross_entropy(probe(data.X), data.y)
    grads = torch.autograd.grad(loss, list(probe.parameters()))
    after_one = [v - 0.1 * g for v, g in zip(start, grads)]
    first_layer = math.sqrt(float(grads[0].square().sum() + grads[1].square().sum()))
    assert steps["grad_norm/0"][0] == pytest.approx(first_layer, rel=1e-10)
    ratio = math.sqrt(float(sum((0.1 * g).square().sum() for g in grads[:2]))) / math.sqrt(
        float(sum(v.square().sum() for v in start[:2])))
    assert steps["update_ratio/0"][0] == pytest.approx(ratio, rel=1e-10)
    final = list(model.parameters())
    distance = math.sqrt(float(sum((p.detach() - v).square().sum() for p, v in zip(final, start))))
    assert steps["distance"][1] == pytest.approx(distance, rel=1e-10)
    assert steps["param_norm"][1] == pytest.approx(math.sqrt(float(sum(p.detach().square().sum() for p in final))))
    assert steps["non_finite"] == [0.0, 0.0] and len(after_one) == 4


def test_cheap_per_step_columns_are_written_in_batches_and_stored_whole(data: TensorData, tmp_path: object) -> None:
    """The per-step columns are filed by each step and written when the history is read: the store (checkpoints
    mid-epoch) and the result read the same numbers, the moving average is the loss's, and nothing stays hooked
    on the table after the run."""
    from gdlab.store import Store

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    result = gdlab.fit(model, data, optimizer="sgd", lr=0.1, batch_size=32, epochs=2, progress=False,
                       instruments="cheap", doctor=False, store=tmp_path, checkpoint_every=3)
    steps = result.history.steps
    assert not steps._fillers
    stored = Store(tmp_path).history(result.run_id).steps
    for key in ("loss_ema", "grad_norm/0", "grad_norm/2", "non_finite"):
        assert stored[key] == pytest.approx(steps[key], rel=1e-12), key
    avg = weight = 0.0
    for loss, ema in zip(steps["loss"], steps["loss_ema"]):
        avg, weight = 0.9 * avg + 0.1 * loss, 0.9 * weight + 0.1
        assert ema == pytest.approx(avg / weight, rel=1e-12)
    assert steps["grad_norm/2"] != steps["grad_norm/0"] and not any(steps["non_finite"])


def test_noise_scale_matches_its_definition(data: TensorData) -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 2).double()
    result = gdlab.fit(model, data, optimizer="sgd", lr=1e-9, batch_size=64, steps=1, progress=False,
                       instruments=[Periodic(every=1, sub_batch=64)], doctor=False)
    x, y = data.X, data.y
    from gdlab.data import BatchPlan, epoch_order

    order = epoch_order(BatchPlan.make(len(data), 64), 0, 0)[:64]
    per = []
    for i in order.tolist():
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        per.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    G = torch.stack(per)
    mean = G.mean(0)
    trace = float((G - mean).square().sum(1).mean()) * 64 / 63
    expected = trace / float(mean.square().sum())
    assert result.history.steps["noise_scale"][0] == pytest.approx(expected, rel=1e-6)  # lr 1e-9: same params
    assert result.history.steps["grad_snr"][0] == pytest.approx(float(mean.square().sum()) / (trace / 64), rel=1e-6)


def test_activation_statistics_and_arriving_gradients(data: TensorData) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit of the first ReLU dead
        model[2].bias.fill_(100.0)  # the tanh saturated
    result = gdlab.fit(model, data, lr=1e-9, steps=1, progress=False, instruments=[Periodic(every=1)],
                       doctor=False)
    steps = result.history.steps
    assert steps["dead_share/1"][0] == 1.0 and steps["zero_share/1"][0] == 1.0
    assert steps["saturated/3"][0] > 0.5
    assert steps["grad_out/4"][0] > 0 and steps["grad_out/0"][0] == 0.0  # nothing reaches past dead units


def test_sharpness_of_a_quadratic_is_its_largest_eigenvalue() -> None:
    """Linear regression with mse: the Hessian is 2 X^T X / n (per output), known in closed form."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.3], dtype=torch.float64)
    y = torch.randn(128, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    result = gdlab.fit(model, (X, y), optimizer="sgd", lr=1e-6, batch_size="full", steps=2, progress=False,
                       instruments=[Expensive(every=1, sub_batch=128, iterations=50, budget=math.inf)], doctor=False)
    expected = float(torch.linalg.eigvalsh(2 * X.T @ X / 128).max())
    sharp = [v for v in result.history.steps["sharpness"] if math.isfinite(v)]
    assert sharp and sharp[0] == pytest.approx(expected, rel=1e-4)
    assert result.history.steps["stability_limit"][1] == pytest.approx(2 / 1e-6)


def test_alpha_is_zero_when_the_step_lands_at_the_minimum() -> None:
    """Full-batch gradient descent on a 1-D quadratic with lr = 1 / curvature lands exactly at the minimum."""
    X = torch.ones(8, 1, dtype=torch.float64)
    y = torch.full((8, 1), 3.0, dtype=torch.float64)
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.0)
    result = gdlab.fit(model, (X, y), optimizer="sgd", lr=0.5, batch_size="full", steps=1, progress=False,
                       instruments=[Expensive(every=1)], doctor=False)  # mse: curvature 2, lr 1/2
    assert result.history.steps["alpha"][0] == pytest.approx(0.0, abs=1e-9)


def test_levels_and_bad_names() -> None:
    assert [type(i).__name__ for i in attach("full")] == ["Cheap", "Periodic", "Expensive"]
    assert attach("none") == [] and [type(i).__name__ for i in attach("default")] == ["Cheap", "Periodic"]
    with pytest.raises(UnknownChoice, match="unknown instruments 'all'"):
        attach("all")


def test_cheap_measures_movement_every_twentieth_step(data: TensorData) -> None:
    result = gdlab.fit(_model(), data, lr=0.01, batch_size=32, steps=25, progress=False, instruments="cheap",
                       doctor=False)
    ratios = result.history.steps["update_ratio"]
    assert [i + 1 for i, v in enumerate(ratios) if math.isfinite(v)] == [20]
    assert all(math.isfinite(v) for v in result.history.steps["grad_norm/0"])  # every step


def _noise_by_definition(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: object) -> float:
    per = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])  # type: ignore[operator]
        per.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    G = torch.stack(per)
    mean = G.mean(0)
    return float((G - mean).square().sum(1).mean()) * len(x) / (len(x) - 1) / float(mean.square().sum())


@pytest.mark.parametrize("sub_batch", [64, 24])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "sequence"])
def test_noise_rides_on_the_step_and_matches_its_definition(kind: str, sub_batch: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Linear and Conv2d layers: per-sample gradient norms from the step's own hooks, no torch.func pass, and
    the noise scale equal to the per-sample autograd definition, on the whole batch (whose mean gradient is the
    step's) and on part of it."""
    g = torch.Generator().manual_seed(5)
    if kind == "mlp":
        def make() -> nn.Module:
            return nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)).double()
        X, y = torch.randn(128, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (128,), generator=g)
    elif kind == "cnn":
        def make() -> nn.Module:
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, stride=2), nn.Tanh(), nn.Conv2d(4, 5, 2, dilation=2),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(20, 3)).double()
        X, y = torch.randn(128, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (128,), generator=g)
    else:  # a Linear on [batch, positions, features]
        def make() -> nn.Module:
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten()).double()
        X, y = torch.randn(128, 5, 4, generator=g, dtype=torch.float64), torch.randn(128, 5, generator=g,
                                                                                      dtype=torch.float64)
    classes = y.dtype == torch.long
    data = TensorData(X, y, num_classes=3) if classes else TensorData(X, y)

    def no_extra_pass(*args: object) -> dict[str, float]:
        raise AssertionError("the per-sample gradients should come from the step's own pass")

    monkeypatch.setattr(Periodic, "_noise", no_extra_pass)
    torch.manual_seed(0)
    periodic = Periodic(every=1, sub_batch=sub_batch)
    result = gdlab.fit(make(), data, optimizer="sgd", lr=0.1, batch_size=64, steps=1, progress=False,
                       instruments=[periodic], doctor=False)
    assert periodic.factored and not periodic.handles  # rode on the step, and the hooks are off again
    from gdlab.data import BatchPlan, epoch_order

    order = epoch_order(BatchPlan.make(len(data), 64), 0, 0)[:sub_batch]
    torch.manual_seed(0)
    loss_fn = nn.functional.cross_entropy if classes else nn.functional.mse_loss
    expected = _noise_by_definition(make(), X[order], y[order], loss_fn)
    assert result.history.steps["noise_scale"][0] == pytest.approx(expected, rel=1e-9)


def test_models_the_hooks_cannot_factor_use_per_sample_passes() -> None:
    from gdlab.instruments.persample import factorable

    assert factorable(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert not factorable(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))  # mixes samples
    assert not factorable(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))  # LayerNorm's own parameters
    assert not factorable(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)))
    shared = nn.Linear(3, 3)
    other = nn.Linear(3, 3)
    other.weight = shared.weight
    assert not factorable(nn.Sequential(shared, other))
    # a custom loss (its reduction unknown) goes the per-sample way too, and still gives the noise scale
    X, y = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    periodic = Periodic(every=1)
    result = gdlab.fit(nn.Linear(3, 1).double(), (X, y), loss=lambda out, t: ((out - t) ** 2).sum(), lr=1e-3,
                       batch_size=32, steps=1, progress=False, instruments=[periodic], doctor=False)
    assert not periodic.factored and math.isfinite(result.history.steps["noise_scale"][0])


def _noise_of_first_step(model: nn.Module, X: torch.Tensor, y: torch.Tensor, lr: float = 0.1) -> tuple[float, float]:
    """gdlab's noise scale at step 1 (batch 64) and the per-sample autograd definition's, over trained params."""
    periodic = Periodic(every=1)
    reference = copy.deepcopy(model)
    result = gdlab.fit(model, TensorData(X, y, num_classes=3), optimizer="sgd", lr=lr, batch_size=64, steps=1,
                       progress=False, instruments=[periodic], doctor=False)
    from gdlab.data import BatchPlan, epoch_order

    order = epoch_order(BatchPlan.make(len(X), 64), 0, 0)[:64]
    trained = [p for p in reference.parameters() if p.requires_grad]
    per = []
    for i in order.tolist():
        loss = nn.functional.cross_entropy(reference(X[i : i + 1]), y[i : i + 1])
        per.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, trained)]))
    G = torch.stack(per)
    mean = G.mean(0)
    expected = float((G - mean).square().sum(1).mean()) * 64 / 63 / float(mean.square().sum())
    return result.history.steps["noise_scale"][0], expected


class _Folded(nn.Module):
    """Folds 4 positions into the batch's rows before a Linear: rows are not samples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(-1, 3)).reshape(len(x), 4, 3).mean(1)


def test_frozen_weights_and_folded_batches() -> None:
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(128, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (128,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    model[0].weight.requires_grad_(False)  # only its bias trains
    got, expected = _noise_of_first_step(model, X, y)
    assert got == pytest.approx(expected, rel=1e-9)
    torch.manual_seed(0)
    images = torch.randn(128, 1, 6, 6, generator=g, dtype=torch.float64)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).double()
    conv[0].weight.requires_grad_(False)
    got, expected = _noise_of_first_step(conv, images, y)
    assert got == pytest.approx(expected, rel=1e-9)
    torch.manual_seed(0)
    folded = _Folded().double()
    # by per-sample passes after the step (lr 1e-9: the same parameters): the hooks see rows, not samples
    got, expected = _noise_of_first_step(folded, torch.randn(128, 12, generator=g, dtype=torch.float64), y, lr=1e-9)
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(gdlab.GdlabError, match="sub_batch 1"):
        Periodic(sub_batch=1)


def test_grouped_noise_is_the_per_sample_definition_in_groups_of_one_and_unbiased_in_larger_ones() -> None:
    from gdlab.instruments.persample import grouped_sums, noise_from_trace

    g = torch.Generator().manual_seed(4)
    G = torch.randn(24, 5, generator=g, dtype=torch.float64) + 0.3  # 24 per-sample gradients of 5 numbers
    mean = G.mean(0)
    definition = float((G - mean).square().sum()) / 23
    trace, mean_sq = grouped_sums([G[:, :3], G[:, 3:].reshape(24, 2, 1)], torch.ones(24)).tolist()  # 2 parameters
    assert trace == pytest.approx(definition, rel=1e-12) and mean_sq == pytest.approx(float(mean @ mean), rel=1e-12)
    # groups of unequal sizes: dealt at random, their estimate averages to the per-sample one (it is unbiased),
    # and their weighted mean is the mean of all 24 whatever the deal
    sizes = torch.tensor([3, 5, 4, 8, 4])
    traces = []
    for _ in range(3000):
        parts = torch.randperm(24, generator=g).split(sizes.tolist())
        t, m = grouped_sums([torch.stack([G[part].mean(0) for part in parts])], sizes).tolist()
        assert m == pytest.approx(float(mean @ mean), rel=1e-9)
        traces.append(t)
    assert sum(traces) / len(traces) == pytest.approx(definition, rel=0.04)
    assert noise_from_trace(2.0, 4.0, 8, batch=16) == {"noise_scale": 0.5, "grad_snr": 32.0, "noise_gradients": 8.0}


class _Recurrent(nn.Module):
    """An LSTM over a sequence; two classes from its last state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_a_recurrent_model_takes_its_noise_from_groups_of_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """vmap cannot batch an LSTM (the premise, checked: float32 falls back to a loop over samples, float64 has no
    fallback at all): its noise comes from the mean gradients of ``groups`` groups of the sub-batch, by plain
    batched passes, with no vmap; it equals the grouped estimate by hand and says it came from 8 gradients."""
    import warnings

    from torch.func import vmap

    from gdlab.data import BatchPlan, epoch_order
    from gdlab.instruments import periodic as periodic_module
    from gdlab.instruments.passes import vmap_loops

    for dtype in (torch.float32, torch.float64):
        lstm = nn.LSTM(3, 5, batch_first=True).to(dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                vmap(lambda x, lstm=lstm: lstm(x.unsqueeze(0))[0])(torch.randn(2, 4, 3, dtype=dtype))
                failed = False
            except RuntimeError as error:
                failed = "Batching rule not implemented" in str(error)
        assert failed or any("performance drop" in str(w.message) for w in caught), dtype
    assert vmap_loops(_Recurrent()) and not vmap_loops(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))

    def no_vmap(*args: object, **kwargs: object) -> None:
        raise AssertionError("a recurrent model's noise should come from groups, not from vmap")

    monkeypatch.setattr(periodic_module, "vmap", no_vmap)
    g = torch.Generator().manual_seed(6)
    X, y = torch.randn(128, 4, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (128,), generator=g)
    torch.manual_seed(0)
    model = _Recurrent().double()
    reference = copy.deepcopy(model)
    result = gdlab.fit(model, TensorData(X, y, num_classes=2), optimizer="sgd", lr=1e-9, batch_size=64, steps=1,
                       progress=False, instruments=[Periodic(every=1, groups=8)], doctor=False)
    order = epoch_order(BatchPlan.make(len(X), 64), 0, 0)[:64]
    means = []
    for part in order.split(8):
        loss = nn.functional.cross_entropy(reference(X[part]), y[part])
        means.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(reference.parameters()))]))
    H = torch.stack(means)
    mean = H.mean(0)
    trace = 8 * float((H - mean).square().sum()) / 7  # each group's mean has the covariance Sigma / 8
    steps = result.history.steps
    assert steps["noise_gradients"][0] == 8
    assert steps["noise_scale"][0] == pytest.approx(trace / float(mean @ mean), rel=1e-6)  # lr 1e-9: same params


def test_a_small_batch_gets_one_extra_pass_with_the_hooks_a_step_rides_on(data: TensorData,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stochastic descent (batch 1): one forward and backward on 64 drawn samples with the step's hooks gives the
    noise from the factored per-sample norms (no torch.func pass), equal to the per-sample definition and said to
    come from 64 gradients, with the activation statistics and arriving gradients; the run stays the run."""
    from gdlab.instruments import periodic as periodic_module

    def no_per_sample_pass(*args: object) -> dict[str, float]:
        raise AssertionError("the per-sample norms should come from the extra pass's hooks")

    drawn: list[tuple[Any, torch.Tensor]] = []
    real = periodic_module.sub_batch_of

    def remember(state: Any, size: int) -> Any:
        batch = real(state, size)
        drawn.append(batch)
        return batch

    monkeypatch.setattr(Periodic, "_noise", no_per_sample_pass)
    monkeypatch.setattr(periodic_module, "sub_batch_of", remember)

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).double()

    model, reference = make(), make()
    result = gdlab.fit(model, data, optimizer="sgd", lr=1e-9, batch_size=1, steps=1, progress=False,
                       instruments=[Periodic(every=1)], doctor=False)
    (x, y), = drawn
    steps = result.history.steps
    assert len(y) == 64 and steps["noise_gradients"][0] == 64
    assert steps["noise_scale"][0] == pytest.approx(_noise_by_definition(reference, x, y, nn.functional.cross_entropy),
                                                    rel=1e-6)  # lr 1e-9: the same parameters
    assert 0 < steps["zero_share/1"][0] < 1 and steps["grad_out/2"][0] > 0
    plain, watched = make(), make()
    for m, instruments in ((plain, "none"), (watched, [Periodic(every=2, budget=math.inf)])):
        gdlab.fit(m, data, optimizer="momentum", lr=0.05, batch_size=1, steps=9, progress=False,
                  instruments=instruments, doctor=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), watched.state_dict().values()))


def test_instruments_given_in_any_order_run_cheapest_first() -> None:
    order = attach([Expensive(), Cheap(), Periodic()])
    assert [type(i).__name__ for i in order] == ["Cheap", "Periodic", "Expensive"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["linear", "positions", "conv"])
def test_per_sample_sums_keep_their_precision_in_low_precision_models(kind: str, dtype: torch.dtype) -> None:
    """The per-sample sums of a float32 or bfloat16 layer equal float64 per-sample autograd on the same values
    to float32's precision (bfloat16 is raised to float32 before any sum)."""
    from gdlab.instruments.persample import per_sample_sums

    torch.manual_seed(0)
    if kind == "conv":
        layer, x = nn.Conv2d(3, 4, 3, padding=1, stride=2), torch.randn(16, 3, 6, 6)
    else:
        layer, x = nn.Linear(5, 4), torch.randn(16, 5) if kind == "linear" else torch.randn(16, 3, 5)
    layer, x = layer.to(dtype), x.to(dtype)
    g = torch.randn(layer(x).shape).to(dtype)
    reference = copy.deepcopy(layer).double()
    per = []
    for i in range(len(x)):  # float64 autograd, sample by sample, on the same (rounded) values
        out = reference(x[i : i + 1].double())
        grads = torch.autograd.grad(out, list(reference.parameters()), g[i : i + 1].double())
        per.append(torch.cat([v.flatten() for v in grads]))
    G = torch.stack(per)
    each, whole = per_sample_sums(layer, x, g)
    assert whole is not None
    assert sum(float(t) for t in each) == pytest.approx(float(G.square().sum()), rel=1e-5)
    assert sum(float(t) for t in whole) == pytest.approx(float(G.sum(0).square().sum()), rel=1e-5)


def test_cheap_flags_each_non_finite_step() -> None:
    """A step with a non-finite loss, gradient norm or (at a movement measurement) parameter is flagged; the
    others are not, and the moving average skips the non-finite loss."""
    from types import SimpleNamespace

    from gdlab.loop import Hooks, StepLog
    from gdlab.records import History

    model = nn.Sequential(nn.Linear(2, 1))
    state = SimpleNamespace(model=model, history=History(), step=0, log=None)
    log = state.log = StepLog(state, list(model.parameters()))  # hands over the norms per row it read
    cheap = Cheap(every=1)
    log.keep_param_norms = Hooks([cheap]).plan.param_norms  # as the loops set it from the hooks' plan
    cheap.on_fit_start(state)
    steps = [(1.0, [1.0, 2.0]), (2.0, [math.inf, 1.0]), (math.nan, [1.0, 1.0]), (3.0, [1.0, math.nan]),
             (4.0, [1.0, 1.0])]
    for i, (loss, norms) in enumerate(steps):
        if i == 4:
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan  # the parameters themselves go bad before the last step's end
        state.history.steps.append({"step": i + 1, "loss": loss})
        state.step, log.param_norms[i] = i, norms  # as the log's read keeps them
        cheap.on_step_end(state)
    t = state.history.steps
    assert t["non_finite"] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert t["grad_norm/0"][0] == pytest.approx(math.hypot(1.0, 2.0)) and t["grad_norm/0"][1] == math.inf
    ema = t["loss_ema"]
    assert ema[0] == pytest.approx(1.0) and ema[2] == pytest.approx(ema[1]) and math.isfinite(ema[4])
    cheap.close()
    log.close()
    assert not t._fillers and log.keep_param_norms and not log.param_norms  # declared, and all handed over


def test_a_bare_layer_is_one_layer_named_by_its_class(data: TensorData) -> None:
    """A model that is itself a layer (a bare nn.Linear) reads as one layer, named by its class, not as one
    'layer' per parameter or an empty name."""
    torch.manual_seed(0)
    result = gdlab.fit(nn.Linear(6, 2).double(), data, optimizer="sgd", lr=0.1, batch_size=64, steps=3,
                       progress=False, instruments=[Cheap(every=1), Periodic(every=1)], doctor=False)
    layered = sorted(k for k in result.history.steps.columns if "/" in k)
    assert layered == ["grad_norm/Linear", "grad_out/Linear", "update_ratio/Linear"]
    assert result.history.steps["grad_norm/Linear"][0] == pytest.approx(result.history.steps["grad_norm"][0])


def test_a_model_without_second_derivatives_trains_on_with_full_instruments() -> None:
    """Sharpness needs a double backward; an op without one is noted in the history, and the run goes on."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).reshape(len(x), 1, 2, 4)  # [batch, heads, positions, dim]
            out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(h, h, h)[0]  # no second derivative
            return self.b(out.reshape(len(x), 8))

    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 4, generator=g)
    torch.manual_seed(0)
    result = gdlab.fit(Net(), (X, (X[:, 0] > 0).long()), lr=0.05, epochs=3, progress=False, instruments="full")
    assert result.status == "finished" and "derivative" in result.history.meta["sharpness_unavailable"]


def test_sharpness_of_an_attention_model_is_measured() -> None:
    """Fused attention has no second derivative; the measurement runs attention by its plain formula."""
    layer = torch.nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.layer, self.head = torch.nn.Embedding(10, 8), layer, torch.nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.layer(self.emb(ids)).mean(1))

    ids = torch.randint(0, 10, (128, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    result = gdlab.fit(Net(), (ids, (ids[:, 0] < 5).long()), lr=0.05, epochs=2, progress=False, instruments="full")
    assert "sharpness_unavailable" not in result.history.meta
    assert any(v == v for v in result.history.steps["sharpness"])


def test_a_compiled_model_is_measured_by_its_layers_names() -> None:
    """fit on a torch.compile'd model (the eager backend): the columns are named by the compiled module's layers
    (``0``, not ``_orig_mod.0``), and hold what the uncompiled run's hold."""
    def run(compiled: bool) -> Any:
        torch.manual_seed(0)
        X = torch.randn(256, 8)
        y = (X[:, 0] > 0).long()
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        model = torch.compile(net, backend="eager") if compiled else net
        return gdlab.fit(model, (X, y), epochs=4, batch_size=32, progress=False, instruments="default",
                         doctor=False).history.steps

    torch._dynamo.reset()
    compiled, plain = run(True), run(False)
    assert {k for k in compiled.columns if "/" in k} == {k for k in plain.columns if "/" in k}
    assert {"grad_norm/0", "grad_norm/2", "update_ratio/0", "dead_share/1", "grad_out/2"} <= set(compiled.columns)
    for key in ("loss", "grad_norm/0", "update_ratio/2", "dead_share/1"):
        assert [round(v, 5) for v in compiled[key] if v == v] == [round(v, 5) for v in plain[key] if v == v], key


def test_noise_scale_and_snr_follow_their_definitions() -> None:
    """B_simple = tr(Sigma) / |G|^2 and SNR = |G|^2 / (tr(Sigma) / batch), from the sums over per-sample gradients,
    equal the same numbers from the per-sample gradients' unbiased covariance."""
    from gdlab.instruments.persample import noise_scale_and_snr

    g = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3
    mean = g.mean(0)
    trace = float(torch.cov(g.T).trace())  # unbiased, over the 12 samples
    row = noise_scale_and_snr(float(g.square().sum()), float(mean.square().sum()), len(g), batch=32)
    assert row["noise_scale"] == pytest.approx(trace / float(mean.square().sum()), rel=1e-12)
    assert row["grad_snr"] == pytest.approx(float(mean.square().sum()) / (trace / 32), rel=1e-12)
    same = noise_scale_and_snr(float(g[:1].square().sum()) * 3, float(g[0].square().sum()), 3, batch=32)
    assert same == {"noise_scale": 0.0, "grad_snr": math.inf, "noise_gradients": 3.0}  # equal gradients: no noise
    assert noise_scale_and_snr(2.0, 0.0, 2, batch=8)["noise_scale"] == math.inf  # no mean gradient


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Tanh(), nn.Sigmoid()])
def test_pooled_activation_sums_read_as_the_counts_of_one_process(activation: nn.Module) -> None:
    """The form the ranks add up (activation_sums) gives, in one process, the shares activation_counts gives."""
    from gdlab.instruments.activations import activation_counts, activation_sums

    x = torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(2)) * 4
    x[:, 0, 0] = -1.0  # a ReLU unit no sample moves: dead
    out = activation(x)
    counts = {k: float(t) * factor for k, (t, factor) in activation_counts("1", activation, out).items()}
    pooled = {}
    for key, (kind, part, count) in activation_sums("1", activation, out).items():
        pooled[key] = float((part == 0).sum()) / part.numel() if kind == "dead" else float(part) / count
    assert pooled.keys() == counts.keys() and pooled == pytest.approx(counts)
    if isinstance(activation, nn.ReLU):
        assert counts["dead_share/1"] == pytest.approx(1 / 12)
    else:
        assert 0 < counts["saturated/1"] < 1


def test_the_instruments_package_keeps_its_parts_small() -> None:
    """gdlab.instruments is a package of parts by what they measure, none over 400 lines, and its names stay
    importable from gdlab.instruments."""
    from pathlib import Path

    import gdlab.instruments as instruments

    parts = list(Path(instruments.__file__).parent.glob("*.py"))
    assert {p.stem for p in parts} >= {"movement", "periodic", "persample", "pooling", "curvature", "budget"}
    assert all(len(p.read_text().splitlines()) <= 400 for p in parts), [p.name for p in parts]
    assert [getattr(instruments, name).__name__ for name in ("Cheap", "Periodic", "Expensive", "attach")] == \
        ["Cheap", "Periodic", "Expensive", "attach"]


# -- budgets: their decisions on fake costs (a clock the test moves), never on the machine's clock ----------------

def test_a_budget_grants_the_free_ones_then_only_what_its_share_pays_for() -> None:
    from gdlab.instruments.budget import Budget

    now = [0.0]
    budget = Budget(0.1, free=2, clock=lambda: now[0])
    granted = []
    for step in range(1, 201):  # a step of 1 s; a measurement of 5 s, where granted
        now[0] += 1.0
        if budget.allows(step):
            granted.append(step)
            with budget.measure():
                now[0] += 5.0
    assert granted[:2] == [1, 2]  # the free ones, dear as they are
    assert 0.08 <= budget.spent / (now[0] - budget.spent) <= 0.1 + 5 / (now[0] - budget.spent)
    assert budget.granted == len(granted) and len(granted) < 200 // 4
    assert Budget(math.inf, clock=lambda: now[0]).allows(50)  # no limit


def _periodic_run(cost: float, steps: int, every: int = 25, share: float = 0.02) -> tuple[list[int], Periodic]:
    """The steps a Periodic measures over a run of ``steps`` steps of 1 s each, a measurement costing ``cost``
    seconds more (its clock the test's; no model runs)."""
    from types import SimpleNamespace

    periodic = Periodic(every=every, budget=share)
    now = [0.0]
    periodic.clock = lambda: now[0]  # type: ignore[method-assign]
    state = SimpleNamespace(model=nn.Linear(2, 1), step=0, batch=None)
    periodic.on_fit_start(state)  # type: ignore[arg-type]
    measured: list[int] = []

    def measure(state: Any) -> None:
        measured.append(state.step)
        now[0] += cost

    periodic._measure = measure  # type: ignore[method-assign]
    for step in range(1, steps + 1):
        state.step = step - 1
        periodic.on_step_start(state)  # type: ignore[arg-type]
        now[0] += 1.0
        state.step = step
        periodic.on_step_end(state)  # type: ignore[arg-type]
    return measured, periodic


def test_periodic_measurements_keep_to_their_budget_whatever_one_costs() -> None:
    """The interval follows a measurement's cost: a cheap one every ``every`` steps; a dearer one spaces them by
    the power of two that brings it to the budget; the first two are always taken (the readings the detectors
    compare); after them what the measurements cost stays within twice the budget (the power of two rounds up)."""
    cheap, _ = _periodic_run(cost=0.2, steps=200)
    assert cheap == [1, 25, 50, 75, 100, 125, 150, 175, 200]
    moderate, periodic = _periodic_run(cost=2.0, steps=400)  # 2 s against 2% of 25 s: 4x the budget
    assert periodic.interval == 100 and moderate == [1, 25, 100, 200, 300, 400]
    dear, periodic = _periodic_run(cost=100.0, steps=400)  # an extra pass against a one-sample step
    assert dear == [1, 25] and periodic.interval == 25 * 256
    for cost in (0.2, 2.0, 7.0, 30.0, 100.0):
        measured, periodic = _periodic_run(cost=cost, steps=3000)
        after_two = (len(measured) - 2) * cost
        assert after_two <= 2 * 0.02 * 3000 + 1e-9, (cost, measured)


def test_checkpoints_are_paced_by_their_share_of_the_run_and_the_last_always_written(tmp_path: Any,
                                                                                     monkeypatch: Any) -> None:
    """Asked at every step (a one-step epoch), a Recorder with a checkpoint share writes the first, then one
    each time the run's time since pays for it, and always the last (the budget's end, a stop or Ctrl-C);
    without a share it writes each one asked. Fake costs: a clock the test moves, a save that costs 1 s."""
    import gdlab.checkpoint
    from gdlab.callbacks import Recorder
    from gdlab.instruments.budget import Budget
    from gdlab.loop import LoopState
    from gdlab.problem import Problem
    from gdlab.store import Store

    now = [0.0]
    saved: list[int] = []

    def save(path: Any, payload: dict[str, Any]) -> None:
        saved.append(payload["position"]["step"])
        now[0] += 1.0

    monkeypatch.setattr(gdlab.checkpoint, "save", save)
    X = torch.randn(16, 3)
    problem = Problem.make(nn.Linear(3, 1), (X, X.sum(1, keepdim=True)), batch_size="full", device="cpu")
    store = Store(tmp_path)
    for share, stop in ((0.1, None), (0.1, 57), (None, None)):
        state = LoopState.start(problem, torch.optim.SGD(problem.model.parameters(), lr=0.1), total_steps=100)
        recorder = Recorder(store, store.create_run({}, problem.plan.to_dict()), checkpoint_share=share)
        if share is not None:
            recorder.pace = Budget(share, free=1, clock=lambda: now[0])
        saved.clear()
        for step in range(1, 101):
            now[0] += 0.5  # a step of 0.5 s
            state.step = step
            if step == stop:
                state.stop("patience")
            recorder.checkpoint(state)
            if state.stop_reason:
                break
        if share is None:
            assert saved == list(range(1, 101))
            continue
        assert saved[0] == 1 and saved[-1] == (stop or 100)  # the first, and the last: the end or the stop
        spent, paced = len(saved), saved[1:-1]
        assert all(b - a >= 20 for a, b in zip(paced, paced[1:]))  # 1 s of saving pays for 10 s (20 steps)
        assert recorder.saved == spent and recorder.skipped == saved[-1] - spent
        assert (spent - 2) * 1.0 <= 0.1 * 0.5 * saved[-1]  # within the share, but for the first and the last
