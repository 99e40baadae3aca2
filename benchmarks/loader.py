"""gdlab's index batching against a plain PyTorch DataLoader loop, one epoch on in-memory data, on the CPU.

What is measured: the wall time of one epoch of an MLP 784-256-10 (ReLU) on N in-memory synthetic samples
(random float32 X [N, 784], int64 labels in 0..9, fixed seed; N = 60,000 by default) at batch 32, 128 and 1024.

- gdlab: ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=B, epochs=1, progress=False,
  device="cpu")``. gdlab batches in-memory tensors by index (``X[idx]`` with a per-epoch permutation).
- DataLoader: the plain loop over ``DataLoader(TensorDataset(X, y), batch_size=B, shuffle=True)`` (default
  ``num_workers=0``), ``torch.optim.SGD(lr=0.01)``, cross-entropy, ``zero_grad``/``backward``/``step`` and
  ``loss.item()`` per step, as a typical loop logs it.

The same work on both sides: same model, same initial parameters (``torch.manual_seed`` before building the
model; the model is built outside the timed region), same data, same number of steps and batch size, same
optimizer (``torch.optim.SGD``, momentum 0), float32, ``torch.set_num_threads`` the same for both (default 2),
CPU. Each timed run includes what each side sets up for itself (gdlab's checks and batch plan; the
DataLoader and optimizer of the plain loop).

How: per batch size, one warm-up run of each side, then ``--repeats`` pairs alternated A, B, A, B (the side that
goes first alternates too); the ratio DataLoader-time / gdlab-time is taken per pair and reported as the median
with min and max. The ratio at batch 128 is printed last.

``--floor`` adds a reference run after each pair: the same loop over batches made before the clock starts
(contiguous slices of a pre-shuffled copy of X), i.e. the model's compute alone with no batching cost. The
ratio DataLoader-time / floor-time is the most any batching could gain over the DataLoader at that batch size.

Target: gdlab at least 2x faster than the DataLoader loop at batch 128 on the CPU (ratio >= 2.0).

Command:
    python benchmarks/loader.py            # full size (60,000 samples, batch 32, 128, 1024)
    python benchmarks/loader.py --floor    # also the compute-only floor (about 1.5x the time)
    python benchmarks/loader.py --quick    # a tiny size, a few seconds: checks the script still runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
from _common import cpu_model, make_data, make_mlp, plain_loop, usable_cores
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gdlab

TARGET = 2.0
FEATURES, HIDDEN, CLASSES = 784, 256, 10


def make_model(seed: int) -> nn.Module:
    return make_mlp(seed, FEATURES, HIDDEN, CLASSES)


def run_gdlab(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=batch, epochs=1, progress=False, device="cpu",
              threads=torch.get_num_threads())  # the peer's count, not gdlab's choice
    return time.perf_counter() - start


def run_dataloader(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    return plain_loop(model, DataLoader(TensorDataset(X, y), batch_size=batch, shuffle=True))


def run_floor(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return plain_loop(model, batches)


def measure(X: torch.Tensor, y: torch.Tensor, batch: int, repeats: int, seed: int,
            floor: bool) -> dict[str, list[float]]:
    sides = {"gdlab": run_gdlab, "dataloader": run_dataloader}
    for fn in sides.values():  # warm-up of each side
        fn(make_model(seed), X, y, batch)
    premade: list[tuple[torch.Tensor, torch.Tensor]] = []
    if floor:  # batches made before any clock starts: contiguous slices of a shuffled copy
        perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
        Xs, ys = X[perm], y[perm]
        premade = [(Xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(X), batch)]
        run_floor(make_model(seed), premade)
    times: dict[str, list[float]] = {name: [] for name in (*sides, "floor")}
    for i in range(repeats):
        order = ["gdlab", "dataloader"] if i % 2 == 0 else ["dataloader", "gdlab"]
        for name in order:
            model = make_model(seed)  # same initial parameters on both sides, built outside the timed region
            times[name].append(sides[name](model, X, y, batch))
        if floor:
            times["floor"].append(run_floor(make_model(seed), premade))
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio DataLoader/gdlab per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="training samples (default 60000)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternated pairs per batch size (default 7 at batch 32, 9 at 128, 15 at 1024)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1024, 128],
                        help="batch sizes; 128, when given, is printed last (default 32 1024 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial parameters")
    parser.add_argument("--floor", action="store_true",
                        help="also time the compute alone on pre-made batches (a reference, not a side)")
    parser.add_argument("--quick", action="store_true", help="a tiny size (2,000 samples, 3 pairs): a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 2_000, args.repeats or 3
    batch_sizes = sorted(set(args.batch_sizes), key=lambda b: (b == 128, args.batch_sizes.index(b)))

    torch.set_num_threads(args.threads)
    print("loader: gdlab.fit (index batching) vs a DataLoader(TensorDataset) loop, one epoch, CPU")
    print(f"torch {torch.__version__}, gdlab {gdlab.__version__}, Python {platform.python_version()}")
    print(f"CPU: {cpu_model()}, {usable_cores()} cores usable, torch threads {torch.get_num_threads()}")
    print(f"MLP {FEATURES}-{HIDDEN}-{CLASSES} (ReLU), {args.samples} samples float32, SGD lr 0.01, "
          f"cross-entropy, seed {args.seed}")
    print("ratio = DataLoader time / gdlab time per alternated pair: median (min, max); > 1 means gdlab faster")
    sys.stdout.flush()

    X, y = make_data(args.samples, FEATURES, CLASSES, args.seed)
    ratios: dict[int, float] = {}
    for batch in batch_sizes:
        repeats = args.repeats or {32: 7, 128: 9}.get(batch, 15)
        times = measure(X, y, batch, repeats, args.seed, args.floor)
        per_pair = [d / g for g, d in zip(times["gdlab"], times["dataloader"])]
        steps = -(-args.samples // batch)
        med = statistics.median(per_pair)
        ratios[batch] = med
        g_med, d_med = statistics.median(times["gdlab"]), statistics.median(times["dataloader"])
        print()
        print(f"batch {batch}: {steps} steps per epoch, {repeats} pairs")
        print(f"  {'side':<12}{'median s/epoch':>16}{'us/step':>10}")
        print(f"  {'gdlab':<12}{g_med:>16.3f}{g_med / steps * 1e6:>10.0f}")
        print(f"  {'DataLoader':<12}{d_med:>16.3f}{d_med / steps * 1e6:>10.0f}")
        if times["floor"]:
            f_med = statistics.median(times["floor"])
            print(f"  {'floor':<12}{f_med:>16.3f}{f_med / steps * 1e6:>10.0f}   (compute only, pre-made batches)")
        print(f"  ratio DataLoader/gdlab: {med:.2f}x (min {min(per_pair):.2f}, max {max(per_pair):.2f})")
        if times["floor"]:
            best = [d / f for d, f in zip(times["dataloader"], times["floor"])]
            print(f"  ratio DataLoader/floor: {statistics.median(best):.2f}x (min {min(best):.2f}, "
                  f"max {max(best):.2f}): the most any batching could reach")
        sys.stdout.flush()

    print()
    if 128 in ratios:
        verdict = "meets" if ratios[128] >= TARGET else "misses"
        print(f"ratio DataLoader/gdlab at batch 128: {ratios[128]:.2f}x ({verdict} the target >= {TARGET:.1f}x)")
    else:
        last = batch_sizes[-1]
        print(f"ratio DataLoader/gdlab at batch {last}: {ratios[last]:.2f}x (target >= {TARGET:.1f}x is at 128)")
    return {f"batch {batch}": ratio for batch, ratio in ratios.items()}


if __name__ == "__main__":
    main()
