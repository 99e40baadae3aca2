"""The pictures' data: what each plot draws (its axes' lines, scales and marks), read from the matplotlib figure it
saved, and the panels the instrument dashboard is built from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gdlab.plots import instrument_panels, moving_average, panel_note, plot_instruments, plot_losses, spans_decades
from gdlab.records import History


def _line(ax: Any, label: str) -> tuple[list[float], list[float]]:
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_moving_average_is_bias_corrected() -> None:
    assert moving_average([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    assert moving_average([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
    assert moving_average([math.nan, 2.0])[1] == 2.0


def test_log_scale_when_loss_spans_two_decades() -> None:
    assert spans_decades([10.0, 0.05]) and not spans_decades([1.0, 0.5]) and not spans_decades([])


def test_plot_losses_draws_the_epochs_and_the_steps(tmp_path: Path, drawn: list[Any]) -> None:
    history = History()
    for step in range(1, 101):
        history.steps.append({"step": step, "loss": 10 / step})
    for epoch in range(1, 6):
        history.epochs.append({"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.2 / epoch,
                               "val_accuracy": 0.5 + epoch / 20})
    path = plot_losses(history, tmp_path / "sub" / "loss.png", title="demo")
    assert path == tmp_path / "sub" / "loss.png" and path.is_file()
    (fig,) = drawn
    left, right, accuracy = fig.axes
    epochs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert _line(left, "train") == (epochs, pytest.approx([1 / e for e in epochs]))
    assert _line(left, "validation") == (epochs, pytest.approx([1.2 / e for e in epochs]))
    assert _line(accuracy, "val accuracy") == (epochs, pytest.approx([0.5 + e / 20 for e in epochs]))
    assert left.get_yscale() == "linear"  # 1 to 0.2: under two decades
    steps, losses = _line(right, "loss per step")
    assert steps == list(range(1, 101)) and losses == pytest.approx([10 / s for s in steps])
    assert _line(right, "moving average")[1] == pytest.approx(moving_average(losses))
    assert right.get_yscale() == "log"  # 10 to 0.1: two decades
    assert fig._suptitle.get_text() == "demo"


def test_plot_of_a_run_without_epochs(tmp_path: Path, drawn: list[Any]) -> None:
    history = History()
    history.steps.append({"step": 1, "loss": 1.0})
    plot_losses(history, tmp_path / "one.png")
    left, right = drawn[0].axes
    assert not left.get_lines() and [t.get_text() for t in left.texts] == ["no completed epoch"]
    assert _line(right, "loss per step") == ([1], [1.0])


def _instrumented() -> History:
    history = History()
    for step in range(1, 31):
        history.steps.append({"step": step, "loss": 2 / step, "grad_norm/0": 0.5, "grad_norm/2": math.nan,
                              "update_ratio/0": 1e-3 * step, "sharpness": math.nan})
    history.steps.append({"step": 31, "loss": 0.1, "grad_norm/0": math.nan, "grad_norm/2": 4.0,
                          "update_ratio/0": 0.5, "sharpness": math.nan})
    return history


def test_instrument_panels_are_those_with_finite_data() -> None:
    panels = instrument_panels(_instrumented())
    assert [(name, keys) for name, keys, _, _ in panels] == [
        ("loss", ["loss"]), ("gradient norm per layer", ["grad_norm/0", "grad_norm/2"]),
        ("update / weight per layer", ["update_ratio/0"])]  # sharpness: never finite, so no panel
    assert panels[2][3] == 1e-3 and instrument_panels(History()) == []


def test_plot_instruments_draws_each_panel_its_finite_points(tmp_path: Path, drawn: list[Any]) -> None:
    history = _instrumented()
    findings = [{"code": "grad_spike", "severity": "error", "step": 31}, {"code": "note", "severity": "info"}]
    plot_instruments(history, tmp_path / "dash.png", findings=findings)
    (fig,) = drawn
    loss, grads, ratio, empty = fig.axes
    assert [ax.get_title() for ax in (loss, grads, ratio)] == [name for name, *_ in instrument_panels(history)]
    assert not empty.axison  # four slots for three panels: the last is blank
    assert _line(grads, "grad_norm/0") == (list(range(1, 31)), [0.5] * 30)  # the NaN at step 31 left out
    assert _line(grads, "grad_norm/2") == ([31], [4.0])
    steps, values = _line(ratio, "update_ratio/0")
    assert steps == list(range(1, 32)) and values[-1] == 0.5 and ratio.get_yscale() == "log"  # 1e-3 to 0.5
    assert [31, 31] in [list(ln.get_xdata()) for ln in ratio.get_lines()]  # the finding at its step
    assert [1e-3, 1e-3] in [list(ln.get_ydata()) for ln in ratio.get_lines()]  # the reference level
    assert "grad_spike (step 31)" in fig._suptitle.get_text() and "note" not in fig._suptitle.get_text()


# -- issue 28: legends off the data, titles inside, panels that say why they stop ---------------------------------


def _renderer(fig: Any) -> Any:
    """The renderer of a figure drawn as it was saved (a closed figure gets its Agg canvas back, and is drawn once:
    the same layout again)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        fig.canvas.draw()
    return fig.canvas.get_renderer()


def _points_under(legend: Any, *axes: Any) -> int:
    """How many points of the axes' lines (each segment sampled every few pixels) the legend's box covers, read
    with the figure's renderer after it was drawn."""
    import numpy as np

    box = legend.get_window_extent(_renderer(legend.figure))
    under = 0
    for ax in axes:
        for line in ax.get_lines():
            xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
            xy = xy[np.isfinite(xy).all(axis=1)]
            for a, b in zip(xy, xy[1:]) if len(xy) > 1 else [(xy[0], xy[0])] if len(xy) else []:
                t = np.linspace(0, 1, max(2, int(np.hypot(*(b - a)) / 2)))[:, None]
                p = a + t * (b - a)
                under += int(((p[:, 0] > box.x0) & (p[:, 0] < box.x1) & (p[:, 1] > box.y0) & (p[:, 1] < box.y1)).sum())
    return under


def _inside_figure(fig: Any, artist: Any) -> bool:
    box = artist.get_window_extent(_renderer(fig))
    return box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= fig.bbox.x1 + 0.5 and box.y1 <= fig.bbox.y1 + 0.5


def test_loss_png_legend_covers_no_line(tmp_path: Path, drawn: list[Any]) -> None:
    """The digits run of the issue: losses falling from the top left, the accuracy across the top: the legend of
    both (one, for the loss axes and their accuracy twin) sits where neither's line is."""
    history = History()
    for step in range(1, 451):
        history.steps.append({"step": step, "loss": 2.3 * math.exp(-step / 60) + 0.03 * (1 + math.sin(step))})
    for epoch in range(1, 11):
        history.epochs.append({"epoch": epoch, "train_loss": 1.2 / epoch ** 1.5, "val_loss": 0.25 / epoch ** 0.8,
                               "val_accuracy": 0.95 + 0.004 * epoch})
    plot_losses(history, tmp_path / "loss.png", title="run")
    (fig,) = drawn
    left, right, accuracy = fig.axes
    (legend,) = [left.get_legend()]
    assert [t.get_text() for t in legend.get_texts()] == ["train", "validation", "val accuracy"]
    assert _points_under(legend, left, accuracy) == 0
    assert _points_under(right.get_legend(), right) == 0
    assert _inside_figure(fig, legend) and _inside_figure(fig, right.get_legend())


def test_noise_panels_are_apart_and_a_short_series_says_why(tmp_path: Path, drawn: list[Any]) -> None:
    """B_simple (about 30) and the SNR (about 1) on axes of their own; the update ratio read every 20 steps until
    step 260 of 450 (the budget refused the rest): its panel spans the run and says so."""
    history = History()
    for step in range(1, 451):
        row: dict[str, float] = {"step": step, "loss": 1 / step}
        row["update_ratio/0"] = 1e-3 * (1 + step / 450) if step % 20 == 0 and step <= 260 else math.nan
        row["noise_scale"] = 30.0 + step / 100 if step in (1, 25, 200, 400) else math.nan
        row["grad_snr"] = 1.0 + step / 1000 if step in (1, 25, 200, 400) else math.nan
        history.steps.append(row)
    plot_instruments(history, tmp_path / "i.png")
    (fig,) = drawn
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    noise, snr = panels["gradient noise scale"], panels["gradient signal-to-noise"]
    assert [ln.get_label() for ln in noise.get_lines()] == ["noise_scale"]
    assert [ln.get_label() for ln in snr.get_lines()] == ["grad_snr"]
    assert noise.get_ylim()[0] > 20 and snr.get_ylim()[1] < 2  # each on its own scale
    ratio = panels["update / weight per layer"]
    assert ratio.get_xlim() == (1.0, 450.0) and noise.get_xlim() == (1.0, 450.0)
    assert "last reading at step 260 of 450" in ratio.get_xlabel() and "budget" in ratio.get_xlabel()
    assert noise.get_xlabel() == "step"  # read at 400, next due at 600: nothing was skipped
    assert panel_note(history, ["noise_scale"]) is None
    for ax in panels.values():
        if ax.get_legend():
            assert _points_under(ax.get_legend(), ax) == 0 and _inside_figure(fig, ax.get_legend())
        assert _inside_figure(fig, ax.xaxis.label)


@pytest.mark.slow  # walks, plots and two GIFs: about 10 s
def test_lab_titles_fit_and_the_gif_legend_reads(tmp_path: Path, drawn: list[Any]) -> None:
    from gdlab.lab.walks import run
    from gdlab.plots import GIF_DPI, descent_figure

    result = run("himmelblau", optimizers=("adam",), steps=20, lr=0.1, restarts=6, out=tmp_path / "h")
    fig = drawn[0]
    assert _inside_figure(fig, fig._suptitle)  # one 4-inch panel: the title wraps instead of leaving the figure
    assert all(_inside_figure(fig, ax.title) for ax in fig.axes)
    result = run("himmelblau", optimizers=("sgd", "adam"), steps=20, lr=0.01, plots=False)
    fig, ax, draw, shown = descent_figure(result)
    draw(shown[-1])
    fig.canvas.draw()
    width, height = fig.get_size_inches() * GIF_DPI
    assert width >= 700 and height >= 480  # was 300 x 258
    legend = ax.get_legend()
    assert legend.get_texts()[0].get_fontsize() * GIF_DPI / 72 >= 9  # pixels: readable
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # beside the data
    assert _inside_figure(fig, legend)
    from PIL import Image

    with Image.open(run("himmelblau", optimizers=("sgd",), steps=10, lr=0.01, out=tmp_path / "g").files["animation"]
                    ) as gif:
        assert gif.size == (round(width), round(height))


def test_landscape_3d_ticks_do_not_overlap(tmp_path: Path, drawn: list[Any]) -> None:
    import types

    import torch

    from gdlab.plots import plot_landscape

    a = torch.linspace(-1, 1, 25)
    losses = 0.05 + (a[None, :] ** 2 + 2 * a[:, None] ** 2)
    plot_landscape(types.SimpleNamespace(losses=losses, alphas=a, betas=a, path=None, explained=None, samples=100),
                   tmp_path / "land.png")
    (fig,) = drawn
    surface = next(ax for ax in fig.axes if ax.name == "3d")
    renderer = _renderer(fig)
    for side in (surface.xaxis, surface.yaxis, surface.zaxis):
        boxes = [t.get_window_extent(renderer) for t in side.get_ticklabels() if t.get_visible() and t.get_text()]
        assert len(boxes) >= 2
        assert not any(b.overlaps(c) for i, b in enumerate(boxes) for c in boxes[i + 1:]), side
