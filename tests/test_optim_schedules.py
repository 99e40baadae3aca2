"""Schedules against torch.optim.lr_scheduler wherever it has the same schedule."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gdlab.errors import InvalidParameter, UnknownChoice
from gdlab.optim import schedules


def _torch_lrs(make: Callable[[torch.optim.Optimizer], object], steps: int, lr: float = 0.1,
               momentum: bool = False) -> tuple[list[float], list[float]]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9 if momentum else 0)
    scheduler = make(opt)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        scheduler.step()  # type: ignore[attr-defined]
    return lrs, moms


S = torch.optim.lr_scheduler


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (schedules.step(0.1, 7, 0.5), lambda o: S.StepLR(o, step_size=7, gamma=0.5)),
        (schedules.exponential(0.1, 0.95), lambda o: S.ExponentialLR(o, gamma=0.95)),
        (schedules.cosine(0.1, 30, final=0.001), lambda o: S.CosineAnnealingLR(o, T_max=30, eta_min=0.001)),
        (schedules.linear_warmup(5, schedules.cosine(0.1, 25), start_factor=0.2),
         lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.2, total_iters=5),
                                      S.CosineAnnealingLR(o, T_max=25)], milestones=[5])),
        (schedules.constant(0.1), lambda o: S.ConstantLR(o, factor=1.0)),
    ],
    ids=["step", "exponential", "cosine", "warmup+cosine", "constant"],
)
def test_matches_torch_lr_scheduler(ours: schedules.Schedule, theirs: Callable) -> None:
    expected, _ = _torch_lrs(theirs, 30)
    assert [ours(t) for t in range(30)] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_one_cycle_and_its_inverse_momentum_match_torch() -> None:
    ours = schedules.one_cycle(0.1, 40)
    lrs, moms = _torch_lrs(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=40), 40, momentum=True)
    assert [ours(t) for t in range(40)] == pytest.approx(lrs, rel=1e-9)
    assert [ours.momentum(t) for t in range(40)] == pytest.approx(moms, rel=1e-9)


def test_reduce_on_plateau_matches_torch() -> None:
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    theirs = S.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1)
    ours = schedules.reduce_on_plateau(0.1, factor=0.5, patience=2, cooldown=1)
    for t, metric in enumerate(metrics):
        theirs.step(metric)
        ours.step(metric)
        assert ours(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert ours(0) < 0.1  # it did reduce


@pytest.mark.parametrize(
    ("text", "at"),
    [("cosine", {0: 0.1, 100: 0.0}), ("step:10:0.5", {9: 0.1, 10: 0.05}), ("exponential:0.9", {2: 0.081}),
     ("warmup:10,cosine", {0: 0.01, 9: 0.091, 10: 0.1, 100: 0.0}), ("one_cycle", {0: 0.004}), ("constant", {50: 0.1})],
)
def test_parse(text: str, at: dict[int, float]) -> None:
    schedule = schedules.parse(text, 0.1, 100)
    for t, value in at.items():
        assert schedule(t) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("text", ["cosin", "step:10", "step:x:0.5", "warmup:5", "cosine,step:1:1", "warmup:a,cosine"])
def test_unknown_schedule_lists_the_forms(text: str) -> None:
    with pytest.raises(UnknownChoice, match=r"unknown schedule .*expected one of constant, step:EVERY:GAMMA"):
        schedules.parse(text, 0.1, 100)


def test_bad_schedule_values_are_named() -> None:
    with pytest.raises(InvalidParameter, match="invalid every 0"):
        schedules.parse("step:0:0.5", 0.1, 100)
    with pytest.raises(InvalidParameter, match="invalid lr -1"):
        schedules.cosine(-1, 10)
