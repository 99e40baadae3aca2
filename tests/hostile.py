"""Hostile stores: a real store, trained once by ``gdlab train``, then changed by hand the way a damaged store, or
one that someone crafted and handed over, would be. The ``hostile`` fixture (conftest.py) builds them.

Kinds (``hostile(kind)`` returns the store's folder and a reference to its run):

- ``dot``: the run's id is ``.`` (its folder would be the store itself);
- ``parent``: the run's id is ``../victim`` (its folder would be outside the store);
- ``absolute``: the run's id is an absolute path;
- ``escapes``: the run's name and data carry terminal escapes (window title, clear screen, an OSC-8 link) and
  Rich markup;
- ``code``: the run's stored model is ``os:abort`` (a module:function gdlab would import and call);
- ``interact``: the run's stored model is ``code:interact`` (an interactive console);
- ``stale``: the run is ``running`` under this very process's pid and host, as a run killed in a container looks
  to the next process there that gets the same pid;
- ``empty_db``: a 0-byte ``gdlab.db`` beside run folders;
- ``corrupt_db``: ``gdlab.db`` with its pages overwritten past the header;
- ``shape_mismatch``: the run's checkpoint holds its first weight in another shape (the model's code changed);
- ``no_position``: the checkpoint has no ``position``; ``bad_rng``: its torch RNG state is 10 bytes;
- ``negative_step``: its position's step is -3; ``nan_weights``: every weight of its model is NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[H[bold red]RED[/] \x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\"
"""A run name that sets the window title, clears the screen, opens an OSC-8 hyperlink and holds Rich markup."""

KINDS = ("dot", "parent", "absolute", "escapes", "code", "interact", "stale", "empty_db", "corrupt_db",
         "shape_mismatch", "no_position", "bad_rng", "negative_step", "nan_weights")
CHECKPOINT_KINDS = KINDS[-5:]
"""The kinds whose run is intact but whose checkpoint is crafted (torch.save of a dict, as a checkpoint is)."""


def train_store(root: Path) -> str:
    """A store at ``root`` holding one finished run (moons, a 4-unit MLP, one epoch, a checkpoint); its id."""
    from typer.testing import CliRunner

    from gdlab.cli import app

    result = CliRunner().invoke(app, ["train", "--data", "moons", "--hidden", "4", "--epochs", "1", "--store",
                                      str(root), "--name", "victim-run", "--json", "--quiet", "--no-plot"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run_id"]


def _db(root: Path) -> sqlite3.Connection:
    db = sqlite3.connect(root / "gdlab.db")
    db.execute("PRAGMA foreign_keys=OFF")
    return db


def rename_run(root: Path, run_id: str, new_id: str) -> None:
    """Give a stored run another id in every table (its folder is left where it is)."""
    with _db(root) as db:
        db.execute("UPDATE runs SET id = ? WHERE id = ?", (new_id, run_id))
        for table in ("blocks", "step_metrics", "step_buckets", "epoch_metrics", "findings", "remedies"):
            db.execute(f"UPDATE {table} SET run_id = ? WHERE run_id = ?", (new_id, run_id))
    db.close()


def set_columns(root: Path, run_id: str, **columns: object) -> None:
    """Overwrite columns of a stored run's row (``name=...``, ``status=...``, ``pid=...``)."""
    with _db(root) as db:
        for column, value in columns.items():
            db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, run_id))
    db.close()


def set_config(root: Path, run_id: str, **keys: object) -> None:
    """Overwrite keys of a stored run's config."""
    with _db(root) as db:
        (text,) = db.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
        db.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps({**json.loads(text), **keys}), run_id))
    db.close()


def build(kind: str, root: Path, template: Path) -> tuple[Path, str]:
    """The store of ``kind`` at ``root`` (a copy of the trained ``template``) and the reference to give a command."""
    if kind not in KINDS:
        raise ValueError(f"unknown hostile store {kind!r}: expected one of {', '.join(KINDS)}")
    shutil.copytree(template, root)
    run_id = next(p.name for p in root.iterdir() if p.is_dir())
    if kind in ("dot", "parent", "absolute"):
        new_id = {"dot": ".", "parent": "../victim", "absolute": str(root.parent / "victim")}[kind]
        (root.parent / "victim").mkdir(exist_ok=True)
        (root.parent / "victim" / "precious.txt").write_text("not the store's")
        rename_run(root, run_id, new_id)
        return root, "victim-run"
    if kind == "escapes":
        set_columns(root, run_id, name=ESCAPES)
        set_config(root, run_id, data=ESCAPES, model="[link=http://evil.example/]mlp[/link]")
        return root, run_id
    if kind in ("code", "interact"):
        set_config(root, run_id, model="os:abort" if kind == "code" else "code:interact")
        return root, run_id
    if kind == "stale":
        set_columns(root, run_id, status="running", pid=os.getpid(), host=socket.gethostname())
        return root, run_id
    if kind in CHECKPOINT_KINDS:
        craft_checkpoint(root / run_id / "checkpoint.pt", kind)
        return root, run_id
    if kind == "empty_db":
        for name in ("gdlab.db", "gdlab.db-wal", "gdlab.db-shm"):
            (root / name).unlink(missing_ok=True)
        (root / "gdlab.db").write_bytes(b"")
        return root, run_id
    # corrupt_db: a valid header, its pages overwritten
    with _db(root) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray((root / "gdlab.db").read_bytes())
    data[100:] = b"\xa5" * (len(data) - 100)
    (root / "gdlab.db").write_bytes(bytes(data))
    for name in ("gdlab.db-wal", "gdlab.db-shm"):
        (root / name).unlink(missing_ok=True)
    return root, run_id


def craft_checkpoint(path: Path, kind: str) -> None:
    """Rewrite the checkpoint at ``path`` as ``kind`` says (one of :data:`CHECKPOINT_KINDS`)."""
    import torch

    saved = torch.load(path, weights_only=True)
    if kind == "shape_mismatch":
        key = next(k for k in saved["model"] if k.endswith("weight"))
        weight = saved["model"][key]
        saved["model"][key] = torch.zeros(weight.shape[0] + 1, *weight.shape[1:])
    elif kind == "no_position":
        del saved["position"]
    elif kind == "bad_rng":
        saved["rng"]["torch"] = torch.zeros(10, dtype=torch.uint8)
    elif kind == "negative_step":
        saved["position"]["step"] = -3
    else:
        for tensor in saved["model"].values():
            tensor.fill_(float("nan"))
    torch.save(saved, path)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: compare before and after a command to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Whether ``after`` (a :func:`snapshot`) holds every file of ``before`` as it was and nothing more than what a
    read-only SQLite connection leaves beside a database: its shared-memory index (``-shm``) and an empty log
    (``-wal``: empty, so nothing was written through it)."""
    added = {name: data for name, data in after.items() if name not in before}
    return (all(after.get(name) == data for name, data in before.items())
            and all(name.endswith("-shm") or (name.endswith("-wal") and not data) for name, data in added.items()))
