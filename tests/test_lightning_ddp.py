"""gdlab.integrations.lightning.Doctor with several devices on one machine: ``Trainer(accelerator="cpu",
devices=2)`` under the ``ddp`` and ``ddp_spawn`` strategies (gloo), and with ``precision="bf16-mixed"``.

Each multi-process run is this file run as a script in a subprocess with a hard timeout (Lightning's ``ddp``
launcher starts the other rank by running the same command again, which cannot be pytest itself). Every rank
writes what it saw (``rank<r>.json``: its local losses, the gradient norm it stepped with, its learning rates and
whether it watched); the test compares those with what rank zero stored and printed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multiproc import readings, run_bounded, store_runs, warnings

if __name__ != "__main__":
    pytest.importorskip("lightning")

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gdlab.doctor.findings import Remedy
from gdlab.integrations.lightning import Doctor

pytestmark = pytest.mark.slow  # every test launches two processes (seconds each); .ci/run runs them
TIMEOUT = 180  # seconds for one multi-process run (about 15-30 s on two busy cores); a hang fails the test
CLIP = 0.01  # the norm the clip tests clip to, far below this model's gradients (about 0.3 to 0.8)
HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"


class Classifier(LightningModule):
    """An MLP on two classes, plain SGD at ``lr``."""

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        self.lr, self.momentum = lr, momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y), sync_dist=True)
        self.log("val_accuracy", (out.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def _loaders(n: int = 512) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """384 training samples (batches of 16), 128 held out."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()  # linearly separable
    train = DataLoader(TensorDataset(X[: n * 3 // 4], y[: n * 3 // 4]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(X[n * 3 // 4:], y[n * 3 // 4:]), batch_size=64)
    return train, val


class Seen(Callback):
    """What each rank trains with: its local loss, the gradient norm the optimizer steps with (after DDP's
    all-reduce) and the learning rate, per optimizer step; written to ``rank<r>.json`` at the fit's end."""

    def __init__(self, out: Path, doctor: Doctor, clip_at: int | None = None) -> None:
        self.out, self.doctor, self.clip_at = out, doctor, clip_at
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.lrs: list[float] = []
        self.momenta: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))
        watched = self.doctor.watch
        if trainer.global_step == self.clip_at and watched is not None and watched.physician is not None:
            # the doctor's clip_norm remedy as its clip_spikes rule enters it (a spike big enough to call for it
            # also blows the loss up in a run this small); the rule itself is tested in test_doctor.py
            watched.physician.remedies.append(Remedy(trainer.global_step, "clip_norm", {"max_norm": CLIP},
                                                     "a test's clip"))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        self.momenta.append(float(optimizer.param_groups[0].get("momentum", 0.0)))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        report = self.doctor.report
        seen = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                "watched": report is not None, "losses": self.losses, "norms": self.norms, "lrs": self.lrs,
                "momenta": self.momenta, "param_sum": float(sum(p.detach().double().sum() for p in
                                                                pl_module.parameters()))}
        if report is not None:
            seen["report"] = {"steps": report.steps, "status": report.status, "stop_reason": report.stop_reason,
                              "run_id": report.run_id, "findings": [f.to_dict() for f in report.findings],
                              "remedies": [r.to_dict() if hasattr(r, "to_dict") else dict(r)
                                           for r in report.remedies]}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))


def run(out: Path, *, lr: float, strategy: str = "ddp", devices: int = 2, epochs: int = 2,
        precision: str = "32-true", remedy: str = "suggest", momentum: float = 0.0, progress: str = "tqdm",
        clip_at: int | None = None) -> None:
    """One fit under ``strategy`` on ``devices`` CPU processes, the doctor storing in ``out/runs``."""
    out.mkdir(parents=True, exist_ok=True)
    # the norms read every 4th step: these runs are 12-24 steps long (the default reads every 20th)
    doctor = Doctor(store=out / "runs", name="ddp", remedy=remedy, grad_norm_every=4)
    train, val = _loaders()
    bar = TQDMProgressBar() if progress == "tqdm" else RichProgressBar()
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=devices, strategy=strategy, precision=precision,
                      logger=CSVLogger(str(out / "logs")), enable_checkpointing=False, enable_progress_bar=True,
                      enable_model_summary=False, callbacks=[doctor, Seen(out, doctor, clip_at), bar])
    trainer.fit(Classifier(lr, momentum), train, val)




def _launch(tmp_path: Path, **options: Any) -> tuple[subprocess.CompletedProcess[str], dict[int, dict[str, Any]]]:
    """This file as a script, in a subprocess with a hard timeout: a hang fails the test instead of stalling it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    command = [sys.executable, str(HERE), str(tmp_path), json.dumps(options)]
    code, stdout, stderr = run_bounded(command, env, tmp_path, TIMEOUT)
    assert code == 0, stdout[-3000:] + stderr[-5000:]
    done = subprocess.CompletedProcess(command, code, stdout, stderr)
    seen = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    return done, seen








def test_two_processes_rank_zero_alone_reports_with_the_all_reduced_gradients(tmp_path: Path) -> None:
    done, seen = _launch(tmp_path, lr=0.1, strategy="ddp", progress="tqdm")
    assert sorted(seen) == [0, 1] and all(s["world_size"] == 2 for s in seen.values())
    zero, one = seen[0], seen[1]
    assert zero["watched"] and not one["watched"]  # rank one trains unwatched
    assert zero["global_step"] == one["global_step"] == 2 * 12  # 384 samples, 16 a batch per rank, 2 ranks
    report = zero["report"]
    assert report["status"] == "finished" and report["steps"] == 24
    assert warnings(report["findings"]) == set(), report["findings"]

    # printed once, by rank zero, on a line of its own after the progress bar (tqdm's, on stdout), which went
    # to its end
    assert (done.stdout + done.stderr).count("gdlab doctor:") == 1, done.stdout
    lines = done.stdout.replace("\r", "\n").splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("gdlab doctor: no findings")]
    assert at and any(line.startswith("Epoch 1: 100%") for line in lines[: at[0]]), done.stdout[-2000:]

    # one run stored; its gradient norms are the all-reduced ones every rank stepped with (the ranks' local
    # losses differ, so a norm taken before the all-reduce would differ between them)
    runs = store_runs(tmp_path / "runs")
    assert len(runs) == 1
    run, history = runs[0]
    assert run.id == report["run_id"] and run.status == "finished"
    assert zero["losses"] != one["losses"]
    assert zero["norms"] == one["norms"]
    stored = list(history.steps["grad_norm"])
    assert len(stored) == 24
    stored, expected = readings(stored, one["norms"])  # read every grad_norm_every steps
    assert stored == pytest.approx(expected, rel=1e-5)
    assert list(history.steps["loss"]) == pytest.approx(zero["losses"], rel=1e-5)  # rank zero's own loss
    assert zero["param_sum"] == one["param_sum"]
    assert {"val_loss", "val_accuracy"} <= set(history.epochs.columns) and len(history.epochs) == 2

    # the instruments went through the trainer's logger (rank zero's: one metrics file), one row an epoch
    files = list((tmp_path / "logs").rglob("metrics.csv"))
    assert len(files) == 1, files
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r.get("gdlab/loss")) == 2
    assert {"gdlab/loss", "gdlab/grad_norm", "gdlab/lr"} < set(rows[0])


def test_a_divergence_stops_every_rank_and_is_named(tmp_path: Path) -> None:
    done, seen = _launch(tmp_path, lr=1e4, strategy="ddp_spawn", progress="rich")
    zero, one = seen[0], seen[1]
    report = zero["report"]
    assert "non_finite" in warnings(report["findings"]), report["findings"]
    assert (report["stop_reason"] or "").startswith("diverged")
    # the stop reached rank one at the same step (else it would wait in its next all-reduce until the timeout)
    assert zero["global_step"] == one["global_step"] < 2 * 12
    assert done.stdout.count("gdlab doctor:") == 1
    assert len(store_runs(tmp_path / "runs")) == 1


def test_remedy_auto_sets_the_learning_rate_on_every_rank(tmp_path: Path) -> None:
    _, seen = _launch(tmp_path, lr=1e-3, strategy="ddp", epochs=4, remedy="auto")
    zero, one = seen[0], seen[1]
    raised = [r for r in zero["report"]["remedies"] if r["action"] == "set_lr"]
    assert raised, zero["report"]["remedies"]  # steps too small: the doctor raised the learning rate
    assert len(set(zero["lrs"])) > 1
    assert zero["lrs"] == one["lrs"]  # rank one stepped with the learning rate rank zero's doctor set
    assert zero["param_sum"] == one["param_sum"]  # so the replicas stayed one model


def test_the_clip_remedy_clips_every_rank_after_the_backward_pass(tmp_path: Path) -> None:
    """Lightning computes the gradients inside ``optimizer.step(closure)``: the doctor's ``clip_norm`` acts in
    ``on_before_optimizer_step``, after the backward pass and the all-reduce, and rank zero's norm reaches rank
    one (``remedy="auto"``)."""
    _, seen = _launch(tmp_path, lr=0.1, strategy="ddp", epochs=1, remedy="auto", clip_at=4)
    zero, one = seen[0], seen[1]
    assert zero["norms"] == one["norms"] and zero["param_sum"] == one["param_sum"]
    before, after = zero["norms"][:5], zero["norms"][5:]  # step 5 on: clipped, on both ranks
    assert min(before) > 10 * CLIP and after and max(after) <= CLIP * (1 + 1e-5)
    (_, history), = store_runs(tmp_path / "runs")
    measured = [v for v in list(history.steps["grad_norm"])[5:] if v == v]  # NaN: a step without a reading
    assert measured and max(measured) <= CLIP * (1 + 1e-5)  # what the doctor measured, clipped


def test_bf16_mixed_precision_records_float32_values(tmp_path: Path) -> None:
    """``precision="bf16-mixed"`` on CPU: the forward pass runs in bfloat16 under autocast, the weights and their
    gradients stay float32; the loss and norms are recorded as float32 and the healthy run stays healthy."""
    reports = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        run(out, lr=0.1, strategy="auto", devices=1, precision=precision)
        reports[precision] = json.loads((out / "rank0.json").read_text())
    half, full = reports["bf16-mixed"], reports["32-true"]
    assert half["report"]["steps"] == full["report"]["steps"] == 2 * 24
    assert warnings(half["report"]["findings"]) == set(), half["report"]["findings"]
    (run_, history), = store_runs(tmp_path / "bf16-mixed" / "runs")
    losses, norms = list(history.steps["loss"]), list(history.steps["grad_norm"])
    norms, expected = readings(norms, half["norms"])
    assert all(math.isfinite(v) for v in losses + norms)
    assert norms == pytest.approx(expected, rel=1e-5)  # the float32 gradients' norms
    assert losses == pytest.approx(half["losses"], rel=1e-6)
    assert losses[0] == pytest.approx(full["losses"][0], rel=2e-2)  # bfloat16's precision, about 3 digits
    assert losses != full["losses"]  # the forward pass did run in bfloat16


if __name__ == "__main__":
    run(Path(sys.argv[1]), **json.loads(sys.argv[2]))
