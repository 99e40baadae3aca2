"""Checks of what :func:`gdlab.watch` sees of the loop's first batches: the silent bugs in what the loss is fed and
in the data served, caught at the first check, then off (no cost on the later steps).

- **the loss given probabilities** (``loss_given_probabilities``): the model's first output is rows in [0, 1]
  summing to 1 (a softmax at the end of the model) and the loss is a cross-entropy, which applies its own softmax:
  the gradient is squashed and the run barely learns. The loss is known to be one where ``watch`` was given
  ``loss_fn="cross_entropy"``, or where the step's loss (``step(loss, batch=(x, y))``) equals the cross-entropy of
  that very output (the same forward pass's output, so equal to rounding): ``nll_loss(log(p))`` is not flagged.
- **a target that broadcasts** (``target_shape_broadcasts``): an output ``[N, 1]`` against a target ``[N]`` (or
  the reverse), where the step's loss equals the mean squared or absolute error over the broadcast ``[N, N]``
  pairs, and not over the matched ones (a loop that squeezes the output before the loss is not flagged); or,
  without the step's loss, where ``watch`` was given ``loss_fn="mse"``, ``"l1"`` or ``"huber"``.
- **the same batch every step** (``same_batch_every_step``): the first :data:`BATCHES` batches given to
  ``step(batch=...)`` hold the same targets and the same inputs (their sums).
- **labels sorted** (``labels_sorted``): each of the first :data:`BATCHES` batches holds a single class of a task
  with several (the labels differ across batches, or the model's output has more classes): data sorted by label,
  never shuffled.

What each costs: a forward hook on the model until the first step ends (it keeps a reference to the first
output), a few device values on the first step, clones of the first :data:`BATCHES` targets and two sums of their
inputs, read once at the first check. What it cannot see: a loss computed on another output than the model's first
forward pass; batches never given to ``step(batch=...)`` (the data checks need the targets); data shuffled
within runs of one class longer than a batch but shorter than :data:`BATCHES` batches.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Softmax(dim=1))
    >>> check = BatchCheck(model, "cross_entropy")
    >>> x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    >>> loss = torch.nn.functional.cross_entropy(model(x), y)
    >>> check.see(loss, x, y); check.note()
    >>> sorted(check.found)
    ['loss_given_probabilities']
    >>> check.close()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gdlab.data import structure
from gdlab.problem import prediction

__all__ = ["BATCHES", "BatchCheck"]

BATCHES = 3
"""The first batches whose targets are compared (the same batch every step, single-label batches)."""

_REGRESSION = ("mse", "l1", "huber")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b))


class BatchCheck:
    """What the loss is fed and what data the first batches hold (see the module's text); ``found`` maps each
    finding's code to its evidence; ``done`` once every check has decided."""

    def __init__(self, model: nn.Module, loss_name: str | None, *, whole_data: bool = False) -> None:
        self.found: dict[str, dict[str, Any]] = {}
        self.done = False
        self.loss_name = loss_name
        self.whole_data = whole_data  # each batch is the whole data (full-batch descent): the same batch every step
        # is then the design, not a bug
        self.steps = 0
        self._output: Tensor | None = None
        self._first: dict[str, Any] | None = None  # the first step's device values and shapes, read at note()
        self._output_done = False
        self._out_shape: list[int] | None = None  # the first output's shape (the classes of the data checks)
        self._targets: list[Tensor] = []
        self._prints: list[Tensor] = []

        def on_output(module: nn.Module, args: Any, output: Any) -> None:  # a plain function: a deep copy shares it
            if module is model and self._output is None and torch.is_grad_enabled():
                pred = prediction(output)
                if pred is not None:
                    self._output = pred.detach()

        self._handle: Any = model.register_forward_hook(on_output)

    def see(self, loss: Any, x: Any, y: Tensor | None) -> None:
        """One step of the loop ended, with its loss and batch (``y`` None where step() had none): device work
        only, on the first :data:`BATCHES` steps."""
        if self.done or self.steps >= BATCHES:
            return
        self.steps += 1
        with torch.no_grad():
            if self.steps == 1:
                if self._handle is not None:
                    self._handle.remove()
                    self._handle = None
                if self._output is not None:
                    self._first = self._measure(self._output, loss, y)
                self._output = None
            if y is not None and isinstance(y, Tensor) and y.dim() and len(self._targets) == self.steps - 1:
                self._targets.append(y.detach().clone())
                leaf = next((t for t in structure.leaves(x) if isinstance(t, Tensor)), None) \
                    if x is not None else None
                if leaf is not None:
                    f = leaf.detach().float()
                    self._prints.append(torch.stack([f.sum(), f.abs().sum()]))

    def _measure(self, o: Tensor, loss: Any, y: Tensor | None) -> dict[str, Any]:
        """The first step's device values: whether the output rows are probabilities, the cross-entropy of that
        output, the broadcast and matched errors of a target that broadcasts."""
        o = o.float()
        self._out_shape = list(o.shape)
        first: dict[str, Any] = {"shape": list(o.shape), "target_shape": list(y.shape) if y is not None else None}
        values: dict[str, Tensor] = {}
        if isinstance(loss, Tensor) and loss.numel() == 1:
            values["loss"] = loss.detach().float().reshape(())
        if o.dim() == 2 and o.shape[1] >= 2:
            values["probabilities"] = (((o >= 0) & (o <= 1)).all() & ((o.sum(1) - 1).abs() < 1e-3).all()).float()
            if y is not None and not y.is_floating_point() and y.dim() == 1 and len(y) == len(o):
                # clamped: no device assert on a label out of range (the loss then differs, and nothing is said)
                labels = y.to(o.device).long().clamp(0, o.shape[1] - 1)
                values["cross_entropy"] = torch.nn.functional.cross_entropy(o, labels)
        if y is not None and y.is_floating_point() and len(y) == len(o) and len(o) > 1 and (
                (o.dim() == y.dim() + 1 and o.shape[-1] == 1 and o.shape[:-1] == y.shape) or
                (y.dim() == o.dim() + 1 and y.shape[-1] == 1 and y.shape[:-1] == o.shape)):
            t = y.detach().float().to(o.device)
            spread = o.reshape(-1, 1) - t.reshape(1, -1) if o.dim() > t.dim() else t.reshape(-1, 1) - o.reshape(1, -1)
            matched = o.reshape(-1) - t.reshape(-1)
            values.update(broadcast_mse=spread.square().mean(), broadcast_l1=spread.abs().mean(),
                          matched_mse=matched.square().mean(), matched_l1=matched.abs().mean())
        first["values"] = values
        return first

    def note(self) -> None:
        """Decide what can be decided (one read of a few values, once): the output checks after the first step,
        the data checks once :data:`BATCHES` steps are seen."""
        if self.done:
            return
        if not self._output_done and self.steps >= 1:
            self._output_done = True
            if self._first is not None:
                self._decide_output(self._first)
            self._first = None
        if self.steps >= BATCHES:
            self._decide_data()
            self.done = True
            self.close()

    def _decide_output(self, first: dict[str, Any]) -> None:
        values = first["values"]
        names = list(values)
        read = dict(zip(names, torch.stack([v.detach().float().cpu().reshape(()) for v in values.values()])
                        .tolist())) if names else {}
        loss = read.get("loss")
        if read.get("probabilities") == 1.0:
            seen = loss is not None and "cross_entropy" in read and _close(loss, read["cross_entropy"])
            if seen or self.loss_name == "cross_entropy":
                self.found["loss_given_probabilities"] = {
                    "step": 1, "output_shape": first["shape"], "loss": loss,
                    "seen_by": "the step's loss equals the cross-entropy of those probabilities" if seen
                    else "loss_fn='cross_entropy'"}
        if "broadcast_mse" in read:
            broadcast = loss is not None and any(
                _close(loss, read[f"broadcast_{k}"]) and not _close(loss, read[f"matched_{k}"]) for k in ("mse", "l1"))
            if broadcast or (loss is None and self.loss_name in _REGRESSION):
                n = first["shape"][0]
                self.found["target_shape_broadcasts"] = {
                    "step": 1, "output_shape": first["shape"], "target_shape": first["target_shape"],
                    "pairs": [n, n], "loss": loss, "matched_mse": read["matched_mse"]}

    def _decide_data(self) -> None:
        targets = [t.cpu() for t in self._targets]
        if len(targets) < BATCHES:
            return
        prints = [p.cpu() for p in self._prints] if len(self._prints) == len(targets) else []
        same_y = all(t.shape == targets[0].shape and torch.equal(t, targets[0]) for t in targets[1:])
        same_x = bool(prints) and all(torch.equal(p, prints[0]) for p in prints[1:])
        if same_y and same_x and not self.whole_data:
            self.found["same_batch_every_step"] = {"step": BATCHES, "batches": BATCHES,
                                                   "batch_size": int(targets[0].shape[0])}
            return
        if any(t.is_floating_point() or t.dim() != 1 or len(t) < 2 for t in targets):
            return
        single = [t.unique() for t in targets]
        if not all(len(u) == 1 for u in single):
            return
        labels = [int(u[0]) for u in single]
        classes = self._classes()
        if len(set(labels)) >= 2 or (classes is not None and classes >= 2):
            self.found["labels_sorted"] = {"step": BATCHES, "batches": BATCHES, "labels": labels,
                                           "classes": classes}

    def _classes(self) -> int | None:
        shape = self._out_shape
        return int(shape[1]) if shape is not None and len(shape) == 2 and shape[1] >= 2 else None

    def close(self) -> None:
        """Take the hook off and let the kept tensors go (decided, or the watch ends)."""
        self.done = True
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._output, self._first, self._targets, self._prints = None, None, [], []
