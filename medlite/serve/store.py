"""Stored PASI visits: SQLite through the standard library, with numbered migrations.

The database file is created readable by its owner only (it holds patient identifiers);
``PRAGMA user_version`` records which migrations have run, so a newer medlite upgrades an
older file in place and a restart loses nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from medlite.errors import DataError
from medlite.pasi import percent_change, response

#: Migrations in order; the n-th runs when the file's user_version is below n.
MIGRATIONS: tuple[str, ...] = (
    """CREATE TABLE visits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run TEXT NOT NULL,
        subject TEXT NOT NULL,
        visit TEXT,
        created TEXT NOT NULL,
        pasi REAL NOT NULL,
        severity TEXT NOT NULL,
        regional TEXT NOT NULL,
        components TEXT
    );
    CREATE INDEX visits_by_subject ON visits (run, subject, id);""",
)
RESPONSE_LEVELS = (50, 75, 90)


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)


class VisitStore:
    """The visits of every subject scored through the service.

    Args:
        path: the SQLite file (created with owner-only permissions when missing).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise DataError(f"{self.path}: the visit database is not a file")
        _create_private(self.path)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False)
        self._connection.row_factory = sqlite3.Row
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a medlite visit database ({exc})") from exc

    def _migrate(self) -> None:
        version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise DataError(f"{self.path}: written by a newer medlite (schema {version})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._connection.executescript(
                f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return int(self._connection.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._connection:
            yield self._connection

    def close(self) -> None:
        self._connection.close()

    def add(self, run: str, subject: str, visit: str | None, pasi: float, severity: str,
            regional: dict[str, float], components: dict | None) -> int:
        """Store one visit and return its id."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO visits (run, subject, visit, created, pasi, severity, regional, "
                "components) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run, subject, visit, created, float(pasi), severity, json.dumps(regional),
                 None if components is None else json.dumps(components)))
            return int(cursor.lastrowid)

    def delete(self, visit_id: int) -> bool:
        """Delete one visit; False when there was none with that id."""
        with self._transaction() as db:
            return db.execute("DELETE FROM visits WHERE id = ?", (visit_id,)).rowcount > 0

    def delete_subject(self, run: str, subject: str) -> int:
        """Delete every visit of a subject; the number deleted."""
        with self._transaction() as db:
            return db.execute("DELETE FROM visits WHERE run = ? AND subject = ?",
                              (run, subject)).rowcount

    def visits(self, run: str | None = None, subject: str | None = None) -> list[dict]:
        """Stored visits in the order they were added, optionally of one run or subject."""
        query, arguments = "SELECT * FROM visits", []
        conditions = []
        if run is not None:
            conditions.append("run = ?")
            arguments.append(run)
        if subject is not None:
            conditions.append("subject = ?")
            arguments.append(subject)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        with self._lock:
            rows = self._connection.execute(query + " ORDER BY id", arguments).fetchall()
        return [{**dict(row), "regional": json.loads(row["regional"]),
                 "components": None if row["components"] is None else
                 json.loads(row["components"])} for row in rows]

    def trajectory(self, run: str, subject: str) -> list[dict]:
        """The subject's visits with the % change of PASI from the first (baseline) visit
        and whether PASI50/75/90 is reached (see :func:`medlite.pasi.response`)."""
        visits = self.visits(run, subject)
        if not visits:
            return []
        baseline = visits[0]["pasi"]
        out = []
        for visit in visits:
            change = percent_change(baseline, visit["pasi"]) if baseline > 0 else None
            out.append({**visit, "percent_change": None if change is None else round(change, 1),
                        **{f"pasi{level}": bool(response(baseline, visit["pasi"], level))
                           for level in RESPONSE_LEVELS}})
        return out

    def export(self) -> pd.DataFrame:
        """Every stored visit as one table (regional and component scores as columns)."""
        rows = []
        for visit in self.visits():
            row = {k: visit[k] for k in ("id", "run", "subject", "visit", "created", "pasi",
                                         "severity")}
            row.update({f"regional_{r}": v for r, v in visit["regional"].items()})
            for region, values in (visit["components"] or {}).items():
                row.update({f"{region}_{k}": v for k, v in values.items()})
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["id", "run", "subject", "visit",
                                                             "created", "pasi", "severity"])
