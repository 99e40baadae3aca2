"""``gdlab predict`` and ``gdlab export``: a stored run's model put to use, rebuilt from the run's config and
checkpoint as ``gdlab train --resume`` rebuilds it.

A stored config naming code (a ``module:function`` model or data) is imported only with the user's consent
(:func:`gdlab.resolve.consent`): the same spec given again (``predict --model mod:fn``, ``--data mod:fn``) or
``--trust-store``."""

from __future__ import annotations

__all__ = ["predict", "export", "Stored"]

import csv
import functools
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from gdlab.cli.common import StoreFlag, TrustStoreFlag, app, friendly, out, safe
from gdlab.config import Config
from gdlab.errors import DataError, InvalidParameter, MissingExtra, StoreError
from gdlab.guard import check_out

RunArgument = typer.Argument(..., help="Run id, id prefix, name, or 'last'.")


class Stored:
    """A stored run's model with its weights, and what it was trained on.

    Its config's code (a ``module:function`` model or data) is imported only with consent
    (:func:`gdlab.resolve.consent`): ``given`` holds what the user typed by config key (``{"model": "mod:fn"}``),
    ``flags`` the command's flags that can name each again, ``must_match`` the keys that, given, must equal the
    stored value (a consent, not a replacement), and ``trust`` is ``--trust-store``."""

    def __init__(self, ref: str, store: str, *, given: dict[str, Any] | None = None, trust: bool = False,
                 flags: dict[str, str] | None = None, must_match: tuple[str, ...] = ()) -> None:
        from gdlab import checkpoint, models
        from gdlab.data import as_tensor_data, datasets
        from gdlab.experiment import RECORDED, model_factory
        from gdlab.resolve import consent
        from gdlab.store import Store

        run = Store(store, create=False).get(ref)
        if "data" not in run.config:
            raise StoreError(f"run {run.id} was recorded by gdlab.fit from Python, not by gdlab train: its model "
                             "is the caller's; load its checkpoint there (gdlab.checkpoint.load)")
        consent(run.config, run_id=run.id, given=given, trust=trust, flags=flags, must_match=must_match)
        self.run = run
        self.config = Config.from_dict({k: v for k, v in run.config.items() if k not in RECORDED},
                                       source=f"stored config of run {run.id}")
        c = self.config
        raw, _ = datasets.load(c.data, target=c.target, task=c.task,  # type: ignore[arg-type]
                               val=c.val, val_split=c.val_split, seed=c.seed, **c.data_options)
        self.train = as_tensor_data(raw)  # None for module:function data that is not in memory
        self.scaling: tuple[torch.Tensor, torch.Tensor] | None = None
        x = self.train.X if self.train is not None else None
        if c.standardize and isinstance(x, torch.Tensor) and x.is_floating_point() and len(x) > 1:
            std = x.std(0, keepdim=True)  # the training statistics, as gdlab.data.standardize takes them
            self.scaling = (x.mean(0, keepdim=True), torch.where(std > 0, std, torch.ones_like(std)))
        self.model = model_factory(c, raw)()
        state = checkpoint.load(run.checkpoint)
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            raise StoreError(f"checkpoint of run {run.id} does not fit its model ({str(e).splitlines()[0]})") \
                from None
        if c.standardize_target and self.train is not None:  # trained on scaled targets: outputs in their units
            from gdlab.problem import TargetScale

            TargetScale.of(self.train.y).attach(self.model)
        self.model.eval()
        self.models = models

    def spec(self) -> dict[str, Any]:
        """What rebuilds the model: :func:`gdlab.models.build`'s arguments, the run and its classes."""
        t, c = self.train, self.config
        return {"model": c.model, "in_features": t.n_features if t is not None else None,
                "out_features": t.n_outputs if t is not None else None, "hidden": list(c.hidden),
                "activation": c.activation, "image_shape": list(t.image_shape) if t is not None and t.image_shape
                else None, "task": t.task if t is not None else None,
                "classes": [str(k) for k in t.classes] if t is not None and t.classes else None,
                "run_id": self.run.id, "data": c.data}


def _writable(path: Path, flag: str, what: str) -> None:
    """Refuse an ``--out`` that cannot be written, before any work."""
    if path.is_dir() or not path.parent.exists() or not os.access(path.parent, os.W_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise InvalidParameter(flag, str(path), f"a writable {what} path (an existing, writable folder)")


def _not_read(out_path: Path, spec: str | None, what: str) -> None:
    """Refuse an ``--out`` that is the file ``spec`` (a data file the command or the run reads)."""
    if spec is not None and out_path.exists() and Path(spec).is_file() and os.path.samefile(out_path, spec):
        raise InvalidParameter("--out", str(out_path), f"a path other than {what}")


def _inputs(spec: str, stored: Stored) -> tuple[Any, torch.Tensor | None, str]:
    """``(X, y or None, where)`` of ``--data``: a .csv (the target column optional), a .npz (``y`` optional) or a
    built-in / ``module:function`` dataset (its validation split when it has one, else its training data)."""
    from gdlab.data import as_tensor_data, datasets

    path = Path(spec)
    c, train = stored.config, stored.train
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"data file '{path}' not found: expected an existing .csv or .npz file")
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        if c.target is not None and c.target in [h.strip() for h in header]:
            loaded = datasets.load_csv(path, target=c.target, like=train)
            return loaded.X, loaded.y, str(path)
        return _feature_csv(path, train), None, str(path)
    if path.suffix.lower() == ".npz":
        arrays = datasets.read_npz(path, ("X",), ("y",), expected="array 'X' (np.savez(X=...), y is optional)")
        X = torch.as_tensor(arrays["X"]).float()
        y = torch.as_tensor(arrays["y"]) if "y" in arrays else None
        return X, y, str(path)
    options = c.data_options if spec == c.data else {}
    train_data, val = datasets.load(spec, seed=c.seed, **options)
    tensors = as_tensor_data(val if val is not None else train_data)
    if tensors is None:
        raise InvalidParameter("--data", spec, "in-memory data: a built-in dataset, a .csv or a .npz file")
    return tensors.X, tensors.y, f"{spec} ({'validation' if val is not None else 'training'} data)"


def _feature_csv(path: Path, train: Any) -> torch.Tensor:
    """The features of a CSV without its target column, in the training file's column order."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [(i, r) for i, r in enumerate(csv.reader(f), start=1) if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: no data rows: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0][1]]
    names = train.feature_names if train is not None and train.feature_names else header
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}: expected the training file's columns {names}")
    index = [header.index(n) for n in names]
    values = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} cells: expected {len(header)} like the header")
        cells = []
        for j in index:
            try:
                value = float(row[j])
            except ValueError:
                raise DataError(f"{path} line {line}, column '{header[j]}': {row[j]!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path} line {line}, column '{header[j]}': {row[j]} is not finite")
            cells.append(value)
        values.append(cells)
    return torch.tensor(values, dtype=torch.float32)


def _rows_of(t: torch.Tensor, start: int) -> torch.Tensor:
    return t[start:start + 1024]


@torch.no_grad()
def _predict(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    from gdlab.data import structure
    from gdlab.problem import prediction

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    outputs = []
    n = len(structure.leaves(X)[0])
    for start in range(0, n, 1024):
        chunk = structure.tree_map(functools.partial(_rows_of, start=start), X)
        output = prediction(structure.call(model, structure.to(chunk, torch.device("cpu"), dtype)))
        if output is None:
            raise InvalidParameter("run", "model", "a model whose outputs hold predictions (a tensor or .logits)")
        outputs.append(output.float())
    return torch.cat(outputs)


@app.command()
@friendly
def predict(
    run: str = RunArgument,
    data: str = typer.Option(..., "--data", help="Inputs: a .csv (the target column optional), a .npz (y "
                             "optional), or a built-in dataset (its validation split)."),
    out_path: Path = typer.Option(..., "--out", help="CSV to write: one row per sample."),
    model: Optional[str] = typer.Option(None, "--model", help="The run's stored module:function model, named "
                                        "again: consent to import and run it (it must match; it replaces nothing)."),
    trust_store: TrustStoreFlag = False,
    force: bool = typer.Option(False, "--force", help="Write over an existing --out file that holds something "
                               "else."),
    store: StoreFlag = "gdlab-runs",
) -> None:
    """Predict with a stored run's model: one row per sample (class and probabilities, or values)."""
    check_out(out_path, "--out", (".csv",), force=force)
    _writable(out_path, "--out", ".csv")
    _not_read(out_path, data, "the --data file it reads")
    stored = Stored(run, store, given={"model": model, "data": data}, trust=trust_store,
                    flags={"model": "--model", "data": "--data"}, must_match=("model",))
    _not_read(out_path, stored.config.data, "the run's training data")
    _not_read(out_path, stored.config.val, "the run's validation data")
    X, y, where = _inputs(data, stored)
    if stored.scaling is not None:
        X = (X - stored.scaling[0]) / stored.scaling[1]
    expected = stored.train.n_features if stored.train is not None else None
    got = int(X[0].numel()) if isinstance(X, torch.Tensor) and len(X) else None
    if expected is not None and got is not None and got != expected:
        raise DataError(f"{where}: {got} input features per sample: expected {expected} like the run's data")
    outputs = _predict(stored.model, X)
    task = stored.train.task if stored.train is not None else ("classification" if outputs.dim() == 2 and
                                                               outputs.shape[1] > 1 else "regression")
    header, rows, score = _rows(task, outputs, y, stored.train)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, out_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InvalidParameter("--out", str(out_path), f"a writable .csv path ({e.strerror or e})") from None
    out.print(safe(f"{len(rows)} predictions of run {stored.run.id} on {where} -> {out_path}" + score))


def _rows(task: str, outputs: torch.Tensor, y: torch.Tensor | None,
          train: Any) -> tuple[list[str], list[list[Any]], str]:
    """The CSV's header and rows, and a score against the targets when there are targets."""
    if task == "classification":
        probs = outputs.softmax(-1)
        predicted = probs.argmax(-1)
        names = [str(k) for k in train.classes] if train is not None and train.classes else \
            [str(i) for i in range(probs.shape[-1])]
        header = ["sample", "predicted", *(f"p_{n}" for n in names)] + (["target"] if y is not None else [])
        rows = [[i, names[int(predicted[i])], *(f"{p:.6g}" for p in probs[i].tolist())]
                + ([names[int(y[i])] if int(y[i]) < len(names) else int(y[i])] if y is not None else [])
                for i in range(len(probs))]
        score = f" (accuracy {float((predicted == y.long().reshape(-1)).double().mean()):.2%})" \
            if y is not None else ""
        return header, rows, score
    values = outputs.reshape(len(outputs), -1)
    if task == "multilabel":
        probs = values.sigmoid()
        k = probs.shape[1]
        header = ["sample", *(f"label_{j}" for j in range(k)), *(f"p_{j}" for j in range(k))]
        rows = [[i, *(int(p > 0.5) for p in probs[i].tolist()), *(f"{p:.6g}" for p in probs[i].tolist())]
                for i in range(len(probs))]
        return header, rows, ""
    k = values.shape[1]
    names = ["prediction"] if k == 1 else [f"prediction_{j}" for j in range(k)]
    targets = y.reshape(len(y), -1).float() if y is not None else None
    header = ["sample", *names] + ((["target"] if k == 1 else [f"target_{j}" for j in range(k)])
                                   if targets is not None else [])
    rows = [[i, *(f"{v:.6g}" for v in values[i].tolist())]
            + ([f"{v:.6g}" for v in targets[i].tolist()] if targets is not None else [])
            for i in range(len(values))]
    score = ""
    if targets is not None and targets.shape == values.shape:
        score = f" (MAE {float((values - targets).abs().mean()):.4g})"
    return header, rows, score


EXPORT_FORMATS = ("csv", "json", "parquet")
"""What ``gdlab export --format`` writes the history as: csv and parquet a folder (``steps``, ``epochs`` and
``findings.json``), json one file."""


@app.command()
@friendly
def export(
    run: str = RunArgument,
    model_path: Optional[Path] = typer.Option(None, "--model", help="The .safetensors file to write."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Where the history goes: a folder for csv and "
                                            "parquet (steps, epochs, findings.json), a .json file for json."),
    fmt: str = typer.Option("csv", "--format", help="The history's format: csv, json or parquet (needs pip "
                            "install 'gdlab[parquet]')."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="A folder to write the run's history "
                                               "and findings into as TensorBoard event files."),
    trust_store: TrustStoreFlag = False,
    force: bool = typer.Option(False, "--force", help="Write over an existing --model or --out file that holds "
                               "something else."),
    store: StoreFlag = "gdlab-runs",
) -> None:
    """Export a stored run: its model as .safetensors (--model; load it with gdlab.models.load(path), which
    unpickles nothing), its per-step and per-epoch history, findings and remedies (--out, --format
    csv|json|parquet), or all of that as TensorBoard event files (--tensorboard)."""
    if model_path is None and out_path is None and tensorboard is None:
        raise InvalidParameter("export", run, "at least one of --model PATH, --out PATH, --tensorboard DIR")
    if fmt not in EXPORT_FORMATS:
        raise InvalidParameter("--format", fmt, "csv, json or parquet")
    if out_path is not None:
        if fmt == "json":
            check_out(out_path, "--out", (".json",), force=force)
            _writable(out_path, "--out", ".json")
        else:
            check_out(out_path, "--out", (), folder=True)
    if model_path is not None:
        check_out(model_path, "--model", (".safetensors",), force=force)
        _writable(model_path, "--model", ".safetensors")
    pyarrow = _pyarrow() if out_path is not None and fmt == "parquet" else None
    if tensorboard is not None:
        from gdlab.integrations.tensorboard import require

        require(tensorboard, "--tensorboard")  # the extra is there, before any work
    if model_path is not None:
        _export_model(run, model_path, store, trust_store)
    if out_path is None and tensorboard is None:
        return
    from gdlab.store import Store

    db = Store(store, create=False)
    stored = db.get(run)
    history = db.history(stored.id)
    if out_path is not None:
        written = _export_history(stored, history, out_path, fmt, pyarrow)
        out.print(safe(f"run {stored.id}: {len(history.steps)} step rows, {len(history.epochs)} epoch rows, "
                       f"{len(stored.findings)} findings -> {written}"))
    if tensorboard is not None:
        from gdlab.integrations.tensorboard import write_history

        write_history(tensorboard, history, stored.findings, stored.remedies)
        out.print(safe(f"run {stored.id}: TensorBoard events -> {tensorboard} (tensorboard --logdir {tensorboard})"))


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingExtra("--format parquet needs the pyarrow package: pip install 'gdlab[parquet]'") from None
    return pyarrow


def _columns(table: Any) -> dict[str, list[float | None]]:
    """A history table's columns, ``step`` / ``epoch`` first, NaN as None."""
    columns = table.columns
    order = [k for k in ("step", "epoch") if k in columns] + sorted(k for k in columns if k not in ("step", "epoch"))
    return {k: [None if math.isnan(v) else v for v in columns[k]] for k in order}


def _rows_from(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(columns)
    n = len(columns[keys[0]]) if keys else 0
    return [{k: columns[k][i] for k in keys} for i in range(n)]


def _export_history(stored: Any, history: Any, out_path: Path, fmt: str, pyarrow: Any) -> Path:
    """Write the run's history, findings and remedies as ``fmt``; returns what was written."""
    import json

    from gdlab.cli.common import to_json

    steps, epochs = _columns(history.steps), _columns(history.epochs)
    about = {"run_id": stored.id, "name": stored.name, "status": stored.status, "config": stored.config,
             "final": stored.final, "findings": stored.findings, "remedies": stored.remedies}
    try:
        if fmt == "json":
            tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
            tmp.write_text(to_json({**about, "steps": _rows_from(steps), "epochs": _rows_from(epochs)}) + "\n")
            os.replace(tmp, out_path)
            return out_path
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "findings.json").write_text(json.dumps(json.loads(to_json(about)), indent=2) + "\n")
        for name, columns in (("steps", steps), ("epochs", epochs)):
            if fmt == "parquet":
                pyarrow.parquet.write_table(pyarrow.table({k: pyarrow.array(v, pyarrow.float64())
                                                           for k, v in columns.items()}),
                                            str(out_path / f"{name}.parquet"))
                continue
            with open(out_path / f"{name}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(list(columns))
                writer.writerows([[_cell(k, v) for k, v in row.items()] for row in _rows_from(columns)])
    except OSError as e:
        raise InvalidParameter("--out", str(out_path), f"a writable path ({e.strerror or e})") from None
    return out_path


def _cell(key: str, value: float | None) -> str:
    """A CSV cell: empty for no value, the step and epoch as integers, a float as Python writes it (exact)."""
    if value is None:
        return ""
    return str(int(value)) if key in ("step", "epoch") and float(value).is_integer() else repr(value)


def _export_model(run: str, model_path: Path, store: str, trust: bool) -> None:
    """Write a stored run's model as .safetensors (weights, and in the metadata what rebuilds it); its code only
    with ``--trust-store`` (export's ``--model`` is the file written, so it cannot name the model again)."""
    stored = Stored(run, store, trust=trust)
    model = stored.model
    if stored.scaling is not None:
        model = stored.models.Standardized(model, *stored.scaling)
    tmp = model_path.with_name(f".{model_path.name}.{os.getpid()}.tmp")
    try:
        stored.models.save(model, tmp, stored.spec())
        os.replace(tmp, model_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InvalidParameter("--model", str(model_path), f"a writable path ({e.strerror or e})") from None
    note = "" if stored.config.model in stored.models.MODELS else \
        f"; {stored.config.model} is your own model: build it and pass it, gdlab.models.load(path, model=...)"
    out.print(safe(f"run {stored.run.id}: {sum(p.numel() for p in stored.model.parameters()):,} weights -> "
                   f"{model_path} (load with gdlab.models.load){note}"))

