"""The clinic: realistic training runs, healthy and broken, each with the diagnosis the doctor must give.

Each :class:`Case` is a small function that trains for real (CPU, one thread, a few seconds at most, on
scikit-learn's bundled data sets or synthetic data) through one way in (``fit``, ``watch`` in a hand-written loop,
the Lightning or the Hugging Face callback) and returns what the doctor said (a :class:`gdlab.Result`).
:func:`judge` holds it against the case's expectation:

- a broken run: the first warning or error the doctor gives (findings come root causes first) is one of the
  case's ``causes``, and every other warning is a consequence the case allows (``allowed``): anything else is a
  wrong warning;
- a healthy run (``causes=()``): no warning at all (info notes are fine).

``tests/test_clinic.py`` runs every case; ``benchmarks/clinic.py`` prints the score. ``today`` says what the
doctor gets wrong at the time of writing (issue 26 is fixing it): the test marks those cases ``xfail``.

Example:
    >>> sorted({c.kind for c in CASES}) >= ["bert", "cnn", "lightning", "lm", "lstm", "mlp", "regression"]
    True
"""

from __future__ import annotations

from dataclasses import replace

from .core import Case, Verdict, judge, said, single_thread
from .fit_runs import CASES as FIT_CASES
from .loop_runs import CASES as LOOP_CASES
from .trainer_runs import CASES as TRAINER_CASES

# What the doctor says today where it is wrong (the score, before and after issue 26's first round, is in
# docs/benchmarks.md, "Clinic"): tests/test_clinic.py marks these cases xfail. Remove a line once the doctor gets
# its case right.
TODAY: dict[str, str] = {
}

CASES: list[Case] = [replace(c, today=TODAY.get(c.name)) for c in (*FIT_CASES, *LOOP_CASES, *TRAINER_CASES)]

__all__ = ["CASES", "Case", "Verdict", "judge", "said", "single_thread"]
