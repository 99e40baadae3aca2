"""The cost of gdlab.watch on a hand-written loop: the same loop with and without it, runs alternated.

Sides (each run ``--epochs`` epochs of the digits, 10 by default: 450 steps; the same initial parameters and
batches):
- hand:    the loop everyone writes (SGD with momentum, cross-entropy, no per-step ``.item()``);
- cheap:   the same loop with ``gdlab.watch(model, opt, instruments="cheap")`` and ``doctor.step(loss)``;
- default: the same with the default instruments (cheap + periodic: noise scale, activations, gradient per layer).

Models: the digits MLP (64-128-10, batch 32) and a small CNN on the digits as 1x8x8 images (batch 32).
Targets (issue 15): default <= 1.10x and cheap <= 1.03x of the hand loop. Prints the median ratio per model and side,
and where watch's cost goes: its fixed part (``gdlab.watch(...)`` and ``close()``, the diagnosis included) per run
and the rest per step.

Two figures per side: the median over the rounds of each run's ratio to the hand run next to it, and the ratio of
the runs' floors: each step's fastest time over the rounds, summed (with the median setup and close), which the
noise of a shared machine (another process's turn, a slow round) leaves out on both sides alike.

``--floors`` adds a side with ``gdlab.watch(model, opt, instruments="none")``: the loss filed each step, the host
reads and the doctor (its gradient norms every 20th step, its diagnosis at close) without any instrument, the
least an instrument level can cost; ``--probes`` adds bare per-step calls (the least a call that keeps the loss
can cost).

``--clock cpu`` times each run by the CPU time of the training thread (``time.thread_time``) instead of the wall
clock: on a machine shared with other work, another process's turn on the core then lands in neither side (both
sides run on this one thread: 1 torch thread, no workers).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gdlab
from gdlab.data import datasets

SIDES = ("hand", "cheap", "default")
FLOORS = ("none",)  # --floors: watch with the doctor and no instruments (the least any instrument level can cost)


class _Probe:
    """A side of ``--probes``: the least a per-step call that keeps the loss on the device can cost."""

    def __init__(self, keep: str) -> None:
        self.keep = keep
        self.kept: list[torch.Tensor] = []

    def step(self, loss: torch.Tensor) -> None:
        if self.keep == "call":
            return
        detached = loss.detach()
        if self.keep == "append":
            self.kept.append(detached)
            if len(self.kept) == 60:
                self.kept = []


PROBES: dict[str, Callable[[], Any]] = {
    "call": lambda: _Probe("call"),  # a Python call a step that does nothing
    "detach": lambda: _Probe("detach"),  # loss.detach() a step
    "append": lambda: _Probe("append"),  # the detached loss appended to a list
}
TARGETS = {"cheap": 1.03, "default": 1.10}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))


def one_epoch(make: Callable[[], nn.Module], batches: list[tuple[torch.Tensor, torch.Tensor]], side: str,
              clock: Callable[[], float] = time.perf_counter,
              steps: list[float] | None = None) -> tuple[float, float]:
    """Seconds of one run of the loop on ``side`` (watch's setup and close included), and of its fixed part (setup
    and close); each step's seconds appended to ``steps``."""
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = clock()
    doctor: Any = None if side == "hand" else PROBES[side]() if side in PROBES else \
        gdlab.watch(model, opt, instruments=side)
    fixed = clock() - start
    steps = [] if steps is None else steps
    before = clock()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if doctor is not None:
            doctor.step(loss)
        now = clock()
        steps.append(now - before)
        before = now
    closing = clock()
    if doctor is not None and side not in PROBES:
        doctor.close()
    else:
        float(loss.detach())  # the hand loop reads its last loss too
    end = clock()
    return end - start, fixed + end - closing


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio ``model side/hand``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="alternated rounds (default 11)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of data per timed run (default 10: 450 steps; watch's setup and close, ~1 ms, "
                             "are printed apart)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: the training thread's CPU time")
    parser.add_argument("--models", default="mlp,cnn", help="which models, comma-separated (default mlp,cnn)")
    parser.add_argument("--probes", action="store_true",
                        help="also time three calls a step that keep the loss: nothing, loss.detach(), the detached "
                             "loss appended to a list (the least a per-step call costs)")
    parser.add_argument("--floors", action="store_true",
                        help="also time watch(instruments='none'): the loss filed each step, the host reads and the "
                             "doctor's diagnosis at close, without any instrument")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 epoch: a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 3, 1
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    train, _ = datasets.load("digits")
    X, y = train.X, train.y
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.epochs):
        order = torch.randperm(len(y), generator=g)
        batches += [(X[order[i:i + 32]], y[order[i:i + 32]]) for i in range(0, len(y), 32)]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(batches)} steps per run, {args.rounds} rounds, "
          f"{args.clock} clock")
    medians: dict[str, float] = {}
    for name, make in (("mlp", mlp), ("cnn", cnn)):
        if name not in args.models.split(","):
            continue
        sides = SIDES + (FLOORS if args.floors else ()) + (tuple(PROBES) if args.probes else ())
        for side in sides:  # warm up every path once
            one_epoch(make, batches[:20], side, clock)
        times: dict[str, list[float]] = {side: [] for side in sides}
        fixed: dict[str, list[float]] = {side: [] for side in sides}
        per_step: dict[str, list[list[float]]] = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:  # rotate the order
                steps: list[float] = []
                total, part = one_epoch(make, batches, side, clock, steps)
                times[side].append(total)
                fixed[side].append(part)
                per_step[side].append(steps)
        # each step's fastest over the rounds (what another process's turn on the core, or a slow round, did not
        # touch), summed, plus the median fixed part: the run's floor
        fastest = {side: [min(t) for t in zip(*per_step[side])] for side in sides}
        floor = {side: sum(fastest[side]) + statistics.median(fixed[side]) for side in sides}
        print(f"\n{name}: median s per run " + ", ".join(f"{s} {statistics.median(times[s]):.3f}" for s in SIDES))
        hand = statistics.median(times["hand"])
        for side in ("cheap", "default", *(FLOORS if args.floors else ())):
            ratios = [a / b for a, b in zip(times[side], times["hand"])]
            med = medians[f"{name} {side}/hand"] = statistics.median(ratios)
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [med, med, med]
            target = TARGETS.get(side, TARGETS["cheap"])  # none: measured against cheap's target
            verdict = "meets" if med <= target else "misses"
            once = statistics.median(fixed[side])
            rest = ((med - 1) * hand - once) / len(batches)
            print(f"  ratio {side}/hand: {med:.3f}x (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; {verdict} the "
                  f"target <= {target:.2f}x); watch's setup and close {once * 1e3:.2f} ms a run, the rest "
                  f"{rest * 1e6:.1f} us a step (the hand loop's step: {hand / len(batches) * 1e6:.0f} us)")
            least = floor[side] / floor["hand"]
            print(f"    by each step's fastest of the {args.rounds} rounds: {least:.3f}x "
                  f"({'meets' if least <= target else 'misses'} the target; "
                  f"{(floor[side] - floor['hand']) / len(batches) * 1e6:.1f} us a step, setup and close included)")
        for side in sides[1:]:  # where it goes: a typical step, and the dear ones (a lane's end, a measured step)
            extra = [a - b for a, b in zip(fastest[side], fastest["hand"])]
            dear = [(i + 1, e) for i, e in enumerate(extra) if e > 50e-6]
            print(f"  {side}: a typical step +{statistics.median(extra) * 1e6:.1f} us (median of the steps' "
                  f"fastest), {len(dear)} steps over +50 us, +{sum(e for _, e in dear) / len(extra) * 1e6:.1f} us "
                  f"a step in all" + (f" (the first: {', '.join(f'{i}' for i, _ in dear[:8])})" if dear else ""))
    return medians


if __name__ == "__main__":
    main()
