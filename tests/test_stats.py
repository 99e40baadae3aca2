"""records/stats.py: the one moving average against its closed form, and the input scales against torch."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gdlab.records import EMA, ILL_CONDITIONED, ema, finite, input_scales, scale_ratio
from gdlab.records.stats import SCALE_SAMPLES


def _closed_form(values: list[float], beta: float) -> list[float]:
    """sum_k (1 - beta) beta^(n - k) x_k / (1 - beta^n) over the n finite values so far (NaN before any)."""
    out = []
    for i in range(len(values)):
        seen = finite(values[: i + 1])
        n = len(seen)
        total = sum((1 - beta) * beta ** (n - 1 - k) * x for k, x in enumerate(seen))
        out.append(total / (1 - beta**n) if n else math.nan)
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_ema_equals_its_closed_form(beta: float) -> None:
    rnd = random.Random(0)
    values = [rnd.gauss(1.0, 2.0) for _ in range(200)]
    assert ema(values, beta) == pytest.approx(_closed_form(values, beta), rel=1e-9, abs=1e-12)


def test_ema_is_bias_corrected_from_the_first_value() -> None:
    assert EMA(0.99).update(7.0) == 7.0  # no pull towards the zero it starts from
    assert ema([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    assert ema([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])


def test_ema_skips_non_finite_values() -> None:
    values = [math.nan, 2.0, math.inf, 4.0, -math.inf, math.nan]
    smoothed = ema(values, 0.5)
    assert math.isnan(smoothed[0])  # nothing seen yet
    expected = (0.25 * 2 + 0.5 * 4) / 0.75
    assert smoothed[1:] == pytest.approx([2.0, 2.0, expected, expected, expected])  # held, not moved
    assert smoothed[1:] == pytest.approx(_closed_form(values, 0.5)[1:])
    average = EMA(0.5)
    assert math.isnan(average.update(math.nan)) and average.weight == 0.0


def test_the_running_average_and_the_column_agree() -> None:
    """One math path: EMA fed value by value gives ema of the column, exactly; the lr range test's old closed-form
    correction 1 - beta^(i+1) agrees to rounding."""
    rnd = random.Random(1)
    values = [rnd.random() for _ in range(100)]
    average = EMA(0.95)
    running = [average.update(v) for v in values]
    assert running == ema(values, 0.95) and average.value == running[-1]
    raw = 0.0
    for i, (v, s) in enumerate(zip(values, running)):
        raw = 0.95 * raw + 0.05 * v
        assert s == pytest.approx(raw / (1 - 0.95 ** (i + 1)), rel=1e-12)


def test_finite() -> None:
    assert finite([1.0, math.nan, math.inf, -math.inf, -2.0]) == [1.0, -2.0]
    assert finite([]) == []


@pytest.mark.parametrize("n", [1, 2, 3, 20, 1438, 12_000])
def test_input_scales_equal_torch_quantile(n: int) -> None:
    """The partial sort gives torch.quantile's 95th percentile (linear interpolation) of each |feature|."""
    torch.manual_seed(n)
    X = torch.randn(n, 4) * torch.tensor([1.0, 100.0, 0.01, 0.0])
    reference = X[:SCALE_SAMPLES].double().abs().quantile(0.95, dim=0)  # the first samples only
    assert torch.allclose(torch.tensor(input_scales(X), dtype=torch.float64), reference, rtol=1e-12, atol=0)
    assert input_scales(torch.randn(3, 2, 2)) is None
    assert input_scales(torch.zeros(0, 3)) is None and input_scales(torch.zeros(2, 5000)) is None


def test_scale_ratio_leaves_zero_scales_out() -> None:
    assert scale_ratio([0.5, 0.0, 50.0]) == 100.0
    assert scale_ratio([3.0]) == scale_ratio([]) == scale_ratio(None) == 1.0
    assert scale_ratio([1.0, 1000.0]) > ILL_CONDITIONED > scale_ratio([1.0, 10.0])


def test_the_doctor_re_exports_the_data_numerics() -> None:
    import gdlab.doctor
    import gdlab.records

    for name in ("input_scales", "scale_ratio", "ILL_CONDITIONED"):
        assert getattr(gdlab.doctor, name) is getattr(gdlab.records, name)


@pytest.mark.parametrize("length", [5, 500])  # a short column (a loop in Python) and a long one (numpy)
def test_finite_keeps_the_finite_values_in_order(length: int) -> None:
    rng = random.Random(length)
    specials = [math.nan, math.inf, -math.inf]
    for _ in range(50):
        values = [rng.choice(specials) if rng.random() < 0.2 else rng.uniform(-5, 5) for _ in range(length)]
        assert finite(values) == [v for v in values if math.isfinite(v)]
        assert finite(iter(values)) == [v for v in values if math.isfinite(v)]
    values = [1.0] * length
    kept = finite(values)
    assert kept == values and kept is not values  # a new list, as the filtered one is
    assert finite([1e308, 1e308]) == [1e308, 1e308]  # finite values whose sum overflows
