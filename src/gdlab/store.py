"""The run store: SQLite (WAL mode) at ``<root>/gdlab.db``, with a folder per run for artifacts.

Tables: ``runs`` (config, plan, status ``running | finished | failed | stopped``, final metrics),
``step_metrics`` and ``epoch_metrics`` (long format: one row per run, index and key), ``findings`` and
``remedies`` (filled by the doctor), ``sweeps`` and ``sweep_members`` (a sweep or restarts, recorded whole
when it ends, one row per member). A run whose process died without closing it is marked ``failed`` the next
time the store lists it, so no run stays ``running`` for ever.

Example:
    >>> import tempfile
    >>> store = Store(tempfile.mkdtemp())
    >>> run_id = store.create_run({"data": "seed"}, {"samples": 3}, name="demo")
    >>> store.add_steps(run_id, [{"step": 1, "loss": 2.0}])
    >>> store.finish(run_id, "finished", final={"train_loss": 1.0})
    >>> store.get("demo").status, store.history(run_id).steps["loss"]
    ('finished', [2.0])
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdlab.errors import InvalidParameter, RunNotFound, StoreError
from gdlab.records import History

__all__ = ["Store", "Run", "STATUSES", "DEFAULT_STORE"]

DEFAULT_STORE = "gdlab-runs"
STATUSES = ("running", "finished", "failed", "stopped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, created TEXT NOT NULL, updated TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'stopped')),
    config TEXT NOT NULL, plan TEXT, final TEXT, lr REAL, seconds REAL, steps INTEGER,
    stop_reason TEXT, error TEXT, pid INTEGER, host TEXT
);
CREATE TABLE IF NOT EXISTS step_metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL, key TEXT NOT NULL,
    value REAL, PRIMARY KEY (run_id, step, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL, key TEXT NOT NULL,
    value REAL, PRIMARY KEY (run_id, epoch, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, code TEXT NOT NULL, severity TEXT NOT NULL,
    step INTEGER, evidence TEXT, explanation TEXT, remedy TEXT
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL, created TEXT NOT NULL, config TEXT NOT NULL,
    summary TEXT, seconds REAL, steps INTEGER
);
CREATE TABLE IF NOT EXISTS sweep_members (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE, member INTEGER NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (sweep_id, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS remedies (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER, action TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0, note TEXT
);
"""


@dataclass
class Run:
    """A stored run, as read back from the store."""

    id: str
    name: str | None
    created: str
    status: str
    config: dict[str, Any]
    plan: dict[str, Any] | None
    final: dict[str, Any] | None
    lr: float | None
    seconds: float | None
    steps: int | None
    stop_reason: str | None
    error: str | None
    dir: Path
    findings: list[dict[str, Any]] = field(default_factory=list)
    remedies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        """Where the run's latest checkpoint is (or would be)."""
        return self.dir / "checkpoint.pt"


class Store:
    """A folder holding ``gdlab.db`` and one sub-folder per run.

    Args:
        root: the folder; created if missing (unless ``create`` is False). Errors if it cannot be written.
    """

    def __init__(self, root: str | Path = DEFAULT_STORE, *, create: bool = True) -> None:
        self.root = Path(root)
        if not create and not (self.root / "gdlab.db").is_file():
            raise StoreError(f"no run store at '{root}': expected a folder written by gdlab train (see --store)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            self._db = sqlite3.connect(self.root / "gdlab.db", timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            if type(e) is sqlite3.DatabaseError:  # not a write problem: the file is not (or no longer) a database
                raise StoreError(f"store '{root}' is damaged: {self.root / 'gdlab.db'} is not a readable database "
                                 f"({e}): expected a run store written by gdlab; move that file aside (nothing is "
                                 "deleted) or choose another --store") from None
            reason = getattr(e, "strerror", None) or str(e)
            raise StoreError(f"store directory '{root}' cannot be written ({reason}): expected a writable "
                             "folder; choose another with --store") from None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:  # one transaction: all or nothing
                yield self._db
        except sqlite3.Error as e:
            raise StoreError(f"store '{self.root}' could not be written: {e}") from None

    # -- runs ----------------------------------------------------------------------------------------------

    def create_run(self, config: dict[str, Any], plan: dict[str, Any] | None = None, *,
                   name: str | None = None) -> str:
        """Record a new run as ``running`` and make its folder; returns its id (``YYYYmmdd-HHMMSS-xxxx``)."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        now = _now()
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, name, created, updated, status, config, plan, pid, host) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, name, now, now, _dumps(config), _dumps(plan), os.getpid(), socket.gethostname()),
            )
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    def reopen(self, run_id: str, *, step: int, epochs: int) -> None:
        """Mark a run ``running`` again to resume it from ``step``, dropping metrics recorded after it."""
        with self._write() as db:
            db.execute("DELETE FROM step_metrics WHERE run_id = ? AND step > ?", (run_id, step))
            db.execute("DELETE FROM epoch_metrics WHERE run_id = ? AND epoch > ?", (run_id, epochs))
            db.execute("DELETE FROM findings WHERE run_id = ?", (run_id,))
            db.execute("UPDATE runs SET status = 'running', updated = ?, pid = ?, host = ?, error = NULL, "
                       "stop_reason = NULL WHERE id = ?", (_now(), os.getpid(), socket.gethostname(), run_id))

    def update_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Replace a run's stored config (a resumed run given a longer budget)."""
        with self._write() as db:
            db.execute("UPDATE runs SET config = ?, updated = ? WHERE id = ?", (_dumps(config), _now(), run_id))

    def finish(self, run_id: str, status: str, *, final: dict[str, Any] | None = None, lr: float | None = None,
               seconds: float | None = None, steps: int | None = None, stop_reason: str | None = None,
               error: str | None = None) -> None:
        """Close a run with ``status`` (``finished``, ``failed`` or ``stopped``) and its final numbers."""
        if status not in STATUSES:
            raise InvalidParameter("status", status, f"one of {', '.join(STATUSES)}")
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = ?, updated = ?, final = ?, lr = ?, seconds = ?, steps = ?, "
                "stop_reason = ?, error = ? WHERE id = ?",
                (status, _now(), _dumps(final), lr, seconds, steps, stop_reason, error, run_id),
            )

    def add_steps(self, run_id: str, rows: Iterable[dict[str, float]]) -> None:
        """Store per-step rows; each has a ``step`` key; NaN values are left out."""
        self._add("step_metrics", "step", run_id, rows)

    def add_epochs(self, run_id: str, rows: Iterable[dict[str, float]]) -> None:
        """Store per-epoch rows; each has an ``epoch`` key; NaN values are left out."""
        self._add("epoch_metrics", "epoch", run_id, rows)

    def _add(self, table: str, index: str, run_id: str, rows: Iterable[dict[str, float]]) -> None:
        values = [
            (run_id, int(row[index]), key, value)
            for row in rows
            for key, value in row.items()
            if key != index and value is not None and not math.isnan(value)
        ]
        with self._write() as db:
            db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?)", values)

    def add_findings(self, run_id: str, findings: Iterable[dict[str, Any]]) -> None:
        """Store findings (dicts with code, severity, step, evidence, explanation, remedy)."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, f["code"], f["severity"], f.get("step"), _dumps(f.get("evidence")),
                  f.get("explanation"), _dumps(f.get("remedy"))) for f in findings],
            )

    def add_remedies(self, run_id: str, remedies: Iterable[dict[str, Any]]) -> None:
        """Record what the doctor did (``step``, ``action``, ``params``, ``reason``)."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO remedies (run_id, step, action, applied, note) VALUES (?, ?, ?, 1, ?)",
                [(run_id, r.get("step"), r["action"], _dumps({"params": r.get("params"), "reason": r.get("reason")}))
                 for r in remedies],
            )

    # -- sweeps --------------------------------------------------------------------------------------------

    def add_sweep(self, kind: str, config: dict[str, Any], members: list[dict[str, Any]], *,
                  summary: dict[str, Any] | None = None, name: str | None = None, seconds: float | None = None,
                  steps: int | None = None) -> str:
        """Record a finished sweep (``kind`` ``sweep``, ``restarts`` or ``lr_select``) and its members' rows in
        one transaction; returns its id (``s``-prefixed, like a run id)."""
        sweep_id = "s" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        with self._write() as db:
            db.execute("INSERT INTO sweeps (id, name, kind, created, config, summary, seconds, steps) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (sweep_id, name, kind, _now(), _dumps(config), _dumps(summary or {}), seconds, steps))
            db.executemany("INSERT INTO sweep_members (sweep_id, member, row) VALUES (?, ?, ?)",
                           [(sweep_id, i, _dumps(row)) for i, row in enumerate(members)])
        return sweep_id

    def sweeps(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored sweeps, newest first: ``id``, ``name``, ``kind``, ``created``, ``config``, ``summary``,
        ``seconds``, ``steps``, ``members`` (the count)."""
        sql = ("SELECT id, name, kind, created, config, summary, seconds, steps, (SELECT COUNT(*) FROM "
               "sweep_members m WHERE m.sweep_id = s.id) FROM sweeps s ORDER BY rowid DESC"
               + (f" LIMIT {int(limit)}" if limit else ""))
        return [{"id": r[0], "name": r[1], "kind": r[2], "created": r[3], "config": _loads(r[4]),
                 "summary": _loads(r[5]), "seconds": r[6], "steps": r[7], "members": r[8]} for r in self._query(sql)]

    def get_sweep(self, ref: str) -> dict[str, Any]:
        """A stored sweep by id, unique id prefix or name, with its ``rows`` (one per member)."""
        found = [s for s in self.sweeps() if s["id"] == ref] or [s for s in self.sweeps() if s["id"].startswith(ref)]
        if len(found) > 1:
            raise RunNotFound(f"sweep {ref!r} is ambiguous: it starts {len(found)} sweep ids; give more of the id")
        found = found or [s for s in self.sweeps() if s["name"] == ref][:1]
        if not found:
            raise RunNotFound(f"unknown sweep {ref!r} in store '{self.root}': expected a sweep id, id prefix or "
                              "name (see gdlab runs)")
        sweep = found[0]
        sweep["rows"] = [_loads(r[0]) for r in self._query(
            "SELECT row FROM sweep_members WHERE sweep_id = ? ORDER BY member", (sweep["id"],))]
        return sweep

    # -- reading -------------------------------------------------------------------------------------------

    def runs(self, *, limit: int | None = None) -> list[Run]:
        """Stored runs, newest first; runs left ``running`` by a dead process are marked ``failed`` first."""
        self._close_abandoned()
        sql = "SELECT * FROM runs ORDER BY rowid DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._run(row) for row in self._query(sql)]

    def get(self, ref: str) -> Run:
        """The run named by ``ref``: an id, a unique id prefix, a name (its latest run) or ``last``."""
        self._close_abandoned()
        if ref in ("last", "latest"):
            rows = self._query("SELECT * FROM runs ORDER BY rowid DESC LIMIT 1")
        else:
            rows = self._query("SELECT * FROM runs WHERE id = ?", (ref,))
            rows = rows or self._query("SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\'",
                                       (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",))
            if len(rows) > 1:
                raise RunNotFound(f"run {ref!r} is ambiguous: it starts {len(rows)} run ids; give more of the id")
            rows = rows or self._query("SELECT * FROM runs WHERE name = ? ORDER BY rowid DESC LIMIT 1", (ref,))
        if not rows:
            raise RunNotFound(f"unknown run {ref!r} in store '{self.root}': expected a run id, id prefix or "
                              "name (see gdlab runs)")
        run = self._run(rows[0])
        run.findings = [
            {"code": r[0], "severity": r[1], "step": r[2], "evidence": _loads(r[3]), "explanation": r[4],
             "remedy": _loads(r[5])}
            for r in self._query("SELECT code, severity, step, evidence, explanation, remedy FROM findings "
                                 "WHERE run_id = ? ORDER BY rowid", (run.id,))
        ]
        run.remedies = [
            {"step": r[0], "action": r[1], **(_loads(r[2]) or {})}
            for r in self._query("SELECT step, action, note FROM remedies WHERE run_id = ? ORDER BY rowid", (run.id,))
        ]
        return run

    def delete_run(self, ref: str) -> Run:
        """Delete a run that is not ``running``: its rows (metrics, findings, remedies: all that references it)
        in one transaction, then its folder. A crash in between leaves at worst a folder no row points to, never
        a row without its run. Returns the run as it was."""
        run = self.get(ref)
        with self._write() as db:
            gone = db.execute("DELETE FROM runs WHERE id = ? AND status != 'running'", (run.id,)).rowcount
        if not gone:
            raise StoreError(f"run {run.id} is running: stop it first (or wait for it to finish), then delete it")
        folder = self.run_dir(run.id)
        if folder.exists():
            trash = folder.with_name(f".deleted-{run.id}")
            os.replace(folder, trash)  # one rename: the run's folder is there whole or not at all
            shutil.rmtree(trash, ignore_errors=True)
        return run

    def history(self, run_id: str) -> History:
        """The run's per-step and per-epoch metrics as a :class:`History`."""
        history = History()
        for table, index, target in (("step_metrics", "step", history.steps),
                                     ("epoch_metrics", "epoch", history.epochs)):
            rows: dict[int, dict[str, float]] = {}
            for i, key, value in self._query(f"SELECT {index}, key, value FROM {table} WHERE run_id = ? "
                                             f"ORDER BY {index}", (run_id,)):
                rows.setdefault(i, {index: i})[key] = math.nan if value is None else value
            for row in rows.values():
                target.append(row)
        return history

    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder."""
        return self.root / run_id

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"store '{self.root}' could not be read: {e}") from None

    def _run(self, row: Any) -> Run:
        (id_, name, created, _updated, status, config, plan, final, lr, seconds, steps, stop_reason, error,
         _pid, _host) = row
        return Run(id_, name, created, status, _loads(config), _loads(plan), _loads(final), lr, seconds, steps,
                   stop_reason, error, self.run_dir(id_))

    def _close_abandoned(self) -> None:
        host = socket.gethostname()
        dead = [run_id for run_id, pid, h in self._query("SELECT id, pid, host FROM runs WHERE status = 'running'")
                if h == host and pid is not None and not _alive(pid)]
        for run_id in dead:  # keep what it recorded: only the status, the error and the steps reached change
            with self._write() as db:
                db.execute("UPDATE runs SET status = 'failed', updated = ?, error = ?, steps = (SELECT MAX(step) "
                           "FROM step_metrics WHERE run_id = ?) WHERE id = ?",
                           (_now(), "the process ended without closing the run (killed?)", run_id, run_id))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, allow_nan=True)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
