"""The cost of the instruments on every shape of run: ``gdlab.fit`` with instruments ``cheap``, ``default`` and
``full`` against ``none``.

What is measured: the time of ``gdlab.fit(model, data, optimizer="momentum", lr=0.05, batch_size=B, epochs=E or
steps=S, progress=False, instruments=LEVEL, doctor=LEVEL != "none")`` for each level, divided by the time with
``instruments="none", doctor=False``, on each shape of :data:`SHAPES`:

- an MLP 64-128-10 (ReLU) on digits at batch 64, and at the batch sizes that change what a step costs against a
  measurement: the full batch (one step an epoch: the epoch's fixed costs every step), batch 1 (stochastic descent:
  the periodic instruments need an extra pass), batch 32 and batch 128;
- a small CNN on digits as 1x8x8 images (conv 8 3x3, ReLU, conv 16 3x3, ReLU, global average pool, linear 16-10);
- an LSTM over digits as 8 rows of 8 pixels (LSTM 8-32, linear 32-10 on the last state);
- a transformer over the same 8 rows as tokens (linear 8-32, one encoder layer of 4 heads, feed-forward 64,
  mean over tokens, linear 32-10).

Same model and initial parameters (``torch.manual_seed(0)`` before building it), same data and batches (seed 0),
float32, CPU, ``torch.set_num_threads(--threads)`` (1 by default). The doctor's detectors run once, at the end of
the run, inside the timed region.

How: per shape one warm-up run per level, then ``--repeats`` rounds; in each round every level runs once, the order
of the levels rotating; per level the median over rounds of its time / the same round's ``none`` time (the figure
held against the target) with a 90% bootstrap interval of that median (the rounds resampled), and "own code": 1 +
the time spent in the instruments' and the doctor's own code (their callbacks and the periodic hooks inside the
step, timed from within) over the rest of the run, the median of 3 runs; a shared machine's noise hardly reaches
it, though it leaves out what the code costs the rest (caches, the longer step rows). "periodic" is the default
level's time over the cheap level's: what the periodic instruments add. ``--clock cpu`` times by the process's CPU
time (with one thread: the work done, which other processes on a loaded machine hardly touch).

Targets: cheap at most 1.05x, default at most 1.10x (on every shape), full at most 2x.

Command:
    python benchmarks/doctor_overhead.py                     # every shape, 21 rounds (about 5 minutes idle)
    python benchmarks/doctor_overhead.py --shapes "MLP full batch,MLP batch 1" --clock cpu
    python benchmarks/doctor_overhead.py --quick             # tiny budgets, 1 round: checks the script still runs
    python benchmarks/doctor_overhead.py --device cuda --repeats 21   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import cpu_model, usable_cores
from torch import nn

import gdlab
from gdlab.data import TensorData, datasets

LEVELS = ("none", "cheap", "default", "full")
TARGETS = {"cheap": 1.05, "default": 1.10, "full": 2.0}
DEVICE = "cpu"
CLOCK = time.perf_counter  # --clock cpu: time.process_time


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class LSTM(nn.Module):
    """An LSTM over the rows of a digit (8 steps of 8 pixels); the class from the last state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 32, batch_first=True), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class Transformer(nn.Module):
    """One encoder layer over the rows of a digit as 8 tokens; the class from their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


@dataclass(frozen=True)
class Shape:
    """A run's shape: the model, the digits as it reads them, the batch size and the budget."""

    name: str
    make: Callable[[], nn.Module]
    view: tuple[int, ...]  # each sample's shape
    batch: int | str
    budget: dict[str, int]  # epochs or steps


SHAPES = (
    Shape("MLP batch 64", mlp, (64,), 64, {"epochs": 5}),
    Shape("MLP full batch", mlp, (64,), "full", {"epochs": 100}),
    Shape("MLP batch 1", mlp, (64,), 1, {"steps": 300}),
    Shape("MLP batch 32", mlp, (64,), 32, {"epochs": 3}),
    Shape("MLP batch 128", mlp, (64,), 128, {"epochs": 8}),
    Shape("CNN batch 64", cnn, (1, 8, 8), 64, {"epochs": 5}),
    Shape("LSTM batch 64", LSTM, (8, 8), 64, {"epochs": 5}),
    Shape("transformer batch 64", Transformer, (8, 8), 64, {"epochs": 5}),
)


def run(shape: Shape, data: TensorData, level: str, budget: dict[str, int]) -> float:
    torch.manual_seed(0)
    model = shape.make()
    start = CLOCK()
    gdlab.fit(model, data, optimizer="momentum", lr=0.05, batch_size=shape.batch, progress=False,
              instruments=level, doctor=level != "none", device=DEVICE, threads=torch.get_num_threads(), **budget)
    return CLOCK() - start


EVENTS = ("on_fit_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")


def attributed(shape: Shape, data: TensorData, level: str, budget: dict[str, int]) -> float:
    """The time spent in the instruments' and the doctor's own code (their callbacks, and the periodic hooks
    inside the step), over the rest of the run: the overhead without the machine's noise in it."""
    from gdlab.doctor import Doctor
    from gdlab.instruments import Cheap, Expensive, Periodic

    spent = [0.0]
    saved = []
    for cls in (Cheap, Periodic, Expensive, Doctor):
        for event in EVENTS:
            method = cls.__dict__.get(event)
            if method is None:
                continue
            saved.append((cls, event, method))

            def timed(self: Any, state: Any, _method: Any = method, _event: str = event) -> None:
                budget_ = getattr(self, "budget", None)
                if isinstance(self, Periodic) and _event == "on_step_end" and budget_ is not None:
                    spent[0] += budget_.spent - getattr(self, "_spent_at_start", budget_.spent)  # hooks in the step
                start = time.perf_counter()
                _method(self, state)
                spent[0] += time.perf_counter() - start
                if isinstance(self, Periodic) and _event == "on_step_start":
                    self._spent_at_start = self.budget.spent

            setattr(cls, event, timed)
    try:
        start = time.perf_counter()
        run(shape, data, level, budget)
        total = time.perf_counter() - start
    finally:
        for cls, event, method in saved:
            setattr(cls, event, method)
    return spent[0] / (total - spent[0])


def interval(ratios: list[float], draws: int = 2000, level: float = 0.9) -> tuple[float, float]:
    """A bootstrap interval of the median of ``ratios``: the rounds resampled with replacement ``draws`` times."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    tail = (1 - level) / 2
    return medians[int(tail * draws)], medians[min(draws - 1, int((1 - tail) * draws))]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the worst median ratio level/none per level."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="alternated rounds per shape (default 21)")
    parser.add_argument("--shapes", default="", help="comma-separated names of SHAPES (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default), or cpu: the process's CPU time (one thread, a loaded machine)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 1 round: checks the script still runs")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent (fit syncs every step)")
    args = parser.parse_args(argv)
    global DEVICE, CLOCK
    DEVICE = args.device
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    wanted = {n.strip() for n in args.shapes.split(",") if n.strip()}
    unknown = wanted - {s.name for s in SHAPES}
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}: expected some of {[s.name for s in SHAPES]}")
    shapes = [s for s in SHAPES if not wanted or s.name in wanted]
    repeats = 1 if args.quick else args.repeats
    train, _ = datasets.load("digits")
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {cpu_model()}, {usable_cores()} usable "
          f"cores, {torch.get_num_threads()} torch threads; digits ({len(train)} samples); {repeats} rounds; "
          f"{args.clock} clock; device {torch.cuda.get_device_name() if DEVICE.startswith('cuda') else DEVICE}")
    worst = {k: 0.0 for k in TARGETS}
    for shape in shapes:
        data = TensorData(train.X.reshape(-1, *shape.view), train.y, num_classes=10)
        budget = {k: 2 for k in shape.budget} if args.quick else shape.budget
        for level in LEVELS:
            run(shape, data, level, budget)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in LEVELS}
        for r in range(repeats):
            for level in LEVELS[r % 4:] + LEVELS[: r % 4]:
                times[level].append(run(shape, data, level, budget))
        per_epoch = 1 if shape.batch == "full" else -(-len(train) // int(shape.batch))
        steps = budget.get("steps") or budget["epochs"] * per_epoch
        print(f"{shape.name} ({steps} steps): none {1e3 * statistics.median(times['none']) / steps:.3f} ms/step")
        for level in TARGETS:
            ratios = [t / n for t, n in zip(times[level], times["none"])]
            median = statistics.median(ratios)
            worst[level] = max(worst[level], median)
            own = statistics.median(attributed(shape, data, level, budget) for _ in range(1 if args.quick else 3))
            low, high = interval(ratios)
            print(f"  {level:8} {1e3 * statistics.median(times[level]) / steps:7.3f} ms/step  ratio {median:.3f}x "
                  f"[90%: {low:.3f}-{high:.3f}] (min {min(ratios):.3f}, max {max(ratios):.3f}; own code "
                  f"{1 + own:.3f}x; target <= {TARGETS[level]:g}x)")
        periodic = statistics.median(d / c for d, c in zip(times["default"], times["cheap"]))
        print(f"  periodic (default / cheap) {periodic:.3f}x")
    print("ratio (worst over the shapes): " + ", ".join(f"{k} {v:.3f}x" for k, v in worst.items()))
    return worst


if __name__ == "__main__":
    main()
