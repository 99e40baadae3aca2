"""Instruments: small callbacks that measure each step and write the numbers into the run's ``History``.

Each instrument has a cost class:

- ``cheap`` (:class:`Cheap`, every step): the loss's moving average; the gradient norm per layer; the update-to-
  weight ratio per layer and overall; the parameter norm and the distance from the initial point; a non-finite
  flag for loss, gradients and parameters. One host sync per step for all of it.
- ``periodic`` (:class:`Periodic`, every ``every`` steps, on a sub-batch of the step's batch): per-sample gradients
  by ``torch.func`` give the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018,
  https://arxiv.org/abs/1812.06162) and the signal-to-noise ratio of the mini-batch gradient
  |G|^2 / (tr(Sigma) / batch); forward hooks give each activation's share of zero ReLU outputs, of dead units
  (zero for every sample) and of saturated tanh or sigmoid units; backward hooks give the norm of the gradient
  arriving at each layer's output (the lecture's global gradient), last layer to first.
- ``expensive`` (:class:`Expensive`, every ``every`` steps): the largest Hessian eigenvalue (power iteration on
  Hessian-vector products) against the stability limit 2/lr (2(1+beta)/lr with heavy-ball momentum beta), and
  the step size along the update direction (Cockpit's alpha: a 1-D quadratic fitted to the loss and directional
  derivative before and after the step; 0 = the step lands at its minimum, -1 = it barely moved, 1 = it
  overshot to the same height on the other side).

Columns are named ``name`` or ``name/layer`` (layers by their module names, as ``model.named_modules`` gives them;
a model that is itself a layer, a bare ``nn.Linear``, by its class name: ``grad_norm/Linear``).

The package, by what each part measures:

- :mod:`~gdlab.instruments.budget`: an instrument's cost class and the time budget that spaces its measurements;
- :mod:`~gdlab.instruments.layers`: the layers measured and their names (:func:`unwrap`);
- :mod:`~gdlab.instruments.movement`: gradient norms per layer and how far the weights move (:class:`Cheap`);
- :mod:`~gdlab.instruments.periodic`: the periodic statistics on a step's sub-batch (:class:`Periodic`), from
  :mod:`~gdlab.instruments.persample` (per-sample gradient math: noise scale, SNR),
  :mod:`~gdlab.instruments.activations` (dead and saturated units) and, with ranks,
  :mod:`~gdlab.instruments.pooling` (sums pooled over the ranks);
- :mod:`~gdlab.instruments.curvature`: sharpness and the step size along the update (:class:`Expensive`);
- :mod:`~gdlab.instruments.passes`: extra passes that leave no trace (buffers, random generators, the module).

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(64, 3); y = (X[:, 0] > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = gdlab.fit(model, (X, y), epochs=2, progress=False, instruments="default", doctor=False)
    >>> sorted(k for k in result.history.steps.columns if k.startswith("grad_norm/"))
    ['grad_norm/0', 'grad_norm/2']
"""

from __future__ import annotations

from collections.abc import Sequence

from gdlab.config import INSTRUMENT_LEVELS
from gdlab.errors import UnknownChoice
from gdlab.instruments.budget import Instrument
from gdlab.instruments.curvature import Expensive
from gdlab.instruments.layers import unwrap
from gdlab.instruments.movement import Cheap
from gdlab.instruments.periodic import Periodic

__all__ = ["Instrument", "Cheap", "Periodic", "Expensive", "LEVELS", "attach", "unwrap"]

LEVELS = INSTRUMENT_LEVELS  # named in config, the lowest layer, which checks the settings
"""What ``fit(instruments=...)`` takes: ``default`` is cheap + periodic, ``full`` adds expensive."""


def attach(level: str | Sequence[Instrument]) -> list[Instrument]:
    """The instruments of ``level`` (``none``, ``cheap``, ``default``, ``full``) or the ones given."""
    if not isinstance(level, str):
        # cheap, then periodic, then expensive: periodic's hooks on the step must be off before another's extra pass
        order = {"cheap": 0, "periodic": 1, "expensive": 2}
        return sorted(level, key=lambda i: order.get(getattr(i, "cost", "cheap"), 0))
    if level not in LEVELS:
        raise UnknownChoice("instruments", level, LEVELS)
    return {"none": [], "cheap": [Cheap()], "default": [Cheap(), Periodic()],
            "full": [Cheap(), Periodic(), Expensive()]}[level]  # type: ignore[return-value]
