"""Two deployments on one Redis server (even on the same database number) share nothing: every key and
pub/sub channel carries the deployment's namespace (settings.REDIS_NAMESPACE).

The stream tests run each deployment as its own process; the Celery test runs a real worker of each.
"""
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent.parent
WAIT_S = 60  # generous: every wait below ends on an event, this only bounds a hang

SHOW_SETTINGS = """
import json
from django.conf import settings
print(json.dumps({"namespace": settings.REDIS_NAMESPACE, "cache": settings.CACHES["default"]["KEY_PREFIX"],
                  "celery": settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]}))
"""

# One deployment: follows turn TURN with stream_follow and, on its commands (stdin), publishes a reply's
# events on the same turn as TurnStream does. Prints "ready NAMESPACE" once subscribed, then, after an
# `end` event, the events it received as one JSON line.
DEPLOYMENT = """
import asyncio, json, sys, threading
from django.conf import settings
from explainers.streaming import TurnStream, stream_follow

TURN, TAG = int(sys.argv[1]), sys.argv[2]

def commands():
    for line in sys.stdin:
        if line.strip() == "publish":
            stream = TurnStream(TURN)
            for i in range(3):
                stream.publish("delta", text=f"{TAG}-{i}")
            stream.publish("done", by=TAG)
            print("published", flush=True)
        elif line.strip() == "end":
            TurnStream(TURN).publish("end", by=TAG)

async def follow():
    got, ready = [], False
    async for event in stream_follow(TURN, keepalive_s=0.2):
        if event is None:  # subscribed and the backlog replayed: safe for anyone to publish now
            if not ready:
                ready = True
                print("ready", settings.REDIS_NAMESPACE, flush=True)
                threading.Thread(target=commands, daemon=True).start()
            continue
        got.append(event)
        if event["kind"] == "end":
            break
    print(json.dumps(got), flush=True)

asyncio.run(follow())
"""


def deployment_env(**overrides) -> dict:
    """The environment of another process of a deployment on this test run's Redis (None removes a variable)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": str(ROOT),
           "REDIS_URL": settings.REDIS_URL, "DJANGO_SECRET_KEY": "namespace-test-secret-" + "x" * 30}
    env.pop("REDIS_NAMESPACE", None)
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def settings_of(**overrides) -> dict:
    result = subprocess.run([sys.executable, "-c", SHOW_SETTINGS], cwd=ROOT, env=deployment_env(**overrides),
                            capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the default namespace


def test_the_default_namespace_differs_with_the_secret_key_or_the_database_and_is_no_small_number():
    pg = "postgres://postgres@127.0.0.1:5432/"
    base = settings_of(DJANGO_SECRET_KEY="secret-one-" + "a" * 40, DATABASE_URL=pg + "teachback_one")["namespace"]
    again = settings_of(DJANGO_SECRET_KEY="secret-one-" + "a" * 40, DATABASE_URL=pg + "teachback_one")["namespace"]
    other_secret = settings_of(DJANGO_SECRET_KEY="secret-two-" + "a" * 40, DATABASE_URL=pg + "teachback_one")["namespace"]
    other_database = settings_of(DJANGO_SECRET_KEY="secret-one-" + "a" * 40, DATABASE_URL=pg + "teachback_two")["namespace"]

    assert base == again  # stable: the web and worker processes of one deployment agree
    assert len({base, other_secret, other_database}) == 3
    for namespace in (base, other_secret, other_database):
        assert re.fullmatch(r"tb-[0-9a-f]{16}", namespace), namespace  # 64 bits of a hash, not a db number


def test_an_explicit_namespace_prefixes_the_cache_and_the_broker_too():
    shown = settings_of(REDIS_NAMESPACE="lab-a")
    assert shown == {"namespace": "lab-a", "cache": "lab-a:cache", "celery": "lab-a:celery:"}


# --------------------------------------------------------------------------- reply streams


class Deployment:
    """A process of one deployment following and publishing on turn `turn`."""

    def __init__(self, turn: int, tag: str, env: dict, log: Path):
        self.tag, self.lines = tag, queue.Queue()
        self._stderr = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", DEPLOYMENT, str(turn), tag], cwd=ROOT, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.log = log

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str = "") -> str:
        try:
            line = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            line = None
        assert line is not None and line.startswith(prefix), (
            f"{self.tag}: wanted {prefix!r}, got {line!r}; stderr: {self.log.read_text()[-2000:]}")
        return line

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT_S)
        self._stderr.close()


def stream_both(tmp_path, env_a: dict, env_b: dict) -> tuple[dict, dict]:
    """Run deployments A and B on the same turn id; return, for each, its namespace and the events it got."""
    turn = 10**12 + secrets.randbelow(10**9)  # no real turn has this id
    a = Deployment(turn, "A", env_a, tmp_path / "a.log")
    b = Deployment(turn, "B", env_b, tmp_path / "b.log")
    try:
        namespaces = {"A": a.expect("ready ").split()[1], "B": b.expect("ready ").split()[1]}
        # Both are subscribed. B says everything first, then A: had they one channel and backlog, each
        # would have heard the other (A's events continue B's sequence numbers, so none is dropped as seen).
        b.send("publish")
        b.expect("published")
        a.send("publish")
        a.expect("published")
        b.send("end")
        a.send("end")
        got = {"A": json.loads(a.expect()), "B": json.loads(b.expect())}
    finally:
        a.close()
        b.close()
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(match=f"*:turn:{turn}:*"):
            client.delete(key)
    return {tag: {"namespace": namespaces[tag], "events": got[tag]} for tag in ("A", "B")}


def said(events: list[dict]) -> list[str]:
    """Return who said each event: the tag in a delta's text or in `by`."""
    return [e["text"].split("-")[0] if e["kind"] == "delta" else e["by"] for e in events]


@pytest.mark.parametrize("how", ["REDIS_NAMESPACE", "DJANGO_SECRET_KEY"])
def test_two_deployments_on_one_redis_hear_nothing_of_each_others_streams(tmp_path, how):
    if how == "REDIS_NAMESPACE":  # set explicitly, the same secret key and database
        env_a = deployment_env(REDIS_NAMESPACE="test-lab-a-" + secrets.token_hex(4))
        env_b = deployment_env(REDIS_NAMESPACE="test-lab-b-" + secrets.token_hex(4))
    else:  # the default namespace: only the secret key differs
        env_a = deployment_env(DJANGO_SECRET_KEY="deployment-a-" + secrets.token_hex(20))
        env_b = deployment_env(DJANGO_SECRET_KEY="deployment-b-" + secrets.token_hex(20))

    result = stream_both(tmp_path, env_a, env_b)

    assert result["A"]["namespace"] != result["B"]["namespace"]
    for tag in ("A", "B"):
        events = result[tag]["events"]
        assert said(events) == [tag] * 5, events  # three deltas, done, end: its own and nothing else
        assert [e["text"] for e in events if e["kind"] == "delta"] == [f"{tag}-0", f"{tag}-1", f"{tag}-2"]
        assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]


def test_two_processes_of_one_deployment_do_hear_each_other(tmp_path):
    """The control: the same harness sees the traffic when the namespace is shared (the web and the worker)."""
    env = deployment_env(REDIS_NAMESPACE="test-lab-same-" + secrets.token_hex(4))

    result = stream_both(tmp_path, env, env)

    for tag in ("A", "B"):
        assert said(result[tag]["events"])[:8] == ["B"] * 4 + ["A"] * 4, result[tag]["events"]


# --------------------------------------------------------------------------- Celery's broker


def test_a_task_or_a_control_message_of_one_deployment_never_reaches_the_others_worker(celery_worker_factory):
    from django.core.cache import cache

    from config.celery import app
    from explainers.streaming import TurnStream

    ours, theirs = settings.REDIS_NAMESPACE, "test-lab-other-" + secrets.token_hex(4)
    task = "participants.tasks.budgets_check_task"
    other_worker = celery_worker_factory(concurrency=2, REDIS_NAMESPACE=theirs)
    their_broker = app.connection_for_write(
        transport_options={**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "global_keyprefix": f"{theirs}:celery:"})
    client = redis.Redis.from_url(settings.REDIS_URL)

    try:
        ours_id = app.send_task(task).id  # first: had the two one queue, their worker would take it first
        theirs_id = app.send_task(task, connection=their_broker).id
        assert _wait(lambda: f"[{theirs_id}] succeeded" in other_worker.log()), other_worker.log()[-2000:]
        assert ours_id not in other_worker.log()
        assert any(ours_id in m.decode(errors="replace") for m in client.lrange(f"{ours}:celery:celery", 0, -1))

        # Control messages (pidbox): their worker answers their ping, and not ours.
        # (From a process of theirs: a control message goes out through the app's own producer pool.)
        assert ping_as(theirs) == [[{"ok": "pong"}]]
        assert app.control.ping(timeout=3) == []  # their worker is alive and answering: it just never hears us

        our_worker = celery_worker_factory(concurrency=2)  # our own worker takes our task
        assert _wait(lambda: f"[{ours_id}] succeeded" in our_worker.log()), our_worker.log()[-2000:]
        assert ours_id not in other_worker.log()

        cache.set("namespace-test", 1, 60)
        TurnStream(10**12 + 1).publish("done")
        keys = [k.decode() for k in client.scan_iter(count=1000)]
        assert keys and all(k.startswith((f"{ours}:", f"{theirs}:")) for k in keys), keys
        assert any(k.startswith(f"{ours}:cache:") for k in keys) and any(k.startswith(f"{ours}:turn:") for k in keys)
        assert any(k.startswith(f"{theirs}:celery:") for k in keys)
    finally:
        their_broker.release()


def ping_as(namespace: str) -> list:
    """Ping the workers from a process of the deployment `namespace`; return the replies' bodies."""
    code = ("import django, json; django.setup(); from config.celery import app; "
            f"print(json.dumps([list(r.values()) for r in app.control.ping(timeout={WAIT_S}, limit=1)]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=deployment_env(REDIS_NAMESPACE=namespace),
                            timeout=WAIT_S * 2)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _wait(check, timeout: float = WAIT_S) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()
