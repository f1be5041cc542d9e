"""A server-sent events reader for tests: what a client of ``GET /v1/videos/{id}/events`` sees."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    event: str
    id: str | None
    data: Any


def parse(lines: Iterator[str]) -> Iterator[Event | str]:
    """Events, and comments as plain strings, in the order the stream carries them (the SSE format)."""
    event, event_id, data = "message", None, []
    for line in lines:
        if line == "":
            if data:
                yield Event(event, event_id, json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith(":"):
            yield line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


@dataclass
class Follower:
    """A thread reading one video's stream to its end: ``events`` grows as they arrive."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    status_code: int | None = None
    error: httpx.HTTPError | None = None
    """Why the stream broke off, if the server did not end it (a server that stopped, say)."""

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as response:
                self.status_code = response.status_code
                self.content_type = response.headers.get("content-type", "")
                for item in parse(response.iter_lines()):
                    if isinstance(item, str):
                        self.comments.append(item)
                    else:
                        self.events.append(item)
                    self.started.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.started.set()
            self.closed.set()

    def wait_closed(self, timeout: float) -> None:
        assert self.closed.wait(timeout), f"the stream is still open after {timeout} s: {self.events}"
        assert self.error is None, f"the stream broke off: {self.error!r}"

    def videos(self) -> list[dict[str, Any]]:
        return [event.data for event in self.events if event.event == "video"]
