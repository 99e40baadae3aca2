"""The cost of gdlab's Lightning callback: the same Lightning fit with and without
``gdlab.integrations.lightning.Doctor()``, runs alternated. Needs ``pip install 'gdlab[lightning]'``.

The digits MLP (64-128-10, batch 32, SGD momentum), a few epochs on CPU, no logger, no checkpointing, no
progress bar on either side. Sides: without the callback, with ``Doctor(echo=False)`` (the default instruments) and
with ``Doctor(echo=False, instruments="cheap")``. Prints the median ratio (with the callback / without it) of each.
``--clock cpu`` times each fit by the training thread's CPU time (``time.thread_time``: Lightning runs the loop on
this one thread here), so that another process's turn on a shared core lands in neither side.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gdlab.data import datasets


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio Doctor side/without per side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternated rounds (default 7)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: the training thread's CPU time")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 2, 1
    import lightning.pytorch as pl

    from gdlab.integrations.lightning import Doctor

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    train, _ = datasets.load("digits")
    loader = DataLoader(TensorDataset(train.X, train.y), batch_size=32, shuffle=False)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    sides = ("without", "default", "cheap")

    def run(side: str) -> float:
        torch.manual_seed(0)
        module = Module()
        callbacks = [] if side == "without" else [Doctor(echo=False, instruments=side)]
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=callbacks)
        start = clock()
        trainer.fit(module, loader)
        return clock() - start

    for side in sides:  # warm up
        run(side)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides[r % 3:] + sides[:r % 3]:  # rotate the order
            times[side].append(run(side))
    print(f"lightning {pl.__version__}, torch {torch.__version__}, 1 thread, {args.epochs} epochs x "
          f"{len(loader)} steps, {args.rounds} rounds, {args.clock} clock")
    print("  median s per fit: " + ", ".join(f"{side} {statistics.median(times[side]):.3f}" for side in sides))
    medians: dict[str, float] = {}
    for side in sides[1:]:
        ratios = [a / b for a, b in zip(times[side], times["without"])]
        medians[f"{side}/without"] = statistics.median(ratios)
        print(f"  ratio Doctor(instruments={side!r})/without: {statistics.median(ratios):.3f}x (min {min(ratios):.3f}, "
              f"max {max(ratios):.3f})")
    return medians


if __name__ == "__main__":
    main()
