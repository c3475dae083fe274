"""The request log and feedback store: one SQLite file (WAL, so the playground can read the log while
the server writes it)."""

import json
import sqlite3
import threading
import time
from pathlib import Path

from tuneforge.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,            -- the response id the client saw (chatcmpl-..., cmpl-...)
    created REAL NOT NULL,          -- unix time the request arrived
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,         -- chat.completions or completions
    messages TEXT,                  -- chat: the request's messages as JSON
    prompt TEXT,                    -- completions: the prompt text; chat: the rendered prompt
    output TEXT,                    -- the first choice's text
    choices TEXT,                   -- every choice's text and finish reason as JSON
    params TEXT,                    -- temperature, top_p, max_tokens, stop, n, seed as JSON
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    status INTEGER NOT NULL,        -- HTTP status sent
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id),
    choice INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    rating TEXT CHECK (rating IN ('up', 'down')),
    correction TEXT,
    comment TEXT
);
"""


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{path}: cannot be used as the request log ({e}). Pass another file with --db.") from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def log(self, record: dict) -> None:
        columns = ("id", "created", "model", "endpoint", "messages", "prompt", "output", "choices", "params",
                   "prompt_tokens", "completion_tokens", "latency_ms", "status", "error")
        values = [json.dumps(record[c]) if c in ("messages", "choices", "params") and record.get(c) is not None
                  else record.get(c) for c in columns]
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO requests ({', '.join(columns)}) "
                             f"VALUES ({', '.join('?' * len(columns))})", values)

    def has_request(self, request_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone() is not None

    def add_feedback(self, request_id: str, choice: int, rating: str | None, correction: str | None,
                     comment: str | None) -> int:
        with self._lock:
            cur = self._db.execute("INSERT INTO feedback (request_id, choice, created, rating, correction, comment) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (request_id, choice, time.time(), rating, correction,
                                                                 comment))
            return cur.lastrowid

    def recent(self, limit: int = 50, model: str | None = None) -> list[dict]:
        query = ("SELECT r.id, r.created, r.model, r.endpoint, r.messages, r.prompt, r.output, r.prompt_tokens, "
                 "r.completion_tokens, r.latency_ms, r.status, r.error, "
                 "(SELECT rating FROM feedback f WHERE f.request_id = r.id ORDER BY f.id DESC LIMIT 1) AS rating "
                 "FROM requests r" + (" WHERE r.model = ?" if model else "") + " ORDER BY r.created DESC LIMIT ?")
        with self._lock:
            rows = self._db.execute(query, (model, limit) if model else (limit,)).fetchall()
        return [dict(r) for r in rows]

    def rated(self) -> list[dict]:
        """Every feedback row with its request (for `tuneforge feedback export`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.id AS feedback_id, f.choice, f.rating, f.correction, f.created AS rated, r.id, r.model, "
                "r.endpoint, r.messages, r.prompt, r.choices FROM feedback f JOIN requests r ON r.id = f.request_id "
                "ORDER BY f.id").fetchall()
        return [dict(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
