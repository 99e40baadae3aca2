"""Checkpoints: written atomically (temporary file, fsync, rename), read without unpickling code, and checked
before anything is restored from them.

A checkpoint is a dict of tensors and plain values, so ``torch.load(weights_only=True)`` reads it: model and
optimizer state, RNG states and the position in the batch plan (:data:`POSITION`); the history is in the store.
:func:`save` and :func:`load` write and read any such dict; :func:`read` reads a run's checkpoint and checks its
layout (one :class:`~gdlab.errors.StoreError` line for a damaged or crafted one), and :func:`load_weights` puts
its weights into a model or says, in one line, which parameter does not fit.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save(path, {"step": 3, "weights": torch.ones(2)})
    >>> load(path)["step"]
    3
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdlab.errors import StoreError, shorten

__all__ = ["FORMAT", "POSITION", "save", "load", "read", "check_weights", "load_weights", "rng_state",
           "set_rng_state"]

FORMAT = 1
"""The layout of a run's checkpoint: ``{"format": 1, "model", "optimizer", "rng", "position"}``."""

POSITION = ("step", "epoch", "iteration", "epoch_loss_sum", "epoch_samples", "best_val_loss", "bad_epochs",
            "seconds")
"""The loop's position a checkpoint keeps (attributes of :class:`~gdlab.loop.LoopState`)."""

_COUNTS = ("step", "epoch", "iteration", "epoch_samples", "bad_epochs")  # integers >= 0; the rest are numbers


def save(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` so that a reader sees the old file or the new one, never half of one; a
    write that fails (a full disk, an unwritable folder, an interrupt) leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself is gone or unwritable: nothing of ours is left in it
            pass
        if isinstance(e, OSError):
            raise StoreError(f"checkpoint '{path}' could not be written ({e.strerror or e})") from None
        if isinstance(e, RuntimeError):  # torch's writer reports a failed write (ENOSPC, EFBIG) as a RuntimeError
            said = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).strip()).splitlines()
            reason = shorten(said[0], 120) if said else "a failed write"
            raise StoreError(f"checkpoint '{path}' could not be written ({reason}): is the disk full?") from None
        raise


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"checkpoint '{path}' not found: the run stopped before its first checkpoint") from None
    except Exception as e:  # a truncated, damaged or foreign file: told so, never advised to unpickle it
        raise _damaged(path, _reason(e)) from None


def read(path: str | Path) -> dict[str, Any]:
    """A run's checkpoint (:data:`FORMAT`), read by :func:`load` and checked before anything is restored from it:
    the model's weights a dict of tensors, the optimizer's state a dict, a torch RNG state that torch accepts, and
    every key of :data:`POSITION` (counts integers >= 0, sums finite numbers). Anything else is a
    :class:`~gdlab.errors.StoreError` naming what is wrong (a damaged or crafted file).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> save(path, {"format": 1, "model": {}, "optimizer": {}, "rng": rng_state()})
        >>> read(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gdlab.errors.StoreError: checkpoint '...' is damaged or not a gdlab checkpoint (it has no position): ...
    """
    saved = load(path)
    problem = _layout(saved)
    if problem:
        raise _damaged(path, problem)
    return saved


def check_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], what: str) -> None:
    """Whether ``weights`` (a state dict) fit ``model``, changing nothing: where they do not (the model's code
    changed since they were saved), one :class:`~gdlab.errors.StoreError` line names the first parameter and both
    shapes, or the parameter one of them lacks. ``what`` names the weights in the message (``the checkpoint of run
    X``).

    Example:
        >>> check_weights(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), "run r")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gdlab.errors.StoreError: run r does not fit the model: its parameter 'weight' has shape [2, 4] but the ...
    """
    from gdlab.guard import printable

    own = model.state_dict()
    for key, tensor in own.items():
        if key not in weights:
            missing = sum(k not in weights for k in own)
            raise StoreError(f"{what} does not fit the model: it has no parameter '{printable(shorten(key))}' that the "
                             f"model has ({missing} missing); {_ADVICE}")
        saved = weights[key]
        if not isinstance(tensor, torch.Tensor) or not isinstance(saved, torch.Tensor):
            continue  # a module's extra state: its own load_state_dict judges it
        if tuple(saved.shape) != tuple(tensor.shape):
            raise StoreError(f"{what} does not fit the model: its parameter '{printable(shorten(key))}' has shape "
                             f"{list(saved.shape)} but the model's has shape {list(tensor.shape)}; {_ADVICE}")
    extra = [k for k in weights if k not in own]
    if extra:
        raise StoreError(f"{what} does not fit the model: it holds a parameter '{printable(shorten(str(extra[0])))}' "
                         f"that the model has not ({len(extra)} extra); {_ADVICE}")


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``weights`` (a state dict) into ``model`` once :func:`check_weights` has found they fit (else its one
    line, and the model is left as it was)."""
    check_weights(model, weights, what)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:  # a tensor torch cannot copy (a complex into a float)
        raise StoreError(f"{what} does not fit the model ({_reason(e)}); {_ADVICE}") from None


_ADVICE = "expected the model it was trained with (was its code changed?)"


def _damaged(path: str | Path, reason: str) -> StoreError:
    return StoreError(f"checkpoint '{path}' is damaged or not a gdlab checkpoint ({reason}): expected a file written "
                      "by gdlab (tensors and plain values only); resume from another run or train anew")


def _layout(saved: Any) -> str | None:
    """What is wrong with a run checkpoint's layout, or None."""
    if not isinstance(saved, dict):
        return f"it holds a {type(saved).__name__}, not a dict"
    if saved.get("format") != FORMAT:
        return f"its format is {shorten(repr(saved.get('format')), 40)}, not {FORMAT}" if "format" in saved else \
            "it has no format"
    for key in ("model", "optimizer", "rng", "position"):
        if not isinstance(saved.get(key), dict):
            return f"it has no {key}" if key not in saved else f"its {key} is a {type(saved[key]).__name__}, not a dict"
    model = saved["model"]
    if not all(isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
               for k, v in model.items()):  # a module's extra state (get_extra_state) may be any plain value
        return "its model weights are not all named tensors"
    problem = _rng(saved["rng"])
    if problem:
        return problem
    position = saved["position"]
    for key in POSITION:
        if key not in position:
            return f"its position has no {key}"
        value = position[key]
        if key in _COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"its position {key} is {shorten(repr(value), 40)}: expected an integer >= 0"
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or \
                (key != "best_val_loss" and not math.isfinite(value)) or (key == "seconds" and value < 0):
            return f"its position {key} is {shorten(repr(value), 40)}: expected a finite number" + \
                (" >= 0" if key == "seconds" else "")
    if position["epoch"] > position["step"] or position["iteration"] > position["step"]:
        return f"its position (step {position['step']}, epoch {position['epoch']}, iteration " \
               f"{position['iteration']}) is not one a run reaches"
    return None


def _rng(state: dict[str, Any]) -> str | None:
    """What is wrong with the RNG states of a checkpoint, or None (tried on a generator of its own)."""
    cpu = state.get("torch")
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
        return "its torch RNG state is missing or not a byte tensor"
    try:
        torch.Generator().set_state(cpu)
    except (RuntimeError, TypeError, ValueError) as e:
        return f"its torch RNG state is not one torch accepts ({_reason(e)})"
    cuda = state.get("cuda")
    if cuda is not None and not (isinstance(cuda, (list, tuple)) and
                                 all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        return "its CUDA RNG states are not byte tensors"
    return None


def _reason(error: BaseException) -> str:
    """torch's reason in its first sentence, without its advice to load the file unsafely (``weights_only``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):  # the weights-only unpickler's reason follows its label
        if "Unpickler error:" in line:
            detail = line.split("error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            lines = [detail]
            break
    first = lines[0] if lines else type(error).__name__
    first = first.split(". ")[0].split(" Please use")[0].rstrip(".")
    return shorten(first, 120)


def rng_state() -> dict[str, Any]:
    """The global RNG states that training consumes (dropout and the like)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states from :func:`rng_state` (checked by :func:`read` first); a CUDA state the devices refuse is a
    :class:`~gdlab.errors.StoreError`."""
    if "cuda" in state and torch.cuda.is_available():  # first: a state the GPUs refuse leaves the CPU's as it was
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise StoreError(f"the checkpoint's CUDA RNG states do not fit this machine's GPUs ({_reason(e)})") \
                from None
    torch.set_rng_state(state["torch"])
