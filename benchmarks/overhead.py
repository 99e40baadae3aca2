"""The overhead of gdlab's fit loop over a hand-written loop doing the same work: bare, and with its defaults.

What is measured: the wall time of one epoch of ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01,
batch_size=128, progress=True)`` in three settings against a hand-written loop that batches by index exactly as
gdlab does: per epoch a permutation from ``torch.randperm`` with a seeded ``torch.Generator``, batches
``X.index_select(0, idx)`` of consecutive slices of it, ``torch.optim.SGD(lr=0.01)``, cross-entropy,
``loss.item()`` per step (as such loops are written), ``zero_grad``/``backward``/``step``. Model: MLP 784-256-10
(ReLU); data: N in-memory synthetic samples (random float32 X [N, 784], int64 labels in 0..9, fixed seed;
N = 60,000 by default).

The gdlab sides:
- ``bare``: ``instruments="none", doctor=False`` (target: at most 1.05x the hand loop);
- ``bare+torch``: the same with a ``torch.optim.SGD`` passed in (the loop alone, gdlab's optimizer aside);
- ``defaults``: gdlab's instruments and doctor as they come (target: at most 1.15x).

The same work on every side: same model and initial parameters (``torch.manual_seed`` before building it, outside
the timed region), same data, same number of steps (ceil(N / 128) per epoch), batch size 128, SGD with momentum 0,
float32, the same ``torch.set_num_threads`` (default 2), the same device. gdlab's bar is on; stderr is sent to an
in-memory, non-terminal stream during the timed runs, unless ``--bar-to-stderr``.

How: one warm-up run of each side, then ``--repeats`` rounds of all sides alternated (the side that goes first
rotates); each gdlab side's time is divided by the hand loop's of the same round and reported as the median with
min and max. It also counts the host syncs per step of each side (``Tensor.item``, ``tolist``, ``__float__``,
``__int__``, ``__bool__`` called from Python, one counted run each). On a GPU (``--device cuda``) it synchronises
before reading the clock.

Command:
    python benchmarks/overhead.py                   # full size (60,000 samples, batch 128, 1 epoch per run)
    python benchmarks/overhead.py --device cuda --batch 1024
    python benchmarks/overhead.py --quick           # a tiny size, a few seconds: checks the script still runs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_model, make_data, make_mlp, usable_cores
from torch import nn

import gdlab

TARGETS = {"bare": 1.05, "defaults": 1.15}
CLASSES = 10
SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__")


def gdlab_side(**settings: Any) -> Callable[..., float]:
    """A side running ``gdlab.fit`` with ``settings`` (``torch_sgd=True``: a torch.optim.SGD passed in)."""
    torch_sgd = settings.pop("torch_sgd", False)

    def side(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int) -> float:
        optimizer: Any = torch.optim.SGD(model.parameters(), lr=0.01) if torch_sgd else "sgd"
        _sync(X.device)
        start = time.perf_counter()
        gdlab.fit(model, (X, y), optimizer=optimizer, lr=0.01, batch_size=batch, epochs=epochs, seed=seed,
                  device=X.device, threads=torch.get_num_threads(), **{"progress": True, **settings})
        _sync(X.device)
        return time.perf_counter() - start

    return side


def hand(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int) -> float:
    """The loop everyone writes, batching by index as gdlab does."""
    _sync(X.device)
    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    n = len(X)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(X.device)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    _sync(X.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counting_syncs() -> Iterator[dict[str, int]]:
    """Count the Python calls that make the host wait for a tensor's value."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counted(original: Any) -> Any:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts["n"] += 1
            return original(self, *args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio side/hand per gdlab side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="training samples (default 60000)")
    parser.add_argument("--repeats", type=int, default=31, help="alternated rounds (default 31)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP (default 256)")
    parser.add_argument("--features", type=int, default=784, help="input features (default 784)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every side (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial parameters")
    parser.add_argument("--bar-to-stderr", action="store_true",
                        help="leave stderr alone: the bar draws on it (a terminal costs more than a redirect)")
    parser.add_argument("--quick", action="store_true", help="a tiny size (2,000 samples, 3 rounds): a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 2_000, 3

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = -(-args.samples // args.batch) * args.epochs
    print("overhead: gdlab.fit (progress bar on) vs a hand-written index-batching loop")
    print(f"torch {torch.__version__}, gdlab {gdlab.__version__}, Python {platform.python_version()}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_model()}, {usable_cores()} cores usable, torch threads {torch.get_num_threads()}"
    print(f"device: {where}")
    print(f"MLP {args.features}-{args.hidden}-{CLASSES} (ReLU), {args.samples} samples float32, batch {args.batch}, "
          f"{args.epochs} epoch(s) = {steps} steps per run, SGD lr 0.01, cross-entropy, seed {args.seed}")
    print(f"progress bar on, drawn to {'stderr' if args.bar_to_stderr else 'an in-memory non-terminal stream'}")
    print("ratio = gdlab time / hand time per round: median (min, max); 1.00 means no overhead")
    sys.stdout.flush()

    X, y = make_data(args.samples, args.features, CLASSES, args.seed)
    X, y = X.to(device), y.to(device)
    sides: dict[str, Callable[..., float]] = {
        "hand": hand,
        "bare": gdlab_side(instruments="none", doctor=False),
        "bare+torch": gdlab_side(instruments="none", doctor=False, torch_sgd=True),
        "defaults": gdlab_side(),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    syncs: dict[str, float] = {}

    def model() -> nn.Module:  # same initial parameters, made outside the timed region
        return make_mlp(args.seed, args.features, args.hidden, CLASSES).to(device)

    sink = contextlib.nullcontext() if args.bar_to_stderr else contextlib.redirect_stderr(io.StringIO())
    with sink:
        for name, fn in sides.items():  # warm-up of each side, counting its host syncs
            with counting_syncs() as counts:
                fn(model(), X, y, args.epochs, args.seed, args.batch)
            syncs[name] = counts["n"] / steps
        names = list(sides)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[: i % len(names)]:  # each side goes first in turn
                times[name].append(sides[name](model(), X, y, args.epochs, args.seed, args.batch))

    print()
    print(f"{args.repeats} rounds")
    print(f"  {'side':<12}{'median s/run':>14}{'us/step':>10}{'syncs/step':>12}")
    for name in sides:
        med = statistics.median(times[name])
        print(f"  {name:<12}{med:>14.3f}{med / steps * 1e6:>10.0f}{syncs[name]:>12.3f}")
    print()
    medians: dict[str, float] = {}
    for name in ("bare+torch", "bare", "defaults"):
        ratios = [g / h for g, h in zip(times[name], times["hand"])]
        med = medians[f"{name}/hand"] = statistics.median(ratios)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"; {'meets' if med <= target else 'misses'} the target <= {target:.2f}x"
        print(f"ratio {name}/hand: {med:.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}{verdict})")
    return medians


if __name__ == "__main__":
    main()
