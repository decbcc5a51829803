"""The web process under a launch burst, oversized bodies, NUL bytes and a lost database (issue 13: 2, 9, 10).

The burst, the streams, the bodies and the outage run against a real `uvicorn config.asgi:application`
(the app as deployed: the ASGI body limit, the database pool, the one Redis pub/sub connection); the NUL
bytes go through Django's test client, which runs the same middleware.
"""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from bench.burst_arrivals import ConnectionWatch, burst
from bench.common import sse_event
from conftest import chat_only, hex_pid
from explainers.models import Turn
from explainers.streaming import TurnStream
from participants import services
from participants.models import Participant, Step

WAIT_S = 30.0
MB = 1024 * 1024


@pytest.fixture
def web_server(asgi_server_factory):
    """conftest's `asgi_server_factory`: uvicorn with extra environment variables, an AppServer each."""
    return asgi_server_factory


# --- 2. bounded connections ---------------------------------------------------------------------------------

def test_500_simultaneous_arrivals_get_no_error_and_hold_at_most_the_pool(live_study, web_server):
    server = web_server()
    dsn = "postgres://postgres@127.0.0.1:5432/postgres"
    with ConnectionWatch(dsn, server.pid) as watch:
        result = asyncio.run(burst(server.port, live_study.study.slug, 500, label=f"burst-{time.time_ns()}"))
    assert result.errors == [], sorted(set(result.errors))[:5]
    assert result.unexpected == [], sorted(set(result.unexpected))[:5]
    assert len(result.seconds) == 500
    assert Participant.objects.filter(study=live_study.study).count() == 500
    assert watch.samples > 0
    assert 1 <= watch.peak <= settings.DB_POOL_MAX_SIZE, watch.peak


def _chat_participant(version) -> tuple[Participant, str]:
    """A participant at the chat (through the services) and the session cookie of their browser."""
    from participants.bots import AnswerPolicy
    from participants.selectors import participant_current_item
    from studies.protocol import Protocol
    import random

    policy = AnswerPolicy("key", Protocol(version.spec), version.target_keys, random.Random(0))
    participant = services.participant_enter(slug=version.study.slug, pid=hex_pid("streams"), language="en")
    participant = services.participant_consent(participant_id=participant.pk, accept=True)
    while participant.step == Step.PRE_TEST:
        item = participant_current_item(participant=participant).item
        answer = policy.answer(item["id"])
        values = answer["answer"] if isinstance(answer["answer"], list) else [answer["answer"]]
        participant, _ = services.response_submit(participant_id=participant.pk, phase=Step.PRE_TEST,
                                                  item_id=item["id"], values=values,
                                                  confidence=answer.get("confidence"))
        participant = Participant.objects.get(pk=participant.pk)
    assert participant.step == Step.EXPLANATION
    session = SessionStore()
    session[f"teachback:participant:{version.study.slug}"] = participant.token
    session.save()
    return participant, f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


class Stream:
    """One open server-sent-events connection, read in the background."""

    def __init__(self, port: int, path: str, cookie: str):
        self.port, self.path, self.cookie = port, path, cookie
        self.events: list[tuple[str, str]] = []  # (kind, data); comments as ("comment", text)
        self.ended = asyncio.Event()
        self.opened = asyncio.Event()

    async def open(self) -> "Stream":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                           f"Cookie: {self.cookie}\r\n\r\n").encode())
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), head
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), WAIT_S)
        return self

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                buffer += (await self.reader.readexactly(size + 2))[:-2]
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    kind, data = sse_event(block)
                    self.events.append((kind, data))
                    if (kind, data) == ("comment", "open"):
                        self.opened.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended.set()
            self.writer.close()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def _redis_connections_of(pid: int) -> int:
    """Redis connections the process holds: CLIENT LIST entries whose address is one of its sockets."""
    ports = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr}
    clients = redis.Redis.from_url(settings.REDIS_URL).client_list()
    return sum(1 for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports)


def test_one_participant_opening_many_streams_keeps_the_newest_few_and_few_redis_connections(launch, fake_llm,
                                                                                            web_server):
    version = launch(chat_only)
    participant, cookie = _chat_participant(version)
    turn = services.chat_send(participant_id=participant.pk, text="Why was I refused?")  # no worker: stays pending
    server = web_server()
    cap = settings.CHAT_STREAMS_PER_PARTICIPANT
    path = f"/s/{version.study.slug}/chat/events/{turn.id}/"

    async def scenario():
        streams = []
        for _ in range(12):  # one after the other, so "oldest" is well defined
            streams.append(await Stream(server.port, path, cookie).open())
        old, newest = streams[:-cap], streams[-cap:]
        await asyncio.wait_for(asyncio.gather(*(s.ended.wait() for s in old)), WAIT_S)
        assert all("superseded" in s.kinds() for s in old)
        assert not any(s.ended.is_set() for s in newest)
        held = _redis_connections_of(server.pid)
        # The newest streams still carry the reply live, from the one shared pub/sub connection.
        TurnStream(turn.id).publish("delta", text="Because of")
        for stream in newest:
            await asyncio.wait_for(_until(lambda: ("delta", json.dumps({"text": "Because of"})) in stream.events), WAIT_S)
        # The browser's reconnect (one more stream) gets through, replays what was said, and ends the oldest.
        again = await Stream(server.port, path, cookie).open()
        await asyncio.wait_for(_until(lambda: any(k == "delta" for k in again.kinds())), WAIT_S)
        await asyncio.wait_for(newest[0].ended.wait(), WAIT_S)
        assert "superseded" in newest[0].kinds()
        assert not again.ended.is_set() and not newest[1].ended.is_set()
        for stream in [*newest[1:], again]:
            stream.writer.close()
        return held

    held = asyncio.run(scenario())
    assert 1 <= held <= cap, held  # 13 streams opened; each used to hold two connections of its own
    assert Turn.objects.get(pk=turn.id).status == Turn.Status.PENDING


async def _until(condition, every: float = 0.02) -> None:
    while not condition():
        await asyncio.sleep(every)


# --- 9. body limits -------------------------------------------------------------------------------------------

def _post_declared(port: int, path: str, length: int) -> tuple[int, int]:
    """POST with Content-Length `length` and send no body: (status, body bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {length}\r\n\r\n").encode())
        return _status(sock), 0


def _post_chunked(port: int, path: str, total: int, watch_pid: int, temp_dir: Path) -> tuple[int, int]:
    """Stream a chunked body of up to `total` bytes until the server answers: (status, bytes sent). Meanwhile
    check that the server has no file open in `temp_dir`."""
    chunk = b"x" * (256 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, answer, pending = 0, b"", memoryview(frame)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        sock.setblocking(False)
        deadline = time.monotonic() + WAIT_S * 4
        try:
            while sent < total and b"\r\n" not in answer and time.monotonic() < deadline:
                try:
                    answer += sock.recv(4096)  # read the answer the moment it comes, before any reset
                    continue
                except BlockingIOError:
                    pass
                try:
                    pending = pending[sock.send(pending):]
                except BlockingIOError:
                    time.sleep(0.002)
                    continue
                if pending:
                    continue
                pending = memoryview(frame)
                sent += len(chunk)
                if sent % (8 * MB) == 0:
                    assert _open_in(watch_pid, temp_dir) == []
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.setblocking(True)
        sock.settimeout(WAIT_S)
        while b"\r\n" not in answer:
            try:
                part = sock.recv(4096)
            except ConnectionResetError:
                break
            if not part:
                break
            answer += part
    assert answer, f"no answer after {sent} bytes"
    return int(answer.split(b" ", 2)[1]), sent


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return int(data.split(b" ", 2)[1])


def _open_in(pid: int, folder: Path) -> list[str]:
    """Paths in `folder` (deleted ones too) that the process has open."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.parametrize("path", ["/console/login/", "/console/upload/", "/api/studies/"])
def test_a_300_mb_body_is_refused_with_413_before_it_touches_the_disk(web_server, tmp_path, path):
    temp_dir = tmp_path / "spool"
    temp_dir.mkdir()
    server = web_server(TMPDIR=temp_dir, FILE_UPLOAD_TEMP_DIR=temp_dir)

    assert _post_declared(server.port, path, 300 * MB) == (413, 0)
    status, sent = _post_chunked(server.port, path, 300 * MB, server.pid, temp_dir)
    assert status == 413
    assert sent < 64 * MB, sent  # refused once past the limit (1 MiB; 20 MiB + overhead on the upload paths)
    assert list(temp_dir.iterdir()) == []
    assert _open_in(server.pid, temp_dir) == []


def test_a_body_within_the_limit_reaches_django_chunked_or_not(web_server, tmp_path):
    """The login form, posted chunked: Django reads the CSRF token from the replayed body and checks the password."""
    server = web_server()
    with urllib.request.urlopen(f"{server.url}/console/login/", timeout=WAIT_S) as response:
        page = response.read().decode()
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    body = f"csrfmiddlewaretoken={token}&username=nobody&password=wrong".encode()
    for chunked in (False, True):
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
            payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if chunked else body
            sock.sendall((f"POST /console/login/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nCookie: {cookie}\r\n"
                          "Content-Type: application/x-www-form-urlencoded\r\n"
                          f"{framing}\r\nConnection: close\r\n\r\n").encode() + payload)
            answer = b""
            while part := sock.recv(65536):
                answer += part
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]  # the form again, with the login error
        assert b'name="username"' in answer


def test_django_limits_are_set_below_the_asgi_limit():
    from config.asgi import application
    from studies.spec import MAX_STUDY_BYTES

    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= settings.BODY_MAX_BYTES
    assert application.limit_for("/s/loan-approval/consent/") == settings.BODY_MAX_BYTES
    assert application.limit_for("/console/upload/") == MAX_STUDY_BYTES + settings.BODY_UPLOAD_OVERHEAD_BYTES
    assert application.limit_for("/console/loan-approval/upload/") > MAX_STUDY_BYTES
    assert application.limit_for("/api/studies/loan-approval/") == settings.BODY_MAX_BYTES


# --- 10. NUL bytes and the database outage -------------------------------------------------------------------

@pytest.mark.django_db
def test_a_nul_byte_in_study_id_is_refused_with_400_and_no_participant(live_study, enter):
    client, response = enter(live_study, pid="nul-study-id", STUDY_ID="S1\x00")
    assert response.status_code == 400
    assert "cannot be saved" in response.content.decode()
    assert not Participant.objects.filter(study=live_study.study).exists()


@pytest.mark.django_db
def test_a_nul_byte_in_a_chat_message_is_refused_with_400_and_a_message(launch, fake_llm, enter, step_through):
    version = launch(chat_only)
    client, _ = enter(version, pid="nul-chat")
    step_through(client, version, times=1 + 5)
    response = client.post(f"/s/{version.study.slug}/chat/send/", {"text": "Why\x00 me?"},
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "nul" and "cannot be saved" in response.json()["message"]
    assert not Turn.objects.exists()
    ok = client.post(f"/s/{version.study.slug}/chat/send/", {"text": "Why me?"}, HTTP_ACCEPT="application/json")
    assert ok.status_code == 202


@pytest.mark.django_db
def test_a_nul_byte_in_a_text_answer_is_refused_with_400(live_study, enter, step_through):
    from participants.bots import page_parse

    client, _ = enter(live_study, pid="nul-text")
    for _ in range(40):
        page = client.get(f"/s/{live_study.study.slug}/", follow=True)
        parsed = page_parse(page.content.decode())
        if parsed.kind == "item" and parsed.hidden.get("item") == "q_confusing":
            break
        step_through(client, live_study)
    else:
        raise AssertionError("never reached the text item q_confusing")
    url = page.redirect_chain[-1][0]
    response = client.post(url, {"item": "q_confusing", "answer": "It was\x00 fine"})
    assert response.status_code == 400
    assert "Back button" in response.content.decode()
    participant = Participant.objects.get(study=live_study.study)
    assert not participant.responses.filter(item_id="q_confusing").exists()
    assert client.post(url, {"item": "q_confusing", "answer": "It was fine"}).status_code in (302, 303)


def test_a_lost_database_gives_503_saying_temporarily_unavailable_and_answers_saved(web_server, live_study):
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    server = web_server(DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed}/teachback", DB_POOL_TIMEOUT_S=2)
    slug = live_study.study.slug

    def get(path, **headers):
        request = urllib.request.Request(f"{server.url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()

    status, headers, page = get(f"/s/{slug}/?PROLIFIC_PID={hex_pid('outage')}&STUDY_ID=S&SESSION_ID=X")
    assert status == 503 and headers.get("Retry-After") == "60"
    assert "temporarily unavailable" in page and "Your answers so far are saved" in page
    assert "could not find your place" not in page
    status, _, page = get(f"/s/{slug}/consent/", Cookie=f"{settings.SESSION_COOKIE_NAME}={'s' * 32}",
                          **{"Accept-Language": "zh-hans"})
    assert status == 503 and '<html lang="zh-hans">' in page
    status, _, body = get("/api/studies/", Authorization="Bearer tb_x")
    assert status == 503 and json.loads(body)["code"] == "unavailable"  # the API's error shape
    assert "database unavailable" in server.log()


# --- what held: a PostgreSQL restart loses nothing ---------------------------------------------------------

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


class PrivatePostgres:
    """A PostgreSQL cluster of this test only (initdb in a temporary folder, trust auth, its own port), run as
    the `postgres` user when the test runs as root (PostgreSQL refuses to run as root)."""

    def __init__(self, folder: Path):
        self.folder, self.data = folder, folder / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr[-2000:])

    def init(self) -> "PrivatePostgres":
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth", "trust", "-E", "UTF8")
        return self

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.folder / "pg.log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


@pytest.mark.skipif(PG_BIN is None or not shutil.which("runuser"), reason="needs PostgreSQL's server binaries")
def test_a_postgresql_restart_loses_nothing_and_the_pooled_web_process_serves_on(web_server, live_study, tmp_path):
    """The pool's connections all die with the server; after the restart the web process serves again at
    once (each connection is checked before use), and what the participant did before and during the
    outage is either saved or refused with the outage page, never lost half-way."""
    import httpx2
    import psycopg

    import tempfile

    # not under tmp_path: pytest's folders are root's alone, and the server runs as `postgres`
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="teachback-pg-"))).init()
    pg.start()
    try:
        # the test database as it is now (migrated, the study launched), copied into the private server
        source = settings.DATABASES["default"]
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-qc", "CREATE DATABASE tb"],
                       check=True, capture_output=True)
        dump = subprocess.run(["pg_dump", "-h", source["HOST"], "-p", str(source["PORT"] or 5432), "-U", source["USER"],
                               "--no-owner", source["NAME"]], check=True, capture_output=True).stdout
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-q", "-d", "tb"],
                       input=dump, check=True, capture_output=True)
        server = web_server(DATABASE_URL=pg.url("tb"), DB_POOL_MIN_SIZE=4, DB_POOL_TIMEOUT_S=3)
        slug = live_study.study.slug
        with httpx2.Client(base_url=server.url, timeout=WAIT_S) as browser:
            entry = browser.get(f"/s/{slug}/", params={"PROLIFIC_PID": hex_pid("restart"), "STUDY_ID": "S",
                                                        "SESSION_ID": "R"})
            assert entry.status_code == 302 and entry.headers["location"].endswith("/consent/")
            page = browser.get(f"/s/{slug}/consent/")
            assert page.status_code == 200
            token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]

            pg.stop()
            during = browser.post(f"/s/{slug}/consent/", data={"csrfmiddlewaretoken": token, "choice": "accept"})
            assert during.status_code == 503 and "temporarily unavailable" in during.text
            pg.start()

            again = browser.post(f"/s/{slug}/consent/", data={"csrfmiddlewaretoken": token, "choice": "accept"})
            assert again.status_code == 303, again.text[:500]
            assert browser.get(again.headers["location"]).status_code == 200
        with psycopg.connect(pg.url("tb")) as conn:
            rows = conn.execute("SELECT step, consented_at IS NOT NULL FROM participants_participant").fetchall()
        assert rows == [(Step.PRE_TEST, True)]
    finally:
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped: the test failed during the outage
        shutil.rmtree(pg.folder, ignore_errors=True)
