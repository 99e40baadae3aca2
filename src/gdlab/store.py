"""The run store: SQLite (WAL mode) at ``<root>/gdlab.db``, with a folder per run for artifacts.

Tables: ``runs`` (config, plan, status ``running | finished | failed | stopped``, final metrics),
``step_metrics`` and ``epoch_metrics`` (long format: one row per run, index and key), ``step_buckets`` (a long
run's older steps, merged: see :meth:`Store.add_steps`), ``findings`` and
``remedies`` (filled by the doctor), ``sweeps`` and ``sweep_members`` (a sweep or restarts, recorded whole
when it ends, one row per member). A run whose process died without closing it is marked ``failed`` the next
time the store lists it, so no run stays ``running`` for ever: the process running a run holds a lock on a file in
its folder, and a lock nobody holds is a run nobody runs (see :meth:`Store.create_run`).

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdlab.errors import InvalidParameter, RunNotFound, StoreError
from gdlab.guard import printable
from gdlab.records import History, Table

try:  # POSIX: a run's liveness is a lock its process holds (see Store.create_run)
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["Store", "Run", "STATUSES", "DEFAULT_STORE", "STEP_ROWS", "SPREAD", "RUN_ID", "SWEEP_ID", "LOCK",
           "NoStore", "check_id"]

DEFAULT_STORE = "gdlab-runs"
STATUSES = ("running", "finished", "failed", "stopped")

STEP_ROWS = 20_000
"""The newest steps of a run kept at full resolution (``fit(step_rows=...)``, ``--step-rows``); the steps before
them are merged into buckets that keep each metric's mean, min and max (see :meth:`Store.add_steps`)."""

SPREAD = ("min:", "max:")
"""The prefixes of the columns a :class:`History` read from the store gives a merged key: ``min:loss``, ``max:loss``
(NaN in the rows that hold one step)."""

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
"""The pattern of a run id (``YYYYmmdd-HHMMSS-xxxx``, as :meth:`Store.create_run` makes it and every gdlab store
has held): an id from the database becomes a path only when it matches."""

SWEEP_ID = re.compile(r"s\d{8}-\d{6}-[0-9a-f]{4}")
"""The pattern of a sweep's (or restarts') id: ``s`` and a run id's pattern."""

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

    def add_steps(self, run_id: str, rows: Iterable[dict[str, float]], *, step_rows: int = 0) -> None:
        """Store per-step rows; each has a ``step`` key; NaN values (and :data:`SPREAD` columns) are left out.

        With ``step_rows`` > 0 the run keeps its newest ``step_rows`` steps as recorded (and up to a sixteenth
        more, moved in batches), and the steps before them in at most ``step_rows // 4`` buckets: consecutive
        steps (a power-of-two number, aligned to multiples of it) merged into one row per key holding their mean,
        min and max and how many values they merged. As the run grows the bucket width doubles, each pair of
        buckets merged into one, so a run of any length stores at most about ``1.3 * step_rows`` rows per key,
        and a spike in an old step survives as its bucket's max. The rows and the merge are one transaction: a
        crash leaves the store before or after both. 0 keeps every step.
        """
        if isinstance(step_rows, bool) or not isinstance(step_rows, int) or step_rows < 0:
            raise InvalidParameter("step_rows", step_rows, "0 (keep every step) or a positive integer")
        with self._write() as db:
            self._insert(db, "step_metrics", "step", run_id, rows)
            if step_rows:
                _merge_old_steps(db, run_id, step_rows)

    def add_epochs(self, run_id: str, rows: Iterable[dict[str, float]]) -> None:
        """Store per-epoch rows; each has an ``epoch`` key; NaN values are left out."""
        with self._write() as db:
            self._insert(db, "epoch_metrics", "epoch", run_id, rows)

    @staticmethod
    def _insert(db: sqlite3.Connection, table: str, index: str, run_id: str,
                rows: Iterable[dict[str, float]]) -> None:
        values = [
            (run_id, int(row[index]), key, value)
            for row in rows
            for key, value in row.items()
            if key != index and value is not None and not math.isnan(value) and not key.startswith(SPREAD)
        ]
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
        mean, with the key's min and max in the :data:`SPREAD` columns (``min:loss``, ``max:loss``)."""
        history = History()
        buckets = self._query("SELECT step, key, mean, min, max FROM step_buckets WHERE run_id = ? ORDER BY step",
                              (run_id,))
        history.steps = _table("step", buckets, self._query(
            "SELECT step, key, value FROM step_metrics WHERE run_id = ? ORDER BY step", (run_id,)))
        history.epochs = _table("epoch", [], self._query(
            "SELECT epoch, key, value FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", (run_id,)))
        return history

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
                    db.execute("UPDATE runs SET status = 'failed', updated = ?, error = ?, steps = (SELECT MAX(step) "
                               "FROM step_metrics WHERE run_id = ?) WHERE id = ? AND status = 'running'",
                               (_now(), ABANDONED, run_id, run_id))



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
        if writable:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            if not tables >= _TABLES:  # a new store, or one written before a table was added
                db.executescript(_SCHEMA)
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


def _merge_old_steps(db: sqlite3.Connection, run_id: str, step_rows: int) -> None:
    """Merge the run's full-resolution steps before its newest ``step_rows`` into buckets (see
    :meth:`Store.add_steps`), inside the caller's transaction.

    A bucket of width ``w`` holds the steps ``s`` with the same ``s // w`` and is stored at its last step. Steps
    move only in whole buckets (below a multiple of ``w``), at least a sixteenth of ``step_rows`` at a time; when
    the buckets would number more than ``step_rows // 4`` the width doubles and the stored buckets are merged
    pairwise with the moving steps."""
    last = db.execute("SELECT MAX(step) FROM step_metrics WHERE run_id = ?", (run_id,)).fetchone()[0]
    if last is None:
        return
    top = db.execute("SELECT width FROM step_buckets WHERE run_id = ? ORDER BY step DESC LIMIT 1",
                     (run_id,)).fetchone()
    width = top[0] if top else 2
    oldest = db.execute("SELECT MIN(step) FROM step_buckets WHERE run_id = ?", (run_id,)).fetchone()[0]
    newest = db.execute("SELECT MIN(step) FROM step_metrics WHERE run_id = ?", (run_id,)).fetchone()[0]
    first = newest if oldest is None else min(oldest, newest)
    cap = max(1, step_rows // 4)
    cut = (last - step_rows + 1) // width * width  # the steps below it are merged
    while cut // width - first // width > cap:
        width *= 2
        cut = (last - step_rows + 1) // width * width
    if cut - newest < max(1, step_rows // 16):
        return  # too few to move yet: they go in batches, a sixteenth of the bound at least
    # the stored buckets the moving steps join: all of them when the width grew, else those in the moving ones' span
    since = 0 if top is None or width > top[0] else newest // width * width
    merged: dict[tuple[int, str], list[Any]] = {}  # (bucket, key) -> [last step, count, sum, min, max]
    for query, args in (
        ("SELECT step / ?1, key, MAX(step), COUNT(value), SUM(value), MIN(value), MAX(value) FROM step_metrics "
         "WHERE run_id = ?2 AND step < ?3 AND value IS NOT NULL GROUP BY 1, 2", (width, run_id, cut)),
        ("SELECT step / ?1, key, MAX(step), SUM(count), SUM(mean * count), MIN(min), MAX(max) FROM step_buckets "
         "WHERE run_id = ?2 AND step >= ?3 GROUP BY 1, 2", (width, run_id, since)),
    ):
        for bucket, key, end, count, total, low, high in db.execute(query, args):
            have = merged.get((bucket, key))
            if have is None:
                merged[(bucket, key)] = [end, count, total, low, high]
            else:  # NULL (an inf - inf sum, or no value) stays NULL
                have[0] = max(have[0], end)
                have[1] += count
                have[2] = None if have[2] is None or total is None else have[2] + total
                have[3] = _extreme(min, have[3], low)
                have[4] = _extreme(max, have[4], high)
    ends: dict[int, int] = {}  # each bucket's last step, the one its keys are stored at
    for (bucket, _), (end, *_) in merged.items():
        ends[bucket] = max(end, ends.get(bucket, end))
    db.execute("DELETE FROM step_metrics WHERE run_id = ? AND step < ?", (run_id, cut))
    db.execute("DELETE FROM step_buckets WHERE run_id = ? AND step >= ?", (run_id, since))
    db.executemany("INSERT INTO step_buckets (run_id, step, key, width, count, mean, min, max) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [(run_id, ends[bucket], key, width, count,
                     None if total is None or not count or math.isnan(total / count) else total / count, low, high)
                    for (bucket, key), (_, count, total, low, high) in merged.items()])


def _extreme(pick: Any, a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else pick(a, b)


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
