"""Conversation memory: one LangGraph thread per case review, checkpointed in SQLite so a review survives a restart.

``open_checkpointer(path)`` gives a ``SqliteSaver`` (pass it to ``Engine(..., checkpointer=...)`` or
``build_graph(checkpointer)``); ``case_thread_id(case_id, review)`` names the thread of one review of one case; a
second question on the same thread sees the earlier tool calls as history. A run interrupted before its report
resumes with ``graph.invoke(None, config)`` from another process. ``list_threads`` shows what is stored.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from pathasst.core.settings import Settings

__all__ = ["DEFAULT_DB_NAME", "case_thread_id", "conversations_path", "list_threads", "open_checkpointer", "thread_config"]

DEFAULT_DB_NAME = "conversations.sqlite"


def conversations_path(settings: Settings) -> Path:
    """``settings.conversations_path``, else ``<cache_dir>/conversations.sqlite``."""
    configured = getattr(settings, "conversations_path", None)
    return Path(configured) if configured else Path(settings.cache_dir) / DEFAULT_DB_NAME


def case_thread_id(case_id: str, review: str = "default") -> str:
    """Thread id of one review of one case: ``case:<case id>:<review>`` (stable across restarts)."""
    if not case_id:
        raise ValueError("case_id must not be empty")
    safe = re.sub(r"\s+", "_", review.strip()) or "default"
    return f"case:{case_id}:{safe}"


def thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def open_checkpointer(path: Path | str) -> Any:
    """A ``SqliteSaver`` on ``path`` (created with its folder if missing); usable from several threads."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return saver


def list_threads(saver: Any, case_id: str | None = None) -> list[str]:
    """Thread ids stored in the checkpointer (optionally only those of ``case_id``), sorted."""
    seen: set[str] = set()
    for item in saver.list(None):
        tid = item.config["configurable"]["thread_id"]
        if case_id is None or tid.startswith(f"case:{case_id}:"):
            seen.add(tid)
    return sorted(seen)
