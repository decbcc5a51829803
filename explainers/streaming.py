"""The live channel of a reply: the worker publishes events on Redis, the participant's
server-sent-events connection relays them.

Every event also goes onto a short-lived list, so a connection opened mid-stream (a reload)
first replays what was said so far and then follows the channel; `seq` removes the overlap.
"""
import asyncio
import json
import logging
import os
import secrets
import time
import weakref
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

BACKLOG_TTL_S = 3600
# Text deltas are coalesced: the first goes out at once, then at most one `delta` event every
# DELTA_FLUSH_S per reply (a Redis round trip per provider token cost the worker most of its CPU).
DELTA_FLUSH_S = 0.1


def redis_key(*parts) -> str:
    """A Redis key or pub/sub channel name in this deployment's namespace (`settings.REDIS_NAMESPACE`)."""
    return ":".join([settings.REDIS_NAMESPACE, *map(str, parts)])


def _channel(turn_id: int) -> str:
    return redis_key("turn", turn_id, "events")


def _backlog(turn_id: int) -> str:
    return redis_key("turn", turn_id, "backlog")


@lru_cache(maxsize=1)
def _sync_client() -> redis.Redis:
    """The process's one synchronous client: its threads share at most REDIS_MAX_CONNECTIONS connections and
    wait for a free one (a command takes a millisecond) rather than opening more."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT_S,
        health_check_interval=30, client_name=_client_name("sync"),
    )
    return redis.Redis(connection_pool=pool)


REDIS_POOL_WAIT_S = 10.0


def _client_name(kind: str) -> str:
    """The name this process's connections give themselves (CLIENT LIST shows which process holds what)."""
    return f"{settings.REDIS_NAMESPACE}:{kind}:{os.getpid()}"


class TurnStream:
    """The publishing side, used by the worker for one attempt at one reply."""

    def __init__(self, turn_id: int):
        self.turn_id = turn_id
        self.seq = _sync_client().llen(_backlog(turn_id))
        self._pending: list[str] = []
        self._flushed_at = 0.0

    def publish(self, kind: str, **data) -> None:
        if kind != "delta":
            self.flush()  # text held back goes out before any other event
        self._send(kind, **data)

    def delta(self, text: str) -> None:
        self._pending.append(text)
        if time.monotonic() - self._flushed_at >= DELTA_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Publish the text held back since the last delta event, if any."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._flushed_at = time.monotonic()
            self._send("delta", text=text)

    def _send(self, kind: str, **data) -> None:
        event = json.dumps({"seq": self.seq, "kind": kind, **data}, ensure_ascii=False)
        self.seq += 1
        pipe = _sync_client().pipeline(transaction=False)
        pipe.rpush(_backlog(self.turn_id), event)
        pipe.expire(_backlog(self.turn_id), BACKLOG_TTL_S)
        pipe.publish(_channel(self.turn_id), event)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            # Redis is restarting: drop the event rather than the call. The reply is saved all the same,
            # and the participant's page reads it from the database once its stream ends.
            logger.warning("turn %s: stream event %r lost, Redis unavailable", self.turn_id, kind)


def stream_publish(turn_id: int, kind: str, **data) -> None:
    TurnStream(turn_id).publish(kind, **data)


# --- the reading side: one pub/sub connection per process, shared by every open stream ---------------------

SUBSCRIBE_WAIT_S = 5.0
STREAM_CLAIM_TTL_S = 3600  # a participant's list of open streams outlives any one stream; refreshed on each open


class _Hub:
    """The channels of every stream open in this process (this event loop), on one Redis pub/sub connection.

    A stream registers a queue for its channels; a reader task hands each message to the queues of its
    channel. The commands of the streams (the backlog's replay, the stream claims) share one small pool. So a
    process holds 1 + at most REDIS_MAX_CONNECTIONS Redis connections whatever the number of open streams,
    where each stream used to hold two of its own.
    """

    def __init__(self):
        self.client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT_S,
            client_name=_client_name("streams"),
        ))
        self._pubsub = None
        self._queues: dict[str, set[asyncio.Queue]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def follow(self, channels: list[str], queue: asyncio.Queue) -> None:
        """Put every message of `channels` on `queue` (as (channel, data)) from the moment Redis confirms the
        subscription (waited for, up to SUBSCRIBE_WAIT_S); raise redis.RedisError if Redis cannot be reached
        (the reader goes on trying to subscribe while the queue stays registered)."""
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()
            for channel in channels:
                self._queues.setdefault(channel, set()).add(queue)
            try:
                await self._subscribe_missing()
            finally:
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(asyncio.gather(*(self._ready[c].wait() for c in channels)), SUBSCRIBE_WAIT_S)
        except TimeoutError:
            logger.warning("stream subscription not confirmed within %s s (Redis unavailable?)", SUBSCRIBE_WAIT_S)

    async def _subscribe_missing(self) -> None:
        """Subscribe to the channels someone listens to that the connection is not (or no longer) subscribed
        to, e.g. one a stream just left and another just joined. Hold the lock."""
        for channel in self._queues:
            self._ready.setdefault(channel, asyncio.Event())
        pubsub = self._pubsub
        missing = [c for c in self._queues
                   if c.encode() not in pubsub.channels or c.encode() in pubsub.pending_unsubscribe_channels]
        if missing:
            await pubsub.subscribe(*missing)

    async def leave(self, channels: list[str], queue: asyncio.Queue) -> None:
        async with self._lock:
            gone = []
            for channel in channels:
                listeners = self._queues.get(channel, set())
                listeners.discard(queue)
                if not listeners:
                    self._queues.pop(channel, None)
                    self._ready.pop(channel, None)
                    gone.append(channel)
            if gone and self._pubsub is not None and self._pubsub.connection is not None:
                try:
                    await self._pubsub.unsubscribe(*gone)
                except (redis.RedisError, OSError):
                    pass  # the connection is gone: the reader drops channels nobody wants when they speak

    async def _read(self) -> None:
        backoff = 0.0
        while True:
            async with self._lock:
                if not self._queues:  # nobody listens: give the connection back until the next stream
                    pubsub, self._pubsub, self._reader = self._pubsub, None, None
                    if pubsub is not None:
                        await pubsub.aclose()
                    return
                pubsub = self._pubsub
                try:
                    if backoff or pubsub.connection is None:  # after an error, or a subscribe that failed
                        await self._subscribe_missing()
                    error = None
                except (redis.RedisError, OSError) as failed:
                    error = failed
            if error is None:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except (redis.RedisError, OSError) as failed:
                    error = failed
            if error is not None:
                # Redis is restarting: the streams fall back on the database (their keep-alive re-checks it);
                # the next round reconnects, and the connection subscribes again to its channels.
                backoff = min(backoff * 2 or 0.5, 5.0)
                logger.warning("stream channel: Redis unavailable (%s); retrying in %.1f s", error, backoff)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            if message:
                await self._dispatch(message)

    async def _dispatch(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if message["type"] == "subscribe":
            if channel in self._ready:
                self._ready[channel].set()
        elif message["type"] == "message":
            if channel not in self._queues:  # left before a reconnect subscribed to it again
                async with self._lock:
                    if channel not in self._queues and self._pubsub is not None:
                        try:
                            await self._pubsub.unsubscribe(channel)
                        except (redis.RedisError, OSError):
                            pass
                return
            for queue in self._queues[channel]:
                queue.put_nowait((channel, message["data"]))


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()


def _hub() -> _Hub:
    """This event loop's hub (uvicorn runs one loop per process; a test may run several)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = _Hub()
    return hub


def _claims(owner: str) -> str:
    return redis_key("streams", owner)


async def _stream_claim(hub: _Hub, owner: str, cap: int, stream_id: str) -> None:
    """Record the stream as `owner`'s newest; tell `owner`'s older streams beyond the newest `cap` to end."""
    key = _claims(owner)
    async with hub.client.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {stream_id: time.time_ns()})
        pipe.zrange(key, 0, -(cap + 1))
        pipe.zremrangebyrank(key, 0, -(cap + 1))
        pipe.expire(key, STREAM_CLAIM_TTL_S)
        _, evicted, _, _ = await pipe.execute()
    if evicted:
        await hub.client.publish(key, json.dumps({"end": [e.decode() if isinstance(e, bytes) else e for e in evicted]}))


async def stream_follow(turn_id: int, *, keepalive_s: float = 10.0, owner: str = "", cap: int = 0):
    """Yield the turn's events (dicts) in order from the start, then live; yield None every
    `keepalive_s` without news so the caller can send a keep-alive and re-check the database.

    With `owner` and `cap`, at most `cap` streams of that owner (a participant) stay open across every
    process: opening one more ends the oldest, which yields `{"kind": "superseded"}` and stops. Without
    Redis the stream still yields its keep-alives (the caller's database check ends it).
    """
    hub = _hub()
    queue: asyncio.Queue = asyncio.Queue()
    channels = [_channel(turn_id)]
    stream_id = secrets.token_hex(8)
    if owner and cap > 0:
        channels.append(_claims(owner))
    try:
        try:
            # subscribe first: nothing published after the replay is missed
            await hub.follow(channels, queue)
            if owner and cap > 0:
                await _stream_claim(hub, owner, cap, stream_id)
            backlog = await hub.client.lrange(_backlog(turn_id), 0, -1)
        except (redis.RedisError, OSError) as error:
            logger.warning("turn %s: stream without Redis (%s): the database tells how it ends", turn_id, error)
            backlog = []
        next_seq = 0
        for raw in backlog:
            event = json.loads(raw)
            if event["seq"] >= next_seq:
                next_seq = event["seq"] + 1
                yield event
        while True:
            try:
                channel, data = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield None
                continue
            if channel != channels[0]:  # the owner's claims
                if stream_id in json.loads(data).get("end", ()):
                    yield {"kind": "superseded"}
                    return
                continue
            event = json.loads(data)
            if event["seq"] >= next_seq:
                next_seq = event["seq"] + 1
                yield event
    finally:
        await hub.leave(channels, queue)
        if owner and cap > 0:
            try:
                await hub.client.zrem(_claims(owner), stream_id)
            except (redis.RedisError, OSError):
                pass  # the claim expires with its list, and counts as the oldest meanwhile
