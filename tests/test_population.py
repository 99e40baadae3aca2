"""Populations: each member is the run gdlab.fit would make alone (for a model with dropout, a run as good as it);
divergence is contained; fallbacks work, and cut the field as the vectorised engine does."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gdlab
from gdlab import population
from gdlab.data import TensorData
from gdlab.errors import InvalidParameter, ModelError
from gdlab.population import forward


@pytest.fixture
def digits_like() -> tuple[TensorData, TensorData]:
    """300 + 100 samples, 8 features, 4 classes (a learnable rule), float32."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(400, 8, generator=g)
    y = (X[:, :4] @ torch.tensor([1.0, -1.0, 0.5, 2.0])).gt(0).long() + 2 * (X[:, 4] > 0).long()
    return TensorData(X[:300], y[:300], num_classes=4), TensorData(X[300:], y[300:], num_classes=4)


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _as(data: TensorData, dtype: torch.dtype) -> TensorData:
    return TensorData(data.X.to(dtype), data.y, num_classes=data.num_classes)


def _alone(seed: int, train: Any, dtype: torch.dtype, data_seed: int | None = None, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    model = _mlp(dtype)
    gdlab.fit(model, train, seed=seed if data_seed is None else data_seed, progress=False, **kwargs)
    return model


def _max_relative(a: nn.Module, b: nn.Module) -> float:
    return max(float(((x - y).abs() / (y.abs() + 1e-12)).max()) for x, y in zip(a.state_dict().values(),
                                                                                 b.state_dict().values()))


@pytest.mark.parametrize(("optimizer", "hyper", "extra"), [
    ("momentum", {"lr": [0.05, 0.2, 0.1]}, [{}, {}, {}]),
    ("adam", {"lr": [1e-3, 1e-2, 3e-2], "beta2": [0.99, 0.999, 0.999], "weight_decay": 0.01},
     [{"beta2": 0.99}, {"beta2": 0.999}, {"beta2": 0.999}]),
    ("sgd", {"lr": 0.1, "momentum": [0.0, 0.5, 0.9], "nesterov": False},
     [{"momentum": 0.0}, {"momentum": 0.5}, {"momentum": 0.9}]),
])
def test_each_member_is_the_same_run_as_fit_alone_float64(digits_like: Any, optimizer: str, hyper: dict[str, Any],
                                                         extra: list[dict[str, Any]]) -> None:
    train, val = (_as(d, torch.float64) for d in digits_like)
    seeds = [0, 1, 7]
    pop = population.train(lambda: _mlp(torch.float64), train, seeds=seeds, optimizer=optimizer, hyper=hyper,
                           steps=100, batch_size=16, val=val, progress=False)
    assert pop.vectorized and pop.steps == 100
    for i, s in enumerate(seeds):
        lr = hyper["lr"][i] if isinstance(hyper["lr"], list) else hyper["lr"]
        options = {**extra[i], **({"weight_decay": hyper["weight_decay"]} if "weight_decay" in hyper else {})}
        alone = _alone(s, train, torch.float64, optimizer=optimizer, lr=lr, steps=100, batch_size=16, **options)
        assert _max_relative(pop.member(i), alone) < 1e-8
        result = gdlab.evaluate(alone, val)
        assert pop.val_loss is not None and pop.val_loss[i] == pytest.approx(result["loss"], rel=1e-9)


def test_members_match_fit_in_float32(digits_like: Any) -> None:
    train, _ = digits_like
    pop = population.train(_mlp, train, seeds=[3, 4], optimizer="adam", hyper={"lr": [0.01, 0.003]}, steps=100,
                           batch_size=32, progress=False)
    for i, (s, lr) in enumerate(zip([3, 4], [0.01, 0.003])):
        alone = _alone(s, train, torch.float32, optimizer="adam", lr=lr, steps=100, batch_size=32)
        for a, b in zip(pop.member(i).parameters(), alone.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_shared_order_uses_the_first_seeds_batches(digits_like: Any) -> None:
    train, _ = _as(digits_like[0], torch.float64), None
    pop = population.train(lambda: _mlp(torch.float64), train, seeds=[2, 9], hyper={"lr": 0.1}, steps=40,
                           batch_size=16, shared_order=True, progress=False)
    alone = _alone(9, train, torch.float64, data_seed=2, optimizer="momentum", lr=0.1, steps=40, batch_size=16)
    assert _max_relative(pop.member(1), alone) < 1e-8


def test_a_diverging_member_is_frozen_and_does_not_poison_the_others(digits_like: Any) -> None:
    train, val = digits_like
    pop = population.train(_mlp, train, seeds=[0, 0, 0], optimizer="sgd", hyper={"lr": [0.1, 1e6, 1e12]},
                           steps=30, val=val, progress=False)
    alone = population.train(_mlp, train, seeds=[0], optimizer="sgd", hyper={"lr": 0.1}, steps=30, val=val,
                             progress=False)
    assert pop.diverged == [False, True, True] and pop.diverged_at[1] is not None
    assert all(bool(torch.isfinite(v).all()) for v in pop.params.values())  # frozen before the damage
    assert torch.equal(pop.member(0).state_dict()["0.weight"], alone.member(0).state_dict()["0.weight"])
    assert math.isnan(pop.train_loss[1]) and pop.val_loss is not None and math.isnan(pop.val_loss[2])
    assert pop.score()[1] == math.inf and torch.isnan(pop.losses[-1, 1])


class _Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) if x.sum() > 0 else -self.layer(x)


def test_models_vmap_cannot_serve_train_one_by_one(digits_like: Any, capsys: pytest.CaptureFixture[str]) -> None:
    train, val = digits_like
    pop = population.train(_Branchy, train, seeds=[0, 1], hyper={"lr": [0.05, 0.1]}, steps=20, val=val,
                           progress=False)
    assert not pop.vectorized and "data-dependent control flow" in (pop.notice or "")
    assert "one by one" in capsys.readouterr().err
    torch.manual_seed(1)
    model = _Branchy()
    gdlab.fit(model, train, seed=1, optimizer="momentum", lr=0.1, steps=20, progress=False)
    assert torch.equal(pop.member(1).layer.weight, model.layer.weight)
    assert pop.losses.shape == (20, 2) and pop.val_loss is not None
    with pytest.raises(ModelError, match="vmap cannot train this model"):
        population.train(_Branchy, train, seeds=[0], hyper={"lr": 0.1}, steps=2, vectorize=True, progress=False)


def test_ctrl_c_stops_the_whole_fallback(digits_like: Any) -> None:
    """The loop finishes its step on Ctrl-C; one by one, the population then stops rather than go on to the next
    member."""
    import os
    import signal

    calls: list[int] = []

    class Interrupting(_Branchy):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and self.training:
                calls.append(1)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGINT)
            return super().forward(x)

    with pytest.raises(KeyboardInterrupt):
        population.train(Interrupting, digits_like[0], seeds=[0, 1], hyper={"lr": 0.1}, steps=20, vectorize=False,
                         progress=False)
    assert len(calls) == 3


def test_batchnorm_in_training_mode_is_served_and_matches_fit(digits_like: Any) -> None:
    train, _ = (_as(d, torch.float64) for d in digits_like)

    def bn() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).double()

    pop = population.train(bn, train, seeds=[0, 1], hyper={"lr": 0.05}, steps=30, batch_size=16, progress=False)
    torch.manual_seed(1)
    alone = bn()
    gdlab.fit(alone, train, seed=1, optimizer="momentum", lr=0.05, steps=30, batch_size=16, progress=False)
    assert pop.vectorized
    for a, b in zip(pop.member(1).state_dict().values(), alone.state_dict().values()):  # running stats too
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-8, atol=1e-10)


def test_dropout_draws_different_randomness_per_member(digits_like: Any) -> None:
    train, _ = digits_like

    def dropped() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))

    pop = population.train(dropped, train, seeds=[0, 0], hyper={"lr": 0.1}, steps=10, shared_order=True,
                           progress=False)
    assert not torch.equal(pop.losses[:, 0], pop.losses[:, 1])  # same start, same batches: only dropout differs


def _dropped(p: float) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 4))


def _within_noise(a: list[float], b: list[float]) -> bool:
    """The means of ``a`` and ``b`` differ by less than 3 standard errors of their difference."""
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return abs(statistics.mean(a) - statistics.mean(b)) < 3 * se


def test_members_with_dropout_are_as_good_as_lone_runs(digits_like: Any) -> None:
    """vmap draws every member's dropout masks at once, from another stream than fit(seed=s) draws its own: a member
    is not the lone run bit for bit, but over 8 seeds the final losses agree in the mean within 3 standard errors,
    and the comparison is sharp enough to tell dropout 0.3 from 0.5 (about 5 standard errors apart)."""
    train, val = digits_like
    seeds = list(range(8))
    kwargs: dict[str, Any] = {"optimizer": "momentum", "steps": 100, "batch_size": 32}
    lone_train, lone_val = [], []
    for s in seeds:
        torch.manual_seed(s)
        result = gdlab.fit(_dropped(0.5)(), train, seed=s, lr=0.05, val=val, progress=False, instruments="none",
                           doctor=False, **kwargs)
        lone_train.append(result.final["train_loss"])
        lone_val.append(result.final["val_loss"])
    pop = population.train(_dropped(0.5), train, seeds=seeds, hyper={"lr": 0.05}, val=val, progress=False, **kwargs)
    assert pop.vectorized and pop.val_loss is not None
    assert _within_noise(pop.train_loss, lone_train) and _within_noise(pop.val_loss, lone_val)
    other = population.train(_dropped(0.3), train, seeds=seeds, hyper={"lr": 0.05}, progress=False, **kwargs)
    assert not _within_noise(other.train_loss, lone_train)


def test_one_by_one_members_with_dropout_are_the_lone_runs(digits_like: Any) -> None:
    train, val = digits_like
    pop = population.train(_dropped(0.5), train, seeds=[3, 4], hyper={"lr": [0.05, 0.1]}, steps=25, val=val,
                           vectorize=False, progress=False)
    assert not pop.vectorized and pop.notice is None
    for i, (s, lr) in enumerate(zip([3, 4], [0.05, 0.1])):
        torch.manual_seed(s)
        alone = _dropped(0.5)()
        result = gdlab.fit(alone, train, seed=s, lr=lr, steps=25, val=val, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(pop.member(i).state_dict().values(), alone.state_dict().values()))
        assert pop.train_loss[i] == result.final["train_loss"] and pop.val_loss is not None
        assert pop.val_loss[i] == result.final["val_loss"]


def test_member_hyperparams_checks_every_member() -> None:
    with pytest.raises(InvalidParameter, match="invalid lr -0.1"):
        population.member_hyperparams("sgd", 2, {"lr": [0.1, -0.1]})
    with pytest.raises(InvalidParameter, match="one per member"):
        population.member_hyperparams("sgd", 3, {"lr": [0.1, 0.2]})
    with pytest.raises(InvalidParameter, match="invalid beta1 1.5"):
        population.member_hyperparams("adam", 2, {"lr": 0.1, "beta1": [0.9, 1.5]})
    with pytest.raises(InvalidParameter, match="one value shared"):
        population.member_hyperparams("sgd", 2, {"lr": 0.1, "momentum": 0.9, "nesterov": [True, False]})


def test_member_index_is_checked(digits_like: Any) -> None:
    pop = population.train(_mlp, digits_like[0], seeds=[0], hyper={"lr": 0.1}, steps=2, progress=False)
    with pytest.raises(InvalidParameter, match="invalid member 3"):
        pop.member(3)


@pytest.mark.parametrize("shared", [False, True])
def test_batched_mlp_path_equals_the_vmap_path(digits_like: Any, monkeypatch: pytest.MonkeyPatch,
                                               shared: bool) -> None:
    train, val = (_as(d, torch.float64) for d in digits_like)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16, bias=False), nn.Tanh(),
                             nn.Linear(16, 4)).double()

    assert forward.mlp_layers(mlp()) is not None
    kwargs: dict[str, Any] = {"seeds": [0, 1], "optimizer": "adam", "hyper": {"lr": [0.01, 0.003]}, "steps": 40,
                              "val": val, "shared_order": shared, "progress": False}
    fast = population.train(mlp, train, **kwargs)
    monkeypatch.setattr(forward, "mlp_layers", lambda template: None)
    general = population.train(mlp, train, **kwargs)
    for key in fast.params:
        torch.testing.assert_close(fast.params[key], general.params[key], rtol=1e-10, atol=1e-12)


def test_regression_outputs_are_matched_to_targets() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    pop = population.train(lambda: nn.Linear(3, 1).double(), (X, y), seeds=[0], optimizer="sgd",
                           hyper={"lr": 0.1}, steps=200, batch_size=16, progress=False)
    torch.testing.assert_close(pop.member(0).weight, torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)


def test_successive_halving_keeps_the_best_and_leaves_survivors_untouched(digits_like: Any) -> None:
    train, val = digits_like
    lrs = [1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0]
    kwargs: dict[str, Any] = {"seeds": [0] * 6, "hyper": {"lr": lrs}, "steps": 60, "val": val, "progress": False}
    cut = population.train(_mlp, train, halving=[(10, 3), (30, 1)], **kwargs)
    whole = population.train(_mlp, train, **kwargs)
    survivors = [i for i, p in enumerate(cut.pruned_at) if p is None]
    assert len(survivors) == 1 and sorted(p for p in cut.pruned_at if p is not None) == [10, 10, 10, 30, 30]
    assert cut.member_steps == 3 * 10 + 2 * 30 + 60
    (i,) = survivors
    assert torch.equal(cut.member(i).state_dict()["2.weight"], whole.member(i).state_dict()["2.weight"])
    assert cut.val_loss is not None and whole.val_loss is not None
    assert cut.val_loss[i] == pytest.approx(whole.val_loss[i])
    early = population.train(_mlp, train, **{**kwargs, "steps": 10})  # where everyone stood at the first cut
    assert early.val_loss is not None
    ranked = sorted(range(6), key=lambda k: early.val_loss[k] if math.isfinite(early.val_loss[k]) else math.inf)
    assert sorted(k for k, p in enumerate(cut.pruned_at) if p == 10) == sorted(ranked[3:])
    with pytest.raises(InvalidParameter, match="invalid halving"):
        population.train(_mlp, train, seeds=[0], hyper={"lr": 0.1}, steps=5, halving=[(0, 1)], progress=False)


@pytest.mark.parametrize("with_val", [False, True])
def test_one_by_one_halving_cuts_as_the_vectorised_engine(digits_like: Any, with_val: bool) -> None:
    train, val = (_as(d, torch.float64) for d in digits_like)
    kwargs: dict[str, Any] = {"seeds": [0] * 6, "hyper": {"lr": [1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0]}, "steps": 60,
                              "val": val if with_val else None, "halving": [(10, 3), (35, 1)], "progress": False}
    mlp = lambda: _mlp(torch.float64)
    together = population.train(mlp, train, **kwargs)
    apart = population.train(mlp, train, vectorize=False, **kwargs)
    assert together.vectorized and not apart.vectorized
    assert apart.pruned_at == together.pruned_at and sum(p is None for p in apart.pruned_at) == 1
    assert sorted(p for p in apart.pruned_at if p is not None) == [10, 10, 10, 35, 35]
    assert apart.member_steps == together.member_steps == 3 * 10 + 2 * 35 + 60
    assert apart.train_loss == pytest.approx(together.train_loss, rel=1e-9)  # the cut members' too: at the cut
    if with_val:
        assert apart.val_loss is not None and together.val_loss is not None
        assert apart.val_loss == pytest.approx(together.val_loss, rel=1e-9)
        assert apart.val_accuracy == together.val_accuracy
    torch.testing.assert_close(apart.losses, together.losses, rtol=1e-9, atol=1e-12, equal_nan=True)
    for key in apart.params:
        torch.testing.assert_close(apart.params[key], together.params[key], rtol=1e-8, atol=1e-10)


def test_one_by_one_halving_resumes_members_exactly(digits_like: Any) -> None:
    """A member kept at a cut resumes where it stood, its random stream too: the survivor is the uncut run and the
    lone fit run bit for bit (dropout included); a member cut mid-epoch is the lone run to the cut."""
    train, val = digits_like
    lrs = [1e-3, 0.05, 0.1, 1e12]
    kwargs: dict[str, Any] = {"seeds": [0, 1, 2, 3], "hyper": {"lr": lrs}, "optimizer": "sgd", "steps": 45,
                              "val": val, "vectorize": False, "progress": False}
    cut = population.train(_dropped(0.5), train, halving=[(15, 2), (25, 1)], **kwargs)
    whole = population.train(_dropped(0.5), train, **kwargs)
    assert cut.diverged[3] and cut.pruned_at[3] == 15  # a diverged member ranks last
    (i,) = [k for k, p in enumerate(cut.pruned_at) if p is None]
    torch.manual_seed(i)
    alone = _dropped(0.5)()
    result = gdlab.fit(alone, train, seed=i, optimizer="sgd", lr=lrs[i], steps=45, val=val, progress=False)
    for a, b, c in zip(cut.member(i).state_dict().values(), whole.member(i).state_dict().values(),
                       alone.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert cut.train_loss[i] == whole.train_loss[i] == result.final["train_loss"]
    assert cut.epoch_train_loss[:, i].tolist() == result.history.epochs["train_loss"]  # no record of the cuts
    (j,) = [k for k, p in enumerate(cut.pruned_at) if p == 25]
    torch.manual_seed(j)
    early = _dropped(0.5)()
    gdlab.fit(early, train, seed=j, optimizer="sgd", lr=lrs[j], steps=25, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(cut.member(j).state_dict().values(), early.state_dict().values()))
    assert cut.train_loss[j] == pytest.approx(float(cut.losses[15:25, j].mean()))  # the last epoch's worth
    assert bool(torch.isnan(cut.losses[25:, j]).all())


def test_halving_cuts_optimizer_states_of_every_shape() -> None:
    from typing import NamedTuple

    from gdlab.population import vectorized

    class State(NamedTuple):
        count: torch.Tensor
        mu: list[torch.Tensor]

    state = {"inner": (State(torch.zeros(()), [torch.arange(4.0)]), [torch.ones(4, 2)]), "none": None}
    cut = vectorized._take(state, torch.tensor([1, 3]), 4)
    assert type(cut["inner"][0]) is State and cut["inner"][0].count.shape == ()  # not [m, ...]: kept whole
    assert cut["inner"][0].mu[0].tolist() == [1.0, 3.0] and cut["inner"][1][0].shape == (2, 2)
    assert cut["none"] is None
