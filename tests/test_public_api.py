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
        "sweep", "sweeps", "functions", "lab", "explain", "landscape", "Watch", "watch", "report",
    ])
    for name in gdlab.__all__:
        assert getattr(gdlab, name) is not None


def test_library_import_pays_for_no_edge() -> None:
    code = ("import sys, gdlab, torch; gdlab.fit(torch.nn.Linear(2, 1), (torch.zeros(4, 2), torch.zeros(4, 1)), "
            "epochs=1, progress=False); print(sorted(m for m in ('rich', 'typer', 'matplotlib', 'sklearn') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_typer_stays_in_the_cli_and_cli_modules_share_no_private_names() -> None:
    import ast
    from pathlib import Path

    src = Path(gdlab.__file__).parent
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        if path.parent.name != "cli":
            assert not any(m.split(".")[0] == "typer" for m in imported), path
            continue
        private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                   and n.module.startswith("gdlab") for a in n.names if a.name.startswith("_")
                   and not a.name.startswith("__")]
        reached = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                   and not n.attr.startswith("__") and isinstance(n.value, ast.Name)
                   and n.value.id in ("common", "train", "runs", "population", "lab", "listings")]
        assert private == [] and reached == [], (path, private, reached)
