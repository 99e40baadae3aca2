"""Batches as structures (gdlab.data.structure): token ids, several inputs, dict samples, models computing their
own loss, through fit, populations, lr_find, lr="auto", landscapes and the instruments."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import gdlab
from gdlab import population
from gdlab.data import TensorData, as_tensor_data, structure
from gdlab.errors import DataError, ModelError
from gdlab.problem import Problem


# -- the module's own functions ------------------------------------------------------------------------------
def test_split_takes_the_forms_users_bring() -> None:
    u, v, y = torch.zeros(4, 2), torch.ones(4, 3), torch.arange(4)
    assert structure.split((u, y))[0] is u
    inputs, target = structure.split((u, v, y))  # TensorDataset(*inputs, target)
    assert isinstance(inputs, tuple) and inputs[1] is v and target is y
    inputs, target = structure.split(((u, v), y))
    assert inputs == (u, v) and target is y
    inputs, target = structure.split({"x": u, "label": y})
    assert set(inputs) == {"x"} and target is y
    inputs, target = structure.split({"ids": u, "mask": v, "target": y}, target_key="target")
    assert set(inputs) == {"ids", "mask"}
    with pytest.raises(DataError, match=r"keys \['ids', 'mask'\]: expected its target under 'y' or 'label' or "
                                        "'labels'"):
        structure.split({"ids": u, "mask": v})
    with pytest.raises(DataError, match="a sample is a Tensor"):
        structure.split(u)


def test_call_dispatches_on_the_inputs() -> None:
    seen: list[Any] = []

    def model(*args: Any, **kwargs: Any) -> None:
        seen.append((len(args), sorted(kwargs)))

    structure.call(model, torch.zeros(1))
    structure.call(model, (torch.zeros(1), torch.zeros(1)))
    structure.call(model, {"a": torch.zeros(1)})
    structure.call(model, {"a": torch.zeros(1)}, torch.zeros(1), "labels")
    structure.call(model, (torch.zeros(1),), torch.zeros(1))
    assert seen == [(1, []), (2, []), (0, ["a"]), (0, ["a", "labels"]), (2, [])]


def test_to_keeps_integer_and_bool_inputs() -> None:
    tree = {"ids": torch.zeros(2, 3, dtype=torch.long), "mask": torch.ones(2, 3, dtype=torch.bool),
            "pixels": torch.zeros(2, 4, dtype=torch.float64)}
    moved = structure.to(tree, torch.device("cpu"), torch.bfloat16)
    assert [moved[k].dtype for k in tree] == [torch.long, torch.bool, torch.bfloat16]


def test_describe_and_float_features() -> None:
    x = (torch.zeros(32, 10, dtype=torch.long), torch.zeros(32, 4))
    text = structure.describe(x, torch.zeros(32, dtype=torch.long))
    assert text == "inputs (tensor[32, 10] int64, tensor[32, 4] float32), target tensor[32] int64"
    assert structure.float_features(x).shape == (32, 4)
    assert structure.float_features(torch.zeros(3, 2, dtype=torch.long)) is None


def test_tensor_data_holds_structures() -> None:
    ids, dense, y = torch.randint(0, 9, (10, 5)), torch.randn(10, 2), torch.arange(10) % 3
    data = as_tensor_data({"ids": ids, "dense": dense, "labels": y})
    assert isinstance(data, TensorData) and data.target_key == "labels" and data.num_classes == 3
    assert data.X["ids"].dtype == torch.long and data.n_features == 7
    part = data.subset(torch.tensor([1, 3]))
    assert torch.equal(part.X["ids"], ids[[1, 3]]) and torch.equal(part.y, y[[1, 3]])
    data3 = as_tensor_data(TensorDataset(ids, dense, y))
    assert isinstance(data3.X, tuple) and len(data3.X) == 2
    with pytest.raises(DataError, match="different numbers of samples"):
        TensorData((ids, dense[:4]), y)
    # standardize scales floats only
    (scaled,) = gdlab.data.standardize(data3)[:1]
    assert torch.equal(scaled.X[0], ids) and scaled.X[1].mean().abs() < 1e-5


# -- models practitioners bring ---------------------------------------------------------------------------------
class TokenClassifier(nn.Module):
    """Mean of token embeddings, then a linear head: the class is whether most tokens are below 10."""

    def __init__(self, vocab: int = 20, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def tokens(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 12), generator=g)
    return ids, ((ids < 10).sum(1) > 6).long()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(2, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.a(u) + self.b(v)))


def two_inputs(n: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    return u, v, (u.sum(1, keepdim=True) - v[:, :1])


class DictSamples(Dataset):
    """Hugging Face style samples: ``{"x": features, "label": class}``."""

    def __init__(self, n: int = 120) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 4, generator=g)
        self.label = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "label": int(self.label[i])}


class Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OwnLoss(nn.Module):
    """A model computing its own loss when given labels, returning an object with .loss and .logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> SimpleNamespace:
        weights = attention_mask.unsqueeze(-1).float()
        logits = self.head((self.emb(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def own_loss_data() -> dict[str, torch.Tensor]:
    ids, y = tokens(200, seed=3)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": y}


def test_embedding_model_learns_from_token_ids() -> None:
    ids, y = tokens()
    torch.manual_seed(0)
    result = gdlab.fit(TokenClassifier(), (ids, y), val=tokens(128, seed=9), optimizer="adam", lr=0.05, epochs=8,
                       progress=False, instruments="full")
    assert result.final["val_accuracy"] > 0.85
    steps = result.history.steps
    assert any(c.startswith("noise_scale") for c in steps.columns)  # per-sample gradients served token ids


def test_two_inputs_by_tensor_dataset_and_by_pair() -> None:
    u, v, y = two_inputs()
    first = gdlab.fit(_seeded(TwoInputs), TensorDataset(u, v, y), epochs=3, progress=False, instruments="none")
    second = gdlab.fit(_seeded(TwoInputs), ((u, v), y), epochs=3, progress=False, instruments="none")
    assert first.final["train_loss"] == pytest.approx(second.final["train_loss"])
    assert first.history.epochs["train_loss"][-1] < first.history.epochs["train_loss"][0]


def test_dict_samples_through_a_dataloader() -> None:
    result = gdlab.fit(_seeded(Keyword), DictSamples(), val=DictSamples(40), lr=0.1, epochs=5, progress=False)
    assert result.final["val_accuracy"] > 0.8


def test_a_model_that_computes_its_own_loss() -> None:
    data = own_loss_data()
    result = gdlab.fit(_seeded(OwnLoss), data, val=data, loss="model", optimizer="adam", lr=0.05, epochs=5,
                       progress=False)
    assert result.final["val_loss"] < 0.5
    with pytest.raises(ModelError, match=r"takes 2 positional arguments but 3 were given \(loss='model' passes the "
                                         r"target to the model too\)"):
        gdlab.fit(TokenClassifier(), tokens(), loss="model", progress=False)

    class Logits(TokenClassifier):
        def forward(self, ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            return super().forward(ids)

    with pytest.raises(ModelError, match=r"loss='model' but the model returned a tensor of shape \[2, 2\]"):
        gdlab.fit(Logits(), tokens(), loss="model", progress=False)


def test_population_lr_find_auto_and_landscape_take_structures() -> None:
    ids, y = tokens()
    pop = population.train(TokenClassifier, (ids, y), seeds=[0, 1, 2], optimizer="adam", hyper={"lr": 0.05},
                           epochs=2, progress=False, vectorize=True)
    assert all(loss < 0.69 for loss in pop.train_loss)
    # members are the lone runs
    torch.manual_seed(1)
    lone = gdlab.fit(TokenClassifier(), (ids, y), optimizer="adam", lr=0.05, epochs=2, seed=1, progress=False,
                     instruments="none", doctor=False)
    assert pop.train_loss[1] == pytest.approx(lone.final["train_loss"], rel=1e-4)
    data = own_loss_data()
    own = population.train(OwnLoss, data, seeds=[0, 1], optimizer="adam", hyper={"lr": 0.05}, loss="model",
                           epochs=2, progress=False, vectorize=True)
    assert all(loss < 0.69 for loss in own.train_loss)
    found = gdlab.lr_find(_seeded(TwoInputs), TensorDataset(*two_inputs()), num_iter=30, progress=False)
    assert found.lrs and found.suggestions["valley"] > 0
    auto = gdlab.fit(_seeded(TokenClassifier), (ids, y), lr="auto", epochs=3, progress=False)
    assert auto.final["train_loss"] < 0.6
    plane = gdlab.landscape.plane(_seeded(Keyword), DictSamples(), steps=3, progress=False)
    assert plane.losses.shape == (3, 3) and torch.isfinite(plane.losses).all()


def test_a_model_that_rejects_the_batch_is_told_why() -> None:
    ids, y = tokens(16)
    with pytest.raises(ModelError) as error:
        gdlab.fit(nn.Linear(12, 2), (ids, y), progress=False)
    text = str(error.value)
    assert "\n" not in text and "inputs tensor[2, 12] int64, target tensor[2] int64" in text and "dtype" in text
    u, v, y = two_inputs(8)
    with pytest.raises(ModelError, match=r"argument.*; the batch is inputs \(tensor\[2, 3\] float32, "
                                         r"tensor\[2, 2\] float32\)"):
        gdlab.fit(Keyword(), TensorDataset(u, v, y), progress=False)


def test_dict_sample_without_a_target_names_its_keys() -> None:
    with pytest.raises(DataError, match=r"keys \['a', 'b'\]"):
        Problem.make(Keyword(), {"a": torch.zeros(4, 4), "b": torch.zeros(4, 4)}, device="cpu")
    data = {"input": torch.zeros(4, 4), "t": torch.arange(4) % 2}
    problem = Problem.make(nn.Linear(4, 2), data, device="cpu", target_key="t")  # nn.Linear.forward(input)
    assert problem.task == "classification" and problem.source.target_key == "t"


def test_a_dict_of_one_input_reaches_a_positional_forward() -> None:
    """Issue 28: ``{"x": ..., "label": ...}`` with a plain ``nn.Sequential`` (``forward(input)``) is called
    ``model(x)``, in fit, its instruments' per-sample pass and a vectorized population; a forward that names the key,
    takes ``**kwargs`` or needs more than one input keeps keywords."""
    class HF(nn.Module):  # Hugging Face style: everything by keyword, all optional
        def forward(self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None) -> Any:
            return input_ids

    class Anything(nn.Module):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return args, kwargs

    class KeywordOnly(nn.Module):
        def forward(self, *, x: Any) -> Any:
            return x

    def sequential() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    rule = structure.positional_only_input
    assert rule(sequential(), "x") and rule(nn.DataParallel(sequential()), "x")
    assert rule(structure.functional(sequential().to("meta"), ({}, {})), "x")  # a population's member, looked through
    assert rule(HF(), "ids")  # HF's first input, under a key it does not name
    assert not rule(Keyword(), "x") and not rule(HF(), "input_ids") and not rule(Anything(), "x")
    assert not rule(KeywordOnly(), "z") and not rule(TwoInputs(), "u") and not rule(TwoInputs(), "w")
    assert structure.call_args({"x": torch.zeros(1)}, model=sequential())[1] == {}
    assert structure.call(Anything(), {"x": torch.zeros(1)})[1].keys() == {"x"}
    assert structure.call_args({"x": torch.zeros(1)}, torch.zeros(1), model=sequential())[1].keys() == {"x", "labels"}

    result = gdlab.fit(_seeded(sequential), DictSamples(), val=DictSamples(40), lr=0.1, epochs=5, progress=False,
                       instruments="full")
    assert result.final["val_accuracy"] > 0.8
    assert any(not math.isnan(v) for v in result.history.steps["noise_scale"])  # the per-sample pass served it
    data = DictSamples(256)
    pop = population.train(sequential, {"x": data.x, "y": data.label}, seeds=[0, 1], hyper={"lr": 0.1}, epochs=3,
                           progress=False, vectorize=True)
    assert pop.vectorized and all(loss < 0.6 for loss in pop.train_loss)


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls()


# -- mixed precision ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_runs_the_forward_pass_under_autocast(precision: str) -> None:
    seen: list[torch.dtype] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            seen.append(out.dtype)
            return out

    torch.manual_seed(0)
    model = Spy()
    data = DictSamples(256)
    result = gdlab.fit(model, (data.x, data.label), val=(data.x, data.label), precision=precision, lr=0.1,
                       epochs=8, progress=False, instruments="full")
    half = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert half in seen
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: the parameters keep theirs
    assert result.final["val_accuracy"] > 0.9
    grads = result.history.steps["grad_norm"]
    assert all(g == g and g < 1e3 for g in grads)  # unscaled: a GradScaler's 65536 would show here


def test_precision_is_checked() -> None:
    with pytest.raises(gdlab.GdlabError, match="unknown precision 'fp8': expected one of 32, bf16-mixed, 16-mixed"):
        gdlab.fit(Keyword(), (torch.zeros(4, 4), torch.zeros(4, dtype=torch.long)), precision="fp8", progress=False)


def test_target_key_reaches_populations_sweeps_and_lr_auto() -> None:
    """A model computing its own loss from ``target=``: the key is passed back by its name everywhere."""

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = OwnLoss()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    target: torch.Tensor | None = None) -> SimpleNamespace:
            return self.inner(input_ids, attention_mask, labels=target)

    data = own_loss_data()
    data["target"] = data.pop("labels")
    swept = gdlab.sweep(lambda: Named(), data, lr=[0.05, 0.01], optimizer="adam", loss="model", target_key="target",
                        epochs=2, progress=False)
    assert all(row["train_loss"] < 0.69 for row in swept.table)
    torch.manual_seed(0)
    auto = gdlab.fit(Named(), data, loss="model", target_key="target", lr="auto", optimizer="adam", epochs=2,
                     progress=False)
    assert auto.final["train_loss"] < 0.69
    found = gdlab.lr_find(Named(), data, loss="model", target_key="target", num_iter=10, progress=False)
    assert len(found.lrs) == 10


def test_a_nan_in_a_served_batch_is_named_a_data_problem() -> None:
    """A Dataset is checked on a sample before training; a NaN it missed stops the run as a data problem when its
    batch makes the loss non-finite, and the doctor says inputs, not the learning rate."""

    class Holey(Dataset):
        def __init__(self) -> None:
            self.x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
            self.x[1, 2] = float("nan")  # between the samples the start-up check reads

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.x[i], int(self.x[i, 0] > 0)

    torch.manual_seed(0)
    result = gdlab.fit(nn.Linear(4, 2), Holey(), epochs=1,
                       progress=False, remedy="auto")
    assert result.stop_reason is not None and "1 NaN or inf values in its inputs" in result.stop_reason
    (finding,) = [f for f in result.findings if f.code == "non_finite"]
    assert finding.evidence["quantity"] == "inputs" and finding.evidence["count"] == 1
    assert finding.remedy["action"] == "check_data"
    assert not [r for r in result.remedies if r.action.startswith("rollback")]
