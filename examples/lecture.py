"""The lecture's example end to end: its CustomDataset, served in batches of 2, trained by gradient descent.

Run: python examples/lecture.py

The inputs are unscaled on purpose (features 1..9): with batch gradient descent, lr 0.02 diverges (the loss
becomes inf within 50 steps), lr 0.01 reaches the least-squares minimum (mean squared error 9.39: three points
that no line fits exactly), and lr 0.001 is still above it after 2000 steps. The lecture's point 7, measured.
"""

import torch
from torch.utils.data import Dataset

import gdlab


class CustomDataset(Dataset):
    def __init__(self):
        self.x_data = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        self.y_data = [[12], [18], [11]]

    def __len__(self):
        return len(self.x_data)

    def __getitem__(self, idx):
        x = torch.FloatTensor(self.x_data[idx])
        y = torch.FloatTensor(self.y_data[idx])
        return x, y


def main() -> None:
    dataset = CustomDataset()
    for batch_size, lr in (("full", 0.02), ("full", 0.01), ("full", 0.001), (2, 0.001)):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        result = gdlab.fit(model, dataset, lr=lr, batch_size=batch_size, steps=2000, progress=False)
        print(f"lr {lr:<6} {result.plan.describe()}: loss on all 3 samples {gdlab.evaluate(model, dataset)['loss']:.4g}"
              + (f"  ({result.stop_reason})" if result.stop_reason else ""))


if __name__ == "__main__":
    main()
