"""Built-in datasets and data files: ``load(name, **options) -> (train, val)``.

Built-ins (each deterministic from ``seed``): ``seed`` (the lecture's three samples), ``digits``
(scikit-learn's bundled 8x8 digits with a fixed validation split), ``moons``, ``spirals`` and ``linear``
(regression whose inputs have a chosen condition number). Files: ``.csv`` (with ``target``), ``.npz`` (arrays
``X`` and ``y``) and ``module:function`` returning a torch ``Dataset`` (or a ``(train, val)`` pair of them).
A file is used whole for training unless ``val`` (another file) or ``val_split`` (a fraction) is given.

Example:
    >>> train, val = load("seed")
    >>> train.X.tolist(), train.y.tolist(), val
    ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], [[12.0], [18.0], [11.0]], None)
"""

from __future__ import annotations

import csv
import importlib.util
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gdlab.data import TASKS, Task, TensorData, as_tensor_data, infer_task, split
from gdlab.data.batching import MAX_CLASSES
from gdlab.errors import (
    DataError,
    GdlabError,
    InvalidParameter,
    MissingParameter,
    UnknownChoice,
    check_seed,
    shorten,
)
from gdlab.resolve import DATA_FILE_SUFFIXES, call_user, names_code, resolve
from gdlab.resources import check_fits, human

__all__ = ["DATASETS", "DatasetInfo", "load", "load_csv", "load_npz", "load_callable", "read_npz", "source_kind"]

Pair = tuple[Any, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in dataset: its builder, a one-line description and its options with defaults."""

    name: str
    build: Callable[..., Pair]
    description: str
    options: dict[str, Any]


def _seed_data() -> Pair:
    # The lecture's CustomDataset, unscaled on purpose: the badly scaled inputs are part of the lesson.
    X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    y = torch.tensor([[12.0], [18.0], [11.0]])
    return TensorData(X, y, feature_names=["x1", "x2", "x3"]), None


def _digits() -> Pair:
    X, y = _digits_arrays()
    # Pixel intensities 0..16 scaled to [0, 1], as images usually are; a fixed stratified 80/20 split.
    g = torch.Generator().manual_seed(0)
    val_index = torch.cat([idx[torch.randperm(len(idx), generator=g)][: round(0.2 * len(idx))]
                           for idx in (torch.nonzero(y == c).flatten() for c in range(10))])
    is_val = torch.zeros(len(y), dtype=torch.bool)
    is_val[val_index] = True
    data = TensorData(X / 16.0, y, num_classes=10, image_shape=(1, 8, 8))
    return data.subset(torch.nonzero(~is_val).flatten()), data.subset(torch.nonzero(is_val).flatten())


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits file, read directly (importing sklearn.datasets costs seconds)."""
    spec = importlib.util.find_spec("sklearn")
    folders = spec.submodule_search_locations if spec else None
    path = Path(folders[0]) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():
        raise DataError("dataset 'digits' needs scikit-learn's bundled data: pip install scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # [1797, 64 pixels + label]
    return torch.from_numpy(table[:, :-1]), torch.from_numpy(table[:, -1]).long()


def _moons(n_samples: int = 1000, noise: float = 0.2, val_fraction: float = 0.2, seed: int = 0) -> Pair:
    g = torch.Generator().manual_seed(seed)
    outer, inner = n_samples - n_samples // 2, n_samples // 2
    t_out, t_in = torch.linspace(0, math.pi, outer), torch.linspace(0, math.pi, inner)
    X = torch.cat([torch.stack([torch.cos(t_out), torch.sin(t_out)], 1),
                   torch.stack([1 - torch.cos(t_in), 0.5 - torch.sin(t_in)], 1)])  # [samples, 2]
    X = X + noise * torch.randn(X.shape, generator=g)
    y = torch.cat([torch.zeros(outer, dtype=torch.long), torch.ones(inner, dtype=torch.long)])
    return split(TensorData(X, y, num_classes=2), val_fraction, seed)


def _spirals(
    n_samples: int = 1000, classes: int = 3, turns: float = 1.0, noise: float = 0.2,
    val_fraction: float = 0.2, seed: int = 0,
) -> Pair:
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n_samples) % classes  # [samples], balanced
    r = torch.rand(n_samples, generator=g)  # radius in [0, 1)
    theta = 2 * math.pi * (turns * r + label / classes) + noise * torch.randn(n_samples, generator=g)
    X = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return split(TensorData(X, label, num_classes=classes), val_fraction, seed)


def _linear(
    n_samples: int = 1000, features: int = 10, condition: float = 100.0, noise: float = 0.1,
    val_fraction: float = 0.2, seed: int = 0,
) -> Pair:
    if not condition >= 1:
        raise InvalidParameter("condition", condition, "a condition number >= 1")
    if features > n_samples:
        raise InvalidParameter("features", features, f"at most n_samples ({n_samples})")
    g = torch.Generator().manual_seed(seed)
    # X = U diag(s) V^T with singular values from 1 down to 1/condition, so cond(X) = condition exactly.
    U, _ = torch.linalg.qr(torch.randn(n_samples, features, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(features, features, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(condition), features, dtype=torch.float64) * math.sqrt(n_samples)
    X = U @ torch.diag(s) @ V.T  # [samples, features]
    w = torch.randn(features, 1, generator=g, dtype=torch.float64)
    y = X @ w + noise * torch.randn(n_samples, 1, generator=g, dtype=torch.float64)
    return split(TensorData(X.float(), y.float()), val_fraction, seed)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("seed", _seed_data, "the lecture's 3 samples: x=[[1,2,3],[4,5,6],[7,8,9]], y=[12,18,11]",
                    {}),
        DatasetInfo("digits", _digits,
                    "8x8 handwritten digits (bundled with scikit-learn), 1438 train / 359 val, 10 classes", {}),
        DatasetInfo("moons", _moons, "two interleaving half circles, 2 classes",
                    {"n_samples": 1000, "noise": 0.2, "val_fraction": 0.2, "seed": 0}),
        DatasetInfo("spirals", _spirals, "interleaved spiral arms, one class per arm",
                    {"n_samples": 1000, "classes": 3, "turns": 1.0, "noise": 0.2, "val_fraction": 0.2, "seed": 0}),
        DatasetInfo("linear", _linear, "linear regression whose inputs have a chosen condition number",
                    {"n_samples": 1000, "features": 10, "condition": 100.0, "noise": 0.1, "val_fraction": 0.2,
                     "seed": 0}),
    ]
}

_SOURCES = ", a .csv or .npz file, or module:function"


def load(
    name: str,
    *,
    target: str | None = None,
    task: Task | None = None,
    val: str | None = None,
    val_split: float | None = None,
    seed: int = 0,
    **options: Any,
) -> Pair:
    """Load a built-in dataset or a data source as ``(train, val)``; ``val`` is None when there is none.

    Args:
        name: a built-in name (see ``DATASETS``), a ``.csv`` / ``.npz`` path, or ``module:function``.
        target: the target column of a CSV file.
        task: ``"classification"``, ``"regression"`` or ``"multilabel"``, to override what is inferred from the
            target (an ``.npz`` of 0/1 targets is multilabel; a CSV target column is one class or number).
        val: a second file (same format) to validate on.
        val_split: a fraction of the training file to hold out for validation, drawn from ``seed``.
        seed: seeds synthetic data and the validation split.
        **options: options of a built-in dataset (e.g. ``n_samples``, ``noise``, ``condition``).
    """
    if task not in (None, *TASKS):
        raise InvalidParameter("task", task, '"classification", "regression" or "multilabel"')
    check_seed(seed)
    if name in DATASETS:
        info = DATASETS[name]
        for key, value in (("target", target), ("task", task), ("val", val), ("val_split", val_split)):
            if value is not None:
                raise InvalidParameter(key, value, f"nothing for the built-in dataset {name!r} (it has its own "
                                       "validation split); these are for data files")
        allowed = ", ".join(k for k in info.options if k != "seed") or "none"
        for key, value in options.items():
            if key not in info.options or key == "seed":
                hint = " (give --seed instead)" if key == "seed" else ""
                raise InvalidParameter(f"{name} option", key, f"one of its options ({allowed}){hint}")
            default = info.options[key]
            wanted = int if isinstance(default, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    wanted is int and not float(value).is_integer()) or not math.isfinite(value) or value < 0 or (
                    wanted is int and value == 0):
                what = "a positive integer" if wanted is int else "a finite number >= 0"
                raise InvalidParameter(f"{name} option {key}", value, what)
            options[key] = wanted(value)
        kwargs = {**options, "seed": seed} if "seed" in info.options else options
        _check_size(name, {**info.options, **kwargs})
        return info.build(**kwargs)
    if options:
        raise InvalidParameter("option", sorted(options)[0], f"no options for data {name!r}")
    kind = source_kind(name)
    if kind == "file":
        train = _load_file(Path(name), target=target, task=task)
        valid = _load_file(Path(val), target=target, task=task, like=train) if val else None
    elif kind == "code":
        train, valid = load_callable(name)
        if val:
            raise InvalidParameter("val", val, "no --val file with module:function data (return (train, val))")
    else:
        raise UnknownChoice("data", name, DATASETS, _SOURCES)
    if val_split is not None:
        if valid is not None:
            raise InvalidParameter("val_split", val_split, "no --val-split when validation data is given")
        train, valid = split(train, val_split, seed)
    return train, valid


def source_kind(name: str) -> str:
    """What :func:`load` takes ``name`` for: ``"builtin"`` (a key of ``DATASETS``), ``"file"`` (a ``.csv`` or
    ``.npz`` path, or any path that exists), ``"code"`` (``module:function``, imported and called) or
    ``"unknown"``.

    Example:
        >>> source_kind("moons"), source_kind("train.csv"), source_kind("mymodule:make_data")
        ('builtin', 'file', 'code')
    """
    if name in DATASETS:
        return "builtin"
    if names_code(name, files=True):
        return "code"
    path = Path(name)
    return "file" if path.suffix.lower() in DATA_FILE_SUFFIXES or path.exists() else "unknown"


BUILD_COPIES = 6
"""Copies of its ``[samples, features + 1]`` float32 table a built-in dataset holds while it is made (temporaries,
the split, the float64 of ``linear``)."""


def _check_size(name: str, options: dict[str, Any]) -> None:
    """Refuse a built-in dataset whose table would not fit in memory (estimated from its options)."""
    rows = int(options.get("n_samples", 0))
    features = int(options.get("features", 2))
    if rows:
        need = rows * (features + 1) * 4 * BUILD_COPIES
        check_fits(f"dataset {name!r} with n_samples={rows:,} ({features} features)", need, error=DataError,
                   hint="use a smaller n_samples")


def _load_file(path: Path, *, target: str | None, task: Task | None, like: TensorData | None = None) -> TensorData:
    if not path.is_file():
        raise DataError(f"data file '{path}' not found: expected an existing .csv or .npz file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, target=target, task=task, like=like)
    if suffix == ".npz":
        return load_npz(path, task=task)
    raise InvalidParameter("data", str(path), "a .csv or .npz file")


def load_csv(
    path: str | Path, *, target: str | None, task: Task | None = None, like: TensorData | None = None
) -> TensorData:
    """Read a CSV file with a header row; every column but ``target`` is a numeric feature.

    The task is classification when the target is text, or whole numbers with at most 20 distinct values;
    class labels are numbered in sorted order. ``like`` reuses another file's columns and classes.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(line, row) for line, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): expected a UTF-8 CSV file") from None
    if not rows:
        raise DataError(f"{path}: the file is empty: expected a header row and at least one data row")
    header = [c.strip() for c in rows[0][1]]
    if target is None:
        raise MissingParameter("target", f"the column of {path.name} to predict (--target NAME), one of "
                               f"{column_list(header)}")
    if target not in header:
        raise UnknownChoice("target", target, [column_list(header)], f" (the columns of {path.name})")
    if len(rows) < 2:
        raise DataError(f"{path}: no data rows: expected at least one row after the header")
    t = header.index(target)
    features, labels = [], []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} cells: expected {len(header)} like the header")
        features.append([_number(path, line, header[j], row[j]) for j in range(len(row)) if j != t])
        labels.append(row[t].strip())
    X = torch.tensor(features, dtype=torch.float32).reshape(len(features), len(header) - 1)
    names = [h for j, h in enumerate(header) if j != t]
    if like is not None and like.feature_names is not None and names != like.feature_names:
        raise DataError(f"{path}: columns {names} differ from the training file's {like.feature_names}")
    y, task, classes = _targets(path, [r[0] for r in rows[1:]], target, labels, task, like)
    return TensorData(X, y, task=task, num_classes=len(classes) if classes else None, feature_names=names,
                      classes=classes)


def column_list(names: Sequence[str], limit: int = 10) -> str:
    """A file's column names for a one-line message: each as it is, quoted (``repr``: control characters escaped)
    where it is empty, holds a comma, a quote, a control character or surrounding spaces; cut at 30 characters; a
    longer list keeps its first and last columns.

    Example:
        >>> column_list(["area", "rooms", "sale, price"])
        "area, rooms, 'sale, price'"
        >>> column_list([f"c{i}" for i in range(300)])
        'c0, c1, c2, c3, c4, c5, c6, c7, ... 290 more ..., c298, c299 (300 columns)'
    """
    def one(name: str) -> str:
        short = shorten(name, 30) if len(name) > 30 else name
        plain = short.isprintable() and short == short.strip() != "" and not any(c in short for c in ",'\"")
        return short if plain else repr(short)

    shown = [one(n) for n in names]
    if len(shown) <= limit:
        return ", ".join(shown)
    return ", ".join([*shown[: limit - 2], f"... {len(shown) - limit} more ...", *shown[-2:]]) + \
        f" ({len(shown)} columns)"


def _number(path: Path, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "an empty cell" if not text else repr(text)
        raise DataError(f"{path} line {line}, column '{column}': {what} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path} line {line}, column '{column}': {text} is not finite: expected a real number")
    return value


def _targets(
    path: Path, lines: list[int], column: str, labels: list[str], task: Task | None, like: TensorData | None
) -> tuple[torch.Tensor, Task, list[Any] | None]:
    numbers: list[float] | None = []
    for text in labels:
        try:
            numbers.append(float(text))  # type: ignore[union-attr]
        except ValueError:
            numbers = None
            break
    if like is not None:
        task = like.task
    elif task is None:
        whole = numbers is not None and all(math.isfinite(v) and v == int(v) for v in numbers)
        task = "classification" if numbers is None or whole and len(set(numbers)) <= 20 else "regression"
    if task in ("regression", "multilabel"):  # numbers as they are (multilabel: one 0/1 column, binary)
        if numbers is None:
            bad = next(i for i, s in enumerate(labels) if not _is_float(s))
            raise DataError(f"{path} line {lines[bad]}, column '{column}': {labels[bad]!r} is not a number")
        for i, v in enumerate(numbers):
            if not math.isfinite(v):
                raise DataError(f"{path} line {lines[i]}, column '{column}': {labels[i]} is not finite")
        return torch.tensor(numbers, dtype=torch.float32).reshape(-1, 1), task, None
    if numbers is not None:
        for i, v in enumerate(numbers):
            if not math.isfinite(v):
                raise DataError(f"{path} line {lines[i]}, column '{column}': {labels[i]} is not finite: "
                                "expected a class label")
    keys: list[Any] = numbers if numbers is not None else labels
    classes = (like.classes if like is not None else None) or sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    for i, k in enumerate(keys):
        if k not in index:
            raise DataError(f"{path} line {lines[i]}, column '{column}': class {labels[i]!r} is not among the "
                            f"training classes {classes}")
    return torch.tensor([index[k] for k in keys]), task, classes


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_npz(path: str | Path, *, task: Task | None = None) -> TensorData:
    """Read arrays ``X`` (``[samples, ...]``) and ``y`` (``[samples]`` or ``[samples, outputs]``) as
    :func:`read_npz` does: real numbers only, no pickles, sizes checked before anything is read."""
    path = Path(path)
    arrays = read_npz(path, ("X", "y"))
    X, y = arrays["X"], arrays["y"]
    if X.ndim == 0 or y.ndim == 0:
        raise DataError(f"{path}: X and y must have a samples axis: got shapes {X.shape} and {y.shape}")
    if len(X) == 0:
        raise DataError(f"{path}: X has no rows: expected at least one sample")
    for name, a in (("X", X), ("y", y)):
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            raise DataError(f"{path}: {name}[{', '.join(map(str, bad[0]))}] is {a[tuple(bad[0])]}: expected finite")
    if task is None:  # integer labels are classes, 0/1 label columns multilabel (TensorData infers), else numbers
        task = infer_task(torch.as_tensor(y))
    if task == "classification" and (y.min() < 0 or not np.all(y == np.round(y))):
        raise DataError(f"{path}: class labels in y must be whole numbers >= 0: found {y.min()}")
    if task == "classification" and len(y) and y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: class label {y.max():.0f} in y means {y.max() + 1:.0f} classes, too many: expected "
                        f"labels 0 to N-1 for at most {MAX_CLASSES:,} classes (give --task regression if y holds "
                        "numbers)")
    if len(X) != len(y):
        raise DataError(f"{path}: X has {len(X)} samples but y has {len(y)}: expected the same number")
    return TensorData(torch.as_tensor(X).float(), torch.as_tensor(y), task=task)


NPZ_COPIES = 3
"""Copies of its arrays reading an ``.npz`` holds at once (the arrays, their float32 tensors, the finiteness
checks): what the arrays' declared size is multiplied by before it is compared with the free memory."""

REAL_NUMBERS = "real numbers (an integer or floating-point dtype)"
"""What an ``.npz`` array's dtype must be."""


def read_npz(path: str | Path, required: Sequence[str], optional: Sequence[str] = (),
             expected: str = "arrays 'X' and 'y' (np.savez(X=..., y=...))") -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of the ``.npz`` archive ``path``, read without
    pickle; every problem is one :class:`DataError` line naming the file.

    Before any array is read, each member's ``.npy`` header is read and checked: a real-number dtype (object,
    complex, text and bool arrays are refused, never cast), a declared size (shape times item size) that the
    member holds, and a total that fits in memory (:func:`gdlab.resources.check_fits`, times
    :data:`NPZ_COPIES`): a zip bomb, or a header that claims petabytes, is refused in milliseconds.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, X=np.zeros((4, 2), dtype=np.float32), y=np.arange(4))
        >>> sorted(read_npz(path, ("X",), ("y", "w")))
        ['X', 'y']
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' not found: expected an existing .csv or .npz file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {(n[:-4] if n.endswith(".npy") else n): archive.getinfo(n) for n in archive.namelist()}
            missing = [k for k in required if k not in members]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r}: expected {expected} (found {sorted(members)})")
            wanted = [k for k in (*required, *optional) if k in members]
            need = 0
            for key in wanted:
                need += _npz_member_size(path, key, archive, members[key])
            check_fits(f"{path} (arrays {', '.join(wanted)}: {human(need)} uncompressed)", need * NPZ_COPIES,
                       error=DataError, hint="use a smaller file")
            arrays = {}
            for key in wanted:
                with archive.open(members[key]) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            return arrays
    except GdlabError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
            AttributeError, MemoryError) as e:  # MemoryError: where the free memory cannot be read to refuse first
        raise DataError(f"{path}: {_npz_problem(path, e)}: expected {expected}") from None


def _npz_member_size(path: Path, key: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The bytes member ``key`` of an .npz declares (its .npy header's shape times item size), checked against
    what the member holds and for a real-number dtype, without reading its data."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        header = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} holds objects (pickled), which are not read: expected {REAL_NUMBERS}")
    if dtype.kind not in "iuf":
        raise DataError(f"{path}: array {key!r} has dtype {dtype}: expected {REAL_NUMBERS}"
                        + ("; complex values are not cast" if dtype.kind == "c" else ""))
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size - header:
        raise DataError(f"{path}: array {key!r} declares shape {shape} ({human(declared)}) but holds "
                        f"{human(max(0, info.file_size - header))}: a damaged .npz archive")
    return declared


def _npz_problem(path: Path, error: BaseException) -> str:
    """What is wrong with a file that could not be read as an .npz, in words."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive"
    if not head.startswith(b"PK"):
        return "not an .npz file (not a zip archive)" if head else "an empty file, not an .npz archive"
    if "pickle" in str(error).lower():
        return "holds object (pickled) arrays, which are not read"
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"a damaged or truncated .npz archive ({said})"


def load_callable(spec: str) -> Pair:
    """Call ``module:function`` (the current folder is importable) and return ``(train, val)``.

    The function returns the training data, or a ``(train, val)`` pair of them; each is a Dataset or what
    ``gdlab.fit`` takes in memory: ``(X, y)``, ``((u, v), y)``, ``(u, v, y)`` or a dict of tensors with a target key.
    """
    obj = resolve(spec, "data")
    made = call_user(spec, obj, "data") if callable(obj) and not isinstance(obj, Dataset) else obj
    is_pair = (isinstance(made, tuple) and len(made) == 2 and not isinstance(made[1], torch.Tensor)
               and all(p is None or isinstance(p, (Dataset, tuple, list, dict)) for p in made))
    pair = made if is_pair else (made, None)
    out = []
    for part in pair:
        if part is None or isinstance(part, Dataset):
            out.append(part)
            continue
        try:
            tensors = as_tensor_data(part)
        except InvalidParameter:
            raise InvalidParameter("data", spec, "a function returning a torch Dataset, an (X, y) pair of tensors, "
                                   f"a dict of tensors, or a (train, val) pair of them; got {type(part).__name__}"
                                   ) from None
        out.append(tensors)
    return out[0], out[1]
