"""Checkpoints: written atomically (temporary file, fsync, rename), read without unpickling code.

A checkpoint is a dict of tensors and plain values, so ``torch.load(weights_only=True)`` reads it: model and
optimizer state, RNG states, the position in the batch plan and the history so far.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save(path, {"step": 3, "weights": torch.ones(2)})
    >>> load(path)["step"]
    3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gdlab.errors import StoreError, shorten

__all__ = ["save", "load", "rng_state", "set_rng_state"]


def save(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"checkpoint '{path}' could not be written ({e.strerror or e})") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"checkpoint '{path}' not found: the run stopped before its first checkpoint") from None
    except Exception as e:  # a truncated, damaged or foreign file: told so, never advised to unpickle it
        raise StoreError(f"checkpoint '{path}' is damaged or not a gdlab checkpoint ({_reason(e)}): expected a file "
                         "written by gdlab (tensors and plain values only); resume from another run or "
                         "train anew") from None


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
    """Restore states from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
