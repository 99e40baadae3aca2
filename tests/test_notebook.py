"""gdlab in Jupyter: every result shows itself (``_repr_html_``: its numbers, the figure plots.py draws for it, and for
a run the doctor's story), ``Result.plot()`` returns the loss figure, and the progress bar is one HTML line updated
in place in a notebook cell. The views are checked against the objects' own data (the tables' cells, the lines
the figures draw), rendered in Chromium (slow), and the lecture's notebook is executed end to end (slow)."""

from __future__ import annotations

import base64
import math
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

import gdlab
from gdlab.lab import landscape, walks
from gdlab.notebook import MAX_ROWS, cell

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lecture.ipynb"


class Parsed(HTMLParser):
    """A view's tables (rows of cell texts), its images (data URLs) and its story lines."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.story = ""
        self._cell: list[str] | None = None
        self._in_story = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "pre":
            self._in_story = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "pre":
            self._in_story = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_story:
            self.story += data

    def pairs(self, table: int = 0) -> dict[str, str]:
        return {row[0]: row[1] for row in self.tables[table] if len(row) == 2}


def _png_size(src: str) -> tuple[int, int]:
    """The width and height a data URL's PNG declares (the view holds a real picture, not an empty tag)."""
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def test_a_runs_view_holds_its_numbers_figure_and_story(classes: Any, drawn: list[Any]) -> None:
    result = gdlab.fit(_model(), classes, val=classes, lr=50.0, epochs=4, batch_size=8, progress=False)
    assert result.findings, "a learning rate of 50 gives the doctor something to say"
    page = Parsed(result._repr_html_())
    pairs = page.pairs()
    assert pairs["plan"] == result.plan.describe()
    assert pairs["status"] == result.status
    for key, value in result.final.items():
        if value is not None:
            assert pairs[key] == cell(value)
    width, height = _png_size(page.images[0])
    assert width > 300 and height > 100
    steps = drawn[-1].axes[1].get_lines()[0].get_ydata().tolist()  # the per-step panel of the inline figure
    assert steps == pytest.approx(result.history.steps["loss"], nan_ok=True)
    from gdlab.doctor import story_lines
    from gdlab.doctor.story import of_result

    assert page.story.splitlines() == [line.text for line in story_lines(of_result(result))]
    for finding in result.findings:
        assert finding.code in page.story


def test_result_plot_returns_the_loss_figure(classes: Any) -> None:
    result = gdlab.fit(_model(), classes, lr=0.1, epochs=3, batch_size=16, progress=False)
    figure = result.plot()
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    assert isinstance(figure, Figure) and figure.number not in plt.get_fignums()  # detached: shown once
    epochs, steps = figure.axes[0], figure.axes[1]
    assert steps.get_lines()[0].get_ydata().tolist() == pytest.approx(result.history.steps["loss"])
    assert epochs.get_lines()[0].get_ydata().tolist() == pytest.approx(result.history.epochs["train_loss"])


def test_run_text_is_escaped(classes: Any) -> None:
    result = gdlab.fit(_model(), classes, lr=0.1, epochs=1, progress=False)
    result.run_id, result.stop_reason = "<script>alert(1)</script>", "diverged <b>here</b>"
    html = result._repr_html_()
    assert "<script>" not in html and "<b>here" not in html
    assert escape("<script>alert(1)</script>") in html
    assert Parsed(html).pairs()["stopped"] == "diverged <b>here</b>"


def test_a_sweeps_view_lists_members_best_first(classes: Any, drawn: list[Any], monkeypatch: Any) -> None:
    monkeypatch.setattr("gdlab.notebook.MAX_ROWS", 5)
    lrs = [0.001, 0.01, 0.1, 1.0, 3.0, 10.0]
    grid = gdlab.sweep(_model, classes, val=classes, lr=lrs, seeds=1, epochs=2, batch_size=16, progress=False)
    page = Parsed(grid._repr_html_())
    header, *rows = page.tables[0]
    scores = grid.population.score()
    best_first = sorted(range(len(scores)), key=lambda i: scores[i])[:5]
    assert [int(r[header.index("member")]) for r in rows] == best_first
    assert [r[header.index("lr")] for r in rows] == [cell(grid.table[i]["lr"]) for i in best_first]
    html = grid._repr_html_()
    assert f"{len(lrs) - 5} more" in html
    plotted = drawn[-1].axes[0].get_lines()[0].get_xdata().tolist()  # final loss against lr, one line per seed
    assert plotted == pytest.approx(lrs)
    assert MAX_ROWS == 20


def test_restarts_lr_find_lab_and_landscape_views(classes: Any, drawn: list[Any]) -> None:
    starts = gdlab.restarts(_model, classes, val=classes, seeds=4, epochs=2, batch_size=16, progress=False)
    pairs = Parsed(starts._repr_html_()).pairs()
    assert pairs["distinct_end_points"] == cell(starts.distinct) and pairs["restarts"] == "4"

    found = gdlab.lr_find(_model(), classes, num_iter=30, progress=False)
    page = Parsed(found._repr_html_())
    for name, lr in found.suggestions.items():
        assert page.pairs()[f"suggestion: {name}"] == cell(lr)
    assert drawn[-1].axes[0].get_lines()[1].get_ydata().tolist() == pytest.approx(found.smoothed, nan_ok=True)

    lab = walks.run("styblinski_tang", optimizers=["sgd", "momentum"], lr=0.02, steps=60, plots=False)
    header, *rows = Parsed(lab._repr_html_()).tables[0]
    assert [r[header.index("loss")] for r in rows] == [cell(row["loss"]) for row in lab.table]
    path = next(line for line in drawn[-1].axes[0].get_lines() if line.get_label().startswith("sgd")).get_xydata()
    assert path.flatten().tolist() == pytest.approx(lab.walks[0].path[:, 0, :].flatten().tolist())
    spread = walks.run("himmelblau", optimizers=["sgd"], lr=0.01, steps=30, restarts=6, plots=False)
    header, *rows = Parsed(spread._repr_html_()).tables[0]
    assert "basins" not in header and rows[0][header.index("reached_global")] == cell(spread.table[0]["reached_global"])

    model = _model()
    land = landscape.line(model, classes, steps=7, progress=False)
    pairs = Parsed(land._repr_html_()).pairs()
    assert pairs["kind"] == "line" and pairs["grid"] == "7"
    assert pairs["loss at the model"] == cell(land.center_loss)
    assert pairs["lowest loss"] == cell(min(v for v in land.losses.tolist() if math.isfinite(v)))


def test_the_bar_is_one_html_line_in_a_notebook(classes: Any, monkeypatch: Any) -> None:
    """Under a Jupyter kernel (rich's own test, faked here) fit's bar and the range test's are one HTML output each,
    replaced in place; the last state is the run's end."""
    display = pytest.importorskip("IPython.display")
    shown: list[tuple[str, str]] = []  # (display id, html)

    class Handle:
        def __init__(self, key: str) -> None:
            self.key = key

        def update(self, obj: Any) -> None:
            shown.append((self.key, obj.data))

    displays: list[Handle] = []

    def fake_display(obj: Any, display_id: bool = False) -> Handle:
        displays.append(Handle(f"output {len(displays)}"))
        shown.append((displays[-1].key, obj.data))
        return displays[-1]

    monkeypatch.setattr(display, "display", fake_display)
    monkeypatch.setattr("rich.console._is_jupyter", lambda: True)
    result = gdlab.fit(_model(), classes, lr=0.1, epochs=3, batch_size=16, progress=True)
    keys = {k for k, _ in shown}
    assert len(keys) == 1, "one output, updated in place"
    last = shown[-1][1]
    total = result.steps
    assert f'<progress value="{total}" max="{total}">' in last and "epoch 3/3" in last
    assert re.search(r"it 4/4\s+loss [0-9.e-]+", last)


def test_a_transient_task_bar_clears_itself(monkeypatch: Any) -> None:
    display = pytest.importorskip("IPython.display")
    shown: list[str] = []

    class Handle:
        def update(self, obj: Any) -> None:
            shown.append(obj.data)

    monkeypatch.setattr(display, "display", lambda obj, display_id=False: shown.append(obj.data) or Handle())
    monkeypatch.setattr("rich.console._is_jupyter", lambda: True)
    from gdlab.progress import TaskBar

    bar = TaskBar("grid <1>", 4, transient=True, every=2)
    for done in range(1, 5):
        bar.update(done, f"point {done}")
    bar.close()
    assert shown[-2].startswith('<div class="gdlab-bar"><b>grid &lt;1&gt;</b> <progress value="4" max="4">')
    assert shown[-1] == ""


@pytest.mark.slow
def test_the_views_render_in_chromium(classes: Any, chromium: Any, tmp_path: Path) -> None:
    """Each view opened in Chromium: its tables laid out, its picture decoded at its size (the image's box)."""
    result = gdlab.fit(_model(), classes, val=classes, lr=50.0, epochs=4, batch_size=8, progress=False)
    lab = walks.run("plateau", optimizers=["sgd", "momentum"], lr=1.0, steps=40, plots=False)
    views = [result._repr_html_(), lab._repr_html_()]
    page_path = tmp_path / "views.html"
    page_path.write_text("<html><body>" + "<hr>".join(views) + "</body></html>")
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(page_path.as_uri())
        images = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
        assert len(images) == 2 and all(natural > 300 and 0 < shown <= 900 for natural, shown in images)
        rows = page.evaluate("[...document.querySelectorAll('.gdlab-view table')].map(t => t.rows.length)")
        assert rows[0] >= 5 and rows[1] == 1 + len(lab.table)
        story = page.inner_text("pre.story")
        assert story.splitlines()[0].startswith("gdlab doctor:")
        colour = page.evaluate("getComputedStyle(document.querySelector('pre.story span')).color")
        assert colour in ("rgb(170, 102, 0)", "rgb(187, 0, 0)", "rgb(0, 102, 170)")
    finally:
        page.close()


@pytest.mark.slow
def test_the_lecture_notebook_runs(tmp_path: Path) -> None:
    """examples/lecture.ipynb executed by nbclient, as CI does (in a folder of its own: the notebook writes its
    pictures and runs where it runs): every cell runs, the results show themselves."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "pictures" / "explain.png").is_file()
    html = [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]
    views = [h for h in html if 'class="gdlab-view"' in h]
    bars = [h for h in html if 'class="gdlab-bar"' in h]
    assert len(views) >= 5 and bars
    assert all("data:image/png;base64," in h for h in views)
    story = " ".join(views)
    for code in ("lr_too_high", "plateau"):
        assert code in story
    pictures = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if "image/png" in o.get("data", {})]
    assert pictures, "result.plot() shows its figure"
