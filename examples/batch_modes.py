"""Batch, stochastic and mini-batch gradient descent on the same problem (lecture, point 4).

Run: python examples/batch_modes.py

Prints, for each batch mode, the plan (iterations per epoch), the final loss and the time: stochastic steps are
cheap and noisy, full-batch steps are smooth and few, mini-batches sit between.
"""

import torch

import gdlab


def main() -> None:
    train, val = gdlab.datasets.load("linear", condition=10.0)
    for batch_size in ("full", "stochastic", 32):
        torch.manual_seed(0)
        model = torch.nn.Linear(train.n_features, 1)
        result = gdlab.fit(model, train, val=val, lr=0.01, batch_size=batch_size, epochs=20, progress=False)
        print(f"{str(batch_size):>10}: {result.plan.describe():<58} val loss {result.final['val_loss']:.4g}"
              f"  {result.seconds:.2f} s")


if __name__ == "__main__":
    main()
