"""The cost of gdlab's Lightning callback: the same Lightning fit with and without
``gdlab.integrations.lightning.Doctor()``, runs alternated. Needs ``pip install 'gdlab[lightning]'``.

The digits MLP (64-128-10, batch 32, SGD momentum), a few epochs on CPU, no logger, no checkpointing, no
progress bar on either side. Prints the median ratio (with the callback / without it).
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternated rounds (default 7)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
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

    def run(with_doctor: bool) -> float:
        torch.manual_seed(0)
        module = Module()
        callbacks = [Doctor(echo=False)] if with_doctor else []
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=callbacks)
        start = time.perf_counter()
        trainer.fit(module, loader)
        return time.perf_counter() - start

    run(False), run(True)  # warm up
    plain, doctor = [], []
    for r in range(args.rounds):
        for side in ((False, True) if r % 2 == 0 else (True, False)):
            (doctor if side else plain).append(run(side))
    ratios = [a / b for a, b in zip(doctor, plain)]
    print(f"lightning {pl.__version__}, torch {torch.__version__}, 1 thread, {args.epochs} epochs x "
          f"{len(loader)} steps, {args.rounds} rounds")
    print(f"  median s per fit: without {statistics.median(plain):.3f}, with Doctor {statistics.median(doctor):.3f}")
    print(f"  ratio with/without: {statistics.median(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
