"""How often the loop should read its per-step values on the host: ``fit``'s time at several ``log_every``.

What is measured: the wall time of ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=B, epochs=1,
instruments="none", doctor=False, progress=False, log_every=L)`` for L in 1, 10, 50 and 200, against the
hand-written index loop of ``overhead.py`` (the peer: ``loss.item()`` every step). Each read costs one host sync
plus the rollback snapshot (a copy of the parameters and the optimizer state) and a norm of the parameters; a
larger L reads less often, but a divergence is caught later (up to L steps are redone from the snapshot). On a
CPU a sync costs little; on a GPU it stalls the queue, which is where a larger L pays.

The same work on every side: a small MLP (the per-step bookkeeping weighs most there) and the 784-256-10 one,
same data, initial parameters, steps, batch size, threads and device. Rounds alternate the sides (the side that
goes first rotates); the ratio is taken per round against the hand loop and reported as the median (min, max).

Command:
    python benchmarks/log_every.py            # 60,000 samples, batch 128, 11 rounds
    python benchmarks/log_every.py --device cuda
    python benchmarks/log_every.py --quick    # a tiny size: checks the script still runs
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from _common import cpu_model, make_data, make_mlp, usable_cores
from overhead import gdlab_side, hand

import gdlab

EVERY = (1, 10, 50, 200)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio ``MLP f-h-10 L=n/hand``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 2_000, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("log_every: gdlab.fit (no instruments, no doctor, no bar) at several log_every vs the hand loop")
    print(f"torch {torch.__version__}, gdlab {gdlab.__version__}, Python {platform.python_version()}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_model()}, {usable_cores()} cores usable, torch threads {torch.get_num_threads()}"
    print(f"device: {where}; {args.samples} samples, batch {args.batch}, 1 epoch per run, {args.repeats} rounds")
    medians: dict[str, float] = {}
    for features, hidden in ((64, 64), (784, 256)):
        X, y = make_data(args.samples, features, 10, 0)
        X, y = X.to(device), y.to(device)
        sides = {"hand": hand, **{f"L={n}": gdlab_side(instruments="none", doctor=False, progress=False,
                                                         log_every=n) for n in EVERY}}
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(args.repeats + 1):  # the first round warms up
            for name in names[i % len(names):] + names[: i % len(names)]:
                model = make_mlp(0, features, hidden, 10).to(device)
                seconds = sides[name](model, X, y, 1, 0, args.batch)
                if i:
                    times[name].append(seconds)
        per_step = statistics.median(times["hand"]) / -(-args.samples // args.batch) * 1e6
        print(f"\nMLP {features}-{hidden}-10: hand {per_step:.0f} us/step")
        for name in names[1:]:
            ratios = [g / h for g, h in zip(times[name], times["hand"])]
            low, high = min(ratios), max(ratios)
            medians[f"MLP {features}-{hidden}-10 {name}/hand"] = statistics.median(ratios)
            print(f"  ratio {name}/hand: {statistics.median(ratios):.3f}x (min {low:.3f}, max {high:.3f})")
    return medians


if __name__ == "__main__":
    main()
