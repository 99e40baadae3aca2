"""The HTML report of a long run: the page's size, and the time headless Chromium takes to open and draw it, for
gdlab's page (each series downsampled to at most ``gdlab.reports.POINTS`` points, each bucket's first, min, max and
last kept) against the same page drawing every point, side by side.

Same work on both sides: one store holding a synthetic run of ``--steps`` steps (loss with a spike, lr, the global
gradient norm and two per-layer norms, every step kept: ``step_rows=0``) and one epoch row per 100 steps; the same
page code; the same browser (Debian's chromium, headless, driven by Playwright, every request blocked); the pages
opened alternately, A, B, A, B, after one warm-up each, in a fresh page each time. The time is from ``goto`` to the
report's ``window.gdlabReport.ready`` (the charts drawn). Printed: both sizes, the median time of each, and the
median of the per-pair ratios with min and max. Without chromium or playwright only the sizes are compared.

    python benchmarks/report.py            # 100,000 steps, 7 pairs
    python benchmarks/report.py --quick    # 5,000 steps, 2 pairs (the test suite checks that it runs)
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model, usable_cores

import gdlab.reports as reports
from gdlab.store import Store


def make_store(root: Path, steps: int) -> str:
    store = Store(root)
    run_id = store.create_run({"data": "synthetic", "steps": steps},
                              {"samples": 3200, "batch_size": 32, "iterations_per_epoch": 100, "last_batch": 32,
                               "mode": "mini-batch", "drop_last": False})
    rows = [{"step": s, "loss": 2.3 / (1 + s / 5000) * (1 + 0.05 * math.sin(s)), "lr": 0.1 * (1 - s / (2 * steps)),
             "grad_norm": 1 + 0.3 * math.cos(s / 7), "grad_norm/0": 0.5 + 0.1 * math.sin(s / 3),
             "grad_norm/2": 0.25 + 0.1 * math.sin(s / 5)} for s in range(1, steps + 1)]
    rows[int(steps * 0.77)]["loss"] = 40.0
    store.add_steps(run_id, rows, step_rows=0)
    store.add_epochs(run_id, [{"epoch": e, "step": 100 * e, "train_loss": 2.3 / e, "val_loss": 2.4 / e}
                              for e in range(1, steps // 100 + 1)])
    store.finish(run_id, "finished", steps=steps)
    return run_id


def write_pages(root: Path, run_id: str) -> tuple[Path, Path]:
    store = Store(root, create=False)
    sampled = reports.report(run_id, root / "downsampled.html", store=store)
    keep = reports.downsample
    reports.downsample = lambda x, y, points=reports.POINTS: keep(x, y, 10**12)  # every point
    try:
        full = reports.report(run_id, root / "every-point.html", store=store)
    finally:
        reports.downsample = keep
    return sampled, full


def open_times(pages: tuple[Path, Path], pairs: int) -> list[tuple[float, float]] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        return None
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=args)
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else r.abort())

        def once(path: Path) -> float:
            page = context.new_page()
            start = time.perf_counter()
            page.goto(path.resolve().as_uri())
            page.wait_for_function("window.gdlabReport && window.gdlabReport.ready", timeout=120_000)
            seconds = time.perf_counter() - start
            page.close()
            return seconds

        once(pages[0]), once(pages[1])  # warm-up
        times = [(once(pages[0]), once(pages[1])) for _ in range(pairs)]
        browser.close()
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the size ratio and, with a browser, the open-time
    ratio (downsampled / every point)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="5,000 steps, 2 pairs")
    options = parser.parse_args(argv)
    steps, pairs = (5_000, 2) if options.quick else (options.steps, options.pairs)
    print(f"machine: {cpu_model()}, {usable_cores()} cores; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        run_id = make_store(root, steps)
        sampled, full = write_pages(root, run_id)
        a, b = sampled.stat().st_size, full.stat().st_size
        print(f"{steps:,} steps: downsampled page {a / 1e6:.2f} MB, every point {b / 1e6:.2f} MB "
              f"(size ratio {a / b:.3f})")
        times = open_times((sampled, full), pairs)
    if times is None:
        print("no chromium or playwright: open times not measured")
        print(f"ratio (size, downsampled / every point): {a / b:.3f}")
        return {"size": a / b}
    ratios = [x / y for x, y in times]
    print(f"open and draw, median of {pairs}: downsampled {statistics.median(t[0] for t in times):.3f} s, "
          f"every point {statistics.median(t[1] for t in times):.3f} s")
    print(f"ratio (open time, downsampled / every point): median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); size {a / b:.3f}")
    return {"size": a / b, "open time": statistics.median(ratios)}


if __name__ == "__main__":
    main()
