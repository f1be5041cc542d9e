"""Serving a stored file with the HTTP semantics clients rely on (RFC 9110): Range, conditional GET, HEAD.

Starlette's ``FileResponse`` does the byte serving; what it gets wrong for us is decided here first:
a malformed ``Range`` is ignored (the whole file, 200) rather than a 400, an unsatisfiable one is a 416
with a body in our error shape, and ``If-None-Match`` uses the weak comparison (``*`` and ``W/`` tags).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from service.api.error_handlers import error_response
from service.core.errors import RangeNotSatisfiable

_RANGE_SPEC = re.compile(r"^\s*(?:(\d+)-(\d*)|-(\d+))\s*$")
MAX_RANGES = 100


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable byte ranges (inclusive) of a ``Range`` header, [] when none is satisfiable, and
    None when the header is malformed or not in bytes (then it must be ignored)."""
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for part in parts:
        match = _RANGE_SPEC.match(part)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            if int(suffix) > 0 and size > 0:
                ranges.append((max(0, size - int(suffix)), size - 1))
            continue
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # an invalid range-spec makes the whole header invalid
        if start < size:
            ranges.append((start, min(end, size - 1)))
    return ranges


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` against our (strong) ETag with the weak comparison the header calls for."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


class StoredFileResponse(FileResponse):
    """A ``FileResponse`` whose ``Range`` handling follows RFC 9110 (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        raw_range = next((value for name, value in scope["headers"] if name == b"range"), None)
        if raw_range is not None:
            size = Path(self.path).stat().st_size
            ranges = parse_range(raw_range.decode("latin-1"), size)
            if ranges == []:
                await error_response(RangeNotSatisfiable(size))(scope, receive, send)
                return
            if ranges is not None:
                normalised = ", ".join(f"{start}-{end}" for start, end in ranges)
                headers.append((b"range", f"bytes={normalised}".encode()))
        await super().__call__({**scope, "headers": headers}, receive, send)
