"""Shared fixtures: small deterministic data and a run store in a temporary folder."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# threads="auto" times a run's first steps at 1 thread and at torch's count (gdlab.threads.ThreadChooser), so two
# runs may train on different counts, and a sum split over threads can differ in its last bit. Tests compare runs
# bit for bit and never depend on the clock: here torch has one thread (this process and the gdlab commands the
# tests start), so "auto" has one count to keep; tests/test_threads.py drives the chooser on fake clocks.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

torch.set_num_threads(1)

from gdlab.data import TensorData  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that opens the browser (the ``chromium`` fixture, directly or through ``open_page``) is ``slow``."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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

        # issue 24 (rows: training): a model that fails only in training, at its first call or its fifth; Datasets
        # that are empty or cannot be read; a model whose output is NaN
        class FailsInTraining(torch.nn.Module):
            def __init__(self, at):
                super().__init__()
                self.layer, self.at, self.calls = torch.nn.Linear(2, 2), at, 0

            def forward(self, x):
                if self.training:
                    self.calls += 1
                    if self.calls >= self.at:
                        raise RuntimeError(f"training call {self.calls} failed")
                return self.layer(x)

        def fails_at_first_step():
            return FailsInTraining(1)

        def fails_at_step_5():
            return FailsInTraining(5)

        class EmptyRows(torch.utils.data.Dataset):
            def __len__(self):
                return 0

            def __getitem__(self, i):
                raise IndexError(i)

        class UnreadableRows(torch.utils.data.Dataset):
            def __len__(self):
                return 10

            def __getitem__(self, i):
                raise KeyError(f"sample {i} is missing")

        def empty_dataset():
            return EmptyRows()

        def unreadable_dataset():
            return UnreadableRows()

        class NaNOut(torch.nn.Module):
            def __init__(self, in_features, out_features):
                super().__init__()
                self.layer = torch.nn.Linear(in_features, out_features)

            def forward(self, x):
                return self.layer(x) * float("nan")

        def nan_model(in_features, out_features):
            return NaNOut(in_features, out_features)
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))  # lecture:CustomDataset is the lecture's code, unchanged
    return tmp_path


# -- hostile stores: a real store, trained once per session, then damaged or crafted (tests/hostile.py) --------


@pytest.fixture(scope="session")
def _trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hostile import train_store

    root = tmp_path_factory.mktemp("template") / "store"
    train_store(root)
    return root


@pytest.fixture
def hostile(_trained_store: Path, tmp_path: Path):
    """``hostile(kind)``: a copy of a trained store, changed as ``kind`` says (see tests/hostile.py), in its own
    folder under ``tmp_path``; returns ``(store folder, run reference)``."""
    from hostile import build

    made = 0

    def make(kind: str) -> tuple[Path, str]:
        nonlocal made
        made += 1
        return build(kind, tmp_path / f"hostile-{made}" / "store", _trained_store)

    return make


# -- a headless browser for the HTML reports (Debian's chromium, driven by Playwright) ------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _no_browser(reason: str) -> None:
    """Skip, or fail where GDLAB_REQUIRE_BROWSER=1 (CI: the browser tests must not skip silently)."""
    import os

    if os.environ.get("GDLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GDLAB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (``chromium`` on PATH, or CHROMIUM=path) driven by Playwright's Python package."""
    import os
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        _no_browser("no chromium executable (apt-get install chromium, or set CHROMIUM=path)")
    driver = sync_playwright().start()
    try:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    except Exception as e:  # a broken install: say so once
        driver.stop()
        _no_browser(f"chromium at {executable} did not start: {str(e).splitlines()[0]}")
    yield browser
    browser.close()
    driver.stop()


class Opened:
    """A page opened from disk, with what it did: console errors, requests, dialogs, the seconds it took."""

    def __init__(self, context, page) -> None:
        self.context, self.page = context, page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.seconds = 0.0

    def state(self, expression: str = "window.gdlabReport"):
        return self.page.evaluate(f"JSON.parse(JSON.stringify({expression}))")


@pytest.fixture
def open_page(chromium):
    """``open_page(path)``: open an HTML file in a fresh browser context with every request but the files of
    ``allowed`` (the page itself by default) blocked and recorded; waits until the report is drawn."""
    import time

    contexts = []

    def open_(path: Path, *, allowed: tuple[Path, ...] = (), width: int = 1300, height: int = 900) -> Opened:
        context = chromium.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        opened = Opened(context, page)
        local = {Path(path).resolve().as_uri(), *(Path(p).resolve().as_uri() for p in allowed)}

        def route(request_route):
            url = request_route.request.url
            if url in local:
                request_route.continue_()
            else:
                opened.requests.append(url)
                request_route.abort()

        context.route("**/*", route)
        page.on("request", lambda r: None if r.url in local else opened.requests.append(r.url))
        page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.errors.append(str(e)))

        def dialog(d):
            opened.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        start = time.perf_counter()
        page.goto(Path(path).resolve().as_uri())
        page.wait_for_function("window.gdlabReport && window.gdlabReport.ready", timeout=15_000)
        opened.seconds = time.perf_counter() - start
        return opened

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The matplotlib figures saved during the test, in order: each keeps its axes, lines and texts after it is
    closed, so a test checks the data drawn, not the file written."""
    from matplotlib.figure import Figure

    figures: list[Any] = []
    save = Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    yield figures
