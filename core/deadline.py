"""A per-call time limit and cancellation that long-running tools honour between steps (tile batches).

:func:`call_deadline` sets a deadline for the block (``None``: no limit) and optionally a cancel event (set by a
server when the client left); :func:`check_deadline` raises :class:`~pathasst.core.errors.CallTimeoutError` once
the deadline has passed or the event is set. The tiler checks it before every tile batch, so
a tiled call stops within one batch of its limit; ``call_tool`` converts the error into a ``failed`` record like any
other tool failure. The deadline is a context variable: each thread or task sees its own call's limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pathasst.core.errors import CallTimeoutError

__all__ = ["call_deadline", "check_deadline"]

@dataclass(frozen=True)
class _Deadline:
    at: float  # time.monotonic() value; inf = none
    seconds: float | None
    cancel: threading.Event | None


_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("pathasst_call_deadline", default=None)


@contextlib.contextmanager
def call_deadline(seconds: float | None, cancel: threading.Event | None = None) -> Iterator[None]:
    """Within the block, :func:`check_deadline` fails once ``seconds`` have passed (None or <= 0: no limit) or
    ``cancel`` is set."""
    limited = bool(seconds and seconds > 0)
    token = _DEADLINE.set(_Deadline(time.monotonic() + seconds if limited else float("inf"),  # type: ignore[operator]
                                    seconds if limited else None, cancel))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise ``CallTimeoutError`` when the current call was cancelled or its deadline has passed."""
    d = _DEADLINE.get()
    if d is None:
        return
    if d.cancel is not None and d.cancel.is_set():
        raise CallTimeoutError("cancelled: the client stopped waiting for this call")
    if time.monotonic() > d.at:
        raise CallTimeoutError(
            f"stopped after {d.seconds:g} s: the call ran past its time limit (PATHASST_CALL_TIMEOUT_S); "
            "analyse a smaller region or raise the limit")
