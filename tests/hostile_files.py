"""Hostile and damaged data files, each a few hundred bytes: what ``--data FILE.npz`` and ``gdlab.models.load``
must refuse in one line, without reading what the file only claims to hold.

``write(folder)`` writes them all (the CLI's table of bad inputs uses them by name):

- ``truncated.npz``: an archive cut in half (its zip directory gone);
- ``renamed.npz``: a single ``.npy`` array renamed ``.npz``;
- ``complex.npz``: ``X`` of dtype complex64 (never cast to real);
- ``objects.npz``: ``X`` an object (pickled) array;
- ``bomb.npz``: a zip whose directory declares a member of 8.8 TB, its ``.npy`` header a shape to match;
- ``liar.npz``: a member whose ``.npy`` header declares 8.8 TB while it holds 64 bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

HUGE = (2**20, 2**20)
"""The shape the bomb declares: 2**40 float64 values, 8.8 TB."""


def npy(shape: tuple[int, ...], dtype: str = "<f8", data: bytes = b"\0" * 64) -> bytes:
    """An ``.npy`` file's bytes: a header declaring ``shape`` and ``dtype``, then ``data`` (whatever its size)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def zip_declaring(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    """A stored (uncompressed) zip at ``path`` whose directory declares each member's size as given: ``{name:
    (bytes, declared uncompressed size)}`` (ZIP64 sizes, so a declaration may exceed 4 GB)."""
    local, central = b"", b""
    for name, (data, size) in members.items():
        encoded, crc = name.encode(), zlib.crc32(data)
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))  # ZIP64: uncompressed, then compressed size
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(encoded),
                             len(extra)) + encoded + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(encoded), len(extra), 0, 0, 0, 0, offset) + encoded + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def bomb(path: Path) -> Path:
    """An .npz whose ``X`` declares 8.8 TB in its zip directory and its header, and holds 64 bytes."""
    x = npy(HUGE)
    return zip_declaring(path, {"X.npy": (x, 2**43 + len(x) - 64), "y.npy": (npy((8,)), len(npy((8,))))})


def write(folder: Path) -> None:
    """Write every file of this module's list into ``folder``."""
    np.savez(folder / "whole.npz", X=np.zeros((10, 3), dtype=np.float32), y=np.zeros(10, dtype=np.float32))
    whole = (folder / "whole.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (folder / "whole.npz").unlink()
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 3)))
    (folder / "renamed.npz").write_bytes(buffer.getvalue())
    np.savez(folder / "complex.npz", X=np.ones((4, 2), dtype=np.complex64), y=np.zeros(4))
    np.savez(folder / "objects.npz", X=np.array([{}, 1], dtype=object), y=np.zeros(2))
    bomb(folder / "bomb.npz")
    zip_declaring(folder / "liar.npz", {"X.npy": (npy(HUGE), len(npy(HUGE))), "y.npy": (npy((8,)), len(npy((8,))))})
