"""HTML reports (gdlab report, gdlab.report): the data they carry, checked here, and the pages themselves, opened in
headless Chromium (the ``open_page`` fixture in conftest.py) with every network request blocked."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gdlab
from gdlab.cli import app
from gdlab.errors import InvalidParameter, RunNotFound
from gdlab.plots import instrument_panels
from gdlab.reports import POINTS, downsample, page, report, run_data
from gdlab.store import Store

runner = CliRunner()


def gdlab_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with real runs: 'sick' (sgd at lr 2 on digits: the doctor finds not_learning and dead_relu),
    'mended' (the same with --remedy auto: a restart at step 46) and two short moons runs."""
    root = tmp_path_factory.mktemp("reports") / "store"
    common = ("--optimizer", "sgd", "--store", str(root), "--quiet", "--no-plot")
    for args in (("--data", "digits", "--lr", "2", "--epochs", "3", "--instruments", "default", "--name", "sick"),
                 ("--data", "digits", "--lr", "2", "--epochs", "2", "--remedy", "auto", "--name", "mended"),
                 ("--data", "moons", "--lr", "0.05", "--epochs", "3", "--name", "slow"),
                 ("--data", "moons", "--lr", "0.5", "--epochs", "3", "--name", "fast")):
        result = gdlab_cli("train", *args, *common)
        assert result.exit_code == 0, result.output
    return root


# -- the data (no browser) ---------------------------------------------------------------------------------------


def test_downsample_keeps_a_spike_and_the_order() -> None:
    x = list(range(1, 100_001))
    y = [1.0 + 0.01 * math.sin(i / 50) for i in x]
    y[77_776] = 1e3  # step 77,777
    y[5] = math.nan
    dx, dy = downsample(x, y, POINTS)
    assert len(dx) <= POINTS and dx == sorted(dx) and len(set(dx)) == len(dx)
    assert max(dy) == 1e3 and dx[dy.index(1e3)] == 77_777
    assert min(dy) == min(v for v in y if math.isfinite(v))
    assert dx[0] == 1 and dx[-1] == 100_000 and 6 not in dx  # the ends kept, the NaN dropped
    short_x, short_y = downsample([1, 2, 3], [3.0, math.inf, 1.0])
    assert (short_x, short_y) == ([1, 3], [3.0, 1.0])
    digits = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0]
    assert downsample(range(1, 10), digits, 4) == ([1, 2, 6, 9], [3.0, 1.0, 9.0, 5.0])  # first, min, max, last
    with pytest.raises(InvalidParameter, match="points"):
        downsample(x, y, 3)


def test_run_data_has_the_plots_panels_and_the_findings(trained: Path) -> None:
    store = Store(trained, create=False)
    run = store.get("sick")
    data = run_data(store, run)
    history = store.history(run.id)
    charts = {c["id"]: c for c in data["charts"]}
    assert {c["title"] for c in data["charts"] if c["id"].startswith("panel-")} == {
        name for name, *_ in instrument_panels(history) if name != "loss"}
    assert [s["label"] for s in charts["loss"]["series"]] == ["loss per step", "moving average"]
    assert charts["loss"]["series"][0]["y"] == pytest.approx(history.steps["loss"], rel=1e-5)
    summary = data["runs"][0]
    assert summary["plan"] == "1438 samples, batch 32 -> 45 iterations per epoch (last batch 30)"
    assert [(f["code"], f["step"]) for f in summary["findings"]] == [(f["code"], f["step"]) for f in run.findings]
    assert "not_learning" in {f["code"] for f in run.findings}


def test_merged_steps_keep_their_spike(tmp_path: Path, open_page) -> None:
    store = Store(tmp_path / "s")
    run_id = store.create_run({"data": "seed"})
    rows = [{"step": s, "loss": 1.0 / s ** 0.5, "grad_norm/0": 1.0} for s in range(1, 10_001)]
    rows[1233]["loss"] = 50.0  # step 1234: old enough to be merged into a bucket
    rows[2344]["grad_norm/0"] = 7.0
    for i in range(0, len(rows), 500):
        store.add_steps(run_id, rows[i:i + 500], step_rows=2000)
    store.finish(run_id, "finished")
    charts = {c["id"]: c for c in run_data(store, store.get(run_id))["charts"]}
    labels = [s["label"] for s in charts["loss"]["series"]]
    assert "max of merged steps" in labels
    top = charts["loss"]["series"][labels.index("max of merged steps")]
    assert max(top["y"]) == 50.0 and top["of"] == 0
    panel = charts["panel-gradient-norm-per-layer"]["series"]
    assert [(s["label"], s.get("of")) for s in panel] == [("grad_norm/0", None),
                                                          ("grad_norm/0: max of merged steps", 0),
                                                          ("grad_norm/0: min of merged steps", 0)]
    assert max(panel[1]["y"]) == 7.0 and max(panel[0]["y"]) < 7.0  # the bucket's mean hides it; its max keeps it
    opened = open_page(report(run_id, tmp_path / "merged.html", store=store))
    assert opened.errors == [] and opened.requests == []
    bands = opened.page.evaluate("[gdlabPlots.loss.bands.map(b => b.series), "
                                 "gdlabPlots['panel-gradient-norm-per-layer'].bands.map(b => b.series)]")
    assert bands == [[[3, 4]], [[2, 3]]]  # uPlot's series 0 is the x axis
    assert opened.page.evaluate("Math.max(...gdlabPlots.loss.data[3].filter(v => v != null))") == 50.0
    opened.page.screenshot(path=str(tmp_path / "merged.png"), full_page=True)


def test_store_text_cannot_close_the_data_script() -> None:
    text = page({"kind": "run", "title": "</script><script>alert(1)</script>", "runs": [], "charts": [],
                 "generated": "", "version": ""})
    data = text.split('<script type="application/json" id="gdlab-data">')[1].split("</script>")[0]
    assert "<" not in data and json.loads(data)["title"] == "</script><script>alert(1)</script>"
    assert "<title>&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; - gdlab</title>" in text


def test_bad_input_is_one_line_and_exit_2(trained: Path, tmp_path: Path) -> None:
    store = str(trained)
    for args, words in ((("report", "nosuchrun", "--store", store), "unknown run or sweep 'nosuchrun'"),
                        (("report", "sick", "--store", store, "--out", str(tmp_path / "f.txt" / "r.html")), "--out"),
                        (("report", "sick", "--store", store, "--out", str(tmp_path)), "--out"),
                        (("report", "--store", store), "--all"),
                        (("report", "sick", "--all", "--store", store), "--all"),
                        (("report", "sick", "--store", str(tmp_path / "nostore")), "no run store")):
        (tmp_path / "f.txt").write_text("a file, not a folder")
        result = gdlab_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.output
        assert words in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RunNotFound):
        gdlab.report("nosuchrun", tmp_path / "x.html", store=trained)
    with pytest.raises(InvalidParameter, match="all_runs=True"):
        gdlab.report([], store=trained)


def test_train_report_writes_and_prints_the_page() -> None:
    result = gdlab_cli("train", "--data", "moons", "--epochs", "2", "--store", "s", "--quiet", "--no-plot",
                       "--report")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("report ") and len(result.stdout.splitlines()) == 1
    path = Path(result.stdout.removeprefix("report ").strip())
    assert path.name == "report.html" and path.parent.parent == Path("s") and path.is_file()
    assert "uPlot" in path.read_text() and 'id="gdlab-data"' in path.read_text()
    result = gdlab_cli("train", "--data", "moons", "--epochs", "1", "--store", "s", "--json", "--report")
    payload = json.loads(result.stdout)
    assert Path(payload["report"]).is_file()


def test_public_name_and_package_data() -> None:
    assert gdlab.report is report
    assets = Path(gdlab.reports.__file__).parent / "assets"
    assert {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "report.js", "report.css"} <= {
        p.name for p in assets.iterdir()}
    assert "MIT" in (assets / "LICENSE").read_text()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"reports/assets/*"' in pyproject  # the assets go into the wheel


# -- in the browser ----------------------------------------------------------------------------------------------


def legend(opened, chart: str) -> list[str]:
    return opened.page.eval_on_selector_all(f'[data-chart="{chart}"] .u-legend .u-value',
                                            "cells => cells.map(c => c.textContent)")


def hover(opened, chart: str, x: float | None = None) -> list[str]:
    """Move the mouse over the chart (at page x ``x``, kept inside the plot, else its middle) and read its legend."""
    over = opened.page.locator(f'[data-chart="{chart}"] .u-over')
    over.scroll_into_view_if_needed()  # the doctor's cards above may push it below the window
    box = over.bounding_box()
    x = box["x"] + box["width"] / 2 if x is None else min(max(x, box["x"]), box["x"] + box["width"] - 0.5)
    opened.page.mouse.move(x, box["y"] + box["height"] / 2)
    return legend(opened, chart)


def test_run_page_in_the_browser(trained: Path, tmp_path: Path, open_page) -> None:
    store = Store(trained, create=False)
    run = store.get("sick")
    path = report("sick", tmp_path / "sick.html", store=trained)
    opened = open_page(path)
    assert opened.errors == [] and opened.requests == [] and opened.dialogs == []
    state = opened.state()
    history = store.history(run.id)
    steps = len(history.steps)
    assert steps == 135
    charts = state["charts"]
    assert [(s["label"], s["points"]) for s in charts["loss"]["series"]] == [("loss per step", steps),
                                                                             ("moving average", steps)]
    assert [(s["label"], s["points"]) for s in charts["epochs"]["series"]] == [("train", 3), ("validation", 3)]
    assert [(s["label"], s["points"]) for s in charts["lr"]["series"]] == [("lr", steps)]
    for name, keys, *_ in instrument_panels(history):
        if name == "loss":
            continue
        chart = next(c for c in charts.values() if c["title"] == name)
        assert [(s["label"], s["points"]) for s in chart["series"]] == [
            (k, sum(map(math.isfinite, history.steps[k]))) for k in keys]
    # the header: status, plan; the findings as cards
    text = opened.page.inner_text("body")
    assert "finished" in text and "1438 samples, batch 32 -> 45 iterations per epoch (last batch 30)" in text
    cards = opened.page.eval_on_selector_all(".card.finding", "cs => cs.map(c => [c.dataset.code, +c.dataset.step])")
    assert sorted(map(tuple, cards)) == sorted((f["code"], f["step"]) for f in run.findings)
    # hover shows the step and the values
    values = hover(opened, "loss")
    opened.page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    assert 1 <= int(values[0]) <= steps and all(re.fullmatch(r"-?[\d.e+-]+", v) for v in values[1:]), values
    # each finding's marker sits at its step: hovering at the marker reads that step
    assert sorted(m["step"] for m in charts["loss"]["markers"]) == sorted(f["step"] for f in run.findings)
    marks = opened.page.locator('[data-chart="loss"] .mark')
    assert marks.count() == len(run.findings)
    for i in range(marks.count()):
        box = marks.nth(i).bounding_box()
        step = int(marks.nth(i).get_attribute("data-step"))
        assert int(hover(opened, "loss", box["x"] + box["width"] / 2)[0]) == step
    # a drag zooms the x axis; a double click zooms back out
    box = opened.page.locator('[data-chart="loss"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    opened.page.mouse.move(box["x"] + box["width"] * 0.25, y)
    opened.page.mouse.down()
    opened.page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    opened.page.mouse.up()
    low, high = opened.page.evaluate("[gdlabPlots.loss.scales.x.min, gdlabPlots.loss.scales.x.max]")
    assert 20 < low < high < 90, (low, high)
    # the other step charts follow the zoom
    assert opened.page.evaluate("[gdlabPlots.lr.scales.x.min, gdlabPlots.lr.scales.x.max]") == [low, high]
    opened.page.dblclick('[data-chart="loss"] .u-over')
    # a finding's card, clicked, zooms the step charts around its step
    finding = run.findings[0]
    opened.page.click(f".card.finding[data-code='{finding['code']}']")
    for chart in ("loss", "lr"):
        low, high = opened.page.evaluate(f"[gdlabPlots['{chart}'].scales.x.min, gdlabPlots['{chart}'].scales.x.max]")
        assert low <= finding["step"] <= high and high - low < steps / 2, (chart, low, high)
    opened.page.dblclick('[data-chart="lr"] .u-over')
    for chart in ("loss", "lr"):
        assert opened.page.evaluate(f"gdlabPlots['{chart}'].scales.x.max - gdlabPlots['{chart}'].scales.x.min") \
            >= steps - 1
    assert opened.errors == [] and opened.requests == []
    print(f"\nrun page: {path.stat().st_size / 1e3:.0f} kB, drawn in {opened.seconds:.2f} s; "
          f"screenshot {tmp_path / 'run.png'}")


def test_remedies_are_a_timeline_on_the_charts(trained: Path, tmp_path: Path, open_page) -> None:
    run = Store(trained, create=False).get("mended")
    (at,) = [r["step"] for r in run.remedies]  # one restart, judged at the loop's reads (step 46 on this data)
    opened = open_page(report("mended", tmp_path / "mended.html", store=trained))
    assert opened.errors == [] and opened.requests == []
    marks = opened.page.eval_on_selector_all('[data-chart="loss"] .mark.remedy', "ms => ms.map(m => +m.dataset.step)")
    assert marks == [at]
    box = opened.page.locator('[data-chart="loss"] .mark.remedy').bounding_box()
    assert int(hover(opened, "loss", box["x"] + box["width"] / 2)[0]) == at
    timeline = opened.page.inner_text("ol.timeline")
    assert f"step {at}" in timeline and run.remedies[0]["action"] in timeline


def test_several_runs_on_the_same_axes(trained: Path, tmp_path: Path, open_page) -> None:
    result = gdlab_cli("report", "slow", "fast", "--store", str(trained), "--out", "both.html")
    assert result.exit_code == 0 and result.stdout.strip() == "both.html"
    opened = open_page(tmp_path / "both.html")
    assert opened.errors == [] and opened.requests == []
    state = opened.state()
    store = Store(trained, create=False)
    steps = {name: len(store.history(store.get(name).id).steps) for name in ("slow", "fast")}
    assert [(s["label"], s["points"]) for s in state["charts"]["loss"]["series"]] == list(steps.items())
    assert [s["label"] for s in state["charts"]["epochs"]["series"]] == ["slow", "fast"]
    assert opened.page.locator(".u-legend").first.inner_text().count("slow") == 1
    differs = opened.page.eval_on_selector_all("tr.differs td:first-child", "cs => cs.map(c => c.textContent)")
    assert "lr" in differs and "name" in differs and "data" not in differs
    assert "validation loss" in opened.page.inner_text("table.data")
    opened.page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


def test_sweep_and_restarts_pages(tmp_path: Path, open_page) -> None:
    result = gdlab_cli("sweep", "--data", "moons", "--lr", "0.01,0.1,1", "--seeds", "0,1", "--epochs", "2",
                       "--store", "s", "--no-plot", "--quiet", "--name", "grid")
    assert result.exit_code == 0, result.output
    result = gdlab_cli("restarts", "--data", "moons", "--seeds", "4", "--epochs", "2", "--store", "s", "--no-plot",
                       "--quiet", "--name", "again")
    assert result.exit_code == 0, result.output
    sweep = Store("s").get_sweep("grid")
    opened = open_page(report("grid", tmp_path / "grid.html", store="s"))
    assert opened.errors == [] and opened.requests == []
    final = opened.state()["charts"]["final"]
    assert final["x"] == "lr" and [(s["label"], s["points"]) for s in final["series"]] == [("seed 0", 3),
                                                                                           ("seed 1", 3)]
    assert opened.page.locator("table.data tbody tr").first.locator("td").count() == len(
        [k for k in sweep["rows"][0] if k != "curve"])
    rows = opened.page.locator("section:has(h2:text('Members')) tbody tr")
    assert rows.count() == 6
    # sort by the final loss: the best (green) row comes first
    opened.page.click("section:has(h2:text('Members')) th[data-column='val_loss']")
    first = rows.first.get_attribute("class")
    assert first == "best"
    values = hover(opened, "final")
    assert values[0] != "\u2013"
    opened.page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)
    opened = open_page(report("again", tmp_path / "again.html", store="s"))
    assert opened.errors == [] and opened.requests == []
    final = opened.state()["charts"]["final"]
    assert final["x"] == "seed" and sum(s["points"] for s in final["series"]) == 4
    assert opened.state()["charts"]["curves"]["series"][0]["points"] == 2
    with pytest.raises(InvalidParameter, match="one sweep"):
        report(["grid", "again"], store="s")


def test_index_links_open_the_run_pages(trained: Path, tmp_path: Path, open_page) -> None:
    result = gdlab_cli("report", "--all", "--store", str(trained), "--out", "site")
    assert result.exit_code == 0, result.output
    index = tmp_path / "site" / "index.html"
    assert result.stdout.strip() == str(Path("site") / "index.html")
    store = Store(trained, create=False)
    runs = store.runs()
    pages = tuple(tmp_path / "site" / f"{r.id}.html" for r in runs)
    opened = open_page(index, allowed=pages)
    assert opened.errors == [] and opened.requests == []
    listed = opened.page.eval_on_selector_all("a.run-link", "as => as.map(a => a.textContent)")
    assert sorted(listed) == sorted(r.id for r in runs)
    sick = store.get("sick")
    assert ", ".join(sorted({f["code"] for f in sick.findings})) in opened.page.inner_text(
        f"section.index tr:has(a:text('{sick.id}'))")
    # sortable: by steps, ascending then descending
    opened.page.click("th[data-column='steps']")
    column = opened.page.eval_on_selector_all(
        "section.index tbody tr", "rs => rs.map(r => +r.cells[8].dataset.sort)")
    assert column == sorted(column)
    opened.page.click("th[data-column='steps']")
    column = opened.page.eval_on_selector_all(
        "section.index tbody tr", "rs => rs.map(r => +r.cells[8].dataset.sort)")
    assert column == sorted(column, reverse=True)
    opened.page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    for run in runs:
        opened.page.click(f"a.run-link:text('{run.id}')")
        opened.page.wait_for_function("window.gdlabReport && window.gdlabReport.kind === 'run'")
        assert opened.page.inner_text("header .mono") == f"run {run.id}"
        opened.page.go_back()
        opened.page.wait_for_function("window.gdlabReport && window.gdlabReport.kind === 'index'")
    assert opened.errors == [] and opened.requests == []


def test_store_text_is_escaped_and_no_steps_is_said(tmp_path: Path, open_page) -> None:
    evil = "<script>alert(1)</script>"
    store = Store(tmp_path / "s")
    run_id = store.create_run({"data": evil, "name": evil}, None, name=evil)
    store.add_findings(run_id, [{"code": "plateau", "severity": "warning", "step": None,
                                 "evidence": {evil: 1.0}, "explanation": f"<img src=x onerror=alert(2)>{evil}",
                                 "remedy": {"action": evil}}])
    store.finish(run_id, "failed", error=f"{evil} at once", stop_reason=evil)
    path = report(evil, tmp_path / "evil.html", store=store)
    opened = open_page(path)
    assert opened.dialogs == [] and opened.errors == [] and opened.requests == []
    assert opened.page.inner_text("h1 .run-name") == evil
    assert opened.page.inner_text(".stop-reason") == evil
    assert opened.page.locator("script").count() == 3 and opened.page.locator("img").count() == 0
    body = opened.page.inner_text("body")
    assert "No steps recorded" in body and "failed before its first step" in body
    assert f"<img src=x onerror=alert(2)>{evil}" in body
    assert opened.state()["charts"] == {}
    assert opened.page.title() == f"run {evil} - gdlab"
    opened.page.screenshot(path=str(tmp_path / "escaped.png"), full_page=True)


def test_a_long_run_stays_small_and_opens_fast(tmp_path: Path, open_page) -> None:
    store = Store(tmp_path / "s")
    run_id = store.create_run({"data": "digits"}, {"samples": 3200, "batch_size": 32, "iterations_per_epoch": 100,
                                                   "last_batch": 32, "mode": "mini-batch", "drop_last": False})
    n = 100_000
    rows = [{"step": s, "loss": 2.3 / (1 + s / 5000) * (1 + 0.05 * math.sin(s)), "lr": 0.1 * (1 - s / (2 * n)),
             "grad_norm": 1 + 0.3 * math.cos(s / 7), "grad_norm/0": 0.5 + 0.1 * math.sin(s / 3),
             "grad_norm/2": 0.25 + 0.1 * math.sin(s / 5)} for s in range(1, n + 1)]
    rows[77_776]["loss"] = 40.0
    store.add_steps(run_id, rows, step_rows=0)  # every step kept: the page itself must cut them down
    store.add_epochs(run_id, [{"epoch": e, "step": 100 * e, "train_loss": 2.3 / e, "val_loss": 2.4 / e}
                              for e in range(1, 1001)])
    store.add_findings(run_id, [{"code": "lr_too_high", "severity": "error", "step": 77_777, "evidence": {},
                                 "explanation": "a spike", "remedy": None}])
    store.finish(run_id, "finished", steps=n)
    path = report(run_id, tmp_path / "long.html", store=store)
    size = path.stat().st_size
    assert size < 2_000_000, size
    opened = open_page(path)
    assert opened.errors == [] and opened.requests == []
    charts = opened.state()["charts"]
    assert all(s["points"] <= POINTS and s["recorded"] == n for s in charts["loss"]["series"])
    spike = opened.page.evaluate("Math.max(...gdlabPlots.loss.data[1].filter(v => v != null))")
    assert spike == 40.0
    assert [m["step"] for m in charts["loss"]["markers"]] == [77_777]
    assert "drawn from" in opened.page.inner_text('[data-chart="loss"] .note')
    opened.page.screenshot(path=str(tmp_path / "long.png"), full_page=True)
    # the time is printed, not asserted (benchmarks/report.py measures it against drawing every point)
    print(f"\n100,000-step page: {size / 1e6:.2f} MB, opened and drawn in {opened.seconds:.2f} s")


# -- issue 24: what a report may write over, and where (store safety) ---------------------------------------------


def _small_store(root: Path) -> str:
    store = Store(root)
    run_id = store.create_run({"data": "seed"}, {"samples": 3, "batch_size": 2}, name="demo")
    store.add_steps(run_id, [{"step": s, "loss": 1 / s} for s in range(1, 5)])
    store.finish(run_id, "finished", final={"train_loss": 0.25})
    store.close()
    return run_id


def test_a_report_never_writes_over_the_store_or_another_kind_of_file(tmp_path: Path) -> None:
    run_id = _small_store(tmp_path / "s")
    database = (tmp_path / "s" / "gdlab.db").read_bytes()
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    (tmp_path / "notes.html").write_text("<p>mine</p>")
    for out, expected in (("s/gdlab.db", "expected a .html file path"), ("data.csv", "expected a .html file path"),
                          ("s", "expected a .html file path"), ("notes.html", "pass --force to write over it")):
        with pytest.raises(InvalidParameter, match=re.escape(expected)):
            report("demo", out, store=tmp_path / "s")
    with pytest.raises(InvalidParameter, match="a folder outside the run store's own"):
        report(None, "s", store=tmp_path / "s", all_runs=True)
    with pytest.raises(InvalidParameter, match="a folder to write into"):
        report(None, "data.csv", store=tmp_path / "s", all_runs=True)
    assert (tmp_path / "s" / "gdlab.db").read_bytes() == database
    assert (tmp_path / "data.csv").read_text() == "x,y\n1,2\n"
    assert (tmp_path / "notes.html").read_text() == "<p>mine</p>"
    # a gdlab page is written over; another .html file only with --force
    assert report("demo", "page.html", store=tmp_path / "s") == report("demo", "page.html", store=tmp_path / "s")
    bad = gdlab_cli("report", "demo", "--store", "s", "--out", "notes.html")
    assert bad.exit_code == 2 and "pass --force" in bad.stderr
    assert (tmp_path / "notes.html").read_text() == "<p>mine</p>"
    assert gdlab_cli("report", "demo", "--store", "s", "--out", "notes.html", "--force").exit_code == 0
    assert '<meta name="generator" content="gdlab' in (tmp_path / "notes.html").read_text()
    assert gdlab_cli("report", run_id, "--store", "s").exit_code == 0  # the default: the run's own folder
    assert (tmp_path / "s" / run_id / "report.html").is_file()


def test_report_all_refuses_a_page_over_another_kind_of_file(tmp_path: Path) -> None:
    run_id = _small_store(tmp_path / "s")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / f"{run_id}.html").write_text("mine")
    with pytest.raises(InvalidParameter, match="pass --force to write over it"):
        report(None, tmp_path / "pages", store=tmp_path / "s", all_runs=True)
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == [f"{run_id}.html"]  # nothing written
    assert report(None, tmp_path / "pages", store=tmp_path / "s", all_runs=True, force=True).name == "index.html"
    assert "gdlab" in (tmp_path / "pages" / f"{run_id}.html").read_text()


@pytest.mark.parametrize("kind", ["dot", "parent", "absolute"])
def test_a_report_of_a_hostile_id_writes_nothing_anywhere(hostile, kind: str) -> None:
    from hostile import snapshot, unchanged

    root, ref = hostile(kind)
    before = snapshot(root.parent)
    for call in (lambda: report(ref, store=root), lambda: report(None, store=root, all_runs=True)):
        with pytest.raises(gdlab.errors.StoreError, match="is damaged: run id .* is not a gdlab run id"):
            call()
    assert unchanged(before, snapshot(root.parent))
