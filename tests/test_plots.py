"""The pictures' data: what each plot draws (its axes' lines, scales and marks), read from the matplotlib figure it
saved, and the panels the instrument dashboard is built from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gdlab.plots import instrument_panels, moving_average, plot_instruments, plot_losses, spans_decades
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
