"""What gdlab does with paths and text that come from users or from files it is handed: one home for each guard.

- :func:`check_out`: an output path (``--out``, ``--tensorboard``...) checked before anything is written: the
  suffix the command writes, never one of a run store's own files, never a folder, and an existing file only when
  it is of the kind the command writes (or with ``force``).
- :func:`printable`: text from a store, a file or a user made safe to print on a terminal: control characters
  (escape sequences, bells, carriage returns) shown as ``\\x1b``-style escapes, never sent. Rich markup is the
  printer's business: print such text with ``markup=False`` or through ``rich.markup.escape``.

Example:
    >>> printable("run\\x1b]0;title\\x07")
    'run\\\\x1b]0;title\\\\x07'
    >>> check_out("gdlab.db", "--out", (".html",))
    Traceback (most recent call last):
    ...
    gdlab.errors.InvalidParameter: invalid --out 'gdlab.db': expected a .html file path
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gdlab.errors import InvalidParameter

__all__ = ["STORE_FILES", "check_out", "printable", "same_kind"]

STORE_FILES = ("gdlab.db", "gdlab.db-wal", "gdlab.db-shm", "gdlab.db-journal", "checkpoint.pt")
"""A run store's own files (its database and a run's checkpoint): no output path may name one."""

_SIGNATURES: dict[str, tuple[bytes, ...]] = {  # the first bytes of a file of each kind gdlab writes
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".pdf": (b"%PDF",),
    ".svg": (b"<?xml", b"<svg"),
    ".npz": (b"PK\x03\x04", b"PK\x05\x06"),
}
_GDLAB_PAGE = b'<meta name="generator" content="gdlab'


def same_kind(path: Path) -> bool:
    """Whether the existing file ``path`` holds what its suffix says: a picture's signature, a gdlab page for
    ``.html``, a safetensors header for ``.safetensors``; text formats (``.csv``, ``.json``...) by their suffix."""
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if suffix == ".html":
        return _GDLAB_PAGE in head
    if suffix == ".safetensors":
        return len(head) >= 9 and head[8:9] == b"{"
    signatures = _SIGNATURES.get(suffix)
    return signatures is None or head.startswith(signatures)


def check_out(path: str | Path, flag: str, suffixes: Sequence[str], *, force: bool = False,
              folder: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` if gdlab may write there, else :class:`InvalidParameter` naming ``flag``.

    A file path must end in one of ``suffixes`` (lower case, with the dot; empty: any), must not name a run
    store's own files (:data:`STORE_FILES`) and must not be a folder. An existing file is written over only when
    it is of the kind the suffix says (:func:`same_kind`), or with ``force``. With ``folder=True`` the path is a
    folder to write into: it may exist as a folder, never as a file, nor as the store's own folder.
    """
    target = Path(path)
    if str(path) == "" or target.name in ("", ".", ".."):
        raise InvalidParameter(flag, str(path), "a folder path" if folder else f"a {_kinds(suffixes)} file path")
    if folder:
        if target.exists() and not target.is_dir():
            raise InvalidParameter(flag, str(path), "a folder to write into (this is a file)")
        if (target / "gdlab.db").exists():
            raise InvalidParameter(flag, str(path), "a folder outside the run store's own (this one holds its "
                                   "database)")
        return target
    if suffixes and target.suffix.lower() not in suffixes:
        raise InvalidParameter(flag, str(path), f"a {_kinds(suffixes)} file path")
    if target.name.lower() in STORE_FILES:
        raise InvalidParameter(flag, str(path), "a path that is not one of the run store's own files")
    if target.is_dir():
        raise InvalidParameter(flag, str(path), f"a {_kinds(suffixes)} file path (this is a folder)")
    if target.exists() and not force and not same_kind(target):
        raise InvalidParameter(flag, str(path), f"a new path or a {_kinds(suffixes)} file gdlab may replace: this "
                               "file holds something else", "pass --force to write over it")
    return target


def _kinds(suffixes: Sequence[str]) -> str:
    """``(".png", ".pdf", ".svg")`` -> ``".png, .pdf or .svg"``."""
    if not suffixes:
        return "writable"
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object, *, newlines: bool = False) -> str:
    """``text`` with every control character (and the bidirectional overrides) written as an escape: ``\\x1b``,
    ``\\x07``, ``\\u202e``. Tabs stay; newlines stay only with ``newlines=True`` (else ``\\n``)."""
    string = str(text)
    if not newlines:
        string = string.replace("\n", "\\n")
    return _CONTROL.sub(_escape, string)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
