"""From a :class:`~gdlab.config.Config` to a trained, stored run: what ``gdlab train`` does, callable from Python.

Example:
    >>> from gdlab.config import Config
    >>> import tempfile
    >>> config = Config(data="seed", model="linear", optimizer="sgd", lr=0.001, batch_size="full",
    ...                 epochs=5, store=tempfile.mkdtemp())
    >>> result = run(config, progress=False)
    >>> result.plan.describe()
    '3 samples, full batch -> 1 iteration per epoch'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gdlab import distributed, models
from gdlab.config import Config
from gdlab.data import TensorData, as_tensor_data, datasets, standardize, structure
from gdlab.data.batching import dataset_size, read_sample
from gdlab.data.source import dataset_task
from gdlab.doctor import Remedy
from gdlab.errors import InvalidParameter, StoreError
from gdlab.loop import Callback, Result
from gdlab.records import ILL_CONDITIONED, input_scales, scale_ratio
from gdlab.store import Store
from gdlab.train import fit

__all__ = ["prepare", "load_data", "model_factory", "run", "resume"]

RECORDED = ("lr_selection", "doctor_meta")
"""Keys ``fit`` adds to a stored run's config: what ``lr="auto"`` chose, what the doctor reads."""


def prepare(config: Config) -> tuple[nn.Module, Any, Any]:
    """Load the data and build the model of ``config``: ``(model, train, val)``.

    The model is built right after ``torch.manual_seed(config.seed)``, so the seed fixes the initial point.
    """
    train, val = load_data(config)
    make = model_factory(config, train)
    torch.manual_seed(config.seed)
    return make(), train, val


def load_data(config: Config) -> tuple[Any, Any]:
    """``config``'s training and validation data (standardised when it says so)."""
    train, val = datasets.load(config.data, target=config.target, task=config.task,  # type: ignore[arg-type]
                               val=config.val, val_split=config.val_split, seed=config.seed,
                               **config.data_options)
    if config.standardize:
        tensors = as_tensor_data(train)
        if tensors is None:
            raise InvalidParameter("standardize", True, "in-memory data (a built-in, .csv or .npz file)")
        train, val = standardize(tensors, as_tensor_data(val) if val is not None else None)
    return train, val


def model_factory(config: Config, train: Any) -> Callable[[], nn.Module]:
    """A function building ``config``'s model for ``train`` (from the current torch seed): what sweeps call once
    per member after seeding it."""
    in_features, out_features, task, image_shape = _describe(train)

    def make() -> nn.Module:
        return models.build(config.model, in_features=in_features, out_features=out_features,
                            hidden=config.hidden, activation=config.activation, init=config.init,
                            image_shape=image_shape, task=task)

    make()  # a bad model setting fails here, once
    return make


def run(config: Config, *, progress: bool = True, callbacks: tuple[Callback, ...] = (),
        resume: str | None = None) -> Result:
    """Train as ``config`` says, recording the run in ``config.store``; ``resume`` continues a stored run."""
    model, train, val = prepare(config)  # bad data fails before a store is made
    standardized = None
    if config.remedy == "auto" and not config.standardize and resume is None:
        standardized = _standardize_if_ill_conditioned(train)
        if standardized is not None:  # the remedy that needs no change to the model: scale the inputs
            config = config.with_changes(standardize=True)
            model, train, val = prepare(config)
    store = Store(config.store) if distributed.is_main() else None  # data-parallel: rank 0 alone stores
    result = _fit(config, model, train, val, store, progress, callbacks, resume)
    if standardized is not None:
        remedy = Remedy(0, "standardize", {"scale_ratio": standardized},
                        f"the input features' scales differ {standardized:.0f}-fold: standardised them (mean 0, "
                        "std 1) before training")
        result.remedies.insert(0, remedy)
        if result.run_id is not None and store is not None:
            store.add_remedies(result.run_id, [remedy.to_dict()])
    return result


def _standardize_if_ill_conditioned(train: Any) -> float | None:
    """The scale ratio of in-memory inputs when it makes them ill-conditioned, else None."""
    tensors = as_tensor_data(train)
    if tensors is None:
        return None
    features = structure.float_features(tensors.X)
    if features is None:
        return None
    ratio = scale_ratio(input_scales(features))
    return ratio if ratio > ILL_CONDITIONED else None


def _fit(config: Config, model: nn.Module, train: Any, val: Any, store: Store | None, progress: bool,
         callbacks: tuple[Callback, ...], resume: str | None) -> Result:
    model_fn = model_factory(config, train) if config.restarts else None  # restarts rebuild the model per seed
    return fit(model, train, val=val, callbacks=callbacks, store=store, progress=progress, config=config.to_dict(),
               resume=resume, model_fn=model_fn, **config.fit_kwargs())


def resume(ref: str, *, store: str, epochs: int | None = None, steps: int | None = None,
           progress: bool = True, callbacks: tuple[Callback, ...] = (), model: str | None = None,
           data: str | None = None, trust_store: bool = False) -> Result:
    """Continue the stored run ``ref`` from its last checkpoint, optionally with a larger budget.

    A stored ``module:function`` model or data is imported only with consent (:func:`gdlab.resolve.consent`):
    ``model`` / ``data`` naming the stored spec again, or ``trust_store``; given, they must equal the stored ones
    (they consent, they replace nothing)."""
    from gdlab.resolve import consent

    run_ = Store(store, create=False).get(ref)
    if "data" not in run_.config:  # stored by gdlab.fit from Python: its model and data are the caller's
        raise StoreError(f"run {run_.id} was recorded by gdlab.fit from Python, not by gdlab train: resume it there "
                         "with fit(model, data, store=..., resume=...)")
    consent(run_.config, run_id=run_.id, given={"model": model, "data": data}, trust=trust_store,
            flags={"model": "--model", "data": "--data"}, must_match=("model", "data"))
    changes: dict[str, Any] = {"store": store}
    if epochs is not None or steps is not None:
        changes.update(epochs=epochs, steps=steps)
    recorded = {k: v for k, v in run_.config.items() if k not in RECORDED}  # written by fit, not settings
    config = Config.from_dict(recorded, source=f"stored config of run {run_.id}").with_changes(**changes)
    return run(config, progress=progress, callbacks=callbacks, resume=run_.id)


def _describe(train: Any) -> tuple[int, int, str, tuple[int, ...] | None]:
    """``(in_features, out_features, task, image_shape)`` of the training data."""
    tensors = as_tensor_data(train)
    if isinstance(tensors, TensorData):
        return tensors.n_features, tensors.n_outputs, tensors.task, tensors.image_shape
    n = dataset_size(train)  # a user's Dataset: an empty one, or one that fails to read, is one line
    x, y = structure.split(read_sample(train, 0))
    features = sum(int(torch.as_tensor(t).numel()) for t in structure.leaves(structure.tree_map(torch.as_tensor, x))
                   ) if not isinstance(x, torch.Tensor) else int(x.numel())
    task = dataset_task(train)
    if task != "classification":
        return features, int(y.numel()), task, None
    classes = 1 + max(int(structure.split(read_sample(train, i))[1]) for i in range(n))  # one pass over labels
    return features, classes, "classification", None
