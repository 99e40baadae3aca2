"""M members trained as one population against M sequential ``gdlab.fit`` runs doing the same work.

What is measured: the wall time of ``gdlab.population.train(model_fn, digits, seeds=range(M), optimizer="momentum",
hyper={"lr": 0.05}, steps=300, batch_size=64, progress=False)`` against the loop ``for s in range(M):
torch.manual_seed(s); gdlab.fit(model_fn(), digits, seed=s, optimizer="momentum", lr=0.05, steps=300,
batch_size=64, progress=False)``. Both do the same work: M members of the MLP 64-128-10 (ReLU), each from
``torch.manual_seed(s)``, each with its own data order (the population's default, independent shuffles), 300
steps of mini-batch 64 on scikit-learn's digits (1438 training samples), SGD with momentum 0.9, float32, on the
same device, each side with its default thread choice, ``threads="auto"`` (``gdlab.threads.ThreadChooser``: the
first steps timed at 1 thread and at torch's count, the faster kept; the count the population kept is printed).
Members equal the sequential runs to float rounding (tests/test_population.py). Model building and data loading
are outside the timed region on both sides.

How: one warm-up of each side at M = 2, then per M ``--repeats`` pairs alternated (the side going first
alternating too); the ratio sequential / population per pair, reported as the median with min and max.
``--busy``: the same beside a busy neighbour the script starts first (``python -c "while True: pass"``, one core's
worth of work) and ends after. The load average is printed at the start and the end.

Target on CPU: at least 5x at M = 32. On a GPU (``--device cuda``) M = 256 and 1024 are measured as well.

Command:
    python benchmarks/population.py                  # M = 8, 32, 128 on the CPU
    python benchmarks/population.py --busy           # the same beside a busy neighbour
    python benchmarks/population.py --device cuda    # M = 8, 32, 128, 256, 1024
    python benchmarks/population.py --quick          # M = 2, 4 and 20 steps: checks the script still runs
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from _common import cpu_model, usable_cores
from torch import nn

import gdlab
from gdlab import population
from gdlab.data import datasets

TARGET = 5.0


def model_fn() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


KEPT: list[str] = []  # what the population's thread choice kept, run by run


def run_population(train: object, members: int, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    pop = population.train(model_fn, train, seeds=range(members), optimizer="momentum", hyper={"lr": 0.05},
                           steps=steps, batch_size=64, device=device, progress=False)
    sync(device)
    KEPT.append(str(pop.extra.get("threads", torch.get_num_threads())))
    return time.perf_counter() - start


def run_sequential(train: object, members: int, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for s in range(members):
        torch.manual_seed(s)
        gdlab.fit(model_fn(), train, seed=s, optimizer="momentum", lr=0.05, steps=steps, batch_size=64,
                  device=device, progress=False)  # threads="auto", as the population
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio sequential/population per M."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", default=None, help="comma-separated M values")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--busy", action="store_true", help="beside a busy neighbour (a python busy loop)")
    args = parser.parse_args(argv)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        return measure(args)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def measure(args: argparse.Namespace) -> dict[str, float]:
    """The pairs of ``main``, on the machine as it is."""
    cuda = args.device.startswith("cuda")
    default = "8,32,128,256,1024" if cuda else "8,32,128"
    sizes = [int(m) for m in (args.members or ("2,4" if args.quick else default)).split(",")]
    steps = 20 if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats
    train, _ = datasets.load("digits")
    device_name = torch.cuda.get_device_name() if cuda else cpu_model()
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {device_name}, {usable_cores()} usable "
          f"cores, {torch.get_num_threads()} torch threads; MLP 64-128-10, digits, {steps} steps of batch 64; "
          f"{'one busy neighbour' if args.busy else 'no neighbour started'}, load average {os.getloadavg()[0]:.1f}")
    run_population(train, 2, 5, args.device)  # warm-up: first-call costs (vmap, allocators) paid here
    run_sequential(train, 2, 5, args.device)
    print(f"{'M':>6} {'population s':>13} {'sequential s':>13} {'speed-up median (min, max)':>28}")
    results = {}
    for members in sizes:
        ratios, pops, seqs = [], [], []
        for r in range(repeats):
            order = [run_population, run_sequential] if r % 2 == 0 else [run_sequential, run_population]
            times = {fn.__name__: fn(train, members, steps, args.device) for fn in order}
            pops.append(times["run_population"])
            seqs.append(times["run_sequential"])
            ratios.append(times["run_sequential"] / times["run_population"])
        results[members] = statistics.median(ratios)
        print(f"{members:>6} {statistics.median(pops):13.2f} {statistics.median(seqs):13.2f} "
              f"{results[members]:14.1f}x ({min(ratios):.1f}, {max(ratios):.1f})  population's {KEPT[-1]}", flush=True)
    if 32 in results:
        verdict = "meets" if results[32] >= TARGET else "misses"
        print(f"ratio sequential/population at M=32: {results[32]:.2f}x ({verdict} the target >= {TARGET:g}x)")
    else:
        print(f"ratio sequential/population at M={sizes[-1]}: {results[sizes[-1]]:.2f}x")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    return {f"M={members}": ratio for members, ratio in results.items()}


if __name__ == "__main__":
    main()
