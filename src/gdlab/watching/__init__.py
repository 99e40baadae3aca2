"""``watch``: the instruments and the doctor in a training loop the user wrote.

::

    doctor = gdlab.watch(model, optimizer)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        doctor.step(loss)
    report = doctor.close()   # a Result: report.findings, report.remedies, report.history

The loop stays the user's; gdlab only listens. A forward pre-hook on the model starts each step (so the periodic
instruments' hooks ride on the step's own forward and backward pass, as in :func:`gdlab.fit`), the optimizer's step
pre-hook takes the gradient norms before the update (every ``grad_norm_every``-th step, 20, and on the periodic
instruments' steps; NaN between: docs/watch.md), and ``doctor.step(loss)`` files the step's loss on the device:
the host reads the values every ``log_every`` steps (60), never once a step. Once the loop calls ``doctor.step``,
each step gets only the hooks it needs (the forward pre-hook on the steps an instrument measures, the step pre-hook
where the norms are due), and the steps between those that need something are a lane: ``doctor.step`` files the
loss and the lr, and the lane's steps reach the history and the hooks as one block when it ends (docs/watch.md,
"The lane"). Without ``doctor.step`` at all, the optimizer's step hooks end each step themselves (no loss: no
loss-based findings). docs/watch.md says what each instrument needs, and which remedies need :func:`gdlab.fit`.
Under several processes (torchrun, a ``DistributedDataParallel`` model) rank zero watches and the other ranks
follow its decisions (docs/watch.md, "Several processes").

The parts: ``facade`` (:func:`watch`, :class:`Watch`: ``step``, ``epoch_end``, ``close``), ``tracker`` (where a step
stands: one :class:`~gdlab.watching.tracker.Phase`; the hooks' work; the step's record), ``lanes`` (the measurement
planner), ``follower`` (the ranks following rank zero).

Example:
    >>> import torch, gdlab
    >>> X = torch.randn(256, 3); y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> model = torch.nn.Linear(3, 1); optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> doctor = gdlab.watch(model, optimizer)
    >>> for epoch in range(5):
    ...     for i in range(0, 256, 32):
    ...         loss = torch.nn.functional.mse_loss(model(X[i:i + 32]), y[i:i + 32])
    ...         optimizer.zero_grad(); loss.backward(); optimizer.step()
    ...         doctor.step(loss)
    ...     doctor.epoch_end()
    >>> report = doctor.close()
    >>> report.steps, report.final["train_loss"] < 1e-3, [f.code for f in report.findings]
    (40, True, [])
"""

from gdlab.watching.facade import GRAD_NORM_EVERY, LOG_EVERY, Watch, watch
from gdlab.watching.follower import hyperparameters, max_norm

__all__ = ["GRAD_NORM_EVERY", "LOG_EVERY", "Watch", "hyperparameters", "max_norm", "watch"]
