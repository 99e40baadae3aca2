"""gdlab: train models by gradient descent, and see and fix what goes wrong in training.

Example:
    >>> import torch, gdlab
    >>> train, val = gdlab.datasets.load("moons")
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> result = gdlab.fit(model, train, val=val, optimizer="adam", lr=0.01, epochs=20, progress=False)
    >>> result.final["val_accuracy"] > 0.85
    True

The public names load on first use (PEP 562): ``import gdlab`` alone does not import torch, so ``gdlab --version``
and ``gdlab --help`` answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time __getattr__ loads each name on first use
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
    from gdlab.watching import Watch, watch

__version__ = "0.1.0"

_WHERE = {  # public name -> the module it comes from (a module's own name: the submodule itself)
    "lab": "gdlab.lab", "models": "gdlab.models", "optim": "gdlab.optim", "population": "gdlab.population",
    "sweeps": "gdlab.sweeps", "Config": "gdlab.config", "BatchPlan": "gdlab.data", "TensorData": "gdlab.data",
    "datasets": "gdlab.data", "GdlabError": "gdlab.errors", "explain": "gdlab.lab", "functions": "gdlab.lab",
    "landscape": "gdlab.lab", "EVENTS": "gdlab.loop", "Callback": "gdlab.loop", "LoopState": "gdlab.loop",
    "Result": "gdlab.loop", "LRFindResult": "gdlab.lr_select", "LRSelection": "gdlab.lr_select",
    "lr_find": "gdlab.lr_select", "evaluate": "gdlab.problem", "History": "gdlab.records", "Run": "gdlab.store",
    "Store": "gdlab.store", "RestartsResult": "gdlab.sweeps", "SweepResult": "gdlab.sweeps",
    "restarts": "gdlab.sweeps", "sweep": "gdlab.sweeps", "fit": "gdlab.train", "Watch": "gdlab.watching",
    "watch": "gdlab.watching",
    "report": "gdlab.reports",  # an edge (the HTML page): loaded on first use only, so not in the block above
}

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
    "report",
    "restarts",
    "sweep",
    "sweeps",
    "Watch",
    "watch",
]


def __getattr__(name: str) -> Any:
    """A public name, imported on first use and then kept in the module (PEP 562)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'gdlab' has no attribute {name!r}")
    module = importlib.import_module(where)
    if where == f"gdlab.{name}":
        value: Any = module
    elif hasattr(module, name):
        value = getattr(module, name)
    else:  # a submodule its package does not import itself (gdlab.data.datasets)
        value = importlib.import_module(f"{where}.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
