"""Silent bugs in training code, reproduced small on the CPU in the shape of their public reports, each run under
``gdlab.watch``: the bug is named at the watch's first check (at most ``log_every`` steps; for validation, the
first read after it) with its one-line fix as the remedy and as a root cause of ``result.diagnosis``; each
healthy twin is quiet. One table (:data:`CASES`): the case's script, the finding it must raise (None: a healthy
twin) and the fix the remedy must say.

The public cases: pytorch-forum 84911 (a fine-tuning script hands the optimizer only the frozen head while batch
norm's statistics still move the loss), stackoverflow 60335387 (an MNIST loop without ``zero_grad``),
huggingface accelerate 2665 (the wrapped model and the optimizer no longer share their parameters), transformers
33844 (dropout active in ``eval()``), and a scheduler built per epoch but stepped per batch. The DDP case
(pytorch 104336) runs under two processes in ``tests/test_watch_ddp.py``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gdlab

LOOP_BUGS = {"grads_not_zeroed", "optimizer_has_no_trainable_params", "grads_in_no_param_group",
             "training_in_eval_mode", "loss_given_probabilities", "target_shape_broadcasts", "same_batch_every_step",
             "labels_sorted", "update_changes_nothing", "schedule_ends_early", "validation_in_train_mode",
             "dropout_in_eval", "replicas_out_of_step"}
LOG_EVERY = 5


class Script:
    """The watch of one script, and what its meta held at the first read (``log_every`` steps, or the first
    ``epoch_end``, whichever comes first)."""

    def __init__(self, model: nn.Module, optimizer: Any, **options: Any) -> None:
        options.setdefault("log_every", LOG_EVERY)
        options.setdefault("instruments", "none")
        self.log_every = options["log_every"]
        self.watch = gdlab.watch(model, optimizer, **options)
        self.steps = 0
        self.first: dict[str, Any] | None = None

    def step(self, loss: torch.Tensor, batch: Any = None) -> None:
        self.watch.step(loss, batch=batch)
        self.steps += 1
        if self.steps == self.log_every and self.first is None:
            self.first = dict(self.watch.history.meta)

    def epoch_end(self, **values: float) -> None:
        self.watch.epoch_end(**values)
        if self.first is None:
            self.first = dict(self.watch.history.meta)

    def close(self) -> tuple[gdlab.Result, dict[str, Any]]:
        report = self.watch.close()
        return report, self.first if self.first is not None else dict(report.history.meta)


def _data(n: int = 160, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes] + 0.3 * torch.randn(n, classes, generator=g)).argmax(1)
    return TensorDataset(x, y)


def _loader(n: int = 160, batch_size: int = 16, shuffle: bool = True) -> DataLoader[Any]:
    return DataLoader(_data(n), batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def _net(classes: int = 3) -> nn.Sequential:
    """A backbone (linear, batch norm, ReLU, dropout) and a head, as a fine-tuning script builds one."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, classes))


def _train(script: Script, model: nn.Module, opt: Any, loader: Any, epochs: int = 2, *, validate: bool = False,
           val_mode: str = "eval", zero: str = "before", give_batch: bool = False, scheduler: Any = None,
           per_batch: bool = False) -> None:
    """The usual loop, with the knobs the slips turn."""
    val = _loader(64, 32, shuffle=False)
    for _ in range(epochs):
        for x, y in loader:
            if zero == "before":
                opt.zero_grad()
            elif zero == "none_before":
                opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if zero == "after":
                opt.zero_grad()
            if scheduler is not None and per_batch:
                scheduler.step()
            script.step(loss, batch=(x, y) if give_batch else None)
        if scheduler is not None and not per_batch:
            scheduler.step()
        values: dict[str, float] = {}
        if validate:
            if val_mode == "eval":
                model.eval()
            with torch.no_grad():
                values["val_loss"] = sum(float(F.cross_entropy(model(x), y)) for x, y in val) / len(val)
            model.train()
        script.epoch_end(**values)


# -- the public cases ----------------------------------------------------------------------------------------------
def forum_84911_frozen_finetune() -> tuple[gdlab.Result, dict[str, Any]]:
    """Freeze everything but batch norm, then give the optimizer the (frozen) classifier head only."""
    model = _net()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("1.")  # "unfreeze batch norm"
    opt = torch.optim.SGD(model[4].parameters(), lr=0.01, momentum=0.9)
    script = Script(model, opt)
    _train(script, model, opt, _loader(), validate=True)
    return script.close()


def so_60335387_no_zero_grad() -> tuple[gdlab.Result, dict[str, Any]]:
    """An MNIST-shaped loop (images flattened, log_softmax + nll_loss) that never calls zero_grad()."""
    torch.manual_seed(0)
    images = torch.rand(128, 1, 8, 8)
    target = torch.randint(0, 10, (128,))
    train_loader = DataLoader(TensorDataset(images, target), batch_size=16, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    script = Script(model, optimizer)
    model.train()
    for _epoch in range(2):
        for data, y in train_loader:
            output = F.log_softmax(model(data), dim=1)
            loss = F.nll_loss(output, y)
            loss.backward()
            optimizer.step()
            script.step(loss)
        script.epoch_end()
    return script.close()


def accelerate_2665_wrapped_after_optimizer() -> tuple[gdlab.Result, dict[str, Any]]:
    """The optimizer is built, then the model is wrapped by a prepare() that makes its parameters anew (as a
    wrapper that flattens or moves them does): the loop trains the wrapped model, the optimizer steps the old
    parameters."""
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def prepare(module: nn.Module) -> nn.Module:
        return copy.deepcopy(module)

    model = prepare(model)
    script = Script(model, opt)
    _train(script, model, opt, _loader())
    return script.close()


class _Rebinding(torch.optim.Optimizer):
    """A hand-written SGD whose step rebinds ``p`` instead of changing it in place."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p = p - group["lr"] * p.grad  # the bug: a new tensor, the parameter untouched


def hand_written_step_rebinds() -> tuple[gdlab.Result, dict[str, Any]]:
    model = _net()
    opt = _Rebinding(model.parameters(), lr=0.1)
    script = Script(model, opt)
    _train(script, model, opt, _loader())
    return script.close()


class _DropsAlways(nn.Module):
    """A model whose forward calls ``F.dropout(x, p)``: its default ``training=True`` drops in eval() too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)
        self.p = 0.3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.p))


class _DropsInTraining(_DropsAlways):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.p, training=self.training))


def transformers_33844_dropout_in_eval(model: nn.Module | None = None) -> tuple[gdlab.Result, dict[str, Any]]:
    model = model if model is not None else _DropsAlways()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    script = Script(model, opt)
    _train(script, model, opt, _loader(), validate=True, give_batch=True)
    return script.close()


def per_batch_scheduler(per_batch: bool = True, t_max: str = "epochs") -> tuple[gdlab.Result, dict[str, Any]]:
    """A cosine schedule built over the epochs (T_max=epochs) and stepped after every batch: the lr reaches 0 at
    step 10 of a 25-step epoch. Twins: stepped per epoch; built over every step (T_max = epochs * len(loader))."""
    model = _net()
    epochs, loader = 10, _loader(400)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs if t_max == "epochs" else epochs * len(loader))
    script = Script(model, opt, loader=loader, log_every=20)
    _train(script, model, opt, loader, epochs=2, scheduler=scheduler, per_batch=per_batch)
    return script.close()


def warmup_then_decay() -> tuple[gdlab.Result, dict[str, Any]]:
    """A warmup from 0 over 10 steps, then a linear decay to 0 over the planned steps, stepped per batch."""
    model = _net()
    loader = _loader()
    total = 3 * len(loader)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / 10 if s < 10 else max(0.0, (total - s) / (total - 10)))
    script = Script(model, opt, loader=loader)
    _train(script, model, opt, loader, epochs=3, scheduler=scheduler, per_batch=True)
    return script.close()


# -- the slips -----------------------------------------------------------------------------------------------------
def slip(kind: str) -> tuple[gdlab.Result, dict[str, Any]]:
    """The usual loop with one thing changed (or a healthy variant of it)."""
    model = _net()
    loader = _loader()
    if kind == "sorted_labels":  # a data set stored class by class, never shuffled
        x, y = _data().tensors
        order = y.argsort(stable=True)
        loader = DataLoader(TensorDataset(x[order], y[order]), batch_size=8)
    params: Any = model.parameters()
    if kind == "no_param_group":
        params = model[4].parameters()
    elif kind == "frozen_on_purpose":
        for p in model[:4].parameters():
            p.requires_grad_(False)
        params = model[4].parameters()
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    validating = kind in ("train_while_validating", "validate_in_eval")
    script = Script(model, opt, log_every=20 if validating else LOG_EVERY)  # the first read: the epoch's end
    if kind == "eval_while_training":
        model.eval()  # a sanity evaluation before training, and no model.train() after it
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            script.step(loss)
        return script.close()
    zero = {"zero_after": "after", "set_to_none": "none_before"}.get(kind, "before")
    _train(script, model, opt, loader, validate=validating,
           val_mode="train" if kind == "train_while_validating" else "eval", zero=zero,
           give_batch=kind == "sorted_labels")
    return script.close()


def fed_wrong(kind: str) -> tuple[gdlab.Result, dict[str, Any]]:
    """What the loss is fed: probabilities to a cross-entropy, a [N] target against a [N, 1] output, the same
    batch every step (healthy: logits, a [N, 1] target, a new batch each step)."""
    torch.manual_seed(0)
    regression = kind in ("mse_broadcast", "mse_matched")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1 if regression else 3),
                          *([nn.Softmax(dim=1)] if kind == "probabilities" else []))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    script = Script(model, opt)
    data, w = _data(), torch.randn(8)
    loader = list(DataLoader(data, batch_size=16))
    for i in range(2 * LOG_EVERY):
        x, y = loader[0] if kind == "same_batch" else loader[i % len(loader)]
        opt.zero_grad()
        out = model(x)
        if regression:
            y = x @ w  # [N]
            if kind == "mse_matched":
                y = y.view(-1, 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns of the broadcast: the script's author did not read it
                loss = F.mse_loss(out, y)
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        script.step(loss, batch=(x, y))
    return script.close()


def accumulation() -> tuple[gdlab.Result, dict[str, Any]]:
    """Gradients accumulated over 4 micro-batches, zeroed after each update."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    script = Script(model, opt)
    for _ in range(2):
        for i, (x, y) in enumerate(_loader(batch_size=4)):
            loss = F.cross_entropy(model(x), y) / 4
            loss.backward()
            if (i + 1) % 4 == 0:
                opt.step()
                opt.zero_grad()
                script.step(loss * 4)
        script.epoch_end()
    return script.close()


def grad_scaler() -> tuple[gdlab.Result, dict[str, Any]]:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    script = Script(model, opt)
    for _ in range(2):
        for x, y in _loader():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            script.step(loss)
        script.epoch_end()
    return script.close()


def update_bn_on_purpose() -> tuple[gdlab.Result, dict[str, Any]]:
    """Batch norm's statistics recomputed on purpose without gradients in train() mode (SWA's update_bn)."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    script = Script(model, opt)
    _train(script, model, opt, _loader(), epochs=1)
    torch.optim.swa_utils.update_bn(_loader(64, 16), model)
    script.epoch_end()
    return script.close()


@dataclass(frozen=True)
class Case:
    script: Callable[[], tuple[gdlab.Result, dict[str, Any]]]
    code: str | None  # None: a healthy twin
    fix: str = ""


CASES: dict[str, Case] = {
    # the public cases
    "forum_84911_frozen_finetune": Case(
        forum_84911_frozen_finetune, "optimizer_has_no_trainable_params",
        "pass the trainable parameters to the optimizer: torch.optim.SGD(p for p in model.parameters() if "
        "p.requires_grad)"),
    "so_60335387_no_zero_grad": Case(
        so_60335387_no_zero_grad, "grads_not_zeroed",
        "call optimizer.zero_grad() before loss.backward() (or after optimizer.step())"),
    "accelerate_2665_wrapped_after_optimizer": Case(
        accelerate_2665_wrapped_after_optimizer, "update_changes_nothing",
        "build the optimizer after wrapping the model, over the parameters the loop trains: optimizer = "
        "torch.optim.AdamW(model.parameters())"),
    "hand_written_step_rebinds": Case(
        hand_written_step_rebinds, "update_changes_nothing",
        "change the parameters in place in step(): p.add_(p.grad, alpha=-lr), not p = p - lr * p.grad"),
    "transformers_33844_dropout_in_eval": Case(
        transformers_33844_dropout_in_eval, "dropout_in_eval",
        "call F.dropout(x, p, training=self.training) in the model's forward (its default is training=True), or "
        "use an nn.Dropout module"),
    "per_batch_scheduler": Case(
        per_batch_scheduler, "schedule_ends_early",
        "call scheduler.step() once per epoch, after the epoch's batches (or build it over every step: T_max = "
        "epochs * len(loader))"),
    # the slips
    "eval_while_training": Case(lambda: slip("eval_while_training"), "training_in_eval_mode",
                                "call model.train() before the training loop"),
    "train_while_validating": Case(lambda: slip("train_while_validating"), "validation_in_train_mode",
                                   "call model.eval() before validating (and model.train() after)"),
    "no_param_group": Case(lambda: slip("no_param_group"), "grads_in_no_param_group",
                           "pass model.parameters() to the optimizer"),
    "cross_entropy_given_probabilities": Case(
        lambda: fed_wrong("probabilities"), "loss_given_probabilities",
        "give CrossEntropyLoss the logits: remove the softmax at the end of the model"),
    "mse_target_broadcasts": Case(lambda: fed_wrong("mse_broadcast"), "target_shape_broadcasts",
                                  "target.view(-1, 1) (or output.squeeze(-1))"),
    "same_batch_every_step": Case(lambda: fed_wrong("same_batch"), "same_batch_every_step",
                                  "draw a new batch each step"),
    "labels_sorted": Case(lambda: slip("sorted_labels"), "labels_sorted", "shuffle: DataLoader(..., shuffle=True)"),
    # the healthy twins
    "accumulation": Case(accumulation, None),
    "grad_scaler": Case(grad_scaler, None),
    "frozen_on_purpose": Case(lambda: slip("frozen_on_purpose"), None),
    "zero_after_update": Case(lambda: slip("zero_after"), None),
    "set_to_none": Case(lambda: slip("set_to_none"), None),
    "validate_in_eval": Case(lambda: slip("validate_in_eval"), None),
    "update_bn_on_purpose": Case(update_bn_on_purpose, None),
    "dropout_follows_training_flag": Case(lambda: transformers_33844_dropout_in_eval(_DropsInTraining()), None),
    "scheduler_per_epoch": Case(lambda: per_batch_scheduler(per_batch=False), None),
    "scheduler_over_every_step": Case(lambda: per_batch_scheduler(t_max="steps"), None),
    "warmup_then_decay": Case(warmup_then_decay, None),
    "logits": Case(lambda: fed_wrong("logits"), None),
    "mse_matched_target": Case(lambda: fed_wrong("mse_matched"), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_silent_bug_is_named_at_the_first_check_with_its_fix_and_each_twin_is_quiet(name: str) -> None:
    case = CASES[name]
    report, first = case.script()
    named = {f.code for f in report.findings} & LOOP_BUGS
    if case.code is None:
        assert not named and not LOOP_BUGS & set(first), (named, LOOP_BUGS & set(first))
        return
    assert case.code in first, sorted(LOOP_BUGS & set(first))  # in the meta at the watch's first read
    finding = next(f for f in report.findings if f.code == case.code)
    assert finding.remedy is not None and finding.remedy["fix"] == case.fix
    assert report.diagnosis is not None and case.code in {c.code for c in report.diagnosis.causes}  # a root cause
    assert named == {case.code}, named  # named alone: no other loop bug claimed


# -- the callbacks: Lightning and the Hugging Face Trainer (end to end: slow) --------------------------------------
def _lightning_fit(case: str) -> gdlab.Result:
    """A Lightning module with batch norm and dropout; ``case``: ``frozen`` (every parameter frozen but batch
    norm's, the optimizer over the frozen head), ``dropout`` (F.dropout(x, p) in forward), ``per_batch`` (a cosine
    over the epochs stepped every batch), else healthy (Lightning's own loop and its validation in eval())."""
    pytest.importorskip("lightning")
    from lightning.pytorch import LightningModule, Trainer

    from gdlab.integrations.lightning import Doctor

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net[:3](x)
            return self.net[4](F.dropout(out, 0.2) if case == "dropout" else self.net[3](out))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            if case == "frozen":
                for name, p in self.net.named_parameters():
                    p.requires_grad = name.startswith("1.")
                return torch.optim.SGD(self.net[4].parameters(), lr=0.05)
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            if case == "per_batch":
                return {"optimizer": opt, "lr_scheduler": {
                    "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3), "interval": "step"}}
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}

    doctor = Doctor(echo=False, log=False, log_every=5)
    trainer = Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[doctor])
    trainer.fit(Module(), _loader(), _loader(64, 32, shuffle=False))
    assert doctor.report is not None
    return doctor.report


def _trainer_fit(case: str, tmp_path: Any) -> gdlab.Result:
    """The Hugging Face Trainer on a small module that returns its loss; ``case``: ``frozen`` (the user's optimizer
    over the frozen head), ``dropout`` (F.dropout(x, p) in forward), else healthy (the Trainer's own linear
    schedule over its steps, its evaluation in eval())."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gdlab.integrations.transformers import Doctor

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.net[:3](x)
            logits = self.net[4](F.dropout(out, 0.2) if case == "dropout" else self.net[3](out))
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    data = [{"x": x, "labels": y} for x, y in _data()]
    model = Module()
    optimizers: Any = (None, None)
    if case == "frozen":
        for name, p in model.net.named_parameters():
            p.requires_grad = name.startswith("1.")
        optimizers = (torch.optim.SGD(model.net[4].parameters(), lr=0.05), None)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=16,
                                          learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                          eval_strategy="epoch", disable_tqdm=True, seed=0, logging_steps=5)
    doctor = Doctor(verbose=False, log_every=5)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:64],
                                   callbacks=[doctor], optimizers=optimizers)
    trainer.train()
    assert doctor.report is not None
    return doctor.report


CALLBACK_CASES = {"frozen": "optimizer_has_no_trainable_params", "dropout": "dropout_in_eval",
                  "per_batch": "schedule_ends_early", "healthy": None}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CALLBACK_CASES))
def test_the_lightning_callback_names_the_applicable_bugs_and_its_own_loop_is_quiet(case: str) -> None:
    report = _lightning_fit(case)
    named = {f.code for f in report.findings} & LOOP_BUGS
    code = CALLBACK_CASES[case]
    assert named == ({code} if code else set()), named
    if code:
        assert report.diagnosis is not None and code in {c.code for c in report.diagnosis.causes}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["frozen", "dropout", "healthy"])
def test_the_trainer_callback_names_the_applicable_bugs_and_its_own_loop_is_quiet(case: str, tmp_path: Any) -> None:
    report = _trainer_fit(case, tmp_path)
    named = {f.code for f in report.findings} & LOOP_BUGS
    code = CALLBACK_CASES[case]
    assert named == ({code} if code else set()), named
    if code:
        assert report.diagnosis is not None and code in {c.code for c in report.diagnosis.causes}


@pytest.mark.parametrize("model", [_DropsAlways, _DropsInTraining])
def test_fit_names_dropout_active_in_eval_from_its_traced_pass_and_its_twin_is_quiet(model: type[nn.Module]) -> None:
    """fit traces the model once at its start (every module in eval()); the doctor's end reads what that pass still
    dropped, so fit names transformers 33844 with the same finding and fix as watch."""
    x, y = _data().tensors
    report = gdlab.fit(model(), (x, y), epochs=1, lr=0.05, progress=False, instruments="none")
    named = {f.code for f in report.findings} & LOOP_BUGS
    if model is _DropsInTraining:
        assert not named
        return
    assert named == {"dropout_in_eval"} and report.history.meta["dropout_in_eval"]["rates"] == [0.3]
    assert report.diagnosis is not None and "dropout_in_eval" in {c.code for c in report.diagnosis.causes}


# -- under fit: the checks a user's model, data or optimizer can still get wrong (watching/loopchecks.py) ----------

def _fit_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _frozen_head() -> tuple[nn.Module, dict[str, Any]]:
    """forum 84911's shape: the body trains, the optimizer holds another, frozen head."""
    model, head = _fit_mlp(), _fit_mlp()
    for p in head.parameters():
        p.requires_grad_(False)
    return model, {"optimizer": torch.optim.SGD(head.parameters(), lr=0.1)}


def _part_in_optimizer() -> tuple[nn.Module, dict[str, Any]]:
    model = _fit_mlp()
    return model, {"optimizer": torch.optim.SGD(model[2].parameters(), lr=0.1)}


def _own_optimizer() -> tuple[nn.Module, dict[str, Any]]:
    model = _fit_mlp()
    return model, {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}


def _frozen_on_purpose() -> tuple[nn.Module, dict[str, Any]]:
    """The first layer frozen (requires_grad=False), the optimizer over the rest: never flagged."""
    model = _fit_mlp()
    model[0].requires_grad_(False)
    return model, {"optimizer": torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)}


def _wrapped_after_optimizer() -> tuple[nn.Module, dict[str, Any]]:
    """accelerate 2665's shape: the optimizer was built over a model that was then copied (its new parameters train)."""
    model = _fit_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return copy.deepcopy(model), {"optimizer": optimizer}


FIT_CASES: dict[str, tuple[Callable[[], tuple[nn.Module, dict[str, Any]]], str | None]] = {
    "probabilities": (lambda: (nn.Sequential(_fit_mlp(), nn.Softmax(dim=1)), {}), "loss_given_probabilities"),
    "frozen_head": (_frozen_head, "optimizer_has_no_trainable_params"),
    "part_in_optimizer": (_part_in_optimizer, "grads_in_no_param_group"),
    "wrapped_after_optimizer": (_wrapped_after_optimizer, "update_changes_nothing"),
    # a schedule function that halves the lr every step: near zero within the first tenth of the plan
    "schedule_ends_early": (lambda: (_fit_mlp(), {"schedule": lambda step: 0.1 * 0.5 ** step}), "schedule_ends_early"),
    # healthy twins: an optimizer object over the model's own parameters, a frozen layer left out on purpose, a
    # cosine over the whole run, a warmup
    "own_optimizer": (lambda: _own_optimizer(), None),
    "frozen_on_purpose": (lambda: _frozen_on_purpose(), None),
    "cosine": (lambda: (_fit_mlp(), {"schedule": "cosine"}), None),
    "warmup": (lambda: (_fit_mlp(), {"schedule": "warmup:20,cosine"}), None),
    # full-batch descent serves the same batch every step by design (the lecture's batch gradient descent)
    "full_batch": (lambda: (_fit_mlp(), {"batch_size": "full", "epochs": 10}), None),
}


def test_a_full_batch_loop_under_watch_is_not_the_same_batch_bug() -> None:
    """A loader of one batch (the whole data each step) is batch gradient descent, not data that does not move."""
    model = _fit_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=len(_data()))
    with gdlab.watch(model, optimizer, loader=loader, log_every=LOG_EVERY) as watched:
        for _ in range(12):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                watched.step(loss, batch=(x, y))
    assert not {f.code for f in watched.report.findings} & LOOP_BUGS


@pytest.mark.parametrize("name", list(FIT_CASES))
def test_fit_names_the_bugs_its_users_can_still_make_and_each_twin_is_quiet(name: str) -> None:
    """fit zeroes the gradients, puts the model in train() and validates in eval() itself; what a user's model,
    data or optimizer object can still get wrong is named by the same checks watch runs, as the root cause."""
    build, code = FIT_CASES[name]
    model, options = build()
    x, y = _data().tensors
    report = gdlab.fit(model, (x, y), **{"lr": 0.1, "epochs": 8, "batch_size": 16, "progress": False,
                                         "instruments": "none", **options})
    named = {f.code for f in report.findings} & LOOP_BUGS
    assert named == ({code} if code else set()), named
    if code:
        assert report.diagnosis is not None and report.diagnosis.causes[0].code == code
        finding = next(f for f in report.findings if f.code == code)
        assert finding.remedy, finding  # the one-line fix
