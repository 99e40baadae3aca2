"""Populations: M members of one architecture trained at once, as one vectorised computation.

Members differ by initialisation seed, data order and any optimizer hyperparameter. Their parameters are stacked
along a leading ``[M]`` axis (``torch.func.stack_module_state``); the forward pass is ``vmap``-ed over members
(``functional_call`` on a template), one backward runs over the summed per-member losses (each member's
gradient depends on its own loss only), and gdlab's optimizer transforms step all members with ``[M]``-shaped
hyperparameters. A member with seed ``s`` of a model without randomness of its own is, to rounding, the run::

    torch.manual_seed(s); m = model_fn(); gdlab.fit(m, train, seed=s, ...)

With dropout (or other randomness drawn in the forward pass) it is not: vmap draws all members' masks at once,
from a stream other than the one that run draws from, so a member is a run as good as it (statistically
equivalent: over 8 seeds the mean final losses agree within noise), not a copy of it. A model vmap cannot serve
(an LSTM, data-dependent control flow) is trained one member at a time through ``fit``'s loop, and each member
is then that run exactly, dropout included.

A member whose loss or gradient stops being finite, or whose loss passes 1000x its first, is frozen (its learning
rate set to zero, its gradients to zero) and marked diverged; the others go on untouched.

The modules: :mod:`~gdlab.population.run` (:func:`train`: checks, builds, and the one-by-one fallback),
:mod:`~gdlab.population.members` (:class:`Population`, :func:`member_hyperparams`),
:mod:`~gdlab.population.vectorized` (the loop over stacked members, successive halving) and
:mod:`~gdlab.population.forward` (all members' losses through vmap or batched matrix products; evaluation).

Example:
    >>> import torch
    >>> X = torch.randn(64, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> pop = train(lambda: torch.nn.Linear(3, 1), (X, y), seeds=[0, 1], optimizer="sgd",
    ...             hyper={"lr": [0.1, 1e-4]}, steps=50, progress=False)
    >>> pop.train_loss[0] < pop.train_loss[1]      # the larger step size got further in 50 steps
    True
"""

from gdlab.population.members import BLOWUP, Population, member_hyperparams
from gdlab.population.run import train

__all__ = [
    "BLOWUP",
    "Population",
    "member_hyperparams",
    "train",
]
