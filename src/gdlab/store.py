"""The run store: SQLite (WAL mode) at ``<root>/gdlab.db``, with a folder per run for artifacts.

Tables: ``runs`` (config, plan, status ``running | finished | failed | stopped``, final metrics), ``blocks`` (a
run's step and epoch rows packed a block of rows at a time, the older ones merged into buckets: see
:meth:`Store.add_steps`; a store written before them keeps one row per step and key in ``step_metrics``,
``step_buckets`` and ``epoch_metrics``, read still), ``findings`` and ``remedies`` (filled by the doctor),
``sweeps`` and ``sweep_members`` (a sweep or restarts, recorded whole when it ends, one row per member). A run
whose process died without closing it is marked ``failed`` the next time the store lists it, so no run stays
``running`` for ever: the process running a run holds a lock on a file in its folder, and a lock nobody holds is a
run nobody runs (see :meth:`Store.create_run`).

What the store promises: an id read from the database becomes a path only when it has gdlab's pattern and its
folder stays inside the store (:meth:`Store.run_dir`); a damaged database (not SQLite, an unreadable schema, an
empty or missing one beside run folders) is reported and never written into; a store opened for reading
(``create=False``) is never written.

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
import re
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdlab.errors import InvalidParameter, RunNotFound, StoreError
from gdlab.guard import printable
from gdlab.records import History, Table
from gdlab.records.history import SPREAD

if TYPE_CHECKING:  # the blocks (numpy) are imported where rows are read or written: gdlab runs needs neither
    from gdlab.records.blocks import Block

try:  # POSIX: a run's liveness is a lock its process holds (see Store.create_run)
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["Store", "Run", "STATUSES", "DEFAULT_STORE", "STORE_HELP", "STEP_ROWS", "SERIES_BYTES", "BLOCK",
           "SCHEMA_VERSION", "SPREAD", "RUN_ID", "SWEEP_ID", "LOCK", "Rows", "NoStore", "check_id"]

DEFAULT_STORE = "gdlab-runs"
STORE_HELP = "Run store folder (SQLite database and one folder per run)."
"""The ``--store`` flag's help (``Config.store``'s), here so that a command that only reads the store needs no
config (and no torch)."""
STATUSES = ("running", "finished", "failed", "stopped")

STEP_ROWS = 20_000
"""The newest steps of a run kept at full resolution (``fit(step_rows=...)``, ``--step-rows``); the steps before
them are merged into buckets that keep each metric's mean, min and max (see :meth:`Store.add_steps`)."""

SERIES_BYTES = 8_000_000
"""What a run's steps (and, apart, its epochs) may take in the store at most, whatever the number of keys: half for
the rows kept as recorded (at most ``step_rows`` of them, fewer when each holds many values) and half for the
buckets of the older ones (see :meth:`Store.add_steps`)."""

BLOCK = 1024
"""Rows (or buckets) per stored block: the unit the store writes, merges and reads (see docs/store.md)."""

SCHEMA_VERSION = 2
"""The store's layout (SQLite's ``user_version``): 0, gdlab before 0.2, one row per step and key
(``step_metrics``, ``step_buckets``, ``epoch_metrics``, still read); 2, rows packed in ``blocks``. A store of a
later version is refused: this gdlab would not read its rows."""

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
"""The pattern of a run id (``YYYYmmdd-HHMMSS-xxxx``, as :meth:`Store.create_run` makes it and every gdlab store
has held): an id from the database becomes a path only when it matches."""

SWEEP_ID = re.compile(r"s\d{8}-\d{6}-[0-9a-f]{4}")
"""The pattern of a sweep's (or restarts') id: ``s`` and a run id's pattern."""

Rows = Iterable[Mapping[str, Any]] | Mapping[str, Sequence[float]]
"""Rows for :meth:`Store.add_steps`: dicts (one per row), or equal-length columns by key."""

LOCK = ".lock"
"""The file in a run's folder that the process running it holds locked (``flock``) until it closes the run."""

_MAGIC = b"SQLite format 3\x00"
ABANDONED = "the process ended without closing the run (killed?)"

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
CREATE TABLE IF NOT EXISTS step_buckets (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL, key TEXT NOT NULL,
    width INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL, min REAL, max REAL, PRIMARY KEY (run_id, step, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, series TEXT NOT NULL CHECK (series IN ('step',
    'epoch')), first INTEGER NOT NULL, last INTEGER NOT NULL, width INTEGER NOT NULL, rows INTEGER NOT NULL,
    present INTEGER NOT NULL, keys TEXT NOT NULL, idx BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, series, first)
);
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
_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


def _statements(tables: set[str]) -> list[str]:
    """The schema's statements that create the tables not among ``tables``."""
    return [statement.strip() for statement in _SCHEMA.split(";")
            if statement.strip() and re.search(r"EXISTS (\w+)", statement)[1] not in tables]  # type: ignore[index]


def _read_only(database: Path) -> sqlite3.Connection:
    """A connection that never writes ``database``: SQLite's read-only mode, or, where the folder is read-only
    (SQLite cannot make the index of the write-ahead log beside it), the file read as immutable."""
    uri = database.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)


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


class NoStore(StoreError):
    """There is no run store at the folder given (for a command that only reads one)."""


def check_id(value: str, *, sweep: bool = False) -> str:
    """``value`` if it is a run id (a sweep id with ``sweep=True``) as gdlab makes them, else
    :class:`~gdlab.errors.StoreError`: an id read from a store becomes a path only after this check.

    Example:
        >>> check_id("20261130-063901-ff49")
        '20261130-063901-ff49'
        >>> check_id("../victim")
        Traceback (most recent call last):
        ...
        gdlab.errors.StoreError: run id '../victim' is not a gdlab run id (expected YYYYmmdd-HHMMSS-xxxx)
    """
    pattern = SWEEP_ID if sweep else RUN_ID
    if not isinstance(value, str) or not pattern.fullmatch(value):
        kind = "sweep" if sweep else "run"
        raise StoreError(f"{kind} id {printable(repr(value))} is not a gdlab {kind} id (expected "
                         f"{'s' if sweep else ''}YYYYmmdd-HHMMSS-xxxx)")
    return value


class Store:
    """A folder holding ``gdlab.db`` and one sub-folder per run.

    The database is checked before anything is written into it: a file that is not a SQLite database, one whose
    schema cannot be read, or an empty or missing one beside run folders is reported as damaged
    (:class:`~gdlab.errors.StoreError`) and left as it is.

    Args:
        root: the folder; created if missing (unless ``create`` is False). Errors if it cannot be written.
        create: make the store if it is missing; False: it must exist (:class:`NoStore` otherwise).
        write: open it for writing [default: ``create``]. A store opened only for reading (``create=False``:
            what the reading commands do) is never written: no schema script, no write probe, SQLite's
            read-only mode; it opens on a read-only folder, and a run whose process died reads as ``failed``
            without that being stored.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> run_id = Store(root).create_run({})
        >>> Store(root, create=False).get(run_id).status  # this process still runs it
        'running'
    """

    def __init__(self, root: str | Path = DEFAULT_STORE, *, create: bool = True, write: bool | None = None) -> None:
        if isinstance(root, str) and not root.strip():
            raise InvalidParameter("--store", root, "a folder path (an empty one would be the current folder)")
        self.root = Path(root)
        self.writable = create if write is None else write
        self._locks = _RunLocks(self.run_dir)  # the runs this store runs, each with its lock held
        self._abandoned: set[str] = set()  # runs seen dead by a store opened for reading (not stored)
        self._db = _connect(self.root, root, self.writable, create)
        self._rows = _Blocks(self.root)

    def close(self) -> None:
        """Close the database connection (and let go of the runs this store was running: see
        :meth:`create_run`)."""
        self._locks.release_all()
        self._db.close()

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"store '{printable(self.root)}' was opened for reading: open it with write=True to "
                             "change it")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._check_writable()
        try:
            with self._db:  # one transaction: all or nothing
                yield self._db
        except sqlite3.Error as e:
            if type(e) is sqlite3.DatabaseError:  # a damaged page met while writing: SQLite rolled back
                raise _damaged(self.root, self.root / "gdlab.db", str(e)) from None
            raise StoreError(f"store '{printable(self.root)}' could not be written: {e}") from None

    # -- runs ----------------------------------------------------------------------------------------------

    def create_run(self, config: dict[str, Any], plan: dict[str, Any] | None = None, *,
                   name: str | None = None) -> str:
        """Record a new run as ``running`` and make its folder; returns its id (``YYYYmmdd-HHMMSS-xxxx``).

        This process holds the run's lock (:data:`LOCK` in its folder, ``flock``) until :meth:`finish` (or
        :meth:`close`, or its death: the system lets go of a dead process's locks), so any other process, or
        another :class:`Store` in this one, can tell a live run from one whose process is gone, whatever its pid
        (a container's pids repeat). Where there is no lock (Windows, a filesystem without ``flock``, a run
        stored before runs held one) the pid and host decide."""
        run_id = check_id(time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2))
        now = _now()
        self._check_writable()
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        self._locks.hold(run_id)  # before the row: a row marked running always has its lock
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO runs (id, name, created, updated, status, config, plan, pid, host) "
                    "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    (run_id, name, now, now, _dumps(config), _dumps(plan), os.getpid(), socket.gethostname()),
                )
        except BaseException:
            self._locks.release(run_id)
            raise
        return run_id

    def reopen(self, run_id: str, *, step: int, epochs: int) -> None:
        """Mark a run ``running`` again to resume it from ``step``, dropping metrics recorded after it; this
        process holds its lock (see :meth:`create_run`) until :meth:`finish`. A run whose lock another process
        holds is refused (:class:`~gdlab.errors.StoreError`)."""
        self._locks.hold(run_id)
        try:
            with self._write() as db:
                db.execute("DELETE FROM step_metrics WHERE run_id = ? AND step > ?", (run_id, step))
                # a bucket reaching past the checkpoint goes whole: its steps after it are redone
                db.execute("DELETE FROM step_buckets WHERE run_id = ? AND step > ?", (run_id, step))
                db.execute("DELETE FROM epoch_metrics WHERE run_id = ? AND epoch > ?", (run_id, epochs))
                self._rows.trim(db, run_id, "step", step)
                self._rows.trim(db, run_id, "epoch", epochs)
                db.execute("DELETE FROM findings WHERE run_id = ?", (run_id,))
                db.execute("UPDATE runs SET status = 'running', updated = ?, pid = ?, host = ?, error = NULL, "
                           "stop_reason = NULL WHERE id = ?", (_now(), os.getpid(), socket.gethostname(), run_id))
        except BaseException:
            self._locks.release(run_id)
            raise

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
        try:
            with self._write() as db:
                db.execute(
                    "UPDATE runs SET status = ?, updated = ?, final = ?, lr = ?, seconds = ?, steps = ?, "
                    "stop_reason = ?, error = ? WHERE id = ?",
                    (status, _now(), _dumps(final), lr, seconds, steps, stop_reason, error, run_id),
                )
        finally:
            if status != "running":
                self._locks.release(run_id)  # the run is closed (or could not be: it reads as dead, not as live)

    def add_steps(self, run_id: str, rows: Rows, *, step_rows: int = 0) -> None:
        """Store per-step rows: dicts with a ``step`` key, or equal-length columns (a mapping of key to values,
        ``step`` among them); NaN values (and :data:`SPREAD` columns) are left out. A step stored already is
        replaced, with every step after it.

        The rows are packed in blocks (:data:`BLOCK` rows each: the steps, then each key's values, float64; see
        :mod:`gdlab.records.blocks`). With ``step_rows`` > 0 the run keeps its newest ``step_rows`` steps as
        recorded (and up to a sixteenth more, moved in batches; fewer when they would take more than half of
        :data:`SERIES_BYTES`), and the steps before them in at most ``step_rows // 4`` buckets: consecutive steps
        (a power-of-two number, aligned to multiples of it) merged into one row holding each key's mean, min, max
        and how many values it merged. As the run grows the bucket width doubles, each pair of buckets merged into
        one, so a run of any length, with any number of keys, stores at most :data:`SERIES_BYTES` of steps, and a
        spike in an old step survives as its bucket's max. The rows and the merge are one transaction: a crash
        leaves the store before or after both. 0 keeps every step.
        """
        self.add_rows(run_id, steps=rows, step_rows=step_rows)

    def add_epochs(self, run_id: str, rows: Rows, *, step_rows: int = 0) -> None:
        """Store per-epoch rows (dicts with an ``epoch`` key, or columns), bounded as :meth:`add_steps` bounds
        steps (a full-batch run has an epoch per step)."""
        self.add_rows(run_id, epochs=rows, step_rows=step_rows)

    def add_rows(self, run_id: str, *, steps: Rows = (), epochs: Rows = (), step_rows: int = 0) -> None:
        """Store step and epoch rows (see :meth:`add_steps`) in one transaction: what the Recorder writes.

        Example:
            >>> import tempfile
            >>> store = Store(tempfile.mkdtemp())
            >>> run_id = store.create_run({})
            >>> store.add_rows(run_id, steps={"step": [1, 2], "loss": [0.5, 0.25]}, epochs=[{"epoch": 1, "x": 1.0}])
            >>> store.history(run_id).steps["loss"], store.history(run_id).epochs["x"]
            ([0.5, 0.25], [1.0])
        """
        if isinstance(step_rows, bool) or not isinstance(step_rows, int) or step_rows < 0:
            raise InvalidParameter("step_rows", step_rows, "0 (keep every step) or a positive integer")
        packed_rows = [(series, _block(rows, series)) for series, rows in (("step", steps), ("epoch", epochs))]
        with self._write() as db:
            for series, block in packed_rows:
                self._rows.append(db, run_id, series, block, step_rows)

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
        rows = self._query(sql)
        for r in rows:
            self.sweep_dir(r[0])  # an id that is not gdlab's is a damaged store, before it names a file
        return [{"id": r[0], "name": r[1], "kind": r[2], "created": r[3], "config": _loads(r[4]),
                 "summary": _loads(r[5]), "seconds": r[6], "steps": r[7], "members": r[8]} for r in rows]

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

    def delete_run(self, ref: str, *, force: bool = False) -> Run:
        """Delete a run that is not ``running`` (with ``force``, one marked ``running`` too: one whose process
        no check could prove gone), never one whose lock a live process holds: its rows (metrics, findings,
        remedies: all that references it) in one transaction, then its folder. A crash in between leaves at worst
        a folder no row points to, never a row without its run. Returns the run as it was.

        Example:
            >>> import tempfile
            >>> store = Store(tempfile.mkdtemp())
            >>> run_id = store.create_run({})
            >>> store.delete_run(run_id)
            Traceback (most recent call last):
            ...
            gdlab.errors.StoreError: run ... is running: stop it first (or wait for it to finish), then delete it...
        """
        run = self.get(ref)
        running = StoreError(f"run {run.id} is running: stop it first (or wait for it to finish), then delete it; "
                             "if no process runs it any more (killed in a container, on another machine), delete "
                             "it with --force")
        if run.status == "running" and not force:
            raise running
        folder = self.run_dir(run.id)  # checked: inside the store, never the store itself
        with self._locks.claim(run.id):
            with self._write() as db:
                gone = db.execute("DELETE FROM runs WHERE id = ? AND (status != 'running' OR ?)",
                                  (run.id, bool(force))).rowcount
            if not gone:  # it was resumed meanwhile
                raise running
            if folder.exists():
                trash = folder.with_name(f".deleted-{run.id}")
                os.replace(folder, trash)  # one rename: the run's folder is there whole or not at all
                shutil.rmtree(trash, ignore_errors=True)
        return run

    def abandon(self, ref: str) -> Run:
        """Mark the run ``ref``, left ``running`` by a process that no check could prove gone (killed in a
        container, on another machine, stored before runs held a lock), ``failed``, so that it can be resumed:
        what ``gdlab train --resume RUN --force`` does. A run whose lock a live process holds is refused; a run
        not ``running`` is left as it is. Returns the run as it is now."""
        run = self.get(ref)
        if run.status == "running":
            with self._locks.claim(run.id), self._write() as db:
                db.execute("UPDATE runs SET status = 'failed', updated = ?, error = ? WHERE id = ? AND "
                           "status = 'running'", (_now(), "marked failed by --force: no process was known to "
                                                  "run it", run.id))
        return self.get(run.id)

    def history(self, run_id: str) -> History:
        """The run's per-step and per-epoch metrics as a :class:`History`.

        A bucket of merged steps (see :meth:`add_steps`) reads as one row at its last step holding each key's
        mean, with the key's min and max in the :data:`SPREAD` columns (``min:loss``, ``max:loss``). Rows a store
        of schema version 0 holds (one per step and key) read the same way, before the run's blocks."""
        from gdlab.records import blocks as packed

        history = History()
        for series in ("step", "epoch"):
            try:
                columns = packed.to_columns(self._rows.read(self._db, run_id, series), series)
            except sqlite3.Error as e:
                raise _damaged(self.root, self.root / "gdlab.db", str(e)) from None
            setattr(history, f"{series}s", _joined(_rows_per_key(self._query, run_id, series), columns))
        return history

    def namesakes(self, run: Run) -> list[str]:
        """The ids of the other runs named as ``run`` is, newest first (a name finds the newest: see :meth:`get`)."""
        if run.name is None:
            return []
        return [i for (i,) in self._query("SELECT id FROM runs WHERE name = ? AND id != ? ORDER BY rowid DESC",
                                          (run.name, run.id))]

    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder: ``<store>/<run id>``, for an id of gdlab's pattern (:data:`RUN_ID`) whose
        folder stays inside the store, else :class:`~gdlab.errors.StoreError` (the store is damaged)."""
        return self._inside(run_id, sweep=False)

    def sweep_dir(self, sweep_id: str) -> Path:
        """A sweep's folder (its plots): ``<store>/<sweep id>``, checked as :meth:`run_dir` checks a run's."""
        return self._inside(sweep_id, sweep=True)

    def _inside(self, ident: str, *, sweep: bool) -> Path:
        try:
            check_id(ident, sweep=sweep)
        except StoreError as e:
            raise StoreError(f"store '{printable(self.root)}' is damaged: {e}; nothing was changed (move the store "
                             "aside, or choose another --store)") from None
        path = self.root / ident
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)  # links followed: the folder must be the store's, not one a link leads to
        if real == root or os.path.commonpath([root, real]) != root:
            raise StoreError(f"store '{printable(self.root)}' is damaged: the folder of {'sweep' if sweep else 'run'} "
                             f"{ident} leads outside it ({printable(real)}); nothing was changed (move the store "
                             "aside, or choose another --store)")
        return path

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            if type(e) is sqlite3.DatabaseError:
                raise _damaged(self.root, self.root / "gdlab.db", str(e)) from None
            raise StoreError(f"store '{printable(self.root)}' could not be read: {e}") from None

    def _run(self, row: Any) -> Run:
        (id_, name, created, _updated, status, config, plan, final, lr, seconds, steps, stop_reason, error,
         _pid, _host) = row
        folder = self.run_dir(id_)
        if status == "running" and id_ in self._abandoned:  # seen dead by a store opened for reading
            status, error = "failed", ABANDONED
        return Run(id_, name, created, status, _loads(config), _loads(plan), _loads(final), lr, seconds, steps,
                   stop_reason, error, folder)

    def _close_abandoned(self) -> None:
        """Mark ``failed`` the runs left ``running`` by a process that is gone: one whose lock is free (whatever
        its pid or host), or, for a run without a lock file, one whose pid is gone on this host. A store opened
        for reading only reads them as failed."""
        host = socket.gethostname()
        for run_id, pid, h in self._query("SELECT id, pid, host FROM runs WHERE status = 'running'"):
            if run_id in self._locks or run_id in self._abandoned:
                continue
            with self._locks.gone(run_id, pid, here=h == host) as gone:
                if not gone:
                    continue
                if not self.writable:
                    self._abandoned.add(run_id)
                    continue
                with self._write() as db:  # keep what it recorded: only the status, the error and the steps change
                    db.execute("UPDATE runs SET status = 'failed', updated = ?2, error = ?3, steps = (SELECT MAX(s) "
                               "FROM (SELECT MAX(step) AS s FROM step_metrics WHERE run_id = ?1 UNION ALL SELECT "
                               "MAX(last) FROM blocks WHERE run_id = ?1 AND series = 'step')) WHERE id = ?1 AND "
                               "status = 'running'", (run_id, _now(), ABANDONED))



# -- the database, checked before anything is written into it ---------------------------------------------------


def _connect(root: Path, given: str | Path, writable: bool, create: bool) -> sqlite3.Connection:
    """The connection to ``root``'s database, checked (see :class:`Store`): for writing (the folder probed, the
    schema made or completed) or for reading only (never written; a table an older store lacks made in memory).
    ``given`` is the folder as the caller named it, for the messages."""
    database = root / "gdlab.db"
    _check_file(root, database, create)
    db: sqlite3.Connection | None = None
    try:
        if writable:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            db = sqlite3.connect(database, timeout=30)
        else:
            db = _read_only(database)
        tables = _check_schema(db, root, database)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"store '{printable(given)}' was written by a newer gdlab (schema version {version}; "
                             f"this one reads up to {SCHEMA_VERSION}): expected a store this gdlab wrote; upgrade "
                             "gdlab, or choose another --store")
        if writable:
            if not tables:  # a new store gives freed pages back to the disk (a merge frees about what it writes)
                db.execute("PRAGMA auto_vacuum=FULL")  # set before anything else is: then it cannot change
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA journal_size_limit={4 << 20}")  # the log shrinks back after a burst of writes
            if not tables >= _TABLES:  # a new store, or one written before a table was added
                db.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:  # its old rows stay as they are, and read (Store.history)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        else:  # a table an older store lacks reads as empty: made in memory, never in the store
            for statement in _statements(tables):
                db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
        return db
    except (OSError, sqlite3.Error) as e:
        if db is not None:
            db.close()
        if isinstance(e, StoreError):
            raise
        if type(e) is sqlite3.DatabaseError:  # not a write problem: the file is not (or no longer) a database
            raise _damaged(root, database, str(e)) from None
        reason = getattr(e, "strerror", None) or str(e)
        raise StoreError(f"store directory '{printable(given)}' cannot be {'written' if writable else 'read'} "
                         f"({reason}): expected a {'writable' if writable else 'readable'} folder; choose "
                         "another with --store") from None


def _damaged(root: Path, database: Path, reason: str) -> StoreError:
    return StoreError(f"store '{printable(root)}' is damaged: {printable(database)} is not a readable "
                      f"database ({reason}): expected a run store written by gdlab; move that file aside (nothing "
                      "is deleted) or choose another --store")


def _check_file(root: Path, database: Path, create: bool) -> None:
    """Before anything opens it: the database file is a SQLite one, and an empty or missing one is a new
    store only when no run folder is beside it."""
    try:
        size = database.stat().st_size if database.is_file() else None
        head = b""
        if size:
            with database.open("rb") as f:
                head = f.read(len(_MAGIC))
    except OSError as e:
        raise StoreError(f"store '{printable(root)}' cannot be read ({e.strerror or e}): expected a "
                         "readable folder; choose another with --store") from None
    if size and head != _MAGIC:
        raise _damaged(root, database, "file is not a database")
    if not size and _run_folders(root):
        state = "empty (0 bytes)" if size == 0 else "missing"
        raise StoreError(f"store '{printable(root)}' is damaged: it holds run folders but its database "
                         f"{printable(database)} is {state}: expected a run store written by gdlab; nothing was "
                         "written (restore gdlab.db, or choose another --store)")
    if size is None and not create:
        raise NoStore(f"no run store at '{printable(root)}': expected a folder written by gdlab train (see "
                      "--store)")


def _run_folders(root: Path) -> bool:
    try:
        return any(p.is_dir() and (RUN_ID.fullmatch(p.name) or SWEEP_ID.fullmatch(p.name))
                   for p in root.iterdir())
    except OSError:
        return False


def _check_schema(db: sqlite3.Connection, root: Path, database: Path) -> set[str]:
    """The database's tables, read from its schema and its ``runs`` table: a damaged file fails here, before
    a write (a cheap check: the schema page and the runs table, not every page; see docs/architecture.md)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "runs" in tables:
        db.execute("SELECT COUNT(*) FROM runs").fetchone()
    elif tables or _run_folders(root):
        what = "tables " + ", ".join(sorted(tables)) if tables else "no tables"
        raise StoreError(f"store '{printable(root)}' is damaged: {printable(database)} holds "
                         f"{printable(what)} but no runs table: expected a run store written by gdlab; nothing "
                         "was written (choose another --store)")
    return tables


# -- liveness: the run's lock -----------------------------------------------------------------------------------


class _RunLocks:
    """The locks of the runs a :class:`Store` runs (run id -> the open lock file: :data:`LOCK` in the run's
    folder, ``flock``), and the checks of other runs' locks; see :meth:`Store.create_run`."""

    def __init__(self, folder: Callable[[str], Path]) -> None:
        self._folder = folder  # run id -> its folder, checked (Store.run_dir)
        self._held: dict[str, int] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._held

    def hold(self, run_id: str) -> None:
        """Take the run's lock for this store's life of the run (released by :meth:`Store.finish`,
        :meth:`Store.close` or the process's death); a lock another process (or another store) holds is
        refused."""
        if fcntl is None or run_id in self._held:
            return
        try:
            fd = os.open(self._folder(run_id) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # no lock file can be made here: the pid and host decide
        for _ in range(10):  # a reader that found it dead holds it for one update
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held[run_id] = fd
                return
            except BlockingIOError:
                time.sleep(0.02)
            except OSError:  # no flock on this filesystem
                os.close(fd)
                return
        os.close(fd)
        raise StoreError(f"run {run_id} is running in another process (it holds the run's lock): stop it first "
                         "(Ctrl-C), or wait for it to finish")

    def release(self, run_id: str) -> None:
        fd = self._held.pop(run_id, None)
        if fd is not None:
            os.close(fd)  # closing the file lets go of its lock

    def release_all(self) -> None:
        for run_id in list(self._held):
            self.release(run_id)

    @contextmanager
    def claim(self, run_id: str) -> Iterator[None]:
        """Hold the run's lock (if it has one) while changing it from outside: refused while a live process
        holds it."""
        if run_id in self._held:  # this store runs it
            raise StoreError(f"run {run_id} is running in this process: finish it first")
        fd = _try_lock(self._folder(run_id) / LOCK)
        if fd is False:
            raise StoreError(f"run {run_id} is running: a live process holds its lock; stop it first (Ctrl-C), or "
                             "wait for it to finish (--force does not override a live process)")
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def gone(self, run_id: str, pid: int | None, *, here: bool) -> Iterator[bool]:
        """Whether the process of a run marked ``running`` is gone: its lock is free (held until the block
        ends), or, for a run without a lock file, its pid is gone on this host (``here``: the run's host)."""
        fd = _try_lock(self._folder(run_id) / LOCK)
        if fd is False:  # held: alive
            yield False
            return
        try:
            yield not (fd is None and (not here or pid is None or _alive(pid)))  # no lock to read: the pid decides
        finally:
            if fd is not None:
                os.close(fd)


class _Blocks:
    """A run's rows in the ``blocks`` table, one series (``step`` or ``epoch``) at a time: appended, merged into
    buckets past the bound, trimmed on resume, read back (see :meth:`Store.add_steps`)."""

    def __init__(self, root: Path) -> None:
        self.root = root  # for the messages

    def read(self, db: sqlite3.Connection, run_id: str, series: str, where: str = "",
             args: tuple[Any, ...] = ()) -> list[Block]:
        """The run's blocks of ``series`` (those matching ``where`` too), in index order, each checked: bytes that
        do not decode are a damaged store (:class:`~gdlab.errors.StoreError`), never a guess."""
        from gdlab.records import blocks as packed

        found = []
        for first, width, keys, index, data in db.execute(
                f"SELECT first, width, keys, idx, data FROM blocks WHERE run_id = ? AND series = ? {where} "
                "ORDER BY first", (run_id, series, *args)):
            try:
                block = packed.decode(width, keys, index, data)
                if not len(block) or int(block.index[0]) != first:
                    raise ValueError("its index does not start where its row says")
            except (ValueError, TypeError) as e:  # a JSON error is a ValueError
                raise _damaged(self.root, self.root / "gdlab.db", f"the {series} rows of run {run_id} at {first} "
                               f"do not decode: {e}") from None
            found.append(block)
        return found

    def append(self, db: sqlite3.Connection, run_id: str, series: str, block: Block, bound: int) -> None:
        """Add rows (replacing the stored ones from their first index on), gather the small blocks at the end,
        and merge the rows past the bound into buckets."""
        from gdlab.records import blocks as packed

        if not len(block):
            return
        self.trim(db, run_id, series, int(block.index[0]) - 1)
        _insert(db, run_id, series, block)
        tail = db.execute("SELECT first, rows FROM blocks WHERE run_id = ? AND series = ? AND width = 1 ORDER BY "
                          "first DESC LIMIT 16", (run_id, series)).fetchall()
        small = next((n for n, (_, rows) in enumerate(tail) if rows >= BLOCK), len(tail))
        if small >= 8:  # each flush writes a block: gathered 8 at a time, so a block is rewritten a few times at most
            last = self.read(db, run_id, series, "AND width = 1 AND first >= ?", (tail[small - 1][0],))
            self._replace(db, run_id, series, last, packed.concat(last))
        if bound:
            self._merge(db, run_id, series, bound)

    def trim(self, db: sqlite3.Connection, run_id: str, series: str, after: int) -> None:
        """Drop the rows past index ``after`` (a bucket reaching past it goes whole: its steps are redone)."""
        db.execute("DELETE FROM blocks WHERE run_id = ? AND series = ? AND first > ?", (run_id, series, after))
        for block in self.read(db, run_id, series, "AND last > ?", (after,)):
            self._replace(db, run_id, series, [block], block.take(block.index <= after))

    def _merge(self, db: sqlite3.Connection, run_id: str, series: str, bound: int) -> None:
        """Merge the rows before the newest ``bound`` (fewer when they would take more than half of
        :data:`SERIES_BYTES`) into buckets, at most ``bound // 4`` of them (see :meth:`Store.add_steps`)."""
        from gdlab.records import blocks as packed

        rows = db.execute("SELECT MIN(first), MAX(last), SUM(rows), SUM(present) FROM blocks WHERE run_id = ? AND "
                          "series = ? AND width = 1", (run_id, series)).fetchone()
        if rows[0] is None:
            return
        newest, last, count, present = rows
        top = db.execute("SELECT width, keys FROM blocks WHERE run_id = ? AND series = ? AND width > 1 ORDER BY "
                         "first DESC LIMIT 1", (run_id, series)).fetchone()
        oldest = db.execute("SELECT MIN(first) FROM blocks WHERE run_id = ? AND series = ? AND width > 1",
                            (run_id, series)).fetchone()[0]
        keys = {k for (text,) in db.execute("SELECT keys FROM blocks WHERE run_id = ? AND series = ? AND width = 1",
                                            (run_id, series)) for k in json.loads(text)}
        keys |= set(json.loads(top[1])) if top else set()
        k = max(1, len(keys))
        # bytes a row takes: its index, a presence bit per key, 8 per value (4 values per key in a bucket)
        kept = min(bound, max(1, int(SERIES_BYTES // 2 // (8 + k / 8 + 8 * present / count))))
        cap = max(1, min(kept // 4, int(SERIES_BYTES // 2 // (8 + k / 8 + 32 * k))))
        width = top[0] if top else 2
        first = newest if oldest is None else min(oldest, newest)
        cut = (last - kept + 1) // width * width  # the rows below it are merged
        while cut // width - first // width > cap:
            width *= 2
            cut = (last - kept + 1) // width * width
        if cut - newest < max(1, kept // 16):
            return  # too few to move yet: they go in batches, a sixteenth of the bound at least
        full = self.read(db, run_id, series, "AND width = 1 AND first < ?", (cut,))
        moving = packed.concat(full)
        # the stored buckets the moving rows join: all of them when the width grew, else those of the last block
        grown = top is None or width > top[0]
        joined = self.read(db, run_id, series, "AND width > 1 " + ("" if grown else "AND last >= ?"),
                           () if grown else (newest // width * width,))
        buckets = packed.merge(joined, [moving.take(moving.index < cut)], width)
        self._replace(db, run_id, series, [*joined, *full], buckets)
        _insert(db, run_id, series, moving.take(moving.index >= cut))

    def _replace(self, db: sqlite3.Connection, run_id: str, series: str, old: list[Block], new: Block) -> None:
        db.executemany("DELETE FROM blocks WHERE run_id = ? AND series = ? AND first = ?",
                       [(run_id, series, int(b.index[0])) for b in old])
        _insert(db, run_id, series, new)

def _insert(db: sqlite3.Connection, run_id: str, series: str, block: Block) -> None:
    """Store ``block``'s rows, :data:`BLOCK` a database row."""
    from gdlab.records import blocks as packed

    rows = []
    for start in range(0, len(block), BLOCK):
        part = block.take(slice(start, start + BLOCK))
        keys, index, data, present = packed.encode(part)
        rows.append((run_id, series, int(part.index[0]), int(part.index[-1]), part.width, len(part), present,
                     keys, index, data))
    db.executemany("INSERT INTO blocks (run_id, series, first, last, width, rows, present, keys, idx, data) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _block(rows: Rows, index: str) -> Block:
    """Rows (dicts, or columns) as a block of rows as recorded."""
    from gdlab.records import blocks as packed

    if isinstance(rows, Mapping):
        columns = rows
    else:
        listed = list(rows)
        keys = list(dict.fromkeys(k for row in listed for k in row))
        columns = {k: [math.nan if row.get(k) is None else row[k] for row in listed] for k in keys}
        if listed and index not in columns or any(index not in row for row in listed):
            raise KeyError(index)
    if not columns or not len(columns.get(index, ())):
        return packed.Block.empty()
    return packed.Block.rows(columns, index)


def _rows_per_key(query: Callable[..., list[Any]], run_id: str, series: str) -> Table:
    """The run's rows of ``series`` as a store of schema version 0 holds them (a row per index and key, a long
    run's older steps in ``step_buckets``)."""
    if series == "epoch":
        return _table("epoch", [], query("SELECT epoch, key, value FROM epoch_metrics WHERE run_id = ? ORDER BY "
                                         "epoch", (run_id,)))
    buckets = query("SELECT step, key, mean, min, max FROM step_buckets WHERE run_id = ? ORDER BY step", (run_id,))
    return _table("step", buckets, query("SELECT step, key, value FROM step_metrics WHERE run_id = ? ORDER BY step",
                                         (run_id,)))


def _joined(old: Table, columns: dict[str, list[float]]) -> Table:
    """A table of the rows a store of schema version 0 holds, then those of the run's blocks."""
    if not len(old):
        return Table(columns)
    if not columns:
        return old
    n, m = len(old), len(next(iter(columns.values())))
    keys = dict.fromkeys([*old.columns, *columns])
    return Table({k: (old.columns[k] if k in old.columns else [math.nan] * n)
                  + (columns[k] if k in columns else [math.nan] * m) for k in keys})


def _table(index: str, buckets: list[Any], rows: list[Any]) -> Table:
    """Columns from (index, key, mean, min, max) buckets and (index, key, value) rows, each ordered by index: one
    row per index, in order (the buckets come first: they hold the older steps). One pass over each."""
    indices = sorted({r[0] for r in buckets} | {r[0] for r in rows})
    position = {i: n for n, i in enumerate(indices)}
    columns: dict[str, list[float]] = {index: [float(i) for i in indices]} if indices else {}
    blank = [math.nan] * len(indices)
    nan = math.nan
    for source, prefixes in ((buckets, ("", *SPREAD)), (rows, ("",))):
        at, n = None, 0
        for i, key, *values in source:
            if i != at:
                at, n = i, position[i]
            for prefix, value in zip(prefixes, values):
                column = columns.get(prefix + key)
                if column is None:
                    column = columns[prefix + key] = blank.copy()
                column[n] = nan if value is None else value
    return Table(columns)


def _try_lock(path: Path) -> int | bool | None:
    """Take the lock of ``path`` without waiting, opening it read-only and never creating it: the open file (the
    lock now held: its owner is gone), False (a live process holds it), or None (no lock file, or no ``flock``
    here: the lock cannot tell)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:
        os.close(fd)
        return None
    return fd


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
