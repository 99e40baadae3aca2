"""The benchmark scripts still run: each one's ``main(["--quick"])`` is called in this process on its smallest size,
and the figures it returns are checked (their values live in docs/benchmarks.md, not in tests).

Scripts that launch processes (``distributed``, ``threads``), open a browser (``report``) or train with Lightning
are ``slow``; ``.ci/run`` runs them.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _browser() -> bool:
    return importlib.util.find_spec("playwright") is not None and (
        shutil.which("chromium") or shutil.which("chromium-browser")) is not None


# script -> the names of the figures its quick run returns
EXPECTED: dict[str, Callable[[], set[str]]] = {
    "loader": lambda: {"batch 32", "batch 1024", "batch 128"},
    "overhead": lambda: {"bare+torch/hand", "bare/hand", "defaults/hand"},
    "optim_step": lambda: {"torch", "torch-foreach", "torch-fused"},
    "population": lambda: {"M=2", "M=4"},
    "doctor_overhead": lambda: {"cheap", "default", "full"},
    "landscape": lambda: ({"loss-landscapes / gdlab"} if importlib.util.find_spec("loss_landscapes") else
                          {"gdlab s"}),
    "log_every": lambda: {f"MLP {size} L={n}/hand" for size in ("64-64-10", "784-256-10") for n in (1, 10, 50, 200)},
    "watch_overhead": lambda: {f"{model} {side}/hand" for model in ("mlp", "cnn") for side in ("cheap", "default")},
    "lr_select": lambda: {"auto / grid best (median)", "auto / grid best (worst)", "auto cost (worst)"},
    "lightning_overhead": lambda: {"default/without", "cheap/without"},
    "report": lambda: {"size", "open time"} if _browser() else {"size"},
    "threads": lambda: {"digits, full batch"},
    "distributed": lambda: {"2 ranks / 1 process"},
    "clinic": lambda: {"broken runs", "healthy runs", "seconds"},
    "store_size": lambda: {"MB", "write s", "read s"},  # --quick: today's format, no gdlab doctor process
}
SLOW = {"lightning_overhead", "report", "threads", "distributed"}
# scripts that set their own thread count (the others run with the fixture's one thread)
ARGV = {"loader": ["--threads", "1"], "overhead": ["--threads", "1"], "log_every": ["--threads", "1"]}


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """Import a script as the top-level module it is when run (spawned ranks import it by that name), and leave
    torch's thread count and ``sys.modules`` as they were."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a script's --threads 1: two threads on two busy cores take many times as long
    names: list[str] = []

    def loader(name: str) -> ModuleType:
        names.append(name)
        for taken in (name, "_common"):  # a module of that name already imported (tests/clinic/) is put back after
            monkeypatch.delitem(sys.modules, taken, raising=False)
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").parent == BENCHMARKS
        return module

    yield loader
    torch.set_num_threads(threads)
    for name in (*names, "_common"):
        sys.modules.pop(name, None)


def test_every_script_is_covered() -> None:
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"_common"}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in EXPECTED])
def test_benchmark_quick_returns_its_figures(script: str, load: Callable[[str], ModuleType]) -> None:
    figures = load(script).main(["--quick", *ARGV.get(script, [])])
    assert set(figures) == EXPECTED[script]()
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures.values()), figures
    if script == "report":  # the point of downsampling: the page is smaller
        assert figures["size"] < 0.5
