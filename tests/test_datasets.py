from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gdlab.data import TensorData, datasets
from gdlab.errors import DataError, InvalidParameter, UnknownChoice


def test_seed_is_the_lecture_data_unscaled() -> None:
    train, val = datasets.load("seed")
    assert train.X.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert train.y.tolist() == [[12], [18], [11]]
    assert train.task == "regression" and val is None


def test_digits_is_scikit_learns_with_a_fixed_stratified_split() -> None:
    from sklearn.datasets import load_digits

    train, val = datasets.load("digits")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert train.num_classes == 10 and train.image_shape == (1, 8, 8)
    assert float(train.X.min()) == 0.0 and float(train.X.max()) == 1.0
    assert val.y.bincount().min() >= 35  # every class is in the validation split
    reference = load_digits()
    all_X = torch.cat([train.X, val.X]) * 16
    assert sorted(map(tuple, all_X.int().tolist())) == sorted(map(tuple, reference.data.astype(int).tolist()))
    again, _ = datasets.load("digits", seed=5)
    assert torch.equal(train.X, again.X)  # the split is fixed, whatever the seed


@pytest.mark.parametrize("name", ["moons", "spirals", "linear"])
def test_synthetic_sets_are_deterministic_from_seed(name: str) -> None:
    a_train, a_val = datasets.load(name, seed=3)
    b_train, _ = datasets.load(name, seed=3)
    c_train, _ = datasets.load(name, seed=4)
    assert torch.equal(a_train.X, b_train.X) and not torch.equal(a_train.X, c_train.X)
    assert len(a_train) + len(a_val) == 1000


def test_spirals_have_one_class_per_arm() -> None:
    train, _ = datasets.load("spirals", classes=4, n_samples=400)
    assert train.num_classes == 4 and set(train.y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("condition", [1.0, 10.0, 1000.0])
def test_linear_inputs_have_the_chosen_condition_number(condition: float) -> None:
    from gdlab.data.datasets import _linear

    train, val = _linear(condition=condition, val_fraction=0.5, seed=1)
    X = torch.cat([train.X, val.X]).double()
    assert torch.linalg.cond(X).item() == pytest.approx(condition, rel=1e-3)


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(UnknownChoice, match="unknown data 'digts': expected one of seed, digits, moons, spirals, "
                                            "linear, a .csv or .npz file, or module:function"):
        datasets.load("digts")


def test_unknown_builtin_option_is_named() -> None:
    with pytest.raises(InvalidParameter, match="invalid moons option 'colour'"):
        datasets.load("moons", colour=3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_regression_and_classification_inference(tmp_path: Path) -> None:
    reg = datasets.load(str(_write(tmp_path / "r.csv", "a,b,price\n1,2,10.5\n3,4,20.25\n")), target="price")[0]
    assert reg.task == "regression" and reg.X.tolist() == [[1, 2], [3, 4]] and reg.feature_names == ["a", "b"]
    cls = datasets.load(str(_write(tmp_path / "c.csv", "x,label\n0.5,3\n1.5,7\n2.5,3\n")), target="label")[0]
    assert cls.task == "classification" and cls.y.tolist() == [0, 1, 0] and cls.classes == [3.0, 7.0]
    text = datasets.load(str(_write(tmp_path / "t.csv", "x,kind\n1,cat\n2,dog\n")), target="kind")[0]
    assert text.classes == ["cat", "dog"] and text.num_classes == 2
    forced = datasets.load(str(tmp_path / "c.csv"), target="label", task="regression")[0]
    assert forced.task == "regression" and forced.y.tolist() == [[3.0], [7.0], [3.0]]


def test_file_is_used_whole_unless_validation_is_asked_for(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 2}" for i in range(1000))
    path = _write(tmp_path / "big.csv", "x,y\n" + rows + "\n")
    train, val = datasets.load(str(path), target="y")
    assert len(train) == 1000 and val is None
    train, val = datasets.load(str(path), target="y", val_split=0.1)
    assert (len(train), len(val)) == (900, 100)
    other = _write(tmp_path / "val.csv", "x,y\n5,1\n6,0\n")
    train, val = datasets.load(str(path), target="y", val=str(other))
    assert len(val) == 2 and val.task == "classification"


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("a,b\n1,2\n", "c", r"unknown target 'c': expected one of a, b"),
        ("a,b\n1,x\n", "a", r"line 2, column 'b': 'x' is not a number"),
        ("a,b\n1,2\n3,nan\n", "a", r"line 3, column 'b': nan is not finite"),
        ("a,b\n1,2\ninf,2\n", "b", r"line 3, column 'a': inf is not finite"),
        ("a,b\n1,\n", "a", r"line 2, column 'b': an empty cell is not a number"),
        ("a,b\n", "a", r"no data rows"),
        ("", "a", r"the file is empty"),
        ("a,b\n1,2,3\n", "a", r"line 2: 3 cells: expected 2"),
        ("a,b\n1,2.5\n2,nan\n", "b", r"line 3, column 'b': nan is not finite"),
    ],
)
def test_bad_csv_names_row_and_column(tmp_path: Path, content: str, target: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises((DataError, InvalidParameter), match=message):
        datasets.load(str(path), target=target)


def test_csv_needs_a_target_and_an_existing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(InvalidParameter, match=r"missing target: expected the column of d.csv to predict \(--target "
                                               r"NAME\), one of a, b"):
        datasets.load(str(path))
    with pytest.raises(DataError, match="data file '.*missing.csv' not found"):
        datasets.load(str(tmp_path / "missing.csv"), target="a")


def test_npz_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(12, dtype=np.float32).reshape(6, 2), y=np.array([0, 1, 2, 0, 1, 2]))
    train, _ = datasets.load(str(path))
    assert train.task == "classification" and train.num_classes == 3 and train.X.shape == (6, 2)
    np.savez(path, X=np.array([[1.0], [np.inf]]), y=np.array([1.0, 2.0]))
    with pytest.raises(DataError, match=r"X\[1, 0\] is inf"):
        datasets.load(str(path))
    np.savez(path, features=np.zeros((2, 2)))
    with pytest.raises(DataError, match="no array 'X'"):
        datasets.load(str(path))


def test_module_function_serves_the_lecture_dataset_unchanged(user_modules: Path) -> None:
    train, val = datasets.load("lecture:CustomDataset")
    assert type(train).__name__ == "CustomDataset" and val is None and len(train) == 3
    train, val = datasets.load("lecture:CustomDataset", val_split=1 / 3)
    assert (len(train), len(val)) == (2, 1)
    with pytest.raises(InvalidParameter, match="invalid data 'lecture:nope': expected a name defined"):
        datasets.load("lecture:nope")
    with pytest.raises(InvalidParameter, match="expected an importable module"):
        datasets.load("no_such_module_xyz:make")


def test_tensor_data_round_trip_of_builtin_is_float32() -> None:
    train, _ = datasets.load("linear")
    assert isinstance(train, TensorData) and train.X.dtype == torch.float32


# -- issue 24: archives checked before they are read, real numbers only, one line naming the file ---------------


def test_npz_sizes_are_checked_before_any_array_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hostile_files
    from gdlab import resources

    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("an array was read"))
    hostile_files.bomb(tmp_path / "bomb.npz")
    monkeypatch.setattr(resources, "free_memory", lambda device=None: 10**9)
    with pytest.raises(DataError, match=r"bomb.npz \(arrays X, y: 8.8 TB uncompressed\) needs about 26.4 TB of "
                                        r"memory but 1.0 GB is free on this machine: expected something that fits"):
        datasets.load(str(tmp_path / "bomb.npz"))
    np.savez_compressed(tmp_path / "zeros.npz", X=np.zeros((1000, 100)), y=np.zeros(1000))  # 808 kB, a few kB zipped
    monkeypatch.setattr(resources, "free_memory", lambda device=None: 10**6)
    with pytest.raises(DataError, match=r"zeros.npz \(arrays X, y: 808.0 kB uncompressed\) needs about 2.4 MB"):
        datasets.load(str(tmp_path / "zeros.npz"))
    with pytest.raises(DataError, match=r"zeros.npz \(arrays X: 800.0 kB uncompressed\) needs about 2.4 MB"):
        datasets.read_npz(tmp_path / "zeros.npz", ("X",))


def test_npz_reads_real_numbers_only_and_names_the_file(tmp_path: Path) -> None:
    import hostile_files

    hostile_files.write(tmp_path)
    for name, message in (
        ("truncated.npz", "a damaged or truncated .npz archive"),
        ("renamed.npz", "a single .npy array, not an .npz archive"),
        ("complex.npz", "array 'X' has dtype complex64: expected real numbers (an integer or floating-point dtype); "
                        "complex values are not cast"),
        ("objects.npz", "array 'X' holds objects (pickled), which are not read"),
        ("liar.npz", "array 'X' declares shape (1048576, 1048576) (8.8 TB) but holds 64 B: a damaged .npz archive"),
    ):
        with pytest.raises(DataError) as caught:
            datasets.load(str(tmp_path / name))
        assert str(caught.value).startswith(f"{tmp_path / name}: {message}") and "\n" not in str(caught.value)
    np.savez(tmp_path / "flags.npz", X=np.ones((3, 2), dtype=bool), y=np.zeros(3))
    with pytest.raises(DataError, match="array 'X' has dtype bool: expected real numbers"):
        datasets.load(str(tmp_path / "flags.npz"))
    np.savez(tmp_path / "ok.npz", X=np.ones((3, 2), dtype=np.float16), y=np.array([0, 1, 0], dtype=np.uint8))
    arrays = datasets.read_npz(tmp_path / "ok.npz", ("X",), ("y", "w"))
    assert sorted(arrays) == ["X", "y"] and arrays["X"].dtype == np.float16 and arrays["y"].tolist() == [0, 1, 0]


def test_source_kind_is_how_load_reads_a_name(tmp_path: Path) -> None:
    (tmp_path / "odd:name").write_text("x")
    assert [datasets.source_kind(n) for n in ("moons", "d.csv", "d.NPZ", "mod:fn", "digts")] == \
        ["builtin", "file", "file", "code", "unknown"]
    assert datasets.source_kind(str(tmp_path / "odd:name")) == "file"  # a file that exists is never imported


def test_every_numpy_read_in_the_source_refuses_pickles() -> None:
    """np.load and np.lib.format.read_array unpickle object arrays unless told not to: every call in src/gdlab
    passes allow_pickle=False (read from the source, so a new call cannot slip in)."""
    import ast

    source = Path(__file__).resolve().parents[1] / "src" / "gdlab"
    calls = []
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "load", "read_array") and ast.unparse(node.func.value) in ("np", "numpy", "np.lib.format"):
                calls.append((path.name, node.lineno, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert calls, "no numpy read found: the test reads the wrong folder"
    assert all(keywords.get("allow_pickle") == "False" for _, _, keywords in calls), calls
