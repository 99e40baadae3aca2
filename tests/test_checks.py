"""Trust on real runs (issue 14): the data checked first, sizes checked before work, the real cause in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset
from typer.testing import CliRunner

import gdlab
from gdlab import models, resources
from gdlab.errors import DataError, InvalidParameter, ModelError, StoreError, check_seed
from gdlab.lab.explain import MAX_DRAWN, explain
from gdlab.problem import Problem
from gdlab.resolve import UserCodeError, call_user

GB = 10**9


class Rows(Dataset):
    """A Dataset (served by a DataLoader) whose row ``bad`` holds a NaN in its inputs."""

    def __init__(self, n: int, bad: int) -> None:
        self.X = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
        self.X[bad, 2] = float("nan")
        self.y = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[i], self.y[i]


def test_non_finite_inputs_and_targets_are_a_data_error_before_training() -> None:
    X, y = torch.randn(50, 4), torch.arange(50) % 3
    X[[1, 2, 3], 0] = float("nan")
    X[4, 1] = float("-inf")
    with pytest.raises(DataError, match=r"^the training data has 4 non-finite values in its inputs \(NaN or inf\): "
                       "expected finite numbers; clean or impute them$"):
        gdlab.fit(torch.nn.Linear(4, 3), (X, y), epochs=1, progress=False)
    inputs = {"ids": torch.zeros(50, 5, dtype=torch.long), "scale": torch.ones(50, 2)}
    inputs["scale"][9, 1] = float("nan")
    with pytest.raises(DataError, match="1 non-finite value in its inputs"):  # structures: every float leaf
        Problem.make(torch.nn.Linear(2, 3), (inputs, y), device="cpu")
    target = torch.randn(50, 1)
    target[0] = float("inf")
    with pytest.raises(DataError, match="1 non-finite value in its targets"):
        gdlab.fit(torch.nn.Linear(4, 1), (torch.randn(50, 4), target), epochs=1, progress=False)
    val = (torch.full((10, 4), float("nan")), torch.arange(10) % 3)
    with pytest.raises(DataError, match="the validation data has 40 non-finite values in its inputs"):
        gdlab.fit(torch.nn.Linear(4, 3), (torch.randn(50, 4), y), val=val, epochs=1, progress=False)


def test_a_dataset_is_checked_on_a_sample_spread_over_it() -> None:
    with pytest.raises(DataError, match=r"1 non-finite value in its inputs \(NaN or inf\) \(in 256 of its 1,000 "
                       r"samples checked\)"):
        Problem.make(torch.nn.Linear(3, 2), Rows(1000, bad=0), device="cpu")
    Problem.make(torch.nn.Linear(3, 2), Rows(1000, bad=5), device="cpu")  # a row the sample does not read
    with pytest.raises(DataError, match="in its inputs \\(NaN or inf\\): expected"):  # a small one is read whole
        Problem.make(torch.nn.Linear(3, 2), Rows(200, bad=199), device="cpu")


def test_one_class_or_one_sample_is_refused() -> None:
    with pytest.raises(DataError, match=r"targets hold one class \(2\) in all 8 samples: expected at least 2 classes"):
        gdlab.fit(torch.nn.Linear(3, 3), (torch.randn(8, 3), torch.full((8,), 2)), epochs=1, progress=False)
    with pytest.raises(DataError, match="has 1 sample: expected at least 2"):
        gdlab.fit(torch.nn.Linear(3, 1), (torch.randn(1, 3), torch.ones(1, 1)), epochs=1, progress=False)
    # validation data may be small and hold one class
    Problem.make(torch.nn.Linear(3, 2), (torch.randn(8, 3), torch.arange(8) % 2),
                 val=(torch.randn(1, 3), torch.zeros(1, dtype=torch.long)), device="cpu")


def test_models_without_parameters_or_on_the_meta_device_are_one_line() -> None:
    with pytest.raises(ModelError, match=r"the model \(Sequential\) has no parameters to train"):
        gdlab.fit(torch.nn.Sequential(torch.nn.ReLU()), (torch.randn(8, 3), torch.randn(8, 3)), progress=False)
    with torch.device("meta"):
        meta = torch.nn.Linear(3, 2)
    with pytest.raises(ModelError, match="8 values on the meta device"):
        gdlab.fit(meta, (torch.randn(8, 3), torch.arange(8) % 2), progress=False)


def test_a_built_in_model_is_refused_before_it_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "free_memory", lambda device=None: 24 * GB)
    params, need = models.estimate("mlp", 2, 2, hidden=(100_000_000,))
    assert params == 500_000_002 and need > 24 * GB
    with pytest.raises(ModelError, match=r"^model 'mlp' with hidden \[100000000\] \(500,000,002 parameters, 2 inputs, "
                       r"2 outputs\) needs about 59.2 GB of memory but 24.0 GB is free on this machine"):
        models.build("mlp", in_features=2, out_features=2, hidden=(100_000_000,))
    built = models.build("mlp", in_features=2, out_features=2, hidden=(1000,))
    assert sum(p.numel() for p in built.parameters()) == models.estimate("mlp", 2, 2, hidden=(1000,))[0]
    cnn = models.build("cnn", in_features=64, out_features=10, image_shape=(1, 8, 8))
    assert sum(p.numel() for p in cnn.parameters()) == models.estimate("cnn", 64, 10, image_shape=(1, 8, 8))[0]
    monkeypatch.setattr(resources, "free_memory", lambda device=None: None)  # unknown: nothing refused
    resources.check_fits("anything", 10**18)


def test_free_memory_is_read_from_meminfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    monkeypatch.setattr(resources, "MEMINFO", tmp_path / "meminfo")
    assert resources.free_memory() == 1000 * 1024
    with pytest.raises(DataError, match=r"needs about 2.0 MB of memory but 1.0 MB is free"):
        resources.check_fits("it", 2 * 10**6, error=DataError)


def test_seeds_are_bounded_to_what_torch_takes() -> None:
    assert check_seed(2**63 - 1) == 2**63 - 1
    for bad in (2**63, 2**70, -1, 1.5, True):
        with pytest.raises(InvalidParameter, match="expected an integer from 0 to 2"):
            check_seed(bad)
    with pytest.raises(InvalidParameter, match=f"invalid seed {2**70}"):
        gdlab.fit(torch.nn.Linear(2, 1), (torch.randn(4, 2), torch.randn(4, 1)), seed=2**70, progress=False)


def test_population_size_is_capped() -> None:
    from gdlab.sweeps import sweep

    data = (torch.randn(8, 2), torch.arange(8) % 2)
    with pytest.raises(InvalidParameter, match="invalid seeds 100000: expected 1 to 10,000 members"):
        sweep(lambda: torch.nn.Linear(2, 2), data, seeds=100_000, progress=False)
    with pytest.raises(InvalidParameter, match="invalid sweep size 20000"):
        sweep(lambda: torch.nn.Linear(2, 2), data, lr=[0.1] * 1000, seeds=20, progress=False)


def test_an_error_in_the_users_function_names_their_file_and_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.py").write_text("import torch\n\n\ndef helper():\n    return {}['x']\n\n\ndef model():\n"
                                      "    return helper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mine  # type: ignore[import-not-found]

    with pytest.raises(UserCodeError, match=r"^mine:model raised KeyError: 'x' \(mine.py, line 5\)$"):
        call_user("mine:model", mine.model, "model")

    def fine(in_features: int, width: int = 3) -> int:
        return in_features * width

    assert call_user("x:fine", fine, "model", {"in_features": 2, "out_features": 5}) == 6


def test_explain_caps_its_graph_and_says_why_it_is_not_drawn(tmp_path: Path) -> None:
    graph = explain("+".join(["sin(x)"] * 200), {"x": 1.0})
    assert len(graph.nodes) == 400 and graph.too_large_to_draw is not None and "400 nodes" in graph.too_large_to_draw
    with pytest.raises(InvalidParameter, match=f"at most {MAX_DRAWN} nodes to draw"):
        graph.plot(tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
    with pytest.raises(InvalidParameter) as caught:
        explain("x ? " + "y" * 10_000, {"x": 1.0})
    assert len(str(caught.value)) < 200
    with pytest.raises(InvalidParameter, match="levels of nesting"):
        explain("+".join(["sin(x)"] * 600)[:3999], {"x": 1.0})


def test_explain_command_skips_an_unreadable_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gdlab.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["explain", "+".join(["sin(x)"] * 100), "--at", "x=1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["plot"] is None and "200 nodes" in payload["not_drawn"] and not (tmp_path / "gdlab-runs").exists()
    shown = CliRunner().invoke(app, ["explain", "+".join(["sin(x)"] * 100), "--at", "x=1"])
    assert shown.exit_code == 0 and "note: not drawn: the graph has 200 nodes" in shown.stderr


def test_plot_on_a_damaged_store_blames_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gdlab.cli import app
    from gdlab.store import Store

    monkeypatch.chdir(tmp_path)
    Store("s").create_run({"data": "x"}, name="kept")

    def damaged(self: Store, run_id: str) -> None:
        raise StoreError(f"store '{self.root}' could not be read: database disk image is malformed")

    monkeypatch.setattr(Store, "history", damaged)
    for command in ("plot", "gradflow"):
        result = CliRunner().invoke(app, [command, "kept", "--store", "s", "--out", "p.png"])
        assert result.exit_code == 2
        assert result.stderr.strip() == "error: store 's' could not be read: database disk image is malformed"
