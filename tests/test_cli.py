"""The command line as a new user meets it: each error is one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hostile_files
from gdlab import __version__
from gdlab.cli import app
from gdlab.store import Store

runner = CliRunner()


def gdlab(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_default_train_reaches_97_percent_on_digits(tmp_path: Path) -> None:
    result = gdlab("train", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["final"]["val_accuracy"] > 0.97
    assert payload["plan"] == {"samples": 1438, "batch_size": 32, "iterations_per_epoch": 45, "last_batch": 30,
                               "mode": "mini-batch", "drop_last": False}
    assert {"run_id", "lr", "seconds", "findings"} <= set(payload) and payload["findings"] == []
    run = Store(tmp_path / "gdlab-runs").get(payload["run_id"])
    assert run.status == "finished" and (run.dir / "loss.png").is_file() and run.checkpoint.is_file()


def test_train_prints_plan_and_summary() -> None:
    result = gdlab("train", "--data", "seed", "--model", "linear", "--optimizer", "sgd", "--lr", "0.001",
                   "--batch-size", "2", "--epochs", "3", "--store", "s", "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    result = gdlab("train", "--data", "seed", "--model", "linear", "--optimizer", "sgd", "--lr", "0.001",
                   "--batch-size", "2", "--epochs", "3", "--store", "s", "--no-plot")
    assert "3 samples, batch 2 -> 2 iterations per epoch (last batch 1)" in result.stdout
    assert "finished" in result.stdout and "3 epochs, 6 iterations" in result.stdout


def test_divergence_is_reported() -> None:
    result = gdlab("train", "--data", "seed", "--model", "linear", "--optimizer", "sgd", "--lr", "0.1",
                   "--batch-size", "full", "--store", "s", "--no-plot")
    assert result.exit_code == 0 and "diverged" in result.stdout


def test_config_file_and_flags(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('data = "moons"\nhidden = [8]\nepochs = 2\nlr = 0.5\n')
    payload = json.loads(gdlab("train", "--config", "run.toml", "--epochs", "3", "--store", "s", "--json",
                               "--quiet", "--no-plot").stdout)
    config = Store("s").get(payload["run_id"]).config
    assert (config["data"], config["hidden"], config["epochs"], config["lr"]) == ("moons", [8], 3, 0.5)


def test_csv_with_target_and_standardize(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{1000 * (i % 7)},{(i % 3)}" for i in range(90))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows + "\n")
    result = gdlab("train", "--data", "d.csv", "--target", "label", "--standardize", "--batch-size", "30",
                   "--epochs", "2", "--store", "s", "--json", "--quiet", "--no-plot", "--val-split", "0.2")
    payload = json.loads(result.stdout)
    assert payload["plan"]["samples"] == 72 and payload["final"]["val_accuracy"] is not None


def test_lecture_dataset_from_module(user_modules: Path) -> None:
    result = gdlab("train", "--data", "lecture:CustomDataset", "--model", "linear", "--optimizer", "sgd",
                   "--lr", "0.001", "--batch-size", "2", "--epochs", "2", "--store", "s", "--json", "--quiet")
    payload = json.loads(result.stdout)
    assert payload["plan"]["iterations_per_epoch"] == 2 and payload["final"]["val_loss"] is None


def test_module_function_data_takes_structures(user_modules: Path) -> None:
    """Token ids for an Embedding model, a dict of tensors, and two inputs, from the user's module."""
    (user_modules / "shapes.py").write_text(textwrap.dedent('''
        import torch

        def _ids(n, seed):
            g = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, 20, (n, 12), generator=g)
            return ids, ((ids < 10).sum(1) > 6).long()

        def tokens():
            (ids, y), (vi, vy) = _ids(256, 0), _ids(64, 1)
            return {"ids": ids, "labels": y}, {"ids": vi, "labels": vy}

        class Bag(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.head = torch.nn.Embedding(20, 16), torch.nn.Linear(16, 2)

            def forward(self, ids):
                return self.head(self.emb(ids).mean(1))

        def bag():
            return Bag()

        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = torch.nn.Linear(3, 1), torch.nn.Linear(2, 1)

            def forward(self, u, v):
                return self.a(u) + self.b(v)

        def two_inputs():
            g = torch.Generator().manual_seed(0)
            u, v = torch.randn(100, 3, generator=g), torch.randn(100, 2, generator=g)
            return u, v, u[:, :1] - v[:, 1:]

        def two():
            return Two()
    '''))
    out = gdlab("train", "--data", "shapes:tokens", "--model", "shapes:bag", "--optimizer", "adam", "--lr", "0.05",
                "--epochs", "6", "--store", "s", "--json", "--quiet")
    payload = json.loads(out.stdout)
    assert payload["final"]["val_accuracy"] > 0.85
    out = gdlab("train", "--data", "shapes:two_inputs", "--model", "shapes:two", "--epochs", "30", "--store", "s",
                "--json", "--quiet")
    assert json.loads(out.stdout)["final"]["train_loss"] < 0.1


def test_runs_show_plot_and_resume(tmp_path: Path) -> None:
    first = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "2", "--store", "s",
                             "--name", "tiny", "--json", "--quiet").stdout)
    listing = gdlab("runs", "--store", "s")
    assert first["run_id"] in listing.stdout and "finished" in listing.stdout
    shown = gdlab("show", "tiny", "--store", "s")
    assert "800 samples, batch 32 -> 25 iterations per epoch" in shown.stdout and "val_accuracy" in shown.stdout
    as_json = json.loads(gdlab("show", "last", "--store", "s", "--json").stdout)
    assert as_json["run_id"] == first["run_id"] and as_json["config"]["hidden"] == [8]
    picture = gdlab("plot", "tiny", "--store", "s", "--out", "p.png")
    assert picture.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 10_000
    resumed = json.loads(gdlab("train", "--resume", "tiny", "--epochs", "4", "--store", "s", "--json",
                               "--quiet").stdout)
    straight = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "4", "--store", "s",
                                "--json", "--quiet").stdout)
    assert resumed["run_id"] == first["run_id"] and resumed["steps"] == 100
    a = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    b = torch.load(straight["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_listings_and_version() -> None:
    assert "digits" in gdlab("datasets").stdout and "spirals" in gdlab("datasets").stdout
    assert "cnn" in gdlab("models").stdout
    listed = gdlab("optimizers").stdout
    assert all(name in listed for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"))
    assert gdlab("--version").stdout.strip() == f"gdlab {__version__}"
    for command in ("train", "runs", "show", "plot", "datasets", "models", "optimizers"):
        assert gdlab(command, "--help").exit_code == 0


def test_empty_store_listing() -> None:
    assert "no runs" in gdlab("runs", "--store", "empty").stdout


BAD = [
    (["train", "--data", "digts"], "unknown data 'digts': expected one of seed, digits"),
    (["train", "--model", "resnet"], "unknown model 'resnet': expected one of linear, logistic, mlp, cnn"),
    (["train", "--optimizer", "adamax"], "unknown optimizer 'adamax': expected one of sgd, momentum"),
    (["train", "--batch-size", "0"], 'invalid batch_size 0: expected "full", "stochastic" or a positive integer'),
    (["train", "--batch-size", "-4"], "invalid batch_size -4"),
    (["train", "--batch-size", "many"], "invalid batch_size 'many'"),
    (["train", "--lr", "0"], "invalid lr 0.0: expected a finite number > 0"),
    (["train", "--lr", "-0.1"], "invalid lr -0.1"),
    (["train", "--lr", "nan"], "invalid lr nan"),
    (["train", "--lr", "inf"], "invalid lr inf"),
    (["train", "--lr", "fast"], "invalid --lr 'fast': expected a number"),
    (["train", "--hidden", "12,x"], "invalid --hidden '12,x'"),
    (["train", "--data", "missing.csv", "--target", "y"], "data file 'missing.csv' not found"),
    (["train", "--data", "bad_cells.csv", "--target", "y"], "bad_cells.csv line 3, column 'x': 'abc' is not a number"),
    (["train", "--data", "nan_cells.csv", "--target", "y"], "nan_cells.csv line 2, column 'x': nan is not finite"),
    (["train", "--data", "inf_cells.csv", "--target", "y"], "inf_cells.csv line 3, column 'x': -inf is not finite"),
    (["train", "--data", "empty.csv", "--target", "y"], "no data rows"),
    (["train", "--data", "bad_cells.csv", "--target", "price"], "unknown target 'price': expected one of x, y"),
    (["train", "--data", "seed", "--model", "user_models:wrong_inputs"],
     "the model does not accept the data: mat1 and mat2 shapes cannot be multiplied (2x3 and 7x1); the batch is "
     "inputs tensor[2, 3] float32, target tensor[2, 1] float32"),
    (["train", "--precision", "fp8"], "unknown precision 'fp8': expected one of 32, bf16-mixed, 16-mixed"),
    (["train", "--config", "unknown_key.toml"], "invalid config unknown_key.toml key 'learning_rate'"),
    (["train", "--config", "wrong_type.toml"], "invalid config wrong_type.toml epochs 'many': expected an integer"),
    (["train", "--resume", "nope"], "no run store at 'gdlab-runs'"),
    (["train", "--resume", "nope", "--store", "s"], "unknown run 'nope'"),
    (["train", "--resume", "nope", "--lr", "0.1"], "invalid --lr 0.1: expected no settings with --resume"),
    (["train", "--store", "blocker/runs"], "store directory 'blocker/runs' cannot be written"),
    (["show", "nope", "--store", "s"], "unknown run 'nope'"),
    (["plot", "nope", "--store", "s"], "unknown run 'nope'"),
    # issue 14: the data checked first, sizes before work, the real cause in one line
    (["train", "--data", "user_models:nan_inputs"],
     "the training data has 2 non-finite values in its inputs (NaN or inf): expected finite numbers"),
    (["train", "--data", "user_models:nan_targets"], "the training data has 1 non-finite value in its targets"),
    (["train", "--data", "user_models:one_class"], "targets hold one class (0) in all 20 samples: expected at least 2"),
    (["train", "--data", "user_models:one_row"], "the training data has 1 sample: expected at least 2"),
    (["train", "--data", "moons", "--hidden", "10000000000"], "model 'mlp' with hidden [10000000000] "
     "(50,000,000,002 parameters, 2 inputs, 2 outputs) needs about"),
    (["train", "--data", "moons", "--data-opt", "n_samples=1e12"], "dataset 'moons' with n_samples="
     "1,000,000,000,000 (2 features) needs about 72.0 TB of memory"),
    (["train", "--data", "moons", "--seed", str(2**70)], f"invalid seed {2**70}: expected an integer from 0 to "
     "2**63 - 1"),
    (["train", "--data", "big_label.npz"], "class label 1000000000000 in y means 1000000000001 classes, too many"),
    (["train", "--data", "zip.npz"], "zip.npz: not an .npz file (not a zip archive)"),
    (["train", "--data", "moons", "--model", "user_models:bad"], "error: user_models:bad raised ValueError: boom "
     "(user_models.py, line "),
    (["train", "--data", "user_models:bad"], "user_models:bad raised ValueError: boom (user_models.py, line "),
    (["train", "--data", "moons", "--model", "user_models:no_params"], "the model (ReLU) has no parameters to train"),
    (["train", "--data", "moons", "--model", "user_models:on_meta"], "the model (Linear) has 8 values on the meta "
     "device"),
    (["train", "--data", "moons", "--model", "user_models:needs_width"], "invalid model 'user_models:needs_width': "
     "expected a function callable without arguments (gdlab can pass in_features or out_features or sample_shape); "
     "it needs width"),
    (["runs", "--store", "damaged"], "store 'damaged' is damaged: damaged/gdlab.db is not a readable database"),
    (["show", "last", "--store", "damaged"], "store 'damaged' is damaged"),
    (["plot", "last", "--store", "damaged"], "store 'damaged' is damaged"),
    (["explain", "x+" * 5000 + "x", "--at", "x=1"], "invalid expression 'x+x+x+x+"),
    (["explain", "+".join(["sin(x)"] * 400), "--at", "x=1"], "expected at most 300 levels of nesting"),
    (["explain", "--at", "x=1", "--", "-" * 3900 + "x"], "expected at most 300 levels of nesting"),
    (["explain", "+".join(["sin(x)"] * 30), "--at", "x=1", "--out", "g.png"], "expected at most 40 nodes to draw; "
     "the graph has 60 nodes"),
    # issue 24: text from a user printed as text, its escapes shown and its markup literal (rows: text)
    (["train", "--data", "miss\x1b]0;pwned\x07[bold red]RED[/].csv", "--target", "y"],
     "data file 'miss\\x1b]0;pwned\\x07[bold red]RED[/].csv' not found"),
    # issue 24: what --out may write over, and ids from the store (rows: store safety)
    (["report", "kept", "--store", "s", "--out", "s/gdlab.db"], "invalid --out 's/gdlab.db': expected a .html file "
     "path"),
    (["report", "kept", "--store", "s", "--out", "bad_cells.csv"], "invalid --out 'bad_cells.csv': expected a .html "
     "file path"),
    (["report", "kept", "--store", "s", "--out", "notes.html"], "invalid --out 'notes.html': expected a new path or "
     "a .html file gdlab may replace: this file holds something else; pass --force to write over it"),
    (["report", "--all", "--store", "s", "--out", "s"], "invalid --out 's': expected a folder outside the run "
     "store's own"),
    (["report", "--all", "--store", "s", "--out", "bad_cells.csv"], "invalid --out 'bad_cells.csv': expected a "
     "folder to write into (this is a file)"),
    (["plot", "kept", "--store", "s", "--out", "s/gdlab.db"], "invalid --out 's/gdlab.db': expected a .png, .pdf or "
     ".svg file path"),
    (["plot", "kept", "--store", "s", "--out", "notes.png"], "invalid --out 'notes.png': expected a new path or a "
     ".png, .pdf or .svg file gdlab may replace: this file holds something else; pass --force to write over it"),
    (["gradflow", "kept", "--store", "s", "--out", "s"], "invalid --out 's': expected a .png, .pdf or .svg file path"),
    (["runs", "--store", ""], "invalid --store '': expected a folder path (an empty one would be the current folder)"),
    (["report", "kept", "--store", ""], "invalid --store ''"),
    (["train", "--data", "moons", "--store", ""], "invalid --store ''"),
    (["runs", "rm", "kept", "--store", "s"], "is running: stop it first (or wait for it to finish), then delete it; "
     "if no process runs it any more (killed in a container, on another machine), pass --force; nothing was "
     "deleted"),
    (["runs", "rm", "kept", "--store", "s", "--force"], "is running: a live process holds its lock"),
    (["train", "--resume", "kept", "--store", "s", "--force"], "is running: a live process holds its lock"),
    (["train", "--data", "moons", "--force"], "invalid --force True: expected --resume RUN with it"),
    (["runs", "--store", "h-dot/store"], "store 'h-dot/store' is damaged: run id '.' is not a gdlab run id"),
    (["runs", "rm", "victim-run", "--store", "h-dot/store"], "store 'h-dot/store' is damaged: run id '.'"),
    (["runs", "rm", "victim-run", "--force", "--store", "h-dot/store"], "store 'h-dot/store' is damaged"),
    (["report", "victim-run", "--store", "h-parent/store"], "store 'h-parent/store' is damaged: run id '../victim' "
     "is not a gdlab run id (expected YYYYmmdd-HHMMSS-xxxx); nothing was changed"),
    (["report", "--all", "--store", "h-parent/store"], "store 'h-parent/store' is damaged: run id '../victim'"),
    (["plot", "victim-run", "--store", "h-parent/store"], "store 'h-parent/store' is damaged: run id '../victim'"),
    (["gradflow", "victim-run", "--store", "h-absolute/store"], "store 'h-absolute/store' is damaged: run id '/"),
    (["show", "victim-run", "--store", "h-absolute/store"], "store 'h-absolute/store' is damaged: run id '/"),
    (["runs", "--store", "h-empty_db/store"], "store 'h-empty_db/store' is damaged: it holds run folders but its "
     "database h-empty_db/store/gdlab.db is empty (0 bytes)"),
    (["train", "--data", "moons", "--epochs", "1", "--store", "h-empty_db/store"], "store 'h-empty_db/store' is "
     "damaged: it holds run folders but its database"),
    (["runs", "--store", "h-corrupt_db/store"], "store 'h-corrupt_db/store' is damaged: h-corrupt_db/store/gdlab.db "
     "is not a readable database (database disk image is malformed)"),
    (["train", "--data", "moons", "--epochs", "1", "--store", "h-corrupt_db/store"], "store 'h-corrupt_db/store' is "
     "damaged"),
    (["report", "--all", "--store", "h-corrupt_db/store"], "store 'h-corrupt_db/store' is damaged"),
    # issue 24: no code from a file, archives and model files (rows: files)
    (["train", "--data", "truncated.npz"], "truncated.npz: a damaged or truncated .npz archive (File is not a zip "
     "file): expected arrays 'X' and 'y'"),
    (["train", "--data", "renamed.npz"], "renamed.npz: a single .npy array, not an .npz archive"),
    (["train", "--data", "complex.npz"], "complex.npz: array 'X' has dtype complex64: expected real numbers (an "
     "integer or floating-point dtype); complex values are not cast"),
    (["train", "--data", "objects.npz"], "objects.npz: array 'X' holds objects (pickled), which are not read"),
    (["train", "--data", "bomb.npz"], "bomb.npz (arrays X, y: 8.8 TB uncompressed) needs about 26.4 TB of memory"),
    (["train", "--data", "liar.npz"], "liar.npz: array 'X' declares shape (1048576, 1048576) (8.8 TB) but holds 64 B: "
     "a damaged .npz archive"),
    (["export", "kept", "--model", "unknown_key.safetensors", "--store", "s"], "invalid --model "
     "'unknown_key.safetensors': expected a new path or a .safetensors file gdlab may replace: this file holds "
     "something else; pass --force to write over it"),
    (["train", "--data", "moons", "--trust-store"], "invalid --trust-store True: expected --resume RUN with it"),
    # issue 24: limits, the lab, settings files and ranks (rows: limits)
    (["train", "--threads", "100000"], 'invalid threads 100000: expected "auto" or a positive integer up to '),
    (["landscape", "kept", "--steps", "100000", "--store", "s"], "invalid steps 100000: expected at most 500 for a "
     "plane (500 x 500 = 250,000 points, each a forward pass over the samples; 100000 x 100000 = 10,000,000,000 "
     "asked)"),
    (["landscape", "kept", "--kind", "line", "--steps", "300000", "--store", "s"], "invalid steps 300000: expected "
     "at most 250,000 for a line"),
    (["landscape", "kept", "--store", "s", "--out", "notes.png"], "invalid --out 'notes.png': expected a new path "
     "or a .png, .pdf or .svg file gdlab may replace: this file holds something else; pass --force to write over "
     "it"),
    (["explain", "1" * 400 + " * x", "--at", "x=1"], "expected numbers within the float range (at most about "
     "1.8e+308; it has a 400-digit integer)"),
    (["explain", "1e400 * x", "--at", "x=1"], "it has 1e400)"),
    (["explain", "x", "--at", "x=nan"], "invalid --at 'x=nan': expected name=value pairs of finite numbers"),
    (["explain", "x", "--at", "x=1", "--out", "notes.png"], "invalid --out 'notes.png': expected a new path or a "
     ".png, .pdf or .svg file gdlab may replace"),
    (["explain", "x", "--at", "x=1", "--out", "s/gdlab.db"], "invalid --out 's/gdlab.db': expected a .png, .pdf "
     "or .svg file path"),
    (["lab", "booth", "--out", "blocker"], "invalid --out 'blocker': expected a folder to write into (this is a "
     "file)"),
    (["lab", "booth", "--out", "s"], "invalid --out 's': expected a folder outside the run store's own"),
    (["lr-find", "--data", "moons", "--out", "notes.png"], "invalid --out 'notes.png': expected a new path or a "
     ".png, .pdf or .svg file gdlab may replace"),
    (["train", "--config", "latin.toml"], "invalid config 'latin.toml': expected a UTF-8 TOML file (byte 0xe9 at "
     "position 16 is not UTF-8)"),
    (["train", "--data", "moons", "--tensorboard", "blocker"], "invalid --tensorboard 'blocker': expected a folder "
     "to write into (this is a file)"),
    (["train", "--data", "moons", "--tensorboard", "s"], "invalid --tensorboard 's': expected a folder outside the "
     "run store's own"),
    # issue 24: training that fails in the user's code or data, checkpoints (rows: training)
    (["train", "--data", "user_models:empty_dataset"], "invalid data 'EmptyRows': expected a Dataset with at least "
     "one sample"),
    (["train", "--data", "user_models:unreadable_dataset"], "reading sample 0 of the training data failed: the "
     "Dataset UnreadableRows raised KeyError: 'sample 0 is missing' (user_models.py, line "),
    (["train", "--data", "moons", "--model", "user_models:fails_at_first_step", "--store", "elsewhere", "-q"], "the "
     "forward pass of step 1 (model FailsInTraining, loss cross_entropy) raised RuntimeError: training call 1 failed "
     "(user_models.py, line "),
    (["train", "--data", "moons", "--model", "user_models:fails_at_step_5", "--store", "elsewhere", "-q"], "the "
     "forward pass of step 5 (model FailsInTraining, loss cross_entropy) raised RuntimeError: training call 5 failed"),
    # issue 28: the CLI's rough edges
    (["train", "--data", "bad_cells.csv"], "error: missing target: expected the column of bad_cells.csv to predict "
     "(--target NAME), one of x, y"),
    (["sweep", "--data", "bad_cells.csv"], "error: missing target: expected the column of bad_cells.csv"),
    (["train", "--data", "wide.csv"], "to predict (--target NAME), one of feature_0, feature_1, feature_2, feature_3, "
     "feature_4, feature_5, feature_6, feature_7, ... 291 more ..., feature_299, price (301 columns)"),
    (["train", "--data", "wide.csv", "--target", "prise"], "unknown target 'prise': expected one of feature_0, "
     "feature_1, feature_2, feature_3, feature_4, feature_5, feature_6, feature_7, ... 291 more ..., feature_299, "
     "price (301 columns) (the columns of wide.csv)"),
    (["train", "--data", "odd_names.csv"], "one of '', '\\x1b[31mred', [bold]x[/], 'sale, price', 'a\\nb', y"),
    (["explain", "x**2+", "--at", "x=1"], "invalid expression 'x**2+': expected an arithmetic expression (invalid "
     "syntax at column 6, the end of the expression)"),
    (["explain", "x +* 2", "--at", "x=1"], "(invalid syntax at column 4, '*')"),
    (["train", "--config", "wrong_type.toml", "--epochs", "3"], "invalid config wrong_type.toml epochs 'many': "
     "expected an integer"),
    (["train", "--config", "negative_lr.toml", "--lr", "0.1"], "invalid config negative_lr.toml lr -1: expected a "
     "finite number > 0"),
]


@pytest.fixture
def hostile_stores(request: pytest.FixtureRequest, hostile, tmp_path: Path):
    """Issue 24 (rows: store safety): the hostile stores a BAD row names (``--store h-<kind>/store``), each built by
    the ``hostile`` fixture and linked into the working folder; after the row, every file in their folders (the
    store, and the victim folder beside it) is as it was: nothing written, nothing deleted (``hostile.unchanged``)."""
    from hostile import KINDS, snapshot, unchanged

    args = request.node.callspec.params.get("args", [])
    folders = {}
    for kind in KINDS:
        if f"h-{kind}/store" in args:
            root, _ = hostile(kind)
            (tmp_path / f"h-{kind}").symlink_to(root.parent, target_is_directory=True)
            folders[kind] = (root.parent, snapshot(root.parent))
    yield
    for kind, (folder, before) in folders.items():
        assert unchanged(before, snapshot(folder)), kind


@pytest.mark.usefixtures("hostile_stores")  # issue 24 (rows: store safety)
@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a)[:80] for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_exit_2(user_modules: Path, args: list[str], message: str) -> None:
    (user_modules / "bad_cells.csv").write_text("x,y\n1,2\nabc,3\n")
    (user_modules / "nan_cells.csv").write_text("x,y\nnan,2\n")
    (user_modules / "inf_cells.csv").write_text("x,y\n1,2\n-inf,3\n")
    (user_modules / "empty.csv").write_text("x,y\n")
    (user_modules / "unknown_key.toml").write_text("learning_rate = 0.1\n")
    (user_modules / "wrong_type.toml").write_text('epochs = "many"\n')
    (user_modules / "negative_lr.toml").write_text("lr = -1\n")  # issue 28
    (user_modules / "wide.csv").write_text(",".join([*(f"feature_{i}" for i in range(300)), "price"]) + "\n" +
                                           ",".join(["1"] * 301) + "\n")
    (user_modules / "odd_names.csv").write_text('"",\x1b[31mred,[bold]x[/],"sale, price","a\nb",y\n1,2,3,4,5,6\n')
    (user_modules / "blocker").write_text("a file, not a folder")
    np.savez(user_modules / "big_label.npz", X=np.zeros((4, 2), dtype=np.float32), y=np.array([0, 1, 2, 10**12]))
    (user_modules / "zip.npz").write_bytes(b"plain bytes, not a zip archive")
    (user_modules / "damaged").mkdir()
    (user_modules / "damaged" / "gdlab.db").write_bytes(b"not a database header " * 50)
    hostile_files.write(user_modules)  # issue 24 (rows: files)
    (user_modules / "unknown_key.safetensors").write_text("not a model")
    (user_modules / "notes.html").write_text("<p>the user's notes, not a gdlab page</p>")  # (rows: store safety)
    (user_modules / "notes.png").write_text("not a picture")  # (rows: store safety)
    (user_modules / "latin.toml").write_bytes("epochs = 2\n# café\n".encode("latin-1"))  # (rows: limits)
    store = Store(user_modules / "s")
    store.create_run({"data": "x"}, name="kept")
    result = gdlab(*args)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and message in line
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output and len(line) < 600
    assert "weights_only" not in line and ("--out" not in line or "--out" in args)
    assert [r.name for r in Store(user_modules / "s").runs()] == ["kept"]  # nothing added, nothing lost
    assert (user_modules / "damaged" / "gdlab.db").read_bytes() == b"not a database header " * 50  # kept as it was
    default = user_modules / "gdlab-runs"
    assert not default.exists() or Store(default).runs() == []


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gdlab.cli", "train", "--batch-size", "0"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: invalid batch_size 0")
    assert "Traceback" not in result.stderr


def test_json_output_is_strict_even_for_non_finite_numbers() -> None:
    from gdlab.cli.common import to_json

    text = to_json({"final": {"train_loss": float("inf"), "val_loss": float("nan")}, "path": Path("a/b"), "n": [1.5]})
    assert json.loads(text) == {"final": {"train_loss": None, "val_loss": None}, "path": "a/b", "n": [1.5]}


def test_optimizer_options_and_schedule_flags() -> None:
    payload = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "2", "--optimizer", "adamw",
                               "--lr", "0.01", "--weight-decay", "0.001", "--beta2", "0.99", "--eps", "1e-7",
                               "--clip-norm", "1", "--schedule", "warmup:10,cosine", "--store", "s", "--json",
                               "--quiet", "--no-plot").stdout)
    config = Store("s").get(payload["run_id"]).config
    assert (config["weight_decay"], config["beta2"], config["schedule"]) == (0.001, 0.99, "warmup:10,cosine")
    lrs = Store("s").history(payload["run_id"]).steps["lr"]
    assert lrs[0] == pytest.approx(0.001) and max(lrs) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "adam", "--nesterov"], "invalid nesterov True: expected no nesterov with optimizer 'adam'"),
        (["--schedule", "cosin"], "unknown schedule 'cosin': expected one of constant"),
        (["--optimizer", "adam", "--beta1", "1.5"], r"invalid beta1 1.5: expected a number in [0, 1)"),
        (["--optimizer", "adam", "--eps", "0"], "invalid eps 0.0: expected a number > 0"),
        (["--optimizer", "sgd", "--nesterov"], "invalid nesterov True: expected a momentum > 0"),
    ],
)
def test_bad_optimizer_flags(args: list[str], message: str) -> None:
    result = gdlab("train", *args, "--store", "s")
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ")
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


REVIEWED = [
    (["--data", "d.npz", "--val", "val5.npz", "--model", "linear"], "does not accept the validation data"),
    (["--data", "moons", "--val-split", "0.5"], "invalid val_split 0.5: expected nothing for the built-in"),
    (["--data", "moons", "--data-opt", "n_samples=abc"], "invalid moons option n_samples 'abc'"),
    (["--data", "spirals", "--data-opt", "classes=0"], "invalid spirals option classes 0"),
    (["--data", "moons", "--data-opt", "seed=5"], "give --seed instead"),
    (["--data", "scalar.npz"], "must have a samples axis"),
    (["--data", "fake.npz"], "fake.npz: not an .npz file (not a zip archive)"),
    (["--data", "latin.csv", "--target", "y"], "not UTF-8 text"),
    (["--data", "nan_target.csv", "--target", "y", "--task", "classification"], "nan is not finite"),
    (["--device", "meta"], "invalid device 'meta'"),
    (["--config", "."], "invalid config '.': expected a readable TOML file"),
]


@pytest.mark.parametrize(("args", "message"), REVIEWED, ids=[" ".join(a) for a, _ in REVIEWED])
def test_reviewed_bad_input(tmp_path: Path, args: list[str], message: str) -> None:

    np.savez(tmp_path / "d.npz", X=np.zeros((6, 3), dtype=np.float32), y=np.zeros(6, dtype=np.float32))
    np.savez(tmp_path / "val5.npz", X=np.zeros((4, 5), dtype=np.float32), y=np.zeros(4, dtype=np.float32))
    np.savez(tmp_path / "scalar.npz", X=np.float32(1), y=np.float32(2))
    (tmp_path / "fake.npz").write_text("not a zip")
    (tmp_path / "latin.csv").write_bytes("x,y\n1,caf\xe9\n".encode("latin-1"))
    (tmp_path / "nan_target.csv").write_text("x,y\n1,0\n2,nan\n")
    result = gdlab("train", *args, "--store", "s")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and message in line and len(line.splitlines()) == 1
    assert not (tmp_path / "s").exists() or Store(tmp_path / "s").runs() == []  # bad input stored no run


def test_usage_errors_are_one_line_too() -> None:
    result = subprocess.run([sys.executable, "-m", "gdlab.cli", "train", "--epochs", "abc"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--epochs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_a_smaller_budget_and_a_live_run(tmp_path: Path) -> None:
    first = json.loads(gdlab("train", "--data", "moons", "--hidden", "4", "--epochs", "3", "--store", "s",
                             "--json", "--quiet", "--no-plot").stdout)
    smaller = gdlab("train", "--resume", first["run_id"], "--epochs", "2", "--store", "s")
    assert smaller.exit_code == 2 and "at least the 75 steps" in smaller.stderr
    store = Store("s")
    assert store.get(first["run_id"]).config["epochs"] == 3 and store.get(first["run_id"]).status == "finished"
    from gdlab.config import Config

    store.create_run(Config(data="moons", store="s").to_dict(), name="live")  # this process: alive
    refused = gdlab("train", "--resume", "live", "--store", "s")
    assert refused.exit_code == 2 and "still running" in refused.stderr


def test_summary_counts_a_partial_epoch_as_a_fraction() -> None:
    result = gdlab("train", "--data", "moons", "--hidden", "4", "--steps", "30", "--store", "s", "--no-plot")
    assert "1.2 epochs, 30 iterations" in result.stdout


def test_resume_of_a_run_recorded_from_python_says_where_to_resume_it(tmp_path: Path) -> None:
    import gdlab as lib

    lib.fit(torch.nn.Linear(2, 1), (torch.zeros(4, 2), torch.zeros(4, 1)), epochs=1, store="s", name="api",
            progress=False)
    result = gdlab("train", "--resume", "api", "--store", "s")
    assert result.exit_code == 2 and "recorded by gdlab.fit from Python" in result.stderr


# -- sweep, restarts, lr-find, --lr auto ------------------------------------------------------------------------


def test_sweep_prints_a_table_stores_the_sweep_and_plots() -> None:
    result = gdlab("sweep", "--data", "moons", "--hidden", "8", "--lr", "1e-3:1:4", "--momentum", "0,0.9",
                   "--seeds", "2", "--epochs", "2", "--store", "s")
    assert result.exit_code == 0, result.output
    assert "16 members trained as one population" in result.stdout and "best" in result.stdout
    payload = json.loads(gdlab("sweep", "--data", "moons", "--hidden", "8", "--lr", "0.01,0.1", "--epochs", "2",
                               "--store", "s", "--json", "--quiet").stdout)
    assert len(payload["table"]) == 2 and payload["vectorized"] and Path(payload["plot"]).is_file()
    assert payload["best"]["lr"] in (0.01, 0.1)
    assert [s["members"] for s in Store("s").sweeps()] == [2, 16]


def _member_rows(text: str) -> list[int]:
    """The member numbers of a printed sweep table's rows (member and seed, its first two columns, numbers)."""
    cells = [line.split() for line in text.splitlines()]
    return [int(c[0]) for c in cells if len(c) > 2 and c[0].isdigit() and c[1].isdigit()]


def test_a_large_sweep_prints_its_best_rows_and_says_how_to_see_all() -> None:
    """Issue 28: 24 members print as their 10 best, best first, and a line naming how many are hidden and how to see
    them all; --all prints every row; --json (and show --json) keep the whole table."""
    from gdlab.cli.population import BEST_ROWS, TABLE_ROWS

    args = ["sweep", "--data", "moons", "--hidden", "4", "--lr", "1e-3:3:12", "--seeds", "2", "--epochs", "1",
            "--store", "s", "--no-plot"]
    payload = json.loads(gdlab(*args, "--json", "--quiet").stdout)
    table = payload["table"]
    assert len(table) == 24 > TABLE_ROWS
    losses = {r["member"]: r["val_loss"] for r in table}
    best = sorted((r for r in table if not r["diverged"]), key=lambda r: r["val_loss"])[:BEST_ROWS]
    shown = gdlab("show", payload["sweep_id"], "--store", "s").stdout
    assert _member_rows(shown) == [r["member"] for r in best]
    assert [losses[m] for m in _member_rows(shown)] == sorted(losses[m] for m in _member_rows(shown))
    diverged = sum(r["diverged"] for r in table)
    assert ("the 10 best of 24 members (by final validation loss); 14 more hidden"
            + (f", {diverged} of them diverged" if diverged else "")
            + f": gdlab show {payload['sweep_id']} --json gives them all") in shown
    assert len(json.loads(gdlab("show", payload["sweep_id"], "--store", "s", "--json").stdout)["table"]) == 24
    printed = gdlab(*args).stdout
    assert len(_member_rows(printed)) == BEST_ROWS and "--all prints every member, --json gives them all" in printed
    every = gdlab(*args, "--all").stdout
    assert _member_rows(every) == list(range(24)) and "hidden" not in every
    small = gdlab("sweep", "--data", "moons", "--hidden", "4", "--lr", "0.01,0.1", "--epochs", "1", "--store", "s",
                  "--no-plot").stdout
    assert _member_rows(small) == [0, 1] and "hidden" not in small


def test_restarts_report_end_points() -> None:
    payload = json.loads(gdlab("restarts", "--data", "moons", "--hidden", "8", "--seeds", "6", "--epochs", "3",
                               "--store", "s", "--json", "--quiet").stdout)
    assert payload["restarts"] == 6 and 1 <= payload["distinct_end_points"] <= 6
    assert payload["best"] <= payload["median"] <= payload["worst"] and Path(payload["plot"]).is_file()
    text = gdlab("restarts", "--data", "moons", "--hidden", "8", "--seeds", "4", "--epochs", "2", "--store", "s",
                 "--quiet").stdout
    assert text == ""  # --quiet prints nothing
    shown = gdlab("restarts", "--data", "moons", "--hidden", "8", "--seeds", "4", "--epochs", "2", "--store", "s")
    assert "distinct end points" in shown.stdout and "end point 1" in shown.stdout


def test_lr_find_suggests_and_plots() -> None:
    payload = json.loads(gdlab("lr-find", "--data", "moons", "--hidden", "8", "--num-iter", "40", "--json",
                               "--quiet", "--out", "lr.png").stdout)
    assert set(payload["suggestions"]) == {"steepest", "valley", "min/10"} and Path("lr.png").is_file()
    assert len(payload["lrs"]) == len(payload["losses"]) <= 40


def test_train_with_lr_auto_records_the_choice() -> None:
    payload = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "3", "--lr", "auto",
                               "--store", "s", "--json", "--quiet", "--no-plot").stdout)
    chosen = payload["lr_selection"]
    assert chosen["lr"] == pytest.approx(payload["lr"]) and chosen["method"] == "sweep" and chosen["tried"]
    assert Store("s").get(payload["run_id"]).config["lr"] == "auto"
    shown = gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "2", "--lr", "auto", "--lr-select",
                  "range-test", "--store", "s", "--no-plot")
    assert shown.exit_code == 0 and "(auto)" in shown.stdout and "lr auto" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--lr", "1e-3:x:3"], "invalid --lr '1e-3:x:3': expected a:b:n"),
        (["sweep", "--seeds", "0"], "invalid --seeds '0'"),
        (["sweep", "--momentum", "0,1.5"], "invalid momentum 1.5: expected a number in [0, 1)"),
        (["sweep", "--optimizer", "adam", "--momentum", "0.9"], "invalid momentum 0.9: expected no momentum"),
        (["restarts", "--seeds", "1"], "invalid --seeds 1: expected at least 2 restarts"),
        (["restarts", "--tol", "0"], "invalid tol 0"),
        (["lr-find", "--num-iter", "2"], "invalid num_iter 2"),
        (["lr-find", "--end-lr", "1e-9"], "invalid end_lr 1e-09"),
        (["train", "--lr", "fast"], "invalid --lr 'fast': expected a number, e.g. 0.01, or auto"),
        (["train", "--lr", "auto", "--lr-select", "grid"], "invalid lr_select 'grid'"),
        (["train", "--lr-select", "range-test"], "invalid lr_select 'range-test': expected lr auto with it"),
        (["lr-find", "--out", "x.txt"], "invalid --out 'x.txt': expected a .png, .pdf or .svg file path"),
        (["sweep", "--lr", "1e-3,,1"], "invalid --lr '1e-3,,1'"),
        (["sweep", "--seeds", "0,-1"], "invalid seeds [0, -1]"),
        (["sweep", "--lr", "1e-3:1:100000"], "n <= 1000"),
        (["sweep", "--seeds", "100000"], "invalid --seeds '100000': expected a count from 1 to 10,000"),
        (["sweep", "--lr", "1e-3:1:1000", "--seeds", "0,1,2,3,4,5,6,7,8,9,10"], "invalid sweep size 11000: "
         "expected 1 to 10,000 members"),
        (["sweep", "--seeds", f"0,{2**64}"], "invalid seeds"),
    ],
)
def test_population_commands_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = gdlab(*args, "--store", "s")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and message in line, line
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output
    assert not Path("s").exists() or Store("s").sweeps() == []


def test_runs_and_show_list_sweeps() -> None:
    payload = json.loads(gdlab("sweep", "--data", "moons", "--hidden", "8", "--lr", "0.01,0.1", "--epochs", "1",
                               "--store", "s", "--json", "--quiet", "--no-plot", "--name", "mine").stdout)
    listed = gdlab("runs", "--store", "s").stdout
    assert payload["sweep_id"] in listed and "sweep" in listed and "mine" in listed
    shown = gdlab("show", "mine", "--store", "s")
    assert shown.exit_code == 0 and "2 members" in shown.stdout and "val loss" in shown.stdout
    as_json = json.loads(gdlab("show", payload["sweep_id"][:12], "--store", "s", "--json").stdout)
    assert as_json["kind"] == "sweep" and len(as_json["table"]) == 2
    missing = gdlab("show", "nothing", "--store", "s")
    assert missing.exit_code == 2 and "unknown run or sweep 'nothing'" in missing.stderr


def test_a_sweep_where_every_member_diverged_is_reported_not_failed() -> None:
    result = gdlab("sweep", "--data", "linear", "--model", "linear", "--optimizer", "sgd", "--lr", "1e6,1e7",
                   "--epochs", "1", "--store", "s", "--no-plot")
    assert result.exit_code == 0 and "every member diverged" in result.stderr
    assert "2 members trained" in result.stdout and len(Store("s").sweeps()) == 1


def test_train_shows_findings_and_doctor_reruns_them() -> None:
    shown = gdlab("train", "--data", "moons", "--hidden", "8", "--lr", "1e-5", "--optimizer", "sgd", "--epochs", "2",
                  "--store", "s", "--no-plot")
    assert shown.exit_code == 0 and "not_learning" in shown.stdout and "remedy:" in shown.stdout
    payload = json.loads(gdlab("doctor", "last", "--store", "s", "--json").stdout)
    assert {f["code"] for f in payload["findings"]} >= {"not_learning", "lr_too_low"}
    auto = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--lr", "1e8", "--optimizer", "sgd",
                            "--epochs", "3", "--remedy", "auto", "--store", "s", "--json", "--quiet",
                            "--no-plot").stdout)
    assert auto["remedies"] and auto["remedies"][0]["action"] == "rollback_and_set_lr"
    assert "remedy" in gdlab("show", "last", "--store", "s").stdout
    quiet = json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "1", "--instruments", "none",
                             "--no-doctor", "--store", "s", "--json", "--quiet", "--no-plot").stdout)
    assert quiet["findings"] == []
    bad = gdlab("train", "--remedy", "fix", "--store", "s")
    assert bad.exit_code == 2 and "unknown remedy 'fix': expected one of off, suggest, auto" in bad.stderr
    resumed = gdlab("train", "--resume", "last", "--epochs", "2", "--store", "s", "--json", "--quiet", "--no-plot")
    assert resumed.exit_code == 0, resumed.output


def test_plot_instruments_dashboard(drawn: list) -> None:
    gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "2", "--instruments", "full", "--store", "s",
          "--quiet", "--no-plot")
    result = gdlab("plot", "last", "--instruments", "--store", "s")
    assert result.exit_code == 0 and result.stdout.strip().endswith("instruments.png")
    assert Path(result.stdout.strip()).is_file()
    steps = Store("s").history(Store("s").get("last").id).steps
    (figure,) = drawn  # one panel per instrument with data, each drawing the stored series
    drawn_loss = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "loss"][0]
    assert figure.axes[0].get_title() == "loss" and list(drawn_loss.get_ydata()) == steps["loss"]
    assert {ax.get_title() for ax in figure.axes} >= {"gradient norm per layer", "update / weight per layer"}


def test_auto_standardizes_ill_conditioned_inputs(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 2, generator=g) * torch.tensor([1.0, 1000.0])
    y = (X[:, 0] + X[:, 1] / 1000 > 0).long()
    lines = ["a,b,label"] + [f"{a:.6f},{b:.6f},{int(c)}" for (a, b), c in zip(X.tolist(), y.tolist())]
    (tmp_path / "skewed.csv").write_text("\n".join(lines) + "\n")
    payload = json.loads(gdlab("train", "--data", "skewed.csv", "--target", "label", "--hidden", "8", "--epochs",
                               "5", "--remedy", "auto", "--store", "s", "--json", "--quiet", "--no-plot").stdout)
    assert payload["remedies"][0]["action"] == "standardize"
    assert "ill_conditioned_inputs" not in {f["code"] for f in payload["findings"]}
    run = Store("s").get(payload["run_id"])
    assert run.config["standardize"] is True and run.remedies[0]["action"] == "standardize"
    plain = json.loads(gdlab("train", "--data", "skewed.csv", "--target", "label", "--hidden", "8", "--epochs", "1",
                             "--store", "s", "--json", "--quiet", "--no-plot").stdout)
    assert "ill_conditioned_inputs" in {f["code"] for f in plain["findings"]}


def test_gradflow_draws_layers_first_to_last() -> None:
    gdlab("train", "--data", "moons", "--hidden", "8,8,8,8,8", "--activation", "sigmoid", "--epochs", "2", "--store",
          "s", "--quiet", "--no-plot")
    result = gdlab("gradflow", "last", "--store", "s")
    assert result.exit_code == 0 and Path(result.stdout.strip()).stat().st_size > 10_000
    history = Store("s").history(Store("s").get("last").id)
    assert {k for k in history.steps.columns if k.startswith("grad_out/")} == {f"grad_out/{i}" for i in
                                                                              (1, 3, 5, 7, 9, 11)}
    gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "1", "--instruments", "none", "--store", "s",
          "--quiet", "--no-plot")
    bare = gdlab("gradflow", "last", "--store", "s")
    assert bare.exit_code == 2 and "trained with instruments" in bare.stderr


# -- what practitioners reach for (issue 14): lr-find's optimizer, restarts' end points, predict, export, runs ----


def test_lr_find_uses_train_s_optimizer_and_says_so(tmp_path: Path) -> None:
    common = ("lr-find", "--data", "moons", "--hidden", "8", "--num-iter", "20", "--store", "s")
    default = gdlab(*common, "--json", "--quiet")
    payload = json.loads(default.stdout)
    assert payload["optimizer"] == "momentum" and payload["optimizer_options"]["momentum"] == 0.9
    adam = json.loads(gdlab(*common, "--optimizer", "adam", "--beta2", "0.99", "--json", "--quiet").stdout)
    assert adam["optimizer"] == "adam" and adam["optimizer_options"]["betas"] == [0.9, 0.99]
    (tmp_path / "run.toml").write_text('optimizer = "sgd"\nmomentum = 0.5\n')
    configured = json.loads(gdlab(*common, "--config", "run.toml", "--json", "--quiet").stdout)
    assert configured["optimizer"] == "sgd" and configured["optimizer_options"]["momentum"] == 0.5
    shown = gdlab(*common)
    assert "range test for optimizer momentum (momentum 0.9" in shown.stdout
    bad = gdlab(*common, "--optimizer", "adam", "--momentum", "0.9")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: invalid momentum 0.9")


def test_restarts_group_end_points_by_distance_with_the_tolerance_stated() -> None:
    common = ("restarts", "--data", "moons", "--hidden", "8", "--seeds", "4", "--epochs", "2", "--store", "s",
              "--no-plot")
    payload = json.loads(gdlab(*common, "--json", "--quiet").stdout)
    assert payload["space"] == "function" and "held-out inputs predicted differently <= 0.05" in payload["distance"]
    assert payload["distinct_end_points"] == len(set(payload["clusters"]))
    loose = json.loads(gdlab(*common, "--space", "parameters", "--tol", "10", "--json", "--quiet").stdout)
    assert loose["space"] == "parameters" and loose["distinct_end_points"] == 1  # every weight vector within 10x
    strict = json.loads(gdlab(*common, "--space", "parameters", "--tol", "1e-6", "--json", "--quiet").stdout)
    assert strict["distinct_end_points"] == 4  # different seeds, different weights
    shown = gdlab(*common, "--space", "parameters", "--tol", "0.5")
    assert "in parameters space (one end point: relative parameter distance <= 0.5)" in shown.stdout
    bad = gdlab(*common, "--space", "weights")
    assert bad.exit_code == 2 and "invalid space 'weights': expected function or parameters" in bad.stderr


def test_model_function_gets_the_sizes_and_sample_shape_it_names(user_modules: Path) -> None:
    (user_modules / "shaped.py").write_text(textwrap.dedent('''
        import torch

        seen = {}

        def sizes(in_features, out_features):
            seen["sizes"] = (in_features, out_features)
            return torch.nn.Linear(in_features, out_features)

        def shaped(sample_shape, out_features):
            seen["shaped"] = (sample_shape, out_features)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(sample_shape[-1] * sample_shape[-2] if
                                       len(sample_shape) == 3 else sample_shape[0], out_features))

        def fixed():
            seen["fixed"] = ()
            return torch.nn.Linear(2, 2)

        def strange(n_in, n_out):
            return torch.nn.Linear(n_in, n_out)
    '''))
    import shaped  # type: ignore[import-not-found]

    for name, data in (("sizes", "moons"), ("shaped", "digits"), ("shaped", "moons"), ("fixed", "moons")):
        result = gdlab("train", "--data", data, "--model", f"shaped:{name}", "--steps", "2", "--store", "s",
                       "--quiet", "--no-plot")
        assert result.exit_code == 0, result.output
        if name == "shaped":
            assert shaped.seen["shaped"] == (((1, 8, 8), 10) if data == "digits" else ((2,), 2))
    assert shaped.seen["sizes"] == (2, 2) and shaped.seen["fixed"] == ()
    bad = gdlab("train", "--data", "moons", "--model", "shaped:strange", "--steps", "2", "--store", "s")
    assert bad.exit_code == 2 and "model 'shaped:strange'" in bad.stderr and "needs n_in, n_out" in bad.stderr


def test_predict_writes_one_row_per_sample(tmp_path: Path) -> None:
    rows = "\n".join(f"{i % 9},{1000 * (i % 5)},{'ab'[i % 2]}" for i in range(60))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows + "\n")
    (tmp_path / "new.csv").write_text("b,a\n3000,1\n0,2\n")  # no target, columns in another order
    trained = json.loads(gdlab("train", "--data", "d.csv", "--target", "label", "--standardize", "--hidden", "8",
                               "--epochs", "3", "--store", "s", "--json", "--quiet", "--no-plot").stdout)
    result = gdlab("predict", trained["run_id"], "--data", "new.csv", "--out", "p.csv", "--store", "s")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "sample,predicted,p_a,p_b" and len(lines) == 3
    assert all(abs(sum(map(float, line.split(",")[2:])) - 1) < 1e-5 for line in lines[1:])
    scored = gdlab("predict", "last", "--data", "d.csv", "--out", "q.csv", "--store", "s")
    assert "60 predictions" in scored.stdout and "accuracy" in scored.stdout
    assert (tmp_path / "q.csv").read_text().splitlines()[0].endswith(",target")
    stored = Store("s").get(trained["run_id"])
    assert stored.config["standardize"] is True
    import numpy as np

    np.savez(tmp_path / "r.npz", X=np.random.default_rng(0).normal(size=(20, 3)).astype("float32"),
             y=np.zeros((20, 1), dtype="float32"))
    regression = json.loads(gdlab("train", "--data", "r.npz", "--model", "linear", "--epochs", "1", "--store", "s",
                                  "--json", "--quiet", "--no-plot").stdout)
    np.savez(tmp_path / "x.npz", X=np.ones((4, 3), dtype="float32"))
    assert gdlab("predict", regression["run_id"], "--data", "x.npz", "--out", "r.csv", "--store", "s").exit_code == 0
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "sample,prediction"
    for args, message in (
        (("nope", "--data", "new.csv", "--out", "p.csv"), "unknown run 'nope'"),
        (("last", "--data", "new.csv", "--out", "no/such/dir/p.csv"), "invalid --out 'no/such/dir/p.csv'"),
        (("last", "--data", "new.csv", "--out", "p.txt"), "invalid --out 'p.txt': expected a .csv file path"),
        (("last", "--data", "missing.csv", "--out", "p.csv"), "data file 'missing.csv' not found"),
    ):
        bad = gdlab("predict", *args, "--store", "s")
        assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1


def test_export_round_trips_the_weights_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from gdlab import models

    trained = json.loads(gdlab("train", "--data", "digits", "--model", "cnn", "--steps", "3", "--store", "s",
                               "--json", "--quiet", "--no-plot").stdout)
    result = gdlab("export", trained["run_id"], "--model", "m.safetensors", "--store", "s")
    assert result.exit_code == 0, result.output
    saved = torch.load(trained["checkpoint"], weights_only=True)["model"]

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading used pickle")

    with monkeypatch.context() as patched:
        for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
            patched.setattr(module, name, no_pickle)
        loaded = models.load(tmp_path / "m.safetensors")
        mine = models.load(tmp_path / "m.safetensors", model=models.build("cnn", in_features=64, out_features=10,
                                                                          image_shape=(1, 8, 8)))
    state = loaded.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert loaded.eval()(torch.zeros(2, 64)).shape == (2, 10)
    assert all(torch.equal(mine.state_dict()[k], saved[k]) for k in saved)
    for args, message in (
        (("nope", "--model", "m.safetensors"), "unknown run 'nope'"),
        (("last", "--model", "m.pt"), "invalid --model 'm.pt': expected a .safetensors file path"),
        (("last", "--model", "gone/m.safetensors"), "invalid --model 'gone/m.safetensors'"),
    ):
        bad = gdlab("export", *args, "--store", "s")
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_runs_json_rm_and_compare(tmp_path: Path) -> None:
    ids = [json.loads(gdlab("train", "--data", "moons", "--hidden", "8", "--epochs", "1", "--lr", lr, "--store", "s",
                            "--name", f"lr{lr}", "--json", "--quiet", "--no-plot").stdout)["run_id"]
           for lr in ("0.01", "0.02", "0.03")]
    listed = json.loads(gdlab("runs", "--store", "s", "--json").stdout)
    assert [r["run_id"] for r in listed["runs"]] == ids[::-1] and listed["runs"][0]["config"]["lr"] == 0.03
    assert json.loads(gdlab("runs", "--store", "empty", "--json").stdout) == {"runs": [], "sweeps": []}
    compared = gdlab("compare", "lr0.01", "lr0.02", "--store", "s")
    assert compared.exit_code == 0 and "lr" in compared.stdout and "other settings are the same" in compared.stdout
    lr_line = next(line for line in compared.stdout.splitlines() if line.strip().startswith("lr "))
    assert "*" in lr_line and "0.01" in lr_line and "0.02" in lr_line
    as_json = json.loads(gdlab("compare", "lr0.01", "lr0.02", "--store", "s", "--json").stdout)
    assert as_json["settings"]["lr"] == [0.01, 0.02] and "lr" in as_json["differ"] and "data" not in as_json["differ"]
    store = Store("s")
    live = store.create_run({"data": "moons"}, name="live")  # running, in this (alive) process
    store.add_epochs(live, [{"epoch": 1, "train_loss": 1.0}])
    refused = gdlab("runs", "rm", "live", "--store", "s")
    assert refused.exit_code == 2 and "is running" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert (tmp_path / "s" / live).is_dir() and store.get("live").status == "running"
    removed = gdlab("runs", "rm", "lr0.01", ids[1][:-1], "--store", "s")
    assert removed.exit_code == 0 and removed.stdout.count("deleted run") == 2
    assert [r.id for r in store.runs()] == [live, ids[2]]
    assert not (tmp_path / "s" / ids[0]).exists() and not (tmp_path / "s" / ids[1]).exists()
    assert store._db.execute("SELECT COUNT(*) FROM epoch_metrics WHERE run_id IN (?, ?)", ids[:2]).fetchone() == (0,)
    for args, message in ((("runs", "rm", "nope"), "unknown run 'nope'"), (("compare", "nope", "last"), "unknown run"),
                          (("compare", "last"), "two or more runs"),
                          (("runs", "rm", "lr0.03", "nope"), "unknown run 'nope'")):
        bad = gdlab(*args, "--store", "s")
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert store.get("lr0.03").id == ids[2]  # a bad name among several deletes nothing


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_do_not_import_torch(args: list[str]) -> None:
    code = ("import sys\nfrom gdlab.cli import main\nsys.argv = ['gdlab', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("no torch")
    assert ("gdlab " if args == ["--version"] else "Commands:") in result.stdout + result.stderr  # bare: stderr


def test_the_command_table_lists_every_command_with_its_module_and_summary() -> None:
    from gdlab.cli.root import COMMANDS, app, load_all

    load_all()
    registered = {(info.name or info.callback.__name__).replace("_", "-"): info for info in app.registered_commands}
    groups = {info.name: info for info in app.registered_groups}  # gdlab runs (and gdlab runs rm)
    assert sorted([*registered, *groups]) == sorted(COMMANDS)  # gdlab --help lists them in the order of COMMANDS
    for name, (module, summary) in COMMANDS.items():
        if name in groups:
            callback = groups[name].typer_instance.registered_callback.callback
            assert callback.__module__ == f"gdlab.cli.{module}"
            continue
        info = registered[name]
        assert info.callback.__module__ == f"gdlab.cli.{module}"
        assert " ".join((info.callback.__doc__ or "").split()).startswith(summary.rstrip(".?")), name
    listed = gdlab("--help").stdout
    assert [line.split()[0] for line in listed.split("Commands:")[1].strip().splitlines()] == list(COMMANDS)


def test_threads_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import gdlab.train as train_module

    seen: list[object] = []
    real = train_module.use_threads
    monkeypatch.setattr(train_module, "use_threads", lambda threads, *a, **k: seen.append(threads) or real(threads, *a,
                                                                                                           **k))
    for flag, expected in (([], "auto"), (["--threads", "1"], 1), (["--threads", "auto"], "auto")):
        result = gdlab("train", "--data", "moons", "--hidden", "4", "--steps", "2", *flag, "--store", "s", "--quiet",
                       "--no-plot")
        assert result.exit_code == 0, result.stderr
        assert seen[-1] == expected
    bad = gdlab("train", "--threads", "0")
    assert bad.exit_code == 2 and "invalid threads 0" in bad.stderr


# -- issue 24: text from a store, a file or a user is printed as text -----------------------------------------

RAW = ("\x1b]", "\x07", "\x1b[2J", "\x1b[H", "\x1b\\")
"""What the hostile names send when printed raw: OSC (window title, OSC-8 link), bell, clear screen, cursor home,
string terminator."""
SHOUT = "st\x1b]0;pwned\x07\x1b[2J[bold red]RED[/]"
"""A store folder or an --out file name with escapes and markup (no slash, so it stays one path part)."""


def _printed_as_text(output: str, *, bar: bool = False) -> None:
    """No escape sequence of the data in ``output``: only Rich's own colours (SGR), and a bar's redraws."""
    import re

    assert not [seq for seq in RAW if seq in output], repr(output)
    if not bar:
        assert "\x1b" not in re.sub(r"\x1b\[[0-9;]*m", "", output), repr(output)
    assert "\\x1b]0;pwned" in output and "\\x07" in output, repr(output)  # the escapes shown, not sent


def test_safe_prints_text_as_its_characters() -> None:
    import io
    import re

    from rich.console import Console

    from gdlab.cli.common import safe
    from gdlab.guard import printable
    from hostile import ESCAPES

    for text in (ESCAPES, "[link=http://evil.example/]mlp[/link]", "a\\[bold]b", "ends\\", "two\\\\", "[/]",
                 "rtl\u202eevil", "multi\nline", "{curly} :smile:", "\x9b2J"):
        shown = safe(text)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", shown)
        console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=500,
                          emoji=False, highlight=False)
        console.print(f"[bold]<{shown}[/][red]>{shown}[/]>")  # inside markup of ours, and before its close
        plain = re.sub(r"\x1b\[[0-9;]*m", "", console.file.getvalue()).rstrip("\n")
        expected = printable(text)
        if expected.endswith("\\"):
            expected = expected[:-1] + "\\x5c"  # a last backslash spelled out: markup after it stays markup
        assert plain == f"<{expected}>{expected}>", (text, plain)
    assert safe(ESCAPES).startswith("\\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\[bold red]RED")
    assert safe("a\nb") == "a\\nb" and safe("a\nb", newlines=True) == "a\nb"


def _hostile_text_store(hostile) -> tuple[Path, str]:
    """The ``escapes`` store, its error, stop reason, findings and remedies holding the hostile text too."""
    from hostile import ESCAPES, set_columns

    root, ref = hostile("escapes")
    set_columns(root, ref, error=ESCAPES, stop_reason=ESCAPES)
    store = Store(root)
    store.add_findings(ref, [{"code": "loss_plateau", "severity": "warning", "step": 3, "evidence": {ESCAPES: ESCAPES},
                              "explanation": ESCAPES, "remedy": {"action": ESCAPES, "lr": 0.1}}])
    store.add_remedies(ref, [{"step": 3, "action": ESCAPES, "reason": ESCAPES}])
    return root, ref


def _commands(root: Path, ref: str) -> list[list[str]]:
    return [["runs", "--store", str(root)], ["show", ref, "--store", str(root)],
            ["compare", ref, ref, "--all", "--store", str(root)], ["doctor", ref, "--store", str(root)],
            ["report", ref, "--store", str(root), "--out", SHOUT + ".html"],
            ["train", "--data", "moons", "--hidden", "4", "--epochs", "1", "--store", SHOUT, "--name", SHOUT,
             "--report"]]


def test_text_from_a_hostile_store_is_printed_as_text(hostile) -> None:
    from hostile import ESCAPES

    root, ref = _hostile_text_store(hostile)
    for args in _commands(root, ref):
        result = gdlab(*args)
        assert result.exit_code == 0, result.output
        _printed_as_text(result.stdout + result.stderr, bar=args[0] == "train")
        if args[0] in ("show", "doctor"):  # whole lines: the markup shown as it is written
            assert "[bold red]RED[/]" in result.stdout
        if args[0] == "show":
            assert "[link=http://evil.example/]mlp[/link]" in result.stdout
            assert f"error: {ESCAPES}" not in result.stdout and "remedy:   \\x1b]0;pwned" in result.stdout
    for args in (["show", "no" + ESCAPES, "--store", str(root)], ["train", "--data", SHOUT, "--store", "s"]):
        result = gdlab(*args)  # an error that echoes the text
        assert result.exit_code == 2 and result.stderr.startswith("error: ")
        _printed_as_text(result.stderr)
        assert "[bold red]RED[/]" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    as_json = gdlab("show", ref, "--store", str(root), "--json").stdout
    assert json.loads(as_json)["name"] == ESCAPES and "\x1b" not in as_json  # JSON: the text as is, escaped


@pytest.mark.slow
def test_text_from_a_hostile_store_on_a_terminal(hostile, tmp_path: Path) -> None:
    import os

    root, ref = _hostile_text_store(hostile)
    script = ("import json, sys\nfrom gdlab.cli import app\nfor args in json.loads(sys.argv[1]):\n"
              "    print('=====', flush=True)\n    app(args, prog_name='gdlab', standalone_mode=False)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env.update(FORCE_COLOR="1", TTY_COMPATIBLE="1", TERM="xterm-256color", COLUMNS="300")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(_commands(root, ref))], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outputs = done.stdout.split("=====\n")[1:]
    assert len(outputs) == 6 and "\x1b[1m" in outputs[1]  # a terminal's output: our own markup is styled
    for output in outputs[:5]:
        _printed_as_text(output)
    _printed_as_text(outputs[5] + done.stderr, bar=True)
    assert "[bold red]RED[/]" in outputs[1] and "[link=http://evil.example/]mlp[/link]" in outputs[1]


def test_a_bar_prints_its_text_as_text() -> None:
    import io

    from rich.console import Console

    from gdlab.progress import TaskBar
    from hostile import ESCAPES

    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=400)
    bar = TaskBar(ESCAPES + " {curly}", 4, console=console, every=1)
    bar.update(2, ESCAPES)
    bar.close()
    drawn = console.file.getvalue()
    _printed_as_text(drawn, bar=True)
    assert "[bold red]RED[/]" in drawn and "{curly}" in drawn


def _words(text: str) -> str:
    """Text with its whitespace run together (the console wraps long lines)."""
    return " ".join(text.split())


def test_train_show_and_doctor_print_one_story() -> None:
    from gdlab.doctor import explain, story_lines

    trained = gdlab("train", "--data", "moons", "--hidden", "8", "--lr", "1e-5", "--optimizer", "sgd", "--epochs", "2",
                    "--store", "s", "--no-plot")
    assert trained.exit_code == 0, trained.output
    run = Store("s").get("last")
    stored = explain(run.findings, run_id=run.id, remedies=run.remedies, steps=run.steps)
    assert stored.causes[0].code == "lr_too_low" and "not_learning" in [c.code for c in stored.causes[0].consequences]
    lines = [str(x) for x in story_lines(stored)]
    for printed in (trained.stdout, gdlab("show", "last", "--store", "s").stdout):  # the same lines, in order
        assert _words("\n".join(lines)) in _words(printed)
    # the root cause leads, and its remedy is the only one printed for it and its consequences
    assert _words(trained.stdout).index("warning lr_too_low") < _words(trained.stdout).index("error not_learning")
    assert trained.stdout.count("remedy:") == len(stored.causes)
    payload = json.loads(gdlab("doctor", "last", "--store", "s", "--json").stdout)
    story = payload["diagnosis"]
    assert story["run_id"] == run.id and story["causes"][0]["code"] == "lr_too_low"
    assert [c["code"] for c in story["causes"][0]["consequences"]] == ["not_learning"]
    again = explain(payload["findings"], run_id=run.id, remedies=run.remedies, steps=run.steps)
    doctor = gdlab("doctor", "last", "--store", "s")
    assert _words("\n".join(str(x) for x in story_lines(again))) in _words(doctor.stdout)


def test_train_flags_help_is_the_settings_help() -> None:
    """Each gdlab train flag that is a setting is declared with its Config field's help (and shown default), and
    every setting has its flag."""
    import dataclasses

    import typer.main

    from gdlab.cli.train import TRAIN_FLAGS
    from gdlab.config import HELP, Config

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    helps = {param.name: param.help for param in train.params}
    assert set(TRAIN_FLAGS) == {f.name for f in dataclasses.fields(Config)}
    assert {key: helps[key] for key in TRAIN_FLAGS} == {key: HELP[key] for key in TRAIN_FLAGS}
    assert helps["batch_size"] == ("full, stochastic, or a positive integer; for train --nproc, the global batch, "
                                   "split over the ranks. [default: 32]")
