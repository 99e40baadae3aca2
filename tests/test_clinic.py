"""The clinic (tests/clinic/): realistic runs, healthy and broken, each with the diagnosis the doctor must give.

Each case trains for real on one thread; the fast ones (about a second each) always run, the rest are ``slow``.
Cases the doctor does not get right yet are ``xfail`` with what it says today (``clinic.TODAY``); issue 26 turns
them into passes. ``benchmarks/clinic.py`` prints the score.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import pytest

import gdlab.doctor
from clinic import CASES, Case, judge, single_thread
from gdlab.doctor import Finding

# the codes issue 26 and 27 add, which the clinic already expects
NEW_CODES = {"labels_do_not_fit", "unstable", "grads_not_zeroed"}


def _param(case: Case) -> Any:
    marks: list[Any] = []
    if not case.fast:
        marks.append(pytest.mark.slow)
    if case.today is not None:
        marks.append(pytest.mark.xfail(strict=False, reason=case.today))
    if not case.available():
        marks.append(pytest.mark.skip(reason=f"needs {case.needs}"))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_the_doctor_names_the_root_cause(case: Case) -> None:
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = case.run()
    verdict = judge(case, result)
    assert verdict.ok, f"{case.name}: {verdict.why} (said {verdict.said})"


def test_the_clinic_covers_the_kinds_the_ways_in_and_both_health_states() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} >= {"mlp", "cnn", "lstm", "lm", "bert", "lightning", "regression"}
    assert {c.way for c in CASES} == {"fit", "watch", "lightning", "hf"}
    for way in ("fit", "watch", "lightning", "hf"):
        assert {c.healthy for c in CASES if c.way == way} == {True, False}, way
    known = set(gdlab.doctor.CODES) | NEW_CODES
    for c in CASES:
        assert set(c.causes) | set(c.allowed) <= known, c.name
    assert any(c.fast and c.healthy for c in CASES) and any(c.fast and not c.healthy for c in CASES)


def _result(*findings: tuple[str, str]) -> Any:
    return SimpleNamespace(findings=[Finding(code, severity, 1, {}, "") for code, severity in findings])


def test_judge_reads_the_first_warning_and_refuses_what_the_cause_does_not_explain() -> None:
    case = Case("x", "mlp", "fit", lambda: None, ("lr_too_high",), ("dead_relu",))
    assert judge(case, _result(("lr_too_high", "warning"), ("dead_relu", "warning"))).ok
    assert judge(case, _result(("plateau", "info"), ("lr_too_high", "error"))).ok  # info notes do not count
    # the story, not the flat order: dead units listed first still hang under the lr that killed them
    assert judge(case, _result(("dead_relu", "warning"), ("lr_too_high", "warning"))).said == ["lr_too_high"]
    late = judge(case, _result(("overfitting", "error"), ("lr_too_high", "warning")))
    assert not late.ok and late.why == "first said overfitting, not lr_too_high"
    wrong = judge(case, _result(("lr_too_high", "warning"), ("overfitting", "warning")))
    assert not wrong.ok and wrong.why == "wrong warning: overfitting"
    assert judge(case, _result()).why == "nothing said"
    healthy = Case("y", "mlp", "fit", lambda: None)
    assert judge(healthy, _result(("plateau", "info"))).ok
    assert judge(healthy, _result(("overfitting", "warning"))).why == "false alarm: overfitting"
    traced = Case("z", "mlp", "watch", lambda: None, ("non_finite",),
                  detail=lambda f: None if f.evidence.get("source") == "data" else "not the data")
    assert judge(traced, _result(("non_finite", "error"))).why == "not the data"
