"""Restarts: a run that settled at a minimum (``local_minimum``) is trained again from new initial points, as
one population, and the best kept (``fit(remedy="auto", restarts=N)``).

Example:
    >>> make, why = fresh_models(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)))
    >>> [p.shape for p in make().parameters()] == [(4, 2), (4,), (1, 4), (1,)]
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from gdlab import population
from gdlab.doctor.findings import Remedy

__all__ = ["fresh_models", "restart_remedy"]


def fresh_models(model: torch.nn.Module) -> tuple[Callable[[], torch.nn.Module] | None, str]:
    """A factory of copies of ``model`` with new initial parameters: each module holding trained parameters
    re-draws them with its ``reset_parameters`` (from torch's global generator); frozen parameters (pretrained
    layers) keep their values. Or None and the reason it cannot be made.

    Example:
        >>> make, why = fresh_models(torch.nn.Linear(2, 1))
        >>> make is not None and isinstance(make(), torch.nn.Linear), why
        (True, '')
        >>> bare = torch.nn.Module()
        >>> bare.w = torch.nn.Parameter(torch.zeros(1))
        >>> fresh_models(bare)[1]
        'Module has no reset_parameters()'
    """
    owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    missing = sorted({type(m).__name__ for m in owners if not callable(getattr(m, "reset_parameters", None))})
    if missing:
        return None, f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no reset_parameters()"
    template = copy.deepcopy(model).cpu()

    def make() -> torch.nn.Module:
        fresh = copy.deepcopy(template)
        for m in fresh.modules():
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                m.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            for p, kept in zip(fresh.parameters(), template.parameters()):
                if not kept.requires_grad:
                    p.copy_(kept)
        return fresh

    return make, ""


def restart_remedy(result_score: float, model: torch.nn.Module, train: Any, *, restarts: int, seed: int,
                   model_fn: Callable[[], torch.nn.Module] | None, optimizer: Any, hyper: dict[str, Any],
                   batch_size: Any, steps: int, loss: Any, val: Any, device: Any, progress: bool,
                   step: int, schedule: Any = None, target_key: str | None = None
                   ) -> tuple[Remedy, torch.nn.Module | None]:
    """``local_minimum`` with ``remedy="auto"`` and restarts asked for: train ``restarts`` new initial points as
    one population (seeds ``seed + 1`` on, the same optimizer, settings and number of steps) and return the
    record and the best restart's model when it beats the run's ``result_score`` (validation loss where there
    is validation data, else the last epoch's train loss), else None.

    Example:
        >>> record, model = restart_remedy(0.44, torch.nn.Linear(1, 1), None, restarts=4, seed=0, model_fn=None,
        ...                                optimizer=object(), hyper={}, batch_size=32, steps=100, loss="auto",
        ...                                val=None, device="cpu", progress=False, step=100)
        >>> record.reason, model
        ('the run settled at a minimum, but restarts could not be made: a restart needs a named optimizer', None)
    """
    seeds = [seed + 1 + i for i in range(restarts)]
    make: Callable[[], torch.nn.Module] | None = None
    if not isinstance(optimizer, str):
        why = "a restart needs a named optimizer"
    elif schedule is not None:
        why = "the run has a learning-rate schedule, which populations do not follow: restarts would not train " \
              "as it did (run gdlab restarts to compare without it)"
    else:
        make, why = (model_fn, "") if model_fn is not None else fresh_models(model)
    if make is None:
        return Remedy(step, "restarts", {"restarts": 0, "kept": False},
                      f"the run settled at a minimum, but restarts could not be made: {why}"), None
    assert make is not None
    try:
        pop = population.train(make, train, seeds=seeds, optimizer=optimizer, hyper=hyper, batch_size=batch_size,
                               target_key=target_key,
                               steps=steps, val=val, loss=loss, device=device, progress=progress)
    except (Exception, KeyboardInterrupt) as error:  # the run itself is done: keep it, say what happened
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
        return Remedy(step, "restarts", {"restarts": restarts, "seeds": seeds, "kept": False},
                      f"the run settled at a minimum; the restarts were {what}; the run's model is kept"), None
    scores = pop.score()
    best = min(range(len(scores)), key=lambda i: scores[i])
    kept = scores[best] < result_score
    params = {"restarts": restarts, "seeds": seeds, "best_seed": seeds[best], "loss": scores[best],
              "from_loss": result_score, "losses": scores, "kept": kept}
    what = "validation loss" if val is not None else "train loss"
    outcome = (f"kept the best restart (seed {seeds[best]}, {what} {scores[best]:.4g})" if kept else
               f"kept the run: the best restart reached {scores[best]:.4g}")
    reason = (f"the run settled at a minimum ({what} {result_score:.4g}); {restarts} restarts trained as one "
              f"population: {outcome}")
    return Remedy(step, "restarts", params, reason), (pop.member(best) if kept else None)
