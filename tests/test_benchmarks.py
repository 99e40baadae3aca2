"""The benchmark scripts still run (on a tiny size; their figures live in docs/benchmarks.md, not in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["loader.py", "overhead.py", "optim_step.py", "population.py", "lr_select.py",
                                    "doctor_overhead.py", "landscape.py", "log_every.py", "threads.py",
                                    "watch_overhead.py", "lightning_overhead.py", "report.py", "distributed.py"])
def test_benchmark_runs_quick(script: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout.lower()
