"""What a clinic case is, how it is judged, and the small pieces of data the runs share."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

WARNING = ("warning", "error")
# the consequences a learning rate far too large may leave beside it (dead or saturated units, a vanishing ratio
# after them, spikes, an overflow, a loss stuck at chance)
LR_HIGH: tuple[str, ...] = ("dead_relu", "saturated_activations", "vanishing_gradients", "exploding_gradients",
                            "non_finite", "not_learning")
# what a run that barely moves shows beside its cause
STUCK: tuple[str, ...] = ("not_learning", "plateau")


@dataclass(frozen=True)
class Case:
    """One realistic run and the diagnosis it must get.

    name: unique, ``<kind>_<what>``; kind: the model family (``mlp``, ``cnn``, ``lstm``, ``lm``, ``bert``,
    ``lightning``, ``regression``); way: how the doctor is brought in (``fit``, ``watch``, ``lightning``, ``hf``);
    run: trains and returns the doctor's :class:`gdlab.Result`; causes: the root-cause codes, one of which must
    be named first (empty: a healthy run, no warning allowed); allowed: consequences the cause explains, which may
    appear as warnings after it; detail: a further check on the first finding (e.g. ``non_finite`` traced to the
    data), returning what is wrong or None; today: what the doctor says at the time of writing where it does not
    get the case right yet (None: it does); needs: the optional package the run needs; fast: part of the quick
    form (about a second).
    """

    name: str
    kind: str
    way: str
    run: Callable[[], Any]
    causes: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    detail: Callable[[Any], str | None] | None = None
    today: str | None = None
    needs: str | None = None
    fast: bool = False

    @property
    def healthy(self) -> bool:
        return not self.causes

    def available(self) -> bool:
        """Whether the optional package the run needs is installed."""
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


@dataclass
class Verdict:
    """What the doctor said about a case, against what it should have said."""

    case: Case
    said: list[str] = field(default_factory=list)
    ok: bool = False
    why: str = ""

    @property
    def first(self) -> str | None:
        return self.said[0] if self.said else None


def said(result: Any) -> list[Any]:
    """The root causes the doctor named, as warnings or errors, in its order (its story's: the gravest first; a
    cause counts by the gravest of what it explains). What a cause explains is not said again: a consequence under
    the right cause is the story told right."""
    from gdlab.doctor.story import of_result

    return [c.finding for c in of_result(result).causes if c.severity in WARNING]


def judge(case: Case, result: Any) -> Verdict:
    """Hold what the doctor said about ``case``'s run against what it must say."""
    found = said(result)
    codes = [f.code for f in found]
    verdict = Verdict(case, codes)
    if case.healthy:
        verdict.ok = not codes
        verdict.why = "" if verdict.ok else f"false alarm: {', '.join(codes)}"
        return verdict
    if not codes:
        verdict.why = "nothing said"
    elif codes[0] not in case.causes:
        verdict.why = f"first said {codes[0]}, not {' or '.join(case.causes)}"
    elif wrong := [c for c in codes[1:] if c not in case.causes + case.allowed]:
        verdict.why = f"wrong warning: {', '.join(dict.fromkeys(wrong))}"
    elif case.detail is not None and (problem := case.detail(found[0])):
        verdict.why = problem
    else:
        verdict.ok = True
    return verdict


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run with one torch thread (the clinic's timing and results do not depend on the machine's cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def standardize(X: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance (constant columns left at zero)."""
    std = X.std(0)
    return (X - X.mean(0)) / np.where(std > 0, std, 1.0)


def split(X: np.ndarray, y: np.ndarray, val: float = 0.2, seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                                  tuple[torch.Tensor, torch.Tensor]]:
    """A seeded train/validation split into float32 inputs and int64 (class) or float32 (real) targets."""
    order = np.random.default_rng(seed).permutation(len(X))
    cut = int(len(X) * (1 - val))
    Xt = torch.tensor(X, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.int64) if y.dtype.kind in "iu" else torch.tensor(y, dtype=torch.float32)
    a, b = torch.as_tensor(order[:cut]), torch.as_tensor(order[cut:])
    return (Xt[a], yt[a]), (Xt[b], yt[b])


def digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 8x8 digits, pixels scaled to [0, 1], 80/20."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return split(d.data / 16.0, d.target, seed=seed)


def source(detail: str) -> Callable[[Any], str | None]:
    """A ``detail`` check: the first finding's evidence names ``detail`` as the source."""
    def check(finding: Any) -> str | None:
        got = finding.evidence.get("source")
        return None if got == detail else f"source {got!r}, not {detail!r}"
    return check
