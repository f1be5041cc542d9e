"""The answers of the reads clients poll, kept in this process until Redis announces a change.

Every write of a video record is announced on its events channel (see :mod:`service.api.events`); this
process hears every announcement through its one subscription. So a status read or a page of the list,
once rendered, stays right until an announcement names the video (or, for queued videos and pages, moves the
queue), and is served from memory until then: a hundred clients polling one video cost Redis one read per
change, and the requests that ask while it is being read wait for that one read. What no announcement
covers (RQ giving up on a job whose worker died; whether a live worker serves the model) is bounded by
``max_age_s``. While the subscription is down, nothing is kept or served.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from service.core import redis_keys

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Answer:
    body: bytes
    headers: dict[str, str]
    queued: bool
    """A queued video's answer names its queue position: dropped when the queue moves."""


Read = Callable[[], Awaitable[Answer]]
_Kept = tuple[float, str, Answer]
"""(expires at, owner, answer)."""


class ReadCache:
    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.live = False
        """Whether this process's subscription is up (set by :class:`service.api.events.VideoEvents`)."""
        self._videos: dict[Hashable, _Kept] = {}
        self._pages: dict[Hashable, _Kept] = {}
        self._reading: dict[tuple[bool, Hashable, str], asyncio.Future[Answer]] = {}
        self._generations = itertools.count()
        self._generation = next(self._generations)

    async def video(self, video_id: str, owner: str, read: Read) -> Answer:
        """The status read's answer: kept, being read for the same owner, or read now by ``read``."""
        return await self._answer(False, video_id, owner, read)

    async def page(self, key: Hashable, owner: str, read: Read) -> Answer:
        """A page of the list: every announcement drops every page (any video may be on one)."""
        return await self._answer(True, key, owner, read)

    def forget(self, name: str | None) -> None:
        """An announcement: ``name`` is a video id, ``QUEUE_MOVED``, or None for "anything may have changed"
        (the subscription was lost or made). Safe to call from a request thread (single dict operations)."""
        self._generation = next(self._generations)
        self._pages.clear()
        if name is None:
            self._videos.clear()
        elif name == redis_keys.QUEUE_MOVED:
            # list() copies in one step: a request thread may forget a video meanwhile.
            for video_id, (_, _, answer) in list(self._videos.items()):
                if answer.queued:
                    self._videos.pop(video_id, None)
        else:
            self._videos.pop(name, None)

    async def _answer(self, page: bool, key: Hashable, owner: str, read: Read) -> Answer:
        kept = (self._pages if page else self._videos).get(key)
        # Another owner's video is not answered from here: their own read says it does not exist.
        if kept is not None and self.live and kept[1] == owner and kept[0] >= time.monotonic():
            return kept[2]
        flight = (page, key, owner)
        reading = self._reading.get(flight)
        if reading is None:
            reading = asyncio.ensure_future(self._read(page, key, owner, read))
            self._reading[flight] = reading
            reading.add_done_callback(lambda _: self._reading.pop(flight, None))
        # Shielded: a client that goes away does not cancel the read others wait for.
        return await asyncio.shield(reading)

    async def _read(self, page: bool, key: Hashable, owner: str, read: Read) -> Answer:
        generation = self._generation
        answer = await read()
        if len(self._videos) + len(self._pages) >= MAX_ENTRIES:
            self.forget(None)
        # An answer read across an announcement may predate it: used once, not kept.
        if self.live and generation == self._generation:
            kept = (time.monotonic() + self.max_age_s, owner, answer)
            (self._pages if page else self._videos)[key] = kept
        return answer
