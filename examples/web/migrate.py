"""The example app's release migration, run once per release and environment as a Cloud Run job
before the new version takes traffic (`python migrate.py`, from the release's own image).

Expand-only: it adds, never drops or renames, so the version still serving keeps working
against the migrated schema while the canary runs, and a rollback needs no down-migration.
Idempotent: each step checks before it changes, so running it twice (a redelivered message, a
retried task) is fine.

  DB_PATH       the SQLite database (default: pitstop-web.db in the temp directory)
  MIGRATE_FAIL  1: fail on purpose (exit 1, before changing anything), to see a failed check

Prints what it did and `pitstop-summary: applied=N skipped=M`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from pathlib import Path

DB_PATH = Path(os.environ.get("DB_PATH") or Path(tempfile.gettempdir()) / "pitstop-web.db")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _create_visits(db: sqlite3.Connection) -> bool:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'visits'").fetchone()
    if exists:
        return False
    db.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, path TEXT NOT NULL, at TEXT NOT NULL)")
    return True


def _add_region(db: sqlite3.Connection) -> bool:
    # Nullable, no default to backfill: old versions never write it, new ones may.
    if "region" in _columns(db, "visits"):
        return False
    db.execute("ALTER TABLE visits ADD COLUMN region TEXT")
    return True


STEPS = [("create table visits", _create_visits), ("add nullable column visits.region", _add_region)]


def main() -> int:
    where = f"{os.environ.get('CLOUD_RUN_JOB', 'local')}/{os.environ.get('CLOUD_RUN_EXECUTION', '-')}"
    if os.environ.get("MIGRATE_FAIL") == "1":
        print(f"migration failed on purpose (MIGRATE_FAIL=1); {DB_PATH} unchanged", file=sys.stderr)
        return 1
    DB_PATH.parent.mkdir(parents=True, exist_ok=True)
    applied = skipped = 0
    with sqlite3.connect(DB_PATH, timeout=30) as db:  # one transaction: all steps or none
        db.execute("BEGIN IMMEDIATE")  # two runs at once take turns
        for title, step in STEPS:
            done = step(db)
            applied, skipped = applied + done, skipped + (not done)
            print(f"{'applied' if done else 'already there'}: {title}")
    print(f"migrated {DB_PATH} ({where})")
    print(f"pitstop-summary: applied={applied} skipped={skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
