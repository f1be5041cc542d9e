"""Log output for the API and the worker: text for people (the default), or one JSON object a line.

``WANSERVE_LOG_FORMAT=json`` gives lines such as::

    {"time": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "wanserve.worker",
     "message": "video_... completed", "video_id": "video_...", "worker": "wanserve-host-1-ab12cd", "rank": 0}

(on one line). ``video_id``, ``worker`` and ``rank`` appear where known: from a record's ``extra``, else
from :func:`log_context` around the code that logs, else from :func:`configure_logging` (a process's
worker name and rank). A context set with :func:`log_context` is seen by the thread (or task) that set it;
threads started inside it do not inherit it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("video_id", "worker", "rank")

_context: ContextVar[dict[str, Any] | None] = ContextVar("wanserve_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (``video_id``, ``worker``, ``rank``) to every JSON line logged inside the block."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"unknown log context fields: {sorted(unknown)}")
    token = _context.set({**current_context(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields :func:`log_context` has set here."""
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO-8601 UTC), level, logger, message, exception and stack when
    present, and the context fields where known."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = {**self.defaults, **(_context.get() or {})}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines: a traceback stays on its line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    level: str | int = "INFO",
    fmt: str = "text",
    *,
    rank: int | None = None,
    worker: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record (the root logger's, so uvicorn's and RQ's too when they propagate) to
    ``stream`` (default stderr) as ``fmt``: ``text`` or ``json``. Replaces the root logger's handlers, so
    calling it again reconfigures rather than doubling lines.

    Args:
        level: the root logger's level (``WANSERVE_LOG_LEVEL``).
        fmt: ``WANSERVE_LOG_FORMAT``.
        rank: this process's rank in a worker group, in every JSON line (and the text lines).
        worker: this worker's name, in every JSON line.

    Returns:
        The handler installed.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter({"rank": rank, "worker": worker}))
    else:
        text = TEXT_FORMAT if rank is None else TEXT_FORMAT.replace("%(name)s", f"rank{rank} %(name)s")
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
