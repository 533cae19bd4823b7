"""Server-side sign-in sessions and login lockout for the review app, in one SQLite file.

A sign-in creates a random token; the browser keeps it in a cookie and only its sha256 is stored, with the user and
an expiry. A reload, a deep link or the companion tile server present the cookie and get the user back while the
session lives. Failed logins are counted per user name and per client address across all browser sessions: after
``max_attempts`` failures within ``lockout_s`` either key is locked until ``lockout_s`` after its last failure.

No Streamlit here.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

__all__ = ["COOKIE", "SessionStore", "token_from_cookie_header"]

#: name of the cookie that carries the session token
COOKIE = "pathasst_session"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_from_cookie_header(header: str | None) -> str | None:
    """The session token in a ``Cookie:`` header, or None."""
    if not header:
        return None
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class SessionStore:
    """Sessions and failed logins; safe to share between threads (one connection per call)."""

    def __init__(self, path: Path, ttl_s: float = 8 * 3600, max_attempts: int = 5, lockout_s: float = 60.0,
                 clock=time.time) -> None:
        self.path = Path(path)
        self.ttl_s, self.max_attempts, self.lockout_s = ttl_s, max_attempts, lockout_s
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS sessions (digest TEXT PRIMARY KEY, user TEXT NOT NULL, "
                       "created REAL NOT NULL, expires REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at)")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)  # autocommit: one statement, one write
        try:
            yield db
        finally:
            db.close()

    # ---- sessions ----------------------------------------------------------------------------------------
    def create(self, user: str) -> str:
        """A new session for ``user``; returns its token (shown once: only its digest is kept)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock, self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (_digest(token), user, now, now + self.ttl_s))
        return token

    def user_for(self, token: str | None) -> str | None:
        """The user of a live session, else None (unknown, revoked or expired token)."""
        if not token:
            return None
        with self._db() as db:
            row = db.execute("SELECT user, expires FROM sessions WHERE digest = ?", (_digest(token),)).fetchone()
        if row is None or row[1] <= self.clock():
            return None
        return str(row[0])

    def revoke(self, token: str | None) -> None:
        if token:
            with self._lock, self._db() as db:
                db.execute("DELETE FROM sessions WHERE digest = ?", (_digest(token),))

    # ---- lockout -----------------------------------------------------------------------------------------
    @staticmethod
    def _keys(user: str, address: str | None) -> list[str]:
        keys = [f"user:{user.strip().lower()}"]
        if address:
            keys.append(f"addr:{address}")
        return keys

    def locked_for(self, user: str, address: str | None) -> float:
        """Seconds until ``user`` may try again from ``address`` (0 when not locked)."""
        now = self.clock()
        wait = 0.0
        with self._db() as db:
            for key in self._keys(user, address):
                rows = db.execute(
                    "SELECT at FROM failures WHERE key = ? AND at > ? ORDER BY at DESC", (key, now - self.lockout_s)
                ).fetchall()
                if len(rows) >= self.max_attempts:
                    wait = max(wait, rows[0][0] + self.lockout_s - now)
        return wait

    def record_failure(self, user: str, address: str | None) -> None:
        now = self.clock()
        with self._lock, self._db() as db:
            db.execute("DELETE FROM failures WHERE at <= ?", (now - self.lockout_s,))
            db.executemany("INSERT INTO failures VALUES (?, ?)", [(k, now) for k in self._keys(user, address)])

    def clear_failures(self, user: str) -> None:
        """A successful login clears the user's failures (an address's failures stay until they expire)."""
        with self._lock, self._db() as db:
            db.execute("DELETE FROM failures WHERE key = ?", (self._keys(user, None)[0],))
