"""A long run in the store: the database's size and the time ``gdlab doctor`` takes on it.

What is measured: a run of ``--steps`` steps (1,000,000 by default) is written into a fresh store through the path a
training run takes: :class:`gdlab.callbacks.Recorder` flushing the rows of its ``History`` at each epoch's end
(``--epoch`` steps, 45 by default: the digits run's, 1438 samples in batches of 32), with the store's bound
``--step-rows`` (gdlab's default 20,000; 0 keeps every step, as gdlab did before). The rows are synthetic but have
a default-instrumented run's keys and cadence: every step ``epoch``, ``loss``, ``loss_ema``, ``lr``, ``grad_norm``,
``grad_norm/1``, ``grad_norm/3``, ``non_finite``; every 20th step the periodic instruments' eleven keys
(``dead_share/2``, ``grad_out/*``, ``grad_snr``, ``update_ratio``...). The loss decays with noise, and one step
early in the run (at 10% of it) has a gradient norm 1000x the others. Then:

- the size of ``gdlab.db`` (with its WAL file) after the run is closed, and the rows it holds;
- the wall time and CPU time (user + system) of ``gdlab doctor <run>`` in a new process (``python -m gdlab.cli``:
  the interpreter, imports, the store read and the detectors), the median of ``--repeats`` runs, and inside one
  process the time of ``Store.history`` and of ``diagnose`` on what it read;
- whether the early spike survives in the stored ``max:grad_norm``.

Targets (issue 14): a 1,000,000-step run stores under 20 MB of metrics and ``gdlab doctor`` on it takes under 5 s.

Command:
    python benchmarks/long_run.py                      # 1,000,000 steps, the default bound (about 2 minutes)
    python benchmarks/long_run.py --step-rows 0        # every step kept, as before the bound
    python benchmarks/long_run.py --quick              # 50,000 steps: checks the script still runs
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from types import SimpleNamespace

from _common import cpu_model, usable_cores

from gdlab.callbacks import Recorder
from gdlab.doctor import diagnose
from gdlab.records import History
from gdlab.store import STEP_ROWS, Store

PERIODIC = ("dead_share/2", "zero_share/2", "grad_out/1", "grad_out/3", "grad_snr", "noise_scale", "distance",
            "param_norm", "update_ratio", "update_ratio/1", "update_ratio/3")


def write_run(store: Store, steps: int, epoch: int, step_rows: int, seed: int) -> tuple[str, int, float]:
    """A synthetic run written epoch by epoch through the Recorder; its id, the spike's step, the seconds taken."""
    rng = random.Random(seed)
    config = {"data": "digits", "model": "mlp", "optimizer": "sgd", "lr": 0.1, "batch_size": 32, "steps": steps,
              "step_rows": step_rows, "doctor_meta": {"batch_size": 32, "samples": 1438, "task": "classification",
                                                     "num_classes": 10, "convex": False}}
    run_id = store.create_run(config, {"samples": 1438, "batch_size": 32}, name="long-run")
    recorder = Recorder(store, run_id, step_rows=step_rows)
    state = SimpleNamespace(history=History())
    table = state.history.steps
    spike = steps // 10
    average = math.nan
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = 2.3 * math.exp(-step / (steps / 8)) + 0.05 + 0.02 * rng.random()
        average = loss if step == 1 else 0.9 * average + 0.1 * loss
        grad = (1.0 + 0.1 * rng.random()) * (1000.0 if step == spike else 1.0)
        row = {"step": step, "epoch": (step - 1) // epoch + 1, "loss": loss, "loss_ema": average, "lr": 0.1,
               "grad_norm": grad, "grad_norm/1": 0.6 * grad, "grad_norm/3": 0.8 * grad, "non_finite": 0.0}
        if step % 20 == 0:
            row.update({key: 0.1 + 0.01 * rng.random() for key in PERIODIC})
        table.append(row)
        if step % epoch == 0 or step == steps:
            recorder.flush(state)  # type: ignore[arg-type]  # the Recorder reads only state.history
    store.finish(run_id, "finished", final={"train_loss": loss}, lr=0.1, steps=steps, seconds=0.0)
    return run_id, spike, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--epoch", type=int, default=45, help="steps per epoch: one flush each")
    parser.add_argument("--step-rows", type=int, default=STEP_ROWS, help="the store's bound; 0 keeps every step")
    parser.add_argument("--repeats", type=int, default=3, help="gdlab doctor runs timed")
    parser.add_argument("--store", type=Path, default=None, help="the store's folder [default: a temporary one]")
    parser.add_argument("--quick", action="store_true", help="50,000 steps, one doctor run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 50_000, 1
    root = args.store or Path(tempfile.mkdtemp(prefix="gdlab-long-run-"))
    print(f"machine: {cpu_model()}, {usable_cores()} usable cores; Python {platform.python_version()}")
    print(f"store: {root}; {args.steps:,} steps, {args.epoch} per epoch, step_rows {args.step_rows}")

    store = Store(root)
    run_id, spike, write_seconds = write_run(store, args.steps, args.epoch, args.step_rows, seed=0)
    rows = sum(store._query(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,))[0][0]
               for t in ("step_metrics", "step_buckets"))
    store.close()
    size = sum(p.stat().st_size for p in root.glob("gdlab.db*"))
    print(f"written in {write_seconds:.1f} s; {rows:,} metric rows; gdlab.db {size / 1e6:.1f} MB")

    times, cpu = [], []
    for _ in range(args.repeats):
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gdlab.cli", "doctor", run_id, "--store", str(root)],
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
        if done.returncode:
            raise SystemExit(f"gdlab doctor failed: {done.stderr.strip() or done.stdout.strip()}")
    print(f"gdlab doctor: median {statistics.median(times):.2f} s wall over {len(times)} (min {min(times):.2f}, "
          f"max {max(times):.2f}), {statistics.median(cpu):.2f} s CPU (on a shared machine the CPU time is the "
          "steadier figure); it printed:")
    print("  " + done.stdout.strip().replace("\n", "\n  "))

    store = Store(root, create=False)
    start = time.perf_counter()
    history = store.history(run_id)
    read = time.perf_counter() - start
    history.meta.update({"lr": 0.1, **store.get(run_id).config["doctor_meta"]})
    start = time.perf_counter()
    findings = diagnose(history)
    judged = time.perf_counter() - start
    peaks = [v for v in history.steps["max:grad_norm"] if math.isfinite(v)] if "max:grad_norm" in history.steps \
        else [v for v in history.steps["grad_norm"] if math.isfinite(v)]
    print(f"in one process: Store.history {read:.2f} s ({len(history.steps):,} rows), diagnose {judged:.2f} s "
          f"({', '.join(f.code for f in findings) or 'no findings'})")
    print(f"the spike at step {spike:,} (grad_norm ~1000) survives as the largest stored value: {max(peaks):.4g}")


if __name__ == "__main__":
    main()
