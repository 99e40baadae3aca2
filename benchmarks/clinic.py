"""The clinic's score: how often the doctor names the root cause of a broken run first, and how often it raises a
warning on a healthy one.

What runs: every case of ``tests/clinic/`` (realistic runs: MLPs, a BatchNorm CNN, an LSTM, regressions through
``gdlab.fit``; a character-level transformer LM and digits MLPs in hand-written loops under ``gdlab.watch``; a
Lightning module and a tiny BERT under the Hugging Face Trainer through gdlab's callbacks), healthy and broken, each
on the CPU with one torch thread. Each case is judged by ``clinic.judge``: a broken run is right when the first
warning or error the doctor gives is one of its root causes and no other warning is one the cause does not explain
(and, for some, the finding names where the fault came from); a healthy run is right when it gets no warning.

Printed: one line per case (expected, what the doctor said first and in all, right or why not, seconds), then the
score: root causes named first (right / broken runs), false alarms (healthy runs with a warning / healthy runs), and
the same per kind and per way in. Cases whose optional package (lightning, transformers) is missing are skipped.

Command:
    python benchmarks/clinic.py            # every case (about a minute on a 2-core CPU)
    python benchmarks/clinic.py --quick    # the fast cases only (a few seconds): checks the script still runs
    python benchmarks/clinic.py --case lm_healthy --case mlp_lr_1e-6   # chosen cases
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import platform
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model


def _clinic() -> Any:
    """tests/clinic/, imported as ``gdlab_clinic`` (this script is ``clinic`` when imported from benchmarks/)."""
    if "gdlab_clinic" not in sys.modules:
        folder = Path(__file__).resolve().parents[1] / "tests" / "clinic"
        spec = importlib.util.spec_from_file_location("gdlab_clinic", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gdlab_clinic"] = module
        spec.loader.exec_module(module)
    return sys.modules["gdlab_clinic"]


_CLINIC = _clinic()
CASES, Case, Verdict, judge, single_thread = (_CLINIC.CASES, _CLINIC.Case, _CLINIC.Verdict, _CLINIC.judge,
                                              _CLINIC.single_thread)


def run_case(case: Any) -> tuple[Any, float]:
    """Run one case quietly (its trainers' chatter swallowed) on one thread; its verdict and seconds."""
    start = time.perf_counter()
    with single_thread(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            result = case.run()
        except Exception as e:  # a case that raises is a miss, not the end of the clinic
            return Verdict(case, why=f"raised {type(e).__name__}: {e}"), time.perf_counter() - start
    return judge(case, result), time.perf_counter() - start


def _share(right: int, total: int) -> str:
    return f"{right}/{total}" + (f" (ratio {right / total:.2f})" if total else "")


def score(verdicts: list[Any], by: str) -> list[str]:
    """Lines of the score per value of the case attribute ``by`` (``kind`` or ``way``)."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for v in verdicts:
        groups[getattr(v.case, by)].append(v)
    lines = []
    for key in sorted(groups):
        broken = [v for v in groups[key] if not v.case.healthy]
        healthy = [v for v in groups[key] if v.case.healthy]
        lines.append(f"  {key:11s} causes first {sum(v.ok for v in broken)}/{len(broken)}   "
                     f"false alarms {sum(not v.ok for v in healthy)}/{len(healthy)}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the clinic; the figures: broken and healthy runs judged, how many named right / kept quiet, seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the fast cases only")
    parser.add_argument("--case", action="append", default=[], help="run this case (repeatable)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cases = [c for c in CASES
             if c.available() and (not args.quick or c.fast) and (not args.case or c.name in args.case)]
    skipped = [c.name for c in CASES if not c.available()]
    print(f"clinic: {len(cases)} cases, torch {torch.__version__}, python {platform.python_version()}, "
          f"{cpu_model()}, 1 thread")
    if skipped:
        print(f"skipped (package missing): {', '.join(skipped)}")
    verdicts = []
    for case in cases:
        verdict, seconds = run_case(case)
        verdicts.append(verdict)
        expected = " or ".join(case.causes) or "(healthy)"
        print(f"{'ok  ' if verdict.ok else 'MISS'} {case.name:28s} {case.kind:10s} {case.way:9s} "
              f"expected {expected:32s} said {', '.join(verdict.said) or '-':40s} {seconds:5.1f}s"
              + (f"  [{verdict.why}]" if verdict.why else ""))
    broken = [v for v in verdicts if not v.case.healthy]
    healthy = [v for v in verdicts if v.case.healthy]
    print(f"root causes named first: {_share(sum(v.ok for v in broken), len(broken))} broken runs")
    print(f"false alarms: {_share(sum(not v.ok for v in healthy), len(healthy))} healthy runs")
    print("per kind:", *score(verdicts, "kind"), sep="\n")
    print("per way in:", *score(verdicts, "way"), sep="\n")
    return {"broken runs": float(len(broken)), "healthy runs": float(len(healthy)),
            "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    main()
