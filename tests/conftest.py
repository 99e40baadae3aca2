"""Shared fixtures: small deterministic data and a run store in a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from gdlab.data import TensorData

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def classes() -> TensorData:
    """60 samples, 4 features, 3 classes."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 4, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return TensorData(X, y, num_classes=3)


@pytest.fixture
def regression() -> TensorData:
    """64 samples of y = Xw (4 features, one output), float64."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(64, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    return TensorData(X, X @ w)


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, on sys.path with user models; examples/ (the lecture's CustomDataset) too."""
    (tmp_path / "user_models.py").write_text(textwrap.dedent('''
        import torch

        def regressor(in_features, out_features):
            return torch.nn.Linear(in_features, out_features)

        def wrong_inputs():
            return torch.nn.Linear(7, 1)

        def not_a_module():
            return 42

        def bad():
            raise ValueError("boom")

        def no_params():
            return torch.nn.ReLU()

        def on_meta():
            with torch.device("meta"):
                return torch.nn.Linear(3, 2)

        def needs_width(width):
            return torch.nn.Linear(3, width)

        def nan_inputs():
            X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
            X[3, 1], X[5, 0] = float("nan"), float("inf")
            return X, torch.arange(20) % 2

        def nan_targets():
            y = torch.randn(20, 1, generator=torch.Generator().manual_seed(0))
            y[7] = float("nan")
            return torch.randn(20, 3), y

        def one_class():
            return torch.randn(20, 3), torch.zeros(20, dtype=torch.long)

        def one_row():
            return torch.randn(1, 3), torch.tensor([[1.0]])
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))  # lecture:CustomDataset is the lecture's code, unchanged
    return tmp_path
