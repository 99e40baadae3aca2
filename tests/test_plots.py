from __future__ import annotations

import math
from pathlib import Path

import pytest

from gdlab.plots import moving_average, plot_losses, spans_decades
from gdlab.records import History


def test_moving_average_is_bias_corrected() -> None:
    assert moving_average([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    assert moving_average([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
    assert moving_average([math.nan, 2.0])[1] == 2.0


def test_log_scale_when_loss_spans_two_decades() -> None:
    assert spans_decades([10.0, 0.05]) and not spans_decades([1.0, 0.5]) and not spans_decades([])


def test_plot_writes_a_png_with_epoch_and_step_panels(tmp_path: Path) -> None:
    history = History()
    for step in range(1, 101):
        history.steps.append({"step": step, "loss": 10 / step})
    for epoch in range(1, 6):
        history.epochs.append({"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.2 / epoch,
                               "val_accuracy": 0.5 + epoch / 20})
    path = plot_losses(history, tmp_path / "sub" / "loss.png", title="demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_plot_of_a_run_without_epochs(tmp_path: Path) -> None:
    history = History()
    history.steps.append({"step": 1, "loss": 1.0})
    assert plot_losses(history, tmp_path / "one.png").is_file()
