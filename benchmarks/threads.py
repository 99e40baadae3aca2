"""Threads: ``threads="auto"`` (the measured choice, ``gdlab.threads.ThreadChooser``) against both fixed counts,
idle and beside a busy process; and the crossover: the work of a step at which torch's count starts to win.

What is measured:
- ``gdlab.fit`` on four workloads, in this process, at ``threads=1``, ``threads=N`` (N: torch's default count, one
  per physical core) and ``threads="auto"``: the digits MLP 64-128-10 at batch 32 (``gdlab train``'s default
  model, 10 epochs), the same at full batch for 100 epochs (one step an epoch: the issue's 8.3 s against 2.0 s),
  the moons example's MLP 2-32-32-2 (tanh, adam, batch 64, 40 epochs) and a large step: an MLP 784-1024-1024-10
  on 4,096 random samples at batch 512 (3 epochs). Defaults otherwise (instruments, the doctor). The training
  time is the result's ``seconds``; the count ``auto`` kept is read at the run's end.
- twice: on the machine as it is ("idle": nothing started by the script; the load average is printed, since
  others may be on the cores), and with one busy neighbour the script starts first (``python -c "while True:
  pass"``, one core's worth of work) and ends after.
- How: ``--repeats`` rounds; in each round the three sides of a workload run, in an order that rotates; reported:
  each side's median seconds, the count auto kept in each round, and the median of the per-round ratios auto /
  the faster fixed count (1.00: auto as fast as the better fixed choice; the trial costs a few steps).

``--crossover``: one training step (forward, cross-entropy, backward, SGD step) of an MLP h-h-10 on a batch of b
random samples, for a grid of h and b, at 1 thread and at torch's count, alternated, each timed over about 0.2 s
of steps, 3 rounds, medians; beside it, the count a fresh ``ThreadChooser`` keeps when it drives the same steps.
The crossover is the smallest work of a step (parameters x batch size) from which torch's count is faster by more
than ``gdlab.threads.MARGIN``.

Command:
    python benchmarks/threads.py                 # the fits, idle and busy (several minutes)
    python benchmarks/threads.py --crossover     # the per-step grid and the chooser's pick
    python benchmarks/threads.py --quick         # one short round, idle: checks the script still runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import mlp_factory
from torch import nn

import gdlab
from gdlab.data import datasets
from gdlab.threads import MARGIN, ThreadChooser


def workloads(quick: bool) -> dict[str, dict[str, Any]]:
    digits, _ = datasets.load("digits")
    moons, moons_val = datasets.load("moons", noise=0.25)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(4096, 784, generator=g), torch.randint(0, 10, (4096,), generator=g)
    found = {
        "digits, batch 32": dict(model=mlp_factory(64, 128, 10), train=digits, epochs=10),
        "digits, full batch": dict(model=mlp_factory(64, 128, 10), train=digits, epochs=100, batch_size="full"),
        "moons example": dict(model=mlp_factory(2, 32, 32, 2, act=nn.Tanh), train=moons, val=moons_val, epochs=40,
                              batch_size=64, optimizer="adam", lr=0.01),
        "784-1024-1024-10, batch 512": dict(model=mlp_factory(784, 1024, 1024, 10), train=(X, y), epochs=3,
                                            batch_size=512),
    }
    if quick:
        return {"digits, full batch": {**found["digits, full batch"], "epochs": 20}}
    return found


class Kept(gdlab.Callback):
    """The thread count at the run's end: the one ``auto`` kept."""

    threads = 0

    def on_fit_end(self, state: Any) -> None:
        self.threads = torch.get_num_threads()


def fit_once(spec: dict[str, Any], threads: int | str) -> tuple[float, int]:
    """One ``gdlab.fit``: (training seconds, the thread count at its end)."""
    spec = dict(spec)
    torch.manual_seed(0)
    model = spec.pop("model")()
    kept = Kept()
    result = gdlab.fit(model, spec.pop("train"), threads=threads, progress=False, callbacks=[kept],
                       **{"lr": 0.05, **spec})
    return result.seconds, kept.threads


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def compare(repeats: int, busy: bool, specs: dict[str, dict[str, Any]], default: int) -> dict[str, float]:
    """Each workload at 1 thread, torch's count and auto; the median ratio auto / the faster fixed count by name."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(1.0 if busy else 0.0)
        print(f"\n## {'one busy neighbour' if busy else 'no neighbour started'} (load average "
              f"{os.getloadavg()[0]:.1f} at start)")
        print(f"{'workload':30} {'1 thread':>20} {f'{default} threads':>20} {'auto':>20} {'auto kept':>10} "
              f"{'auto / best fixed':>22}")
        medians: dict[str, float] = {}
        sides: list[int | str] = [1, default, "auto"]
        for name, spec in specs.items():
            fit_once({**spec, "epochs": 1}, 1)  # warm-up: first-call costs paid outside the rounds
            times: dict[int | str, list[float]] = {side: [] for side in sides}
            kept: list[int] = []
            for round_ in range(repeats):
                for side in sides[round_ % 3:] + sides[: round_ % 3]:
                    seconds, threads = fit_once(spec, side)
                    times[side].append(seconds)
                    if side == "auto":
                        kept.append(threads)
            ratios = [a / min(one, many) for a, one, many in zip(times["auto"], times[1], times[default])]
            key = f"{name}{' busy' if busy else ''}"
            medians[key] = statistics.median(ratios)
            print(f"{name:30} {spread(times[1]):>20} {spread(times[default]):>20} {spread(times['auto']):>20} "
                  f"{','.join(map(str, kept)):>10} {medians[key]:>8.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                  flush=True)
        print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
        return medians
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def crossover(rounds: int = 3) -> None:
    default = torch.get_num_threads()

    def stepper(h: int, b: int) -> Callable[[], None]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
        X, y = torch.randn(b, h), torch.randint(0, 10, (b,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            loss = F.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    def per_step(step: Callable[[], None], threads: int) -> float:
        torch.set_num_threads(threads)
        steps, start = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - start < 0.2:
            step()
            steps += 1
        return (time.perf_counter() - start) / steps

    print(f"# per step, MLP h-h-10, batch b: 1 thread vs {default} (load average {os.getloadavg()[0]:.1f})")
    print(f"{'h':>5} {'b':>5} {'params x batch':>15} {'1 thread':>10} {f'{default} threads':>10} {'1/default':>9} "
          f"{'chooser':>8}")
    first_win = None
    for h in (32, 128, 256, 512, 1024):
        for b in (32, 128, 512):
            step = stepper(h, b)
            one, many = [], []
            per_step(step, 1)  # warm-up
            for r in range(rounds):
                for threads in ((1, default) if r % 2 == 0 else (default, 1)):
                    (one if threads == 1 else many).append(per_step(step, threads))
            chooser = ThreadChooser((1, default))
            while chooser.chosen is None:
                chooser.before_step()
                step()
                chooser.after_step()
            work = (h * h + h + h * 10 + 10) * b
            a, m = statistics.median(one), statistics.median(many)
            if a > m * (1 + MARGIN) and first_win is None:
                first_win = work
            print(f"{h:>5} {b:>5} {work:>15,} {a * 1e3:>8.3f}ms {m * 1e3:>8.3f}ms {a / m:>8.2f}x "
                  f"{chooser.chosen:>8}", flush=True)
    torch.set_num_threads(default)
    print(f"crossover: {default} threads first faster by > {MARGIN:.0%} at parameters x batch = "
          f"{first_win:,}" if first_win else f"crossover: {default} threads never faster by > {MARGIN:.0%}")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio auto / best fixed count per workload
    and setting (``--crossover`` prints its grid and returns nothing)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossover", action="store_true", help="the per-step grid and the chooser's pick")
    parser.add_argument("--quick", action="store_true", help="one short round, idle")
    parser.add_argument("--only", choices=("idle", "busy"), help="run one of the two settings")
    parser.add_argument("--workloads", help="comma-separated workload names (prefixes)")
    args = parser.parse_args(argv)
    if args.crossover:
        crossover()
        return {}
    default = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {default} torch threads, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}")
    specs = workloads(args.quick)
    if args.workloads:
        specs = {k: v for k, v in specs.items() if any(k.startswith(w) for w in args.workloads.split(","))}
    if args.quick:
        return compare(1, False, specs, default)
    medians: dict[str, float] = {}
    for busy in (False, True):
        if args.only in (None, "busy" if busy else "idle"):
            medians.update(compare(args.repeats, busy, specs, default))
    return medians


if __name__ == "__main__":
    main()
