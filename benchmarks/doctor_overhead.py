"""The cost of the instruments: ``gdlab.fit`` with instruments ``cheap``, ``default`` and ``full`` against ``none``.

What is measured: the wall time of ``gdlab.fit(model, data, optimizer="momentum", lr=0.05, batch_size=64, epochs=E,
progress=False, instruments=LEVEL, doctor=LEVEL != "none")`` for each level, divided by the time with
``instruments="none", doctor=False``. Same model and initial parameters (``torch.manual_seed(0)`` before building
it), same data and batches (seed 0), float32, CPU, ``torch.set_num_threads`` left at its default. Models: the
digits MLP 64-128-10 (ReLU) and a small CNN on digits as 1x8x8 images (conv 8 3x3, ReLU, conv 16 3x3, ReLU, global
average pool, linear 16-10). The doctor's detectors run once, at the end of the run, inside the timed region.

How: one warm-up run per level, then ``--repeats`` rounds; in each round every level runs once, the order of the
levels rotating; per level the median over rounds of its time / the same round's ``none`` time (the figure held
against the target) with a 90% bootstrap interval of that median (the rounds resampled: how far the noise of
this machine leaves the figure uncertain), and beside it the ratio of the fastest runs (the least disturbed by
other work on a shared machine) and "own code": 1 + the time spent in the instruments' and the doctor's own code
(their callbacks and the periodic hooks inside the step, timed from within) over the rest of the run, the median
of 3 runs; a shared machine's noise hardly reaches it, though it leaves out what the code costs the rest (caches,
the longer step rows). Here one round's ratio swings by 10% or more either way, about the same for runs of 5 or
10 epochs, so many short rounds pin the median down better than fewer long ones: 101 rounds of 5 epochs (115
steps) leave it about +-1.5% (the interval shows it).

Targets: cheap at most 1.05x, default at most 1.15x, full at most 2x.

Command:
    python benchmarks/doctor_overhead.py            # both models, 5 epochs per run, 101 rounds (about 4 minutes)
    python benchmarks/doctor_overhead.py --quick    # 1 epoch, 1 round: checks the script still runs
    python benchmarks/doctor_overhead.py --device cuda --repeats 21   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
from _common import cpu_model, usable_cores
from torch import nn

import gdlab
from gdlab.data import TensorData, datasets

LEVELS = ("none", "cheap", "default", "full")
TARGETS = {"cheap": 1.05, "default": 1.15, "full": 2.0}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


DEVICE = "cpu"


def run(make: object, data: TensorData, level: str, epochs: int) -> float:
    torch.manual_seed(0)
    model = make()  # type: ignore[operator]
    start = time.perf_counter()
    gdlab.fit(model, data, optimizer="momentum", lr=0.05, batch_size=64, epochs=epochs, progress=False,
              instruments=level, doctor=level != "none", device=DEVICE)
    return time.perf_counter() - start


EVENTS = ("on_fit_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")


def attributed(make: object, data: TensorData, level: str, epochs: int) -> float:
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

            def timed(self: object, state: object, _method: object = method, _event: str = event) -> None:
                budget = getattr(self, "budget", None)
                if isinstance(self, Periodic) and _event == "on_step_end" and budget is not None:
                    spent[0] += budget.spent - getattr(self, "_spent_at_start", budget.spent)  # hooks in the step
                start = time.perf_counter()
                _method(self, state)  # type: ignore[operator]
                spent[0] += time.perf_counter() - start
                if isinstance(self, Periodic) and _event == "on_step_start":
                    self._spent_at_start = self.budget.spent  # type: ignore[attr-defined]

            setattr(cls, event, timed)
    try:
        total = run(make, data, level, epochs)
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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent (fit syncs every step)")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    train, _ = datasets.load("digits")
    images = TensorData(train.X.reshape(-1, 1, 8, 8), train.y, num_classes=10)
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {cpu_model()}, {usable_cores()} usable "
          f"cores, {torch.get_num_threads()} torch threads; digits, batch 64, {epochs} epochs per run; device "
          f"{torch.cuda.get_device_name() if DEVICE.startswith('cuda') else DEVICE}")
    worst = {k: 0.0 for k in TARGETS}
    for name, make, data in (("MLP 64-128-10", mlp, train), ("CNN 8-16", cnn, images)):
        for level in LEVELS:
            run(make, data, level, 1)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in LEVELS}
        for r in range(repeats):
            order = LEVELS[r % 4:] + LEVELS[: r % 4]
            for level in order:
                times[level].append(run(make, data, level, epochs))
        steps = epochs * -(-len(train) // 64)
        print(f"{name}: none {1e3 * statistics.median(times['none']) / steps:.3f} ms/step")
        for level in TARGETS:
            ratios = [t / n for t, n in zip(times[level], times["none"])]
            median = statistics.median(ratios)
            worst[level] = max(worst[level], median)
            fastest = min(times[level]) / min(times["none"])
            own = statistics.median(attributed(make, data, level, epochs) for _ in range(3))
            low, high = interval(ratios)
            print(f"  {level:8} {1e3 * statistics.median(times[level]) / steps:7.3f} ms/step  ratio {median:.3f}x "
                  f"[90%: {low:.3f}-{high:.3f}] (min {min(ratios):.3f}, max {max(ratios):.3f}; fastest runs "
                  f"{fastest:.3f}x; own code {1 + own:.3f}x; target <= {TARGETS[level]:g}x)")
    print("ratio (worst over the models): " + ", ".join(f"{k} {v:.3f}x" for k, v in worst.items()))
    return worst


if __name__ == "__main__":
    main()
