"""The lecture's example end to end: its CustomDataset, served in batches of 2, trained by gradient descent.

Run: python examples/lecture.py

The inputs are unscaled on purpose (features 1..9, targets 11..18): at lr 0.01 the loss blows up, at 0.001 it
falls slowly, and standardised inputs let a larger step work. This is the lecture's point 7, measured.
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
    for lr in (0.01, 0.001):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        result = gdlab.fit(model, dataset, lr=lr, batch_size=2, epochs=200, progress=False)
        print(f"lr {lr:<6} {result.plan.describe()}: final train loss {result.final['train_loss']:.4g}"
              + (f"  ({result.stop_reason})" if result.stop_reason else ""))


if __name__ == "__main__":
    main()
