"""gdlab.integrations.transformers.Doctor in a Hugging Face Trainer under several processes (``torchrun
--nproc-per-node 2`` on CPU, gloo) and in mixed precision (``bf16=True`` on CPU; ``fp16=True`` needs CUDA).

The multi-process runs are this file run as a script by ``python -m torch.distributed.run`` in a subprocess with a
hard timeout; every rank writes what it saw (``rank<r>.json``) and the test compares it with what rank zero stored
and printed. The model is a tiny BERT built from a config here, on a random vocabulary: nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from multiproc import readings, run_bounded, store_runs, warnings

if __name__ != "__main__":
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

import transformers

from gdlab.integrations.transformers import Doctor
from test_transformers import _data, _model  # the one-process tests' tiny BERT and token-id task

pytestmark = pytest.mark.slow  # every test launches two processes (seconds each); .ci/run runs them
TIMEOUT = 240  # seconds for one two-process run (about 20-40 s on two busy cores); a hang fails the test
HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"


class Seen(transformers.TrainerCallback):
    """Per rank: the gradient norm each optimizer step applies (after DDP's all-reduce and the Trainer's clipping)
    and whether the doctor watched; written to ``rank<r>.json`` at the end of training."""

    def __init__(self, out: Path, doctor: Doctor) -> None:
        self.out, self.doctor = out, doctor
        self.norms: list[float] = []
        self.dtypes: set[str] = set()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.dtypes |= {str(g.dtype) for g in grads}
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        report = self.doctor.report
        seen: dict[str, Any] = {"rank": args.process_index, "world_size": args.world_size,
                                "global_step": state.global_step, "watched": report is not None,
                                "norms": self.norms, "grad_dtypes": sorted(self.dtypes),
                                "param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}
        if report is not None:
            seen["report"] = {"steps": report.steps, "status": report.status, "stop_reason": report.stop_reason,
                              "run_id": report.run_id, "findings": [f.to_dict() for f in report.findings]}
        (self.out / f"rank{args.process_index}.json").write_text(json.dumps(seen))


def run(out: Path, *, lr: float, epochs: int = 2, batch: int = 16, precision: str = "32", **args: Any) -> Any:
    """A Trainer's run (one process, or one of torchrun's), the doctor storing in ``out/runs``."""
    out.mkdir(parents=True, exist_ok=True)
    arguments = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=epochs, per_device_train_batch_size=batch,
        learning_rate=lr, report_to=[], use_cpu=precision != "fp16", logging_steps=5, save_strategy="no",
        eval_strategy="epoch", disable_tqdm=True, seed=0, bf16=precision == "bf16", fp16=precision == "fp16",
        **args)
    doctor = Doctor(store=out / "runs", name="trainer")
    trainer = transformers.Trainer(model=_model(), args=arguments, train_dataset=_data(320, 1),
                                   eval_dataset=_data(64, 2), callbacks=[doctor, Seen(out, doctor)])
    trainer.train()
    return trainer


def _launch(tmp_path: Path, **options: Any) -> tuple[subprocess.CompletedProcess[str], dict[int, dict[str, Any]]]:
    """``torchrun --nproc-per-node 2`` on this file, with a hard timeout: a hang fails the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE), str(tmp_path), json.dumps(options)]
    code, stdout, stderr = run_bounded(command, env, tmp_path, TIMEOUT)
    assert code == 0, stdout[-3000:] + stderr[-5000:]
    done = subprocess.CompletedProcess(command, code, stdout, stderr)
    seen = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    return done, seen


def test_two_processes_the_main_one_alone_reports(tmp_path: Path) -> None:
    done, seen = _launch(tmp_path, lr=3e-3, epochs=4, batch=8)
    assert sorted(seen) == [0, 1] and all(s["world_size"] == 2 for s in seen.values())
    zero, one = seen[0], seen[1]
    assert zero["watched"] and not one["watched"]  # the other process's callback does nothing
    assert zero["global_step"] == one["global_step"] == 4 * 20  # 320 samples, 8 a batch per process, 2 processes
    report = zero["report"]
    assert report["status"] == "finished" and report["steps"] == 80
    assert warnings(report["findings"]) == set(), report["findings"]
    assert (done.stdout + done.stderr).count("gdlab doctor") == 1, done.stdout  # printed by the main process
    assert "gdlab doctor: no findings in 80 steps" in done.stdout

    runs = store_runs(tmp_path / "runs")
    assert len(runs) == 1  # one run stored, by the main process
    run_, history = runs[0]
    assert run_.id == report["run_id"] and run_.status == "finished"
    # the gradient norms stored are those every process stepped with: after DDP's all-reduce
    assert zero["norms"] == one["norms"]
    stored, expected = readings(list(history.steps["grad_norm"]), zero["norms"])
    assert stored == pytest.approx(expected, rel=1e-5)
    assert zero["param_sum"] == one["param_sum"]
    assert len(history.epochs) == 4 and history.epochs.last("val_loss") < 0.5


def test_a_divergence_stops_every_process(tmp_path: Path) -> None:
    """SGD at an absurd learning rate, unclipped: the loss overflows to NaN; the main process's verdict reaches
    the other, and both stop at the same step (else one would wait for the other until the timeout)."""
    done, seen = _launch(tmp_path, lr=1e30, optim="sgd", max_grad_norm=0.0)
    zero, one = seen[0], seen[1]
    report = zero["report"]
    assert "non_finite" in warnings(report["findings"]), report["findings"]
    assert (report["stop_reason"] or "").startswith("diverged")
    assert zero["global_step"] == one["global_step"] < 2 * 10
    assert (done.stdout + done.stderr).count("gdlab doctor") == 1
    assert len(store_runs(tmp_path / "runs")) == 1


def test_bf16_on_cpu_records_float32_values(tmp_path: Path) -> None:
    """``bf16=True`` (with ``use_cpu=True``): the forward pass runs under bfloat16 autocast, the weights and their
    gradients stay float32; the recorded loss and gradient norms are float32 values and the findings those of the
    float32 run. ``fp16=True`` on CPU: accelerate turns no autocast on (float16 needs CUDA), the run is float32."""
    run(tmp_path / "fp32", lr=3e-3, epochs=1, batch=16)
    half = run(tmp_path / "bf16", lr=3e-3, epochs=1, batch=16, precision="bf16")
    assert half.args.bf16 and half.accelerator.mixed_precision == "bf16"
    seen = {name: json.loads((tmp_path / name / "rank0.json").read_text()) for name in ("fp32", "bf16")}
    assert seen["bf16"]["grad_dtypes"] == ["torch.float32"]
    (_, history), = store_runs(tmp_path / "bf16" / "runs")
    (_, reference), = store_runs(tmp_path / "fp32" / "runs")
    losses, norms = list(history.steps["loss"]), list(history.steps["grad_norm"])
    norms, expected = readings(norms, seen["bf16"]["norms"])
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses + norms)
    assert norms == pytest.approx(expected, rel=1e-5)
    # bfloat16 keeps about 3 digits: the first loss agrees with float32's to that, and is not the same number
    first, first_full = losses[0], list(reference.steps["loss"])[0]
    assert first == pytest.approx(first_full, rel=2e-2) and first != first_full
    codes = {name: {f["code"] for f in seen[name]["report"]["findings"]} for name in seen}
    assert codes["bf16"] == codes["fp32"], codes

    if not torch.cuda.is_available():  # fp16 on CPU: accepted, and float32 all along
        fp16 = run(tmp_path / "fp16", lr=3e-3, epochs=1, batch=16, precision="fp16")
        assert fp16.accelerator.mixed_precision == "fp16" and not fp16.accelerator.native_amp
        (_, on_cpu), = store_runs(tmp_path / "fp16" / "runs")
        assert list(on_cpu.steps["loss"]) == list(reference.steps["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="fp16=True needs CUDA (on CPU accelerate turns no float16 autocast on)")
def test_fp16_on_cuda_records_float32_values(tmp_path: Path) -> None:
    trainer = run(tmp_path, lr=3e-3, epochs=2, batch=8, precision="fp16")
    assert trainer.accelerator.mixed_precision == "fp16"
    seen = json.loads((tmp_path / "rank0.json").read_text())
    (_, history), = store_runs(tmp_path / "runs")
    losses, norms = list(history.steps["loss"]), list(history.steps["grad_norm"])
    norms, _ = readings(norms, norms)
    assert len(losses) == 80 and all(math.isfinite(v) for v in losses + norms)
    assert "non_finite" not in {f["code"] for f in seen["report"]["findings"]}


if __name__ == "__main__":
    run(Path(sys.argv[1]), **json.loads(sys.argv[2]))
    if torch.distributed.is_initialized():  # end together, as torch's docs ask of a torchrun script: a process that
        torch.distributed.barrier()  # exits while gloo still talks to it aborts its peer ("terminate called
        torch.distributed.destroy_process_group()  # without an active exception", seen once in a full suite)
