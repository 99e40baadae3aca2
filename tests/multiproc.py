"""What the tests that launch several processes share: a bounded run (a hang fails the test), the store's runs,
the warning codes of findings, and the gradient norms that were read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest


def run_bounded(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """``command`` in a session of its own, its output in files (processes it starts cannot hold a pipe open),
    stopped after ``timeout`` seconds: SIGTERM to its process group (torchrun passes it to its workers), then
    SIGKILL. A run that had to be stopped fails the test: a hang."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace)
                    break
            pytest.fail(f"no end after {timeout} s (a hang): {err.read_text()[-3000:]}")
    return code, out.read_text(), err.read_text()


def store_runs(folder: Path) -> list[Any]:
    """Each run of the store in ``folder`` with its history."""
    from gdlab.store import Store

    store = Store(folder)
    try:
        return [(run, store.history(run.id)) for run in store.runs()]
    finally:
        store.close()


def warnings(findings: list[dict[str, Any]]) -> set[str]:
    """The codes of the findings of severity warning or error."""
    return {f["code"] for f in findings if f["severity"] in ("warning", "error")}


def readings(stored: list[float], per_step: list[float]) -> tuple[list[float], list[float]]:
    """The stored gradient norms that were read (every ``grad_norm_every`` steps; NaN between) and the per-step
    norms of the same steps."""
    read = [i for i, v in enumerate(stored) if v == v]
    assert len(read) >= 2 and read[0] == 0, read
    return [stored[i] for i in read], [per_step[i] for i in read]
