"""Threads: gdlab's thread choice (``--threads auto``) against torch's default thread count, idle and beside a
busy process; and the measurement behind the rule (``--rule``).

What is measured:
- ``gdlab train`` as it comes (an MLP 64-128-10 on digits, batch 32, 30 epochs) and the moons example
  (``--config examples/moons.toml``), each run as its own process, ``--threads auto`` (gdlab's choice: 1 thread
  for these models) against ``--threads N`` with N torch's default count (``torch.get_num_threads()`` in a fresh
  process: one per physical core). The training time is the run's ``seconds`` (``--json``); the process's wall
  time (torch's import included) is printed beside it.
- twice: on the machine as it is ("idle": nothing started by the script; the load average is printed, since
  others may be on the cores), and with one busy neighbour the script starts first (``python -c "while True:
  pass"``, one core's worth of work) and ends after.
- How: ``--repeats`` rounds; in each round both sides of a workload run, the side that goes first alternating;
  reported: the median seconds of each side with min and max, and the median of the per-round ratios
  (torch default / gdlab auto; above 1: gdlab's choice is faster).

``--rule``: one training step (forward, cross-entropy, backward, SGD step) of an MLP h-h-10 on a batch of b random
samples, for a grid of h and b, at 1 thread and at torch's default count, alternated, each timed over about
0.2 s of steps, 3 rounds, medians. The work of a step, parameters x batch size, at which the default count starts
to win is ``gdlab.threads.AUTO_WORK``.

Command:
    python benchmarks/threads.py                 # the CLI runs, idle and busy (a few minutes)
    python benchmarks/threads.py --rule          # the per-step grid behind AUTO_WORK
    python benchmarks/threads.py --quick         # one round of the digits run: checks the script still runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {"digits (gdlab train)": [], "moons (examples/moons.toml)": ["--config", str(ROOT / "examples/moons.toml")]}


def default_threads() -> int:
    """torch's thread count in a fresh process."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def train_once(extra: list[str], threads: str, store: str) -> tuple[float, float]:
    """One ``gdlab train`` process: (training seconds, wall seconds)."""
    command = [sys.executable, "-m", "gdlab.cli", "train", *extra, "--threads", threads, "--store", store,
               "--json", "--quiet", "--no-plot"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    return float(json.loads(done.stdout)["seconds"]), wall


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def compare(repeats: int, busy: bool, workloads: dict[str, list[str]], default: int) -> dict[str, float]:
    """Train each workload with torch's thread count and with gdlab's; the median ratio torch/gdlab by name."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(1.0 if busy else 0.0)
        load = os.getloadavg()[0]
        print(f"\n## {'one busy neighbour' if busy else 'no neighbour started'} (load average {load:.1f} at start)")
        medians: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as store:
            for name, extra in workloads.items():
                sides: dict[str, list[tuple[float, float]]] = {"auto": [], str(default): []}
                for round_ in range(repeats):
                    order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
                    for threads in order:
                        sides[threads].append(train_once(extra, threads, store))
                ratios = [d[0] / a[0] for a, d in zip(sides["auto"], sides[str(default)])]
                medians[f"{name}{' busy' if busy else ''}"] = statistics.median(ratios)
                print(f"{name}: training {default} threads (torch) {spread([s for s, _ in sides[str(default)]])}"
                      f", auto (gdlab: 1) {spread([s for s, _ in sides['auto']])}; ratio torch/gdlab "
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
                print(f"    process wall: torch {spread([w for _, w in sides[str(default)]])}, gdlab "
                      f"{spread([w for _, w in sides['auto']])}")
        print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
        return medians
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def rule(rounds: int = 3) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    default = torch.get_num_threads()

    def per_step(h: int, b: int, threads: int) -> float:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
        X, y = torch.randn(b, h), torch.randint(0, 10, (b,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        steps, start = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - start < 0.2:
            loss = F.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        return (time.perf_counter() - start) / steps

    print(f"# per step, MLP h-h-10, batch b: 1 thread vs {default} (load average {os.getloadavg()[0]:.1f})")
    print(f"{'h':>5} {'b':>5} {'params x batch':>15} {'1 thread':>10} {f'{default} threads':>10} {'1/default':>9}")
    for h in (32, 128, 256, 512, 1024):
        for b in (32, 128, 512):
            one, many = [], []
            per_step(h, b, 1)  # warm-up
            for r in range(rounds):
                for threads in ((1, default) if r % 2 == 0 else (default, 1)):
                    (one if threads == 1 else many).append(per_step(h, b, threads))
            work = (h * h + h + h * 10 + 10) * b
            a, m = statistics.median(one), statistics.median(many)
            print(f"{h:>5} {b:>5} {work:>15,} {a * 1e3:>8.3f}ms {m * 1e3:>8.3f}ms {a / m:>8.2f}x", flush=True)
    torch.set_num_threads(default)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio torch/gdlab per workload and
    setting (``--rule`` prints its grid and returns nothing)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rule", action="store_true", help="the per-step grid behind AUTO_WORK")
    parser.add_argument("--quick", action="store_true", help="one round of the digits run, idle")
    parser.add_argument("--only", choices=("idle", "busy"), help="run one of the two settings")
    args = parser.parse_args(argv)
    if args.rule:
        rule()
        return {}
    default = default_threads()
    print(f"# torch default threads {default}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if args.quick:
        return compare(1, False, {"digits (gdlab train)": ["--epochs", "1"]}, default)
    medians: dict[str, float] = {}
    for busy in (False, True):
        if args.only in (None, "busy" if busy else "idle"):
            medians.update(compare(args.repeats, busy, WORKLOADS, default))
    return medians


if __name__ == "__main__":
    main()
