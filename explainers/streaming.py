"""The live channel of a reply: the worker publishes events on Redis, the participant's
server-sent-events connection relays them.

Every event also goes onto a short-lived list, so a connection opened mid-stream (a reload)
first replays what was said so far and then follows the channel; `seq` removes the overlap.
"""
import json
import time
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

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
    return redis.Redis.from_url(settings.REDIS_URL, max_connections=1000, health_check_interval=30)


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
        pipe.execute()


def stream_publish(turn_id: int, kind: str, **data) -> None:
    TurnStream(turn_id).publish(kind, **data)


async def stream_follow(turn_id: int, *, keepalive_s: float = 10.0):
    """Yield the turn's events (dicts) in order from the start, then live; yield None every
    `keepalive_s` without news so the caller can send a keep-alive and re-check the database."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(_channel(turn_id))  # subscribe first: nothing published after the replay is missed
        next_seq = 0
        for raw in await client.lrange(_backlog(turn_id), 0, -1):
            event = json.loads(raw)
            if event["seq"] >= next_seq:
                next_seq = event["seq"] + 1
                yield event
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=keepalive_s)
            if message is None:
                yield None
                continue
            event = json.loads(message["data"])
            if event["seq"] >= next_seq:
                next_seq = event["seq"] + 1
                yield event
    finally:
        await pubsub.aclose()
        await client.aclose()
