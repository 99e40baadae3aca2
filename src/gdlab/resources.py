"""Memory checked before work: an estimate of what a model, a data set or a population needs, compared with what
the machine has free, so that a size typed by mistake is refused in one line instead of an out-of-memory kill.

The free memory is ``MemAvailable`` of ``/proc/meminfo`` (Linux), ``psutil`` where it is installed, or free CUDA
memory for a CUDA device; where none can be read, nothing is refused.

Example:
    >>> human(3 * 2**30)
    '3.2 GB'
    >>> check_fits("a tiny model", 1024, free=2**30)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, ModelError

__all__ = ["MEMINFO", "check_fits", "free_memory", "human"]

MEMINFO = Path("/proc/meminfo")


def free_memory(device: Any = None) -> int | None:
    """Bytes free for new allocations on ``device`` (None or ``cpu``: the machine's memory), or None where it cannot
    be read."""
    kind = getattr(device, "type", str(device) if device is not None else "cpu").split(":")[0]
    if kind == "cuda":
        try:
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # no driver, a device that went away: nothing to refuse by
            return None
    if kind != "cpu":
        return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no reading on this platform
        return None


def human(n: float) -> str:
    """Bytes in decimal units, 2 significant digits: ``3.2 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_fits(what: str, need: float, *, device: Any = None, free: int | None = None,
               error: type[GdlabError] = ModelError, hint: str = "") -> None:
    """Raise ``error`` (one line) when ``need`` bytes exceed the free memory of ``device``.

    Args:
        what: the thing, as the message names it (``model 'mlp' (500,000,002 parameters)``).
        need: its estimated bytes.
        free: the free bytes (read from the machine when None).
        hint: what to do instead, appended after a semicolon.
    """
    free = free_memory(device) if free is None else free
    if free is None or need <= free:
        return
    where = "on the GPU" if getattr(device, "type", str(device)).startswith("cuda") else "on this machine"
    raise error(f"{what} needs about {human(need)} of memory but {human(free)} is free {where}: expected something "
                f"that fits" + (f"; {hint}" if hint else ""))
