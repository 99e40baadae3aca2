"""The run store's size, and the time ``gdlab doctor`` takes to read a run, for runs of any length: the store's
format (rows packed in blocks) against the one before it (a row per step and key), side by side in one process.

What is measured: a run of ``--steps`` steps (1,000,000 by default) written into a fresh store through the path a
training run takes: :class:`gdlab.callbacks.Recorder` flushing its ``History`` (``--epoch`` steps an epoch: 45, the
digits run's, or 1 for full-batch descent, where every step is an epoch and has an epoch row), with the store's
default bound (``step_rows`` 20,000). The rows are synthetic, with a default-instrumented run's keys and cadence:
every step ``epoch``, ``loss``, ``loss_ema``, ``lr``, ``grad_norm``, ``grad_norm/1``, ``grad_norm/3``,
``non_finite`` (and ``--layers`` more per-layer gradient norms: a deeper model), every 20th step eleven periodic
keys; one gradient spike (1000x) at 10% of the run. Then, for each format:

- the size of ``gdlab.db`` with its write-ahead log after the run is closed;
- the time to read the run back (``Store.history``) and to run the detectors on it (``diagnose``), in this process;
- (not with ``--quick``) the wall time of ``gdlab doctor <run>`` in a new process, the median of ``--repeats``:
  the interpreter, the imports, the read and the detectors;
- whether the early spike survives in what was read.

The format before is the previous gdlab's ``store.py``, read from git (``--old-commit``) and loaded beside the
current one; its runs are written as its Recorder wrote them (``add_steps`` and ``add_epochs`` of each epoch's rows).
Without git, or with ``--quick``, only the current format is measured.

Targets (issue 28): at most 20 MB per run whatever the number of steps or keys; ``gdlab doctor`` reads a
1,000,000-step run in under 5 s.

Command:
    python benchmarks/store_size.py                        # 1,000,000 steps, 45 a epoch, both formats (minutes)
    python benchmarks/store_size.py --steps 60000 --epoch 1  # the issue's full-batch 60,000-step run
    python benchmarks/store_size.py --layers 200           # 200 more keys a step: the bound holds
    python benchmarks/store_size.py --quick                # 5,000 steps, the current format: the script still runs
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from _common import cpu_model, usable_cores

from gdlab.callbacks import Recorder
from gdlab.doctor import diagnose
from gdlab.records import History
from gdlab.store import STEP_ROWS, Store

PERIODIC = ("dead_share/2", "zero_share/2", "grad_out/1", "grad_out/3", "grad_snr", "noise_scale", "distance",
            "param_norm", "update_ratio", "update_ratio/1", "update_ratio/3")
OLD_COMMIT = "826408d"
"""The last commit whose store wrote a row per step and key."""
META = {"batch_size": 32, "samples": 1438, "task": "classification", "num_classes": 10, "convex": False}


def rows(steps: int, epoch: int, layers: int, seed: int) -> Iterator[tuple[dict[str, float], dict[str, float] | None]]:
    """The synthetic run: each step's row, and the epoch's row at an epoch's end (else None)."""
    rng = random.Random(seed)
    spike, average, total = steps // 10, math.nan, 0.0
    for step in range(1, steps + 1):
        loss = 2.3 * math.exp(-step / (steps / 8)) + 0.05 + 0.02 * rng.random()
        average = loss if step == 1 else 0.9 * average + 0.1 * loss
        grad = (1.0 + 0.1 * rng.random()) * (1000.0 if step == spike else 1.0)
        row = {"step": step, "epoch": (step - 1) // epoch + 1, "loss": loss, "loss_ema": average, "lr": 0.1,
               "grad_norm": grad, "grad_norm/1": 0.6 * grad, "grad_norm/3": 0.8 * grad, "non_finite": 0.0}
        row.update({f"grad_norm/extra{i}": 0.01 * i * grad for i in range(layers)})
        if step % 20 == 0:
            row.update({key: 0.1 + 0.01 * rng.random() for key in PERIODIC})
        total += loss
        done = step % epoch == 0 or step == steps
        yield row, ({"epoch": (step - 1) // epoch + 1, "step": step, "train_loss": total / ((step - 1) % epoch + 1),
                     "seconds": step * 1e-3} if done else None)
        if done:
            total = 0.0


def write_new(root: Path, steps: int, epoch: int, layers: int) -> tuple[str, float]:
    """The run written by today's Recorder; its id and the seconds taken."""
    store = Store(root)
    run_id = store.create_run({"data": "digits", "lr": 0.1, "steps": steps, "doctor_meta": META}, None, name="long")
    recorder = Recorder(store, run_id)
    state = SimpleNamespace(history=History())
    start = time.perf_counter()
    for step_row, epoch_row in rows(steps, epoch, layers, seed=0):
        state.history.steps.append(step_row)
        if epoch_row is not None:
            state.history.epochs.append(epoch_row)
            recorder.on_epoch_end(state)  # type: ignore[arg-type]  # the Recorder reads only state.history
    recorder.flush(state)  # type: ignore[arg-type]
    store.finish(run_id, "finished", final={"train_loss": 0.1}, lr=0.1, steps=steps, seconds=0.0)
    store.close()
    return run_id, time.perf_counter() - start


def old_store(commit: str) -> ModuleType | None:
    """The store module of ``commit`` (read with git from this checkout), loaded beside today's; None without it."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:src/gdlab/store.py"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("gdlab_store_before", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"{commit}:src/gdlab/store.py", "exec"), module.__dict__)
    return module


def write_old(old: ModuleType, root: Path, steps: int, epoch: int, layers: int) -> tuple[str, float]:
    """The run written as the Recorder before wrote it: each epoch's rows through ``add_steps`` and ``add_epochs``."""
    store = old.Store(root)
    run_id = store.create_run({"data": "digits", "lr": 0.1, "steps": steps, "doctor_meta": META}, None, name="long")
    history = History()
    written = epochs_written = 0
    start = time.perf_counter()
    for step_row, epoch_row in rows(steps, epoch, layers, seed=0):
        history.steps.append(step_row)
        if epoch_row is not None:
            history.epochs.append(epoch_row)
            store.add_steps(run_id, history.steps.rows(written), step_rows=STEP_ROWS)
            store.add_epochs(run_id, history.epochs.rows(epochs_written))
            written, epochs_written = len(history.steps), len(history.epochs)
    store.finish(run_id, "finished", final={"train_loss": 0.1}, lr=0.1, steps=steps, seconds=0.0)
    store.close()
    return run_id, time.perf_counter() - start


def read(open_store: Callable[[], Any], run_id: str) -> tuple[float, float, float, int, str]:
    """Read the run and diagnose it: seconds of each, the largest gradient norm read, the rows, the findings."""
    store = open_store()
    start = time.perf_counter()
    history = store.history(run_id)
    seconds = time.perf_counter() - start
    history.meta.update({"lr": 0.1, **META})
    start = time.perf_counter()
    findings = diagnose(history)
    judged = time.perf_counter() - start
    steps = history.steps
    peak = max(v for key in ("grad_norm", "max:grad_norm") if key in steps for v in steps[key] if math.isfinite(v))
    store.close()
    return seconds, judged, peak, len(steps), ", ".join(f.code for f in findings) or "no findings"


def doctor_seconds(root: Path, run_id: str, repeats: int, *, floor: bool = False) -> tuple[float, float]:
    """The median wall time of ``gdlab doctor RUN`` in a new process, and its CPU time (user + system: on a shared
    machine the steadier figure); with ``floor``, of ``gdlab doctor --help``: the interpreter and the imports alone."""
    times, cpu = [], []
    for _ in range(repeats):
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        args = ["--help"] if floor else [run_id, "--store", str(root)]
        done = subprocess.run([sys.executable, "-m", "gdlab.cli", "doctor", *args],
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
        if done.returncode:
            raise SystemExit(f"gdlab doctor failed: {done.stderr.strip() or done.stdout.strip()}")
    return statistics.median(times), statistics.median(cpu)


def size(root: Path) -> float:
    """The database and its log, in MB."""
    return sum(p.stat().st_size for p in root.glob("gdlab.db*")) / 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Write the run in each format and read it back; the figures: the size (MB), the read and write times (s) of
    today's format (and with the format before, when measured: ``before MB``, ``before read s``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--epoch", type=int, default=45, help="steps per epoch (1: full batch)")
    parser.add_argument("--layers", type=int, default=0, help="more per-layer keys recorded every step")
    parser.add_argument("--repeats", type=int, default=3, help="gdlab doctor runs timed")
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="the commit of the format before ('' : skip it)")
    parser.add_argument("--quick", action="store_true", help="5,000 steps, today's format, no new process")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.old_commit = 5_000, ""
    old = old_store(args.old_commit) if args.old_commit else None
    print(f"machine: {cpu_model()}, {usable_cores()} usable cores; Python {platform.python_version()}; load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{args.steps:,} steps, {args.epoch} a epoch, {9 + args.layers} keys every step and 11 every 20th; "
          f"step_rows {STEP_ROWS}")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gdlab-store-size-") as folder:
        sides: list[tuple[str, Path, str, float, Callable[[], Any], bool]] = []  # the last: read by gdlab doctor
        root = Path(folder) / "now"
        run_id, wrote = write_new(root, args.steps, args.epoch, args.layers)
        sides.append(("blocks (now)", root, run_id, wrote, lambda: Store(root, create=False), True))
        if old is not None:
            before = Path(folder) / "before"
            old_id, old_wrote = write_old(old, before, args.steps, args.epoch, args.layers)
            sides.append((f"row per key ({args.old_commit})", before, old_id, old_wrote,
                          lambda: old.Store(before, create=False), False))
            sides.append(("row per key, read now", before, old_id, old_wrote, lambda: Store(before, create=False),
                          True))
        print(f"{'format':28} {'MB':>7} {'write s':>8} {'read s':>7} {'diagnose s':>10} {'doctor s':>9} {'its CPU':>8} "
              f"{'rows':>8}  largest grad_norm read; findings")
        for label, where, ident, wrote, open_store, cli in sides:
            seconds, judged, peak, count, said = read(open_store, ident)
            doctor, cpu = doctor_seconds(where, ident, args.repeats) if cli and not args.quick else (math.nan,) * 2
            print(f"{label:28} {size(where):7.2f} {wrote:8.1f} {seconds:7.2f} {judged:10.2f} {doctor:9.2f} {cpu:8.2f} "
                  f"{count:8,}  {peak:.4g}; {said}")
            if label.startswith("blocks"):
                figures.update({"MB": size(where), "write s": wrote, "read s": seconds})
                if not math.isnan(doctor):
                    figures.update({"doctor s": doctor, "doctor CPU s": cpu})
            elif not cli:
                figures.update({"before MB": size(where), "before read s": seconds})
    if not args.quick:
        wall, cpu = doctor_seconds(root, run_id, args.repeats, floor=True)
        print(f"gdlab doctor --help (the interpreter and the imports, no store): {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return figures


if __name__ == "__main__":
    main()
