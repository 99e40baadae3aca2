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
    at = opened.page.eval_on_selector_all("section.index th", "hs => hs.map(h => h.dataset.column)").index("steps")
    opened.page.click("th[data-column='steps']")
    column = opened.page.eval_on_selector_all(
        "section.index tbody tr", f"rs => rs.map(r => +r.cells[{at}].dataset.sort)")
    assert column == sorted(column)
    opened.page.click("th[data-column='steps']")
    column = opened.page.eval_on_selector_all(
        "section.index tbody tr", f"rs => rs.map(r => +r.cells[{at}].dataset.sort)")
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


# -- issue 28: pages a practitioner would rather read ------------------------------------------------------------

TICK_BOXES = """() => {
  // what uPlot drew on each axis (its labels and their ticks), measured with the axis's own font
  const ctx = document.createElement("canvas").getContext("2d");
  const ratio = uPlot.pxRatio || 1;
  const found = {};
  for (const [id, u] of Object.entries(gdlabPlots)) {
    found[id] = u.axes.map((axis, i) => {
      const font = Array.isArray(axis.font) ? axis.font : [axis.font, 12];
      ctx.font = font[0];
      return (axis._values || []).map((text, k) => {
        if (!text) return null;
        const at = u.valToPos(axis._splits[k], i === 0 ? "x" : "y");
        const half = (i === 0 ? ctx.measureText(text).width / ratio : font[1] / ratio) / 2;
        return [text, at - half, at + half];
      }).filter(Boolean);
    });
  }
  return found;
}"""

CHART_BOXES = """() => [...document.querySelectorAll("section.chart")].map(c => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const legend = c.querySelector(".u-legend") && c.querySelector(".u-legend").offsetParent !== null
    ? c.querySelector(".u-legend") : c.querySelector(".groups");
  return {id: c.dataset.chart, chart: box(c), over: box(c.querySelector(".u-over")),
          legend: legend ? box(legend) : null,
          flags: [...c.querySelectorAll(".mark")].filter(m => m.style.display !== "none")
                   .map(m => [m.firstChild.textContent, box(m.firstChild)])};
})"""


def assert_clear(opened) -> dict:
    """No two tick labels touch on any axis (each axis keeps two or more); every legend lies inside its chart and
    off the plot; every finding's flag lies inside the plot, off the axes' labels."""
    ticks = opened.page.evaluate(TICK_BOXES)
    for chart, axes in ticks.items():
        for side, labels in zip("xy", axes):
            assert len(labels) >= 2, (chart, side, labels)
            labels = sorted(labels, key=lambda b: b[1])
            for a, b in zip(labels, labels[1:]):
                assert a[2] <= b[1], (chart, side, a, b)
    for c in opened.page.evaluate(CHART_BOXES):
        left, top, right, bottom = c["chart"]
        if c["legend"]:
            lx0, ly0, lx1, ly1 = c["legend"]
            assert left <= lx0 and lx1 <= right and top <= ly0 and ly1 <= bottom, c
            assert ly0 >= c["over"][3], c  # below the plot: it covers no data
        for text, (fx0, fy0, fx1, fy1) in c["flags"]:
            ox0, oy0, ox1, oy1 = c["over"]
            assert ox0 - 0.5 <= fx0 and fx1 <= ox1 + 0.5 and oy0 <= fy0 and fy1 <= oy1, (c["id"], text)
    return ticks


def _decades_store(root: Path) -> tuple[Store, str]:
    """A run whose loss falls over six decades, its lr over five, with a finding at step 1 and a remedy at 2: log
    axes, and flags at the plot's left edge beside the y-axis labels."""
    store = Store(root)
    run_id = store.create_run({"data": "digits", "lr": 0.5}, {"samples": 3000, "batch_size": 10,
                                                              "iterations_per_epoch": 300, "last_batch": 10,
                                                              "mode": "mini-batch", "drop_last": False}, name="fall")
    store.add_steps(run_id, [{"step": s, "loss": 10 ** (3 - 6 * s / 300), "lr": 0.5 * 10 ** (-5 * s / 300)}
                             for s in range(1, 301)])
    store.add_findings(run_id, [{"code": "lr_too_high", "severity": "warning", "step": 1, "evidence": {},
                                 "explanation": "at the start", "remedy": None}])
    store.add_remedies(run_id, [{"step": 2, "action": "set_lr", "params": {"lr": 0.1}, "reason": "test"}])
    store.finish(run_id, "finished", steps=300, lr=0.5e-5)
    return store, run_id


def test_log_axes_ticks_and_flags_never_touch(tmp_path: Path, open_page) -> None:
    store, run_id = _decades_store(tmp_path / "s")
    opened = open_page(report(run_id, tmp_path / "fall.html", store=store))
    assert opened.errors == [] and opened.requests == []
    assert opened.state()["charts"]["loss"]["log"]
    ticks = assert_clear(opened)
    y = [text for text, *_ in ticks["loss"][1]]
    # six decades on 250 pixels: only powers of ten, spread evenly (1-2-5 labels only where there is room)
    assert len(y) >= 3 and all(math.log10(float(t)) == round(math.log10(float(t))) for t in y), y
    flags = {text for c in opened.page.evaluate(CHART_BOXES) if c["id"] == "loss" for text, _ in c["flags"]}
    assert flags == {"lr_too_high", "\u2691 set_lr"}
    # the header says the lr asked for and the final one
    assert opened.page.inner_text("header .lr") == "lr 0.5, final 5.000e-6"
    opened.page.screenshot(path=str(tmp_path / "fall.png"), full_page=True)


def test_the_run_page_stays_clear(trained: Path, tmp_path: Path, open_page) -> None:
    for name in ("sick", "mended"):
        for width in (1300, 800):
            opened = open_page(report(name, tmp_path / f"{name}.html", store=trained), width=width)
            assert opened.errors == []
            assert_clear(opened)
    opened.page.screenshot(path=str(tmp_path / "mended-narrow.png"), full_page=True)


def _big_sweep(root: Path) -> tuple[Store, str]:
    """128 members: 16 learning rates from 1e-3 to 3, 8 seeds, each with a 5-epoch curve."""
    store = Store(root)
    lrs = [1e-3 * 3000 ** (i / 15) for i in range(16)]
    rows = []
    for seed in range(8):
        for lr in lrs:
            final = 0.3 - 0.05 * math.log10(lr) ** 2 * -1 + 0.01 * seed
            rows.append({"member": len(rows), "lr": lr, "seed": seed, "train_loss": final, "val_loss": final + 0.01,
                         "metric": 0.9, "diverged": False,
                         "curve": [final * (1 + 2 / e) for e in range(1, 6)]})
    return store, store.add_sweep("sweep", {"data": "moons"}, rows, name="big", steps=50, seconds=3.0)


def test_a_big_sweep_groups_its_legend_and_its_lr_axis_reads(tmp_path: Path, open_page) -> None:
    store, sweep_id = _big_sweep(tmp_path / "s")
    opened = open_page(report("big", tmp_path / "big.html", store=store))
    assert opened.errors == [] and opened.requests == []
    state = opened.state()["charts"]
    assert state["final"]["x"] == "lr" and len(state["final"]["series"]) == 8  # a line per seed: a plain legend
    curves = state["curves"]
    assert len(curves["series"]) == 128 and curves["groups"] == ["lr", "seed"]
    assert opened.page.locator('[data-chart="curves"] .u-legend').count() == 0
    groups = opened.page.eval_on_selector_all('[data-chart="curves"] .gval', "bs => bs.map(b => b.dataset.key)")
    assert groups.count("lr") == 16 and groups.count("seed") == 8
    ticks = assert_clear(opened)
    assert len(ticks["final"][0]) >= 3  # the lr axis keeps several labels, none touching
    # a group's toggle hides its members, and only them
    opened.page.click('[data-chart="curves"] .gval[data-key="seed"][data-value="3"]')
    shown = opened.page.evaluate("gdlabPlots.curves.series.slice(1).map(s => s.show)")
    seeds = [s["group"]["seed"] for s in curves["series"]]
    assert shown == [seed != 3 for seed in seeds]
    lr = curves["series"][0]["group"]["lr"]
    opened.page.click(f'[data-chart="curves"] .gval[data-key="lr"][data-value="{lr}"]')
    shown = opened.page.evaluate("gdlabPlots.curves.series.slice(1).map(s => s.show)")
    assert shown == [s["group"]["seed"] != 3 and s["group"]["lr"] != lr for s in curves["series"]]
    # hovering names the nearest member and its group
    hover(opened, "curves")
    readout = opened.page.inner_text('[data-chart="curves"] .readout')
    assert re.match(r"member \d+ \(lr [\d.e+-]+, seed \d\): [\d.e+-]+ at epoch", readout), readout
    opened.page.screenshot(path=str(tmp_path / "big.png"), full_page=True)


def _ema(values: list[float], weight: float) -> list[float]:
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def test_the_comparison_page_has_x_axes_toggles_and_smoothing(trained: Path, tmp_path: Path, open_page) -> None:
    store = Store(trained, create=False)
    slow, sick = store.get("slow"), store.get("sick")
    opened = open_page(report(["slow", "sick"], tmp_path / "both.html", store=trained))
    assert opened.errors == [] and opened.requests == []
    assert opened.page.eval_on_selector_all("#x-axis option", "os => os.map(o => o.value)") == [
        "step", "epoch", "share", "time"]
    # the markers name their run
    flags = opened.page.eval_on_selector_all('[data-chart="loss"] .mark .flag', "fs => fs.map(f => f.textContent)")
    assert sorted(flags) == sorted(f"sick: {f['code']}" for f in sick.findings)
    # smoothing: the slider's weight, debiased; 0 is the raw loss
    raw = [v for v in store.history(slow.id).steps["loss"]]
    first = "gdlabPlots.loss.data[1].filter(v => v != null)"
    assert opened.page.evaluate(first) == pytest.approx(_ema(raw, 0.6), rel=1e-4)
    opened.page.fill("#smoothing", "0")
    opened.page.dispatch_event("#smoothing", "input")
    assert opened.page.evaluate(first) == pytest.approx(raw, rel=1e-4)
    opened.page.fill("#smoothing", "0.9")
    opened.page.dispatch_event("#smoothing", "input")
    assert opened.page.evaluate(first) == pytest.approx(_ema(raw, 0.9), rel=1e-4)
    # the x axis: epochs (each epoch's values at a whole epoch), the share of the run (ends at 1), wall time
    per_epoch = slow.plan["iterations_per_epoch"]
    opened.page.select_option("#x-axis", "epoch")
    assert opened.page.evaluate("gdlabPlots.epochs.data[0]") == pytest.approx([1, 2, 3])
    xs = opened.page.evaluate("gdlabPlots.loss.data[0]")
    assert xs[0] == pytest.approx(1 / max(per_epoch, 45)) and xs[-1] == pytest.approx(3)
    markers = opened.state()["charts"]["loss"]["markers"]
    assert [m["x"] for m in markers] == pytest.approx([m["step"] / 45 for m in markers])  # sick: 45 per epoch
    opened.page.select_option("#x-axis", "share")
    assert opened.page.evaluate("Math.max(...gdlabPlots.loss.data[0])") == pytest.approx(1)
    assert opened.page.evaluate("gdlabPlots.loss.axes[0].label") == "share of the run"
    opened.page.select_option("#x-axis", "time")
    seconds = store.history(slow.id).epochs["seconds"]
    assert opened.page.evaluate("gdlabPlots.epochs.data[0].slice(0, 3)") == pytest.approx(
        sorted(seconds + store.history(sick.id).epochs["seconds"])[:3], rel=1e-4)
    assert_clear(opened)
    # a run's toggle hides its series in every chart, and its markers
    opened.page.uncheck(".run-toggle[data-run='1']")
    for chart in ("loss", "epochs", "lr"):
        assert opened.page.evaluate(f"gdlabPlots.{chart}.series.slice(1).map(s => s.show)") == [True, False]
    assert opened.page.eval_on_selector_all('[data-chart="loss"] .mark', "ms => ms.map(m => m.style.display)") == [
        "none"] * len(sick.findings)
    assert opened.state()["view"] == {"x": "time", "smooth": 0.9, "hidden": [1]}
    assert opened.errors == []
    opened.page.screenshot(path=str(tmp_path / "both.png"), full_page=True)


def test_the_index_shows_the_lr_asked_chosen_and_final(tmp_path: Path) -> None:
    from gdlab.reports import index_data

    store = Store(tmp_path / "s")
    auto = store.create_run({"data": "moons", "lr": "auto", "schedule": "cosine",
                             "lr_selection": {"lr": 0.0789, "method": "sweep"}}, name="auto")
    store.finish(auto, "finished", lr=0.0)
    fixed = store.create_run({"data": "moons", "lr": 0.1}, name="fixed")
    store.finish(fixed, "finished", lr=0.1)
    rows = {r["name"]: r for r in index_data(store, {})["index"]}
    assert (rows["auto"]["lr_asked"], rows["auto"]["lr_chosen"], rows["auto"]["lr_final"]) == ("auto", 0.0789, 0)
    assert (rows["fixed"]["lr_asked"], rows["fixed"]["lr_chosen"], rows["fixed"]["lr_final"]) == (0.1, 0.1, 0.1)
    summary = run_data(store, store.get("auto"))["runs"][0]
    assert (summary["lr_asked"], summary["lr_chosen"], summary["lr"]) == ("auto", 0.0789, 0)
