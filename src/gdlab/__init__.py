"""gdlab: train models by gradient descent, and see and fix what goes wrong in training.

Example:
    >>> import torch, gdlab
    >>> train, val = gdlab.datasets.load("moons")
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> result = gdlab.fit(model, train, val=val, optimizer="adam", lr=0.01, epochs=20, progress=False)
    >>> result.final["val_accuracy"] > 0.85
    True
"""

from gdlab import lab, models, optim, population, sweeps
from gdlab.config import Config
from gdlab.data import BatchPlan, TensorData, datasets
from gdlab.errors import GdlabError
from gdlab.lab import explain, functions, landscape
from gdlab.loop import EVENTS, Callback, LoopState, Result
from gdlab.lr_select import LRFindResult, LRSelection, lr_find
from gdlab.problem import evaluate
from gdlab.records import History
from gdlab.store import Run, Store
from gdlab.sweeps import RestartsResult, SweepResult, restarts, sweep
from gdlab.train import fit
from gdlab.watch import Watch, watch

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BatchPlan",
    "Callback",
    "Config",
    "EVENTS",
    "GdlabError",
    "History",
    "LRFindResult",
    "LRSelection",
    "LoopState",
    "RestartsResult",
    "Result",
    "Run",
    "Store",
    "SweepResult",
    "TensorData",
    "datasets",
    "evaluate",
    "explain",
    "fit",
    "functions",
    "lab",
    "landscape",
    "lr_find",
    "models",
    "optim",
    "population",
    "restarts",
    "sweep",
    "sweeps",
    "Watch",
    "watch",
]
