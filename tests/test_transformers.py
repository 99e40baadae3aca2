"""gdlab.integrations.transformers.Doctor: the doctor in a Hugging Face Trainer (a tiny BERT, nothing downloaded).

The Trainer itself needs ``accelerate``; without it, the callback is driven by transformers' own
``CallbackHandler`` in the order the Trainer's loop calls the events (on_train_begin, on_epoch_begin,
on_step_begin, the forward and backward passes, on_pre_optimizer_step, the update, on_optimizer_step, zero_grad,
on_step_end, on_log, on_epoch_end, then the evaluation's on_evaluate, on_train_end).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gdlab.integrations.transformers import Doctor, summary  # noqa: E402

SIZE = 12


def _data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """A learnable task: the label says whether token 7 is in the sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 50, (n, SIZE), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, 3] = 7
    return [{"input_ids": ids[i], "attention_mask": torch.ones(SIZE, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def _batches(data: list[dict[str, torch.Tensor]], size: int) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.stack([d[k] for d in data[i:i + size]]) for k in data[0]} for i in range(0, len(data), size)]


def _model() -> Any:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


class _Wrapped:
    """accelerate's AcceleratedOptimizer, as the Trainer hands it to callbacks: the torch optimizer inside."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self) -> Any:
        return self.optimizer.param_groups

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()


def _loop(lr: float, epochs: int = 2, **options: Any) -> tuple[Doctor, Any, Any]:
    """The Trainer's loop, event by event (its evaluation: the mean loss on the held-out batches)."""
    model = _model()
    optimizer = _Wrapped(torch.optim.AdamW(model.parameters(), lr=lr))
    train, val = _batches(_data(320, 1), 16), _batches(_data(64, 2), 64)
    doctor = Doctor(**options)
    handler = transformers.trainer_callback.CallbackHandler(
        [transformers.trainer_callback.DefaultFlowCallback(), doctor], model, None, optimizer, None)
    handler.train_dataloader = train
    args = SimpleNamespace(eval_strategy="epoch", per_device_train_batch_size=16, gradient_accumulation_steps=1,
                           learning_rate=lr, world_size=1, logging_strategy="steps", logging_steps=5,
                           logging_first_step=False, save_strategy="no", eval_steps=None, eval_delay=0,
                           save_steps=500, max_steps=-1)
    state = transformers.TrainerState(max_steps=epochs * len(train), num_train_epochs=epochs, logging_steps=5)
    control = transformers.TrainerControl()
    model.train()
    control = handler.on_train_begin(args, state, control)
    for epoch in range(epochs):
        control = handler.on_epoch_begin(args, state, control)
        for batch in train:
            control = handler.on_step_begin(args, state, control)
            loss = model(**batch).loss
            loss.backward()
            control = handler.on_pre_optimizer_step(args, state, control)
            optimizer.step()
            control = handler.on_optimizer_step(args, state, control)
            optimizer.zero_grad()
            state.global_step += 1
            state.epoch = epoch + state.global_step / len(train) - epoch
            control = handler.on_step_end(args, state, control)
            if control.should_log:
                control = handler.on_log(args, state, control, logs={"loss": loss.item()})
            if control.should_training_stop:
                break
        control = handler.on_epoch_end(args, state, control)
        model.eval()
        with torch.no_grad():
            eval_loss = sum(float(model(**b).loss) for b in val) / len(val)
        model.train()
        handler.on_evaluate(args, state, control, metrics={"eval_loss": eval_loss, "eval_runtime": 0.1,
                                                          "eval_accuracy": 0.5, "epoch": float(epoch + 1)})
        if control.should_training_stop:
            break
    handler.on_train_end(args, state, control)
    return doctor, model, state


def test_a_healthy_run_is_watched(capsys: pytest.CaptureFixture[str]) -> None:
    doctor, model, state = _loop(1e-3, epochs=3)
    report = doctor.report
    assert report is not None and report.steps == state.global_step == 60
    steps, epochs = report.history.steps, report.history.epochs
    assert "loss" in steps.columns and "grad_norm" in steps.columns
    assert all(math.isfinite(v) for v in steps["loss"])
    assert len(epochs) == 3 and all(math.isfinite(v) for v in epochs["val_loss"])
    assert "val_accuracy" in epochs.columns and "val_runtime" not in epochs.columns
    assert report.final["val_loss"] is not None and report.final["val_loss"] < 0.6
    bad = [f.code for f in report.findings if f.severity in ("warning", "error")]
    assert not bad, bad
    assert capsys.readouterr().out.startswith("gdlab doctor")
    assert summary(report).startswith("gdlab doctor")
    model(**_batches(_data(4, 3), 4)[0])  # the hooks came off the model: this pass is not recorded
    assert doctor._losses == [] and doctor.watch is None


@pytest.mark.parametrize(("lr", "code"), [(10.0, "lr_too_high"), (1e-9, "lr_too_low")])
def test_a_learning_rate_off_by_far_is_named(lr: float, code: str) -> None:
    doctor, _, _ = _loop(lr, verbose=False)
    report = doctor.report
    assert report is not None and report.steps == 40
    codes = {f.code for f in report.findings}
    assert code in codes, codes


def test_the_real_trainer(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2,
                                          per_device_train_batch_size=16, learning_rate=1e-3, report_to=[],
                                          use_cpu=True, logging_steps=5, save_strategy="no", eval_strategy="epoch",
                                          disable_tqdm=True, seed=0)
    doctor = Doctor(verbose=False)
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=_data(320, 1),
                                   eval_dataset=_data(64, 2), callbacks=[doctor])
    trainer.train()
    report = doctor.report
    assert report is not None and report.steps == trainer.state.global_step
    assert "loss" in report.history.steps.columns and len(report.history.epochs) == 2
    assert all(math.isfinite(v) for v in report.history.epochs["val_loss"])
    assert "non_finite" not in {f.code for f in report.findings}


def test_importing_gdlab_does_not_import_transformers() -> None:
    code = "import sys, gdlab; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_summary_prints_a_finding_s_text_as_text() -> None:
    escapes = "\x1b]0;pwned\x07\x1b[2J[bold red]RED[/]"
    report = SimpleNamespace(findings=[{"severity": "warning", "code": "loss_plateau", "step": 3,
                                        "explanation": escapes}], steps=5, stop_reason=escapes)
    printed = summary(report)
    lines = printed.splitlines()
    assert len(lines) == 3 and "\x1b" not in printed and "\x07" not in printed
    assert lines[1].endswith(": \\x1b]0;pwned\\x07\\x1b[2J[bold red]RED[/]")


def test_the_summary_is_the_story_the_cli_prints() -> None:
    from gdlab.doctor import explain, story_lines

    doctor, _, _ = _loop(1e-9, verbose=False)
    report = doctor.report
    assert report is not None and report.findings
    story = explain(report.findings, run_id=report.run_id, remedies=report.remedies, steps=report.steps)
    lines = [str(x) for x in story_lines(story)]
    assert summary(report).splitlines()[: len(lines)] == lines  # then, if it stopped early, why
    assert story.causes[0].code == "lr_too_low" and "remedy:   set_lr" in summary(report)
