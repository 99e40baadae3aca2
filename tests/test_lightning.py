"""gdlab.integrations.lightning.Doctor: gdlab.watch as a Lightning callback names the pathologies of a Trainer's
run, logs the instruments to the trainer's logger and records the run in a store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from gdlab.cli import app
from gdlab.integrations.lightning import Doctor, finding_line


class Classifier(LightningModule):
    """An MLP on two classes, plain SGD at ``lr``."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_accuracy", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _loaders(n: int = 512) -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()  # linearly separable
    train = DataLoader(TensorDataset(X[: n * 3 // 4], y[: n * 3 // 4]), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(X[n * 3 // 4:], y[n * 3 // 4:]), batch_size=128)
    return train, val


def _fit(doctor: Doctor, lr: float, tmp_path: Path, *, epochs: int = 3, **options: Any) -> Trainer:
    train, val = _loaders()
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path / "logs")),
                      enable_checkpointing=False, enable_progress_bar=True, enable_model_summary=False,
                      callbacks=[doctor], **options)
    trainer.fit(Classifier(lr), train, val)
    return trainer


def _warnings(doctor: Doctor) -> set[str]:
    assert doctor.report is not None
    return {f.code for f in doctor.report.findings if f.severity in ("warning", "error")}


def _logged(tmp_path: Path) -> list[dict[str, str]]:
    files = list((tmp_path / "logs").rglob("metrics.csv"))
    assert len(files) == 1, files
    with files[0].open() as f:
        return list(csv.DictReader(f))


def test_healthy_run_has_no_warnings_and_logs_the_instruments(tmp_path: Path, capsys: Any) -> None:
    doctor = Doctor(store=tmp_path / "runs", name="healthy")
    trainer = _fit(doctor, 0.1, tmp_path)
    report = doctor.report
    assert report is not None and report.status == "finished"
    assert _warnings(doctor) == set(), [finding_line(f) for f in report.findings]
    assert report.steps == trainer.global_step == 3 * 12
    epochs = report.history.epochs
    assert len(epochs) == 3 and "val_loss" in epochs and "val_accuracy" in epochs
    assert epochs.last("val_accuracy") > 0.9
    assert "gdlab doctor:" in capsys.readouterr().out

    rows = _logged(tmp_path)
    columns = set().union(*(r.keys() for r in rows))
    assert {"gdlab/loss", "gdlab/grad_norm", "gdlab/lr"} <= columns
    instruments = {c for c in columns if c.startswith("gdlab/")} - {"gdlab/loss", "gdlab/grad_norm", "gdlab/lr"}
    assert instruments, columns  # the instruments' own columns reach the logger
    assert sum(1 for r in rows if r.get("gdlab/loss")) == 3  # one row an epoch

    runner = CliRunner()
    shown = runner.invoke(app, ["show", "healthy", "--store", str(tmp_path / "runs"), "--json"])
    assert shown.exit_code == 0, shown.output
    stored = json.loads(shown.output)
    assert stored["status"] == "finished" and stored["config"]["loop"] == "lightning"


def test_huge_learning_rate_is_named(tmp_path: Path) -> None:
    doctor = Doctor(echo=False)
    trainer = _fit(doctor, 1e4, tmp_path)
    codes = _warnings(doctor)
    assert "non_finite" in codes, codes
    assert doctor.report is not None and (doctor.report.stop_reason or "").startswith("diverged")
    assert trainer.should_stop and trainer.global_step < 3 * 12  # a divergence nothing repaired stops the trainer


def test_tiny_learning_rate_is_named(tmp_path: Path) -> None:
    doctor = Doctor(echo=False)
    _fit(doctor, 1e-4, tmp_path, epochs=6)
    assert {"lr_too_low", "not_learning"} <= _warnings(doctor)  # as gdlab.watch names it


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    doctor = Doctor(echo=False, log=False)
    trainer = _fit(doctor, 0.1, tmp_path, epochs=2, accumulate_grad_batches=3)
    assert doctor.report is not None
    assert doctor.report.steps == trainer.global_step == 2 * 4
    assert all(v > 0 for v in doctor.report.history.steps["loss"])


def test_the_per_batch_hooks_it_does_not_use_cost_nothing(tmp_path: Path) -> None:
    """Lightning skips a callback's hook that is not callable: the unused per-batch ones are None (a subclass's own
    hook stays), and a fit runs through them all."""
    calls: list[int] = []

    class Counting(Doctor):
        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            calls.append(trainer.global_step)

    doctor, counting = Doctor(echo=False), Counting(echo=False)
    # on_train_batch_start is used: it hands watch each batch (a module whose training_step calls a submodule)
    assert doctor.on_before_backward is None and callable(doctor.on_train_batch_start)
    assert callable(counting.on_after_backward) and counting.on_before_backward is None
    _fit(counting, 0.1, tmp_path, epochs=1)
    assert len(calls) == 12 and counting.report is not None and counting.report.steps == 12


def test_importing_gdlab_never_imports_lightning() -> None:
    code = "import sys, gdlab; import gdlab.integrations; assert 'lightning' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_lightning_the_import_names_the_extra() -> None:
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None\n"
            "from gdlab.errors import MissingExtra\n"
            "try:\n    import gdlab.integrations.lightning\nexcept MissingExtra as e:\n"
            "    assert \"pip install 'gdlab[lightning]'\" in str(e), e\nelse:\n    raise SystemExit('no error')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_print_findings_prints_their_text_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    escapes = "\x1b]0;pwned\x07\x1b[2J[bold red]RED[/]"
    doctor = Doctor()
    finding = {"severity": "warning", "code": "loss_plateau", "step": 3, "explanation": escapes}
    doctor.report = SimpleNamespace(run_id=escapes, findings=[finding])
    doctor.print_findings()
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and len(printed.splitlines()) == 2
    assert "(run \\x1b]0;pwned\\x07" in printed and printed.splitlines()[1].endswith("\\x1b[2J[bold red]RED[/]")


def test_the_callback_prints_the_story_as_the_cli_does(tmp_path: Path, capsys: Any) -> None:
    from gdlab.doctor import explain, story_lines

    doctor = Doctor(store=tmp_path / "runs", name="slow")
    _fit(doctor, 1e-4, tmp_path, epochs=6)
    report = doctor.report
    assert report is not None and report.run_id is not None
    printed = capsys.readouterr().out
    story = explain(report.findings, run_id=report.run_id, remedies=report.remedies, steps=report.steps)
    lines = [str(x) for x in story_lines(story)]
    assert lines[0].startswith("gdlab doctor: ") and f"(run {report.run_id})" in lines[0]
    assert "\n".join(lines) in printed  # the lines of the one printer, as they are
    assert story.causes[0].code != "not_learning"  # a specific cause leads; not_learning hangs beneath it
    shown = CliRunner().invoke(app, ["show", "slow", "--store", str(tmp_path / "runs")])
    assert " ".join("\n".join(lines).split()) in " ".join(shown.stdout.split())  # the CLI prints the same story
