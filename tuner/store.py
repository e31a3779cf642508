"""The tuner's memory on disk (SQLite): settings, the policy's state, decisions and events, so that
a restarted tuner resumes where it stopped."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

SCHEMA = """
create table if not exists settings (key text primary key, value text not null);
create table if not exists decisions (id integer primary key, time real, old text, new text,
                                      who text, reason text, applied integer, error text);
create table if not exists events (id integer primary key, time real, kind text, message text);
"""


class TunerStore:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.executescript(SCHEMA)

    def get(self, key: str, default=None):
        with self.lock:
            row = self.db.execute("select value from settings where key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value) -> None:
        with self.lock, self.db:
            self.db.execute("insert or replace into settings values (?, ?)", (key, json.dumps(value)))

    def add_decision(self, old, new, who: str, reason: str, applied: bool, error: str | None = None) -> dict:
        row = {"time": time.time(), "old": list(old) if old else None, "new": list(new), "who": who,
               "reason": reason, "applied": applied, "error": error}
        with self.lock, self.db:
            self.db.execute("insert into decisions (time, old, new, who, reason, applied, error) values (?,?,?,?,?,?,?)",
                            (row["time"], json.dumps(row["old"]), json.dumps(row["new"]), who, reason, int(applied), error))
        return row

    def decisions(self, since: float = 0.0, limit: int = 500) -> list[dict]:
        with self.lock:
            rows = self.db.execute("select time, old, new, who, reason, applied, error from decisions where time >= ? "
                                   "order by id desc limit ?", (since, limit)).fetchall()
        return [{"time": t, "old": json.loads(o), "new": json.loads(n), "who": w, "reason": r, "applied": bool(a),
                 "error": e} for t, o, n, w, r, a, e in reversed(rows)]

    def add_event(self, kind: str, message: str) -> dict:
        row = {"time": time.time(), "kind": kind, "message": message}
        with self.lock, self.db:
            self.db.execute("insert into events (time, kind, message) values (?,?,?)", (row["time"], kind, message))
        return row

    def events(self, since: float = 0.0, limit: int = 200) -> list[dict]:
        with self.lock:
            rows = self.db.execute("select time, kind, message from events where time >= ? order by id desc limit ?",
                                   (since, limit)).fetchall()
        return [{"time": t, "kind": k, "message": m} for t, k, m in reversed(rows)]
