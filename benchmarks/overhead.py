"""The overhead of gdlab's fit loop (with its progress bar on) over a hand-written loop doing the same work, CPU.

What is measured: the wall time of ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=128, epochs=E,
progress=True, device="cpu")`` against a hand-written loop that batches by index exactly as gdlab does: per epoch a
permutation from ``torch.randperm`` with a seeded ``torch.Generator``, batches ``X.index_select(0, idx)`` of
consecutive slices of it (the kernel gdlab uses), ``torch.optim.SGD(lr=0.01)``, cross-entropy, ``loss.item()`` per
step, ``zero_grad``/``backward``/``step``. Model: MLP 784-256-10 (ReLU); data: N in-memory synthetic samples (random
float32 X [N, 784], int64 labels in 0..9, fixed seed; N = 60,000 by default).

The same work on both sides: same model and initial parameters (``torch.manual_seed`` before building it, outside
the timed region), same data, same number of steps (ceil(N / 128) per epoch, the last batch short), batch size 128,
same optimizer (``torch.optim.SGD``, momentum 0), float32, the same ``torch.set_num_threads`` (default 2), CPU. What
gdlab does beyond that is what is measured: its setup and checks, the per-step gradient norm and history row,
callbacks, and the progress bar. A third side, "hand+gn", is the hand loop plus the same per-step gradient norm
gdlab records (``gdlab.train._grad_norm``): gdlab / hand+gn is the cost of the framework alone. The bar is ON;
stderr is sent to an in-memory, non-terminal stream during the timed runs of both sides (what rich does when output
is redirected), unless ``--bar-to-stderr``.

How: one warm-up run of each side, then ``--repeats`` pairs alternated A, B, A, B (the side that goes first
alternates too); the ratio gdlab-time / hand-time is taken per pair and reported as the median with min and max. The
ratio is printed last.

Target: gdlab at most 1.05x the hand-written loop (ratio <= 1.05).

Command:
    python benchmarks/overhead.py            # full size (60,000 samples, batch 128, 1 epoch per run)
    python benchmarks/overhead.py --quick    # a tiny size, a few seconds: checks the script still runs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import cpu_model, make_data, make_mlp, usable_cores
from torch import nn

import gdlab
from gdlab.train import _grad_norm

TARGET = 1.05
FEATURES, CLASSES, BATCH = 784, 10, 128  # --features and --batch override them


def run_gdlab(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    start = time.perf_counter()
    gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=BATCH, epochs=epochs, seed=seed,
              progress=True, device="cpu")
    return time.perf_counter() - start


def run_hand(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
             grad_norm: bool = False) -> float:
    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    n = len(X)
    losses, norms = [], []
    params = list(model.parameters())
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if grad_norm:
                norms.append(_grad_norm(params))
            opt.step()
            losses.append(loss.item())
    return time.perf_counter() - start


def run_hand_gn(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    return run_hand(model, X, y, epochs, seed, grad_norm=True)


def main(argv: list[str] | None = None) -> None:
    global FEATURES, BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="training samples (default 60000)")
    parser.add_argument("--repeats", type=int, default=31, help="alternated pairs (default 31)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial parameters")
    parser.add_argument("--bar-to-stderr", action="store_true",
                        help="leave stderr alone: the bar draws on it (a terminal costs more than a redirect)")
    parser.add_argument("--features", type=int, default=FEATURES, help="input features (default 784)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default 128)")
    parser.add_argument("--quick", action="store_true", help="a tiny size (2,000 samples, 3 pairs): a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 2_000, 3
    FEATURES, BATCH = args.features, args.batch  # a small model shows the per-step bookkeeping alone

    torch.set_num_threads(args.threads)
    steps = -(-args.samples // BATCH) * args.epochs
    print("overhead: gdlab.fit (progress bar on) vs a hand-written index-batching loop, CPU")
    print(f"torch {torch.__version__}, gdlab {gdlab.__version__}, Python {platform.python_version()}")
    print(f"CPU: {cpu_model()}, {usable_cores()} cores usable, torch threads {torch.get_num_threads()}")
    print(f"MLP {FEATURES}-{args.hidden}-{CLASSES} (ReLU), {args.samples} samples float32, batch {BATCH}, "
          f"{args.epochs} epoch(s) = {steps} steps per run, SGD lr 0.01, cross-entropy, seed {args.seed}")
    print(f"progress bar on, drawn to {'stderr' if args.bar_to_stderr else 'an in-memory non-terminal stream'}")
    print("ratio = gdlab time / hand time per alternated pair: median (min, max); 1.00 means no overhead")
    sys.stdout.flush()

    X, y = make_data(args.samples, FEATURES, CLASSES, args.seed)
    sides = {"gdlab": run_gdlab, "hand": run_hand, "hand+gn": run_hand_gn}
    times: dict[str, list[float]] = {name: [] for name in sides}
    sink = contextlib.nullcontext() if args.bar_to_stderr else contextlib.redirect_stderr(io.StringIO())
    with sink:
        for fn in sides.values():  # warm-up of each side
            fn(make_mlp(args.seed, FEATURES, args.hidden, CLASSES), X, y, args.epochs, args.seed)
        for i in range(args.repeats):
            names = list(sides)
            order = names[i % 3:] + names[: i % 3]  # each side goes first in turn
            for name in order:
                # same initial parameters, made outside the timed region
                model = make_mlp(args.seed, FEATURES, args.hidden, CLASSES)
                times[name].append(sides[name](model, X, y, args.epochs, args.seed))

    per_pair = [g / h for g, h in zip(times["gdlab"], times["hand"])]
    framework = [g / h for g, h in zip(times["gdlab"], times["hand+gn"])]
    med = statistics.median(per_pair)
    g_med, h_med = statistics.median(times["gdlab"]), statistics.median(times["hand"])
    print()
    print(f"{args.repeats} pairs")
    print(f"  {'side':<8}{'median s/run':>14}{'us/step':>10}")
    print(f"  {'gdlab':<8}{g_med:>14.3f}{g_med / steps * 1e6:>10.0f}")
    print(f"  {'hand':<8}{h_med:>14.3f}{h_med / steps * 1e6:>10.0f}")
    gn_med = statistics.median(times["hand+gn"])
    print(f"  {'hand+gn':<8}{gn_med:>14.3f}{gn_med / steps * 1e6:>10.0f}")
    print(f"  difference of medians: {(g_med - h_med) / steps * 1e6:+.0f} us/step")
    print()
    print(f"ratio gdlab/(hand+gn), the framework alone: {statistics.median(framework):.3f}x "
          f"(min {min(framework):.3f}, max {max(framework):.3f})")
    verdict = "meets" if med <= TARGET else "misses"
    print(f"ratio gdlab/hand: {med:.3f}x (min {min(per_pair):.3f}, max {max(per_pair):.3f}; "
          f"{verdict} the target <= {TARGET:.2f}x)")


if __name__ == "__main__":
    main()
