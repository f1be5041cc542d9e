"""A video's live event stream (server-sent events), driven by Redis pub/sub, not by polling.

Every write of a video record announces itself on the video's channel (``service.core.video_store``). One
pattern subscription per API process (:class:`VideoEvents`) wakes the streams that watch that video; each
stream then reads the video once and sends it if its public view changed. A stream costs a coroutine and an
``asyncio.Event``: no thread and no Redis connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from service.api.error_handlers import error_body
from service.api.read_cache import ReadCache
from service.core import redis_keys
from service.core.errors import VideoNotFound
from service.core.lifecycle import VideoStatus

log = logging.getLogger("wanserve.api")

RECONNECT_DELAY_S = 1.0
CLIENT_RETRY_MS = 2000
"""How long a client waits before it reconnects after a dropped stream (the ``retry:`` field)."""

ReadView = Callable[[], Awaitable[tuple[dict[str, Any], int]]]
"""Reads the video once: (its public view, its record's version); raises VideoNotFound once it is gone."""


class VideoEvents:
    """This process's one subscription to every video's events channel, fanned out to local watchers.

    Built per event loop (its connection belongs to the loop that made it), started on first use.
    """

    def __init__(self, redis: AsyncRedis, cache: ReadCache) -> None:
        self._redis = redis
        self.cache = cache
        """Told of every announcement, and of the subscription's state."""
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watch(self, video_id: str) -> Iterator[Watch]:
        """A watch of one video, woken when it is announced, and when the subscription was (re)made since
        announcements may have been missed meanwhile."""
        self.start()
        watch = Watch(self._watchers, asyncio.Event())
        watch.follow(video_id, True)
        try:
            yield watch
        finally:
            watch.follow(video_id, False)
            watch.follow(redis_keys.QUEUE_MOVED, False)

    def start(self) -> None:
        """Subscribe, if not yet (in the running event loop; idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="video-events")

    async def subscribed(self, timeout_s: float) -> bool:
        """Wait until the subscription is live (False if Redis does not answer within ``timeout_s``)."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    async def _listen(self) -> None:
        prefix = redis_keys.VIDEO_EVENTS_PREFIX
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(prefix + "*")
                self._subscribed.set()
                self.cache.live = True
                self._wake_all()
                async for message in pubsub.listen():
                    self._wake(message["channel"].decode()[len(prefix) :])
            except (RedisError, OSError) as exc:
                log.warning("video events: Redis subscription lost (%s); resubscribing", exc)
            finally:
                self._subscribed.clear()
                self.cache.live = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            # Watchers re-read now (they may have missed an announcement) and again once resubscribed.
            self._wake_all()
            await asyncio.sleep(RECONNECT_DELAY_S)

    def _wake(self, name: str) -> None:
        self.cache.forget(name)
        for changed in self._watchers.get(name, ()):
            changed.set()

    def _wake_all(self) -> None:
        self.cache.forget(None)
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()


class Watch:
    """One stream's wake-up: ``changed`` is set when a name it follows is announced."""

    def __init__(self, watchers: dict[str, set[asyncio.Event]], changed: asyncio.Event) -> None:
        self._watchers = watchers
        self.changed = changed

    def follow(self, name: str, on: bool) -> None:
        """Follow (or stop following) a video id, or ``QUEUE_MOVED``: only a queued video's stream needs
        to hear that other videos started or went (its queue position moved)."""
        if on:
            self._watchers.setdefault(name, set()).add(self.changed)
        elif name in self._watchers:
            self._watchers[name].discard(self.changed)
            if not self._watchers[name]:
                del self._watchers[name]


async def video_event_stream(
    events: VideoEvents,
    video_id: str,
    read: ReadView,
    *,
    last_event_id: str | None,
    heartbeat_s: float,
) -> AsyncIterator[bytes]:
    """The stream's body: the video now, each change, and its end.

    A change is announced, then read: the view sent is always the latest, and changes that happen faster
    than a client reads are merged. Each heartbeat also reads once, for the status changes no record write
    announces (RQ giving up on a job whose worker died).
    """
    yield b"retry: %d\n\n" % CLIENT_RETRY_MS
    last_sent: dict[str, Any] | None = None
    with events.watch(video_id) as watch:
        watch.follow(redis_keys.QUEUE_MOVED, True)  # until a read shows the video is no longer queued
        await events.subscribed(heartbeat_s)
        while True:
            watch.changed.clear()
            try:
                view, version = await read()
            except VideoNotFound as exc:
                yield sse_event("error", error_body(exc))
                return
            except RedisError as exc:  # read again when Redis is back (the subscription wakes us)
                log.warning("video events: could not read %s (%s)", video_id, exc)
            else:
                watch.follow(redis_keys.QUEUE_MOVED, view["status"] == VideoStatus.QUEUED)
                ended = VideoStatus(view["status"]).is_terminal
                # A client that reconnects with the id of the latest event does not get it again; the
                # end, it always gets.
                resent = last_sent is None and last_event_id == str(version) and not ended
                if view != last_sent and not resent:
                    yield sse_event("video", view, event_id=version)
                last_sent = view
                if ended:
                    yield sse_event("end", view, event_id=version)
                    return
            try:
                await asyncio.wait_for(watch.changed.wait(), heartbeat_s)
            except TimeoutError:
                yield b": keep-alive\n\n"


def sse_event(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # Compact JSON holds no newline, so one data line carries it.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=True))
    return ("\n".join(lines) + "\n\n").encode()
