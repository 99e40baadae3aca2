"""A 25x25 filter-normalised loss plane: gdlab.landscape.plane against loss-landscapes' random_plane.

What is measured: the wall time of ``gdlab.landscape.plane(model, data, steps=25, distance=1.0, samples=1000,
progress=False)`` against ``loss_landscapes.random_plane(model, Loss(cross_entropy, X, y), distance=1, steps=25,
normalization="filter", deepcopy_model=True)`` (PyPI ``loss-landscapes``), on the same model (the digits MLP
64-128-10 after 5 epochs of momentum SGD), the same 1,000 training samples and the same grid size, float32, CPU.
Each draws its own random directions. One warm-up each, then ``--repeats`` pairs alternated; the ratio
loss-landscapes time / gdlab time per pair, the median reported. The centre of gdlab's plane is checked against
the model's own loss on the same samples.

Target: at least as fast as loss-landscapes (ratio >= 1.0), with the centre equal to the model's loss.

Command:
    pip install loss-landscapes && python benchmarks/landscape.py
    python benchmarks/landscape.py --quick     # steps 5, one pair: checks the script still runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from _common import cpu_model, usable_cores
from torch import nn

import gdlab
from gdlab.data import TensorData, datasets
from gdlab.lab import landscape


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns ``loss-landscapes / gdlab`` (or ``gdlab s`` alone
    when loss-landscapes is not installed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps, repeats = (5, 1) if args.quick else (25, args.repeats)
    train, _ = datasets.load("digits")
    data = TensorData(train.X[:1000], train.y[:1000], num_classes=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    gdlab.fit(model, train, optimizer="momentum", lr=0.05, epochs=5, progress=False, instruments="none",
              doctor=False)
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {cpu_model()}, {usable_cores()} usable "
          f"cores, {torch.get_num_threads()} torch threads; digits MLP 64-128-10, {len(data)} samples, "
          f"{steps}x{steps} plane")

    def ours() -> float:
        start = time.perf_counter()
        land = landscape.plane(model, data, steps=steps, distance=1.0, samples=len(data), progress=False)
        elapsed = time.perf_counter() - start
        center = land.losses[steps // 2, steps // 2].item()
        expected = gdlab.evaluate(model, data)["loss"]
        assert abs(center - expected) <= 1e-5 * expected, (center, expected)
        return elapsed

    try:
        import loss_landscapes
        from loss_landscapes.metrics import Loss
    except ImportError:
        ours()
        seconds = ours()
        print(f"gdlab: {seconds:.3f} s; loss-landscapes is not installed (pip install loss-landscapes): ratio n/a")
        return {"gdlab s": seconds}

    metric = Loss(nn.functional.cross_entropy, data.X, data.y)

    def theirs() -> float:
        start = time.perf_counter()
        loss_landscapes.random_plane(model, metric, distance=1, steps=steps, normalization="filter",
                                     deepcopy_model=True)
        return time.perf_counter() - start

    ours()
    theirs()
    ratios, mine, other = [], [], []
    for r in range(repeats):
        pair = (ours, theirs) if r % 2 == 0 else (theirs, ours)
        times = {fn.__name__: fn() for fn in pair}
        mine.append(times["ours"])
        other.append(times["theirs"])
        ratios.append(times["theirs"] / times["ours"])
    print(f"gdlab {statistics.median(mine):.3f} s, loss-landscapes {statistics.median(other):.3f} s "
          f"(medians of {repeats}); the centre equals the model's loss")
    median = statistics.median(ratios)
    verdict = "meets" if median >= 1.0 else "misses"
    print(f"ratio loss-landscapes / gdlab: {median:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}; {verdict} the "
          "target >= 1.0)")
    return {"loss-landscapes / gdlab": median}


if __name__ == "__main__":
    main()
