"""The public names are the ones we mean, and the core never imports an edge."""

from __future__ import annotations

import subprocess
import sys

import gdlab


def test_public_names() -> None:
    assert sorted(gdlab.__all__) == sorted([
        "__version__", "BatchPlan", "Callback", "Config", "EVENTS", "GdlabError", "History", "LoopState",
        "Result", "Run", "Store", "TensorData", "datasets", "evaluate", "fit", "models", "optim",
        "LRFindResult", "LRSelection", "RestartsResult", "SweepResult", "lr_find", "population", "restarts",
        "sweep", "sweeps", "functions", "lab", "explain", "landscape",
    ])
    for name in gdlab.__all__:
        assert getattr(gdlab, name) is not None


def test_library_import_pays_for_no_edge() -> None:
    code = ("import sys, gdlab, torch; gdlab.fit(torch.nn.Linear(2, 1), (torch.zeros(4, 2), torch.zeros(4, 1)), "
            "epochs=1, progress=False); print(sorted(m for m in ('rich', 'typer', 'matplotlib', 'sklearn') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
