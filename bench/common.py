"""Shared set-up for the benchmarks in bench/ (scripts, not pytest).

`Stack` builds a throw-away world on loopback and tears it down on exit (also on Ctrl-C / SIGTERM):

- a fresh PostgreSQL database (`teachback_bench`, dropped and created), migrated;
- a dedicated Redis database (default redis://127.0.0.1:6379/10), flushed;
- the example study with its chat arm only (min_seconds 0, turns 1000, block_size 1), loaded and launched;
- `collectstatic`;
- the fake LLM server (explainers.fakellm), one uvicorn process (config.asgi), one Celery worker
  (`--pool threads --concurrency C`), each in its own process group.

Django is set up inside the bench process (same database), so participants can be created through
the services and given a session cookie directly. `HTTP` is a small plain-asyncio HTTP/1.1 client
(keep-alive, chunked bodies, server-sent events): httpx.AsyncClient is too slow at hundreds of
connections and aiohttp is not installed here.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
EXAMPLE = ROOT / "studies" / "examples" / "loan-approval"
SLUG = "loan-approval"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by one process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _pg_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _pg_tree_cpu_s() -> float:
    return sum(proc_cpu_s(p) for p in _pg_pids())


class CpuMeter:
    """CPU seconds used by named processes between start() and stop() (PostgreSQL: all its backends
    that were alive at both ends, so short-lived backends are undercounted; see `note`)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        self.c0["bench (this process)"] = time.process_time()
        self.total0 = self._machine()
        return self

    @staticmethod
    def _machine() -> tuple[float, float]:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(x) for x in parts]
        idle = values[3] + values[4]
        return sum(values) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        out = {name: proc_cpu_s(pid) - self.c0[name] for name, pid in self.pids.items()}
        out["bench (this process)"] = time.process_time() - self.c0["bench (this process)"]
        total1 = self._machine()
        busy = (total1[0] - self.total0[0]) - (total1[1] - self.total0[1])
        out["_machine_busy"] = busy
        out["_wall"] = wall
        return out

    @staticmethod
    def report(usage: dict) -> str:
        wall = usage["_wall"]
        lines = [f"  CPU over {wall:.1f} s wall (2 cores = {2 * wall:.1f} core-s available):"]
        lines.append(f"    whole machine busy: {usage['_machine_busy']:.1f} core-s ({usage['_machine_busy'] / wall * 100:.0f} % of one core)")
        for name, value in usage.items():
            if not name.startswith("_"):
                lines.append(f"    {name:<22} {value:6.1f} core-s ({value / wall * 100:4.0f} % of one core)")
        return "\n".join(lines)


class Stack:
    """Database, study, fake LLM, uvicorn and a Celery worker; `with Stack(...) as stack:`."""

    def __init__(self, *, db_name="teachback_bench", redis_url="redis://127.0.0.1:6379/10",
                 worker_concurrency=200, worker_db_slots=None, web=True, worker=True,
                 fake_behaviour: dict | None = None, worker_loglevel="WARNING"):
        self.db_name = db_name
        self.db_url = f"postgres://postgres@127.0.0.1:5432/{db_name}"
        self.redis_url = redis_url
        self.worker_concurrency = worker_concurrency
        self.worker_db_slots = worker_db_slots
        self.want_web, self.want_worker = web, worker
        self.fake_behaviour = fake_behaviour or {}
        self.worker_loglevel = worker_loglevel
        self.children: dict[str, subprocess.Popen] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="teachback-bench-"))
        self.fake = None
        self.web_port = None
        self.version = None
        self._old_handlers = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Stack":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _on_signal(self, signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": self.db_url,
            "REDIS_URL": self.redis_url,
            "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 20,
            "SCRIPTED_LLM_URL": self.fake.url if self.fake else "",
            "LLM_BASE_URL": "", "LLM_API_KEY": "", "ANTHROPIC_BASE_URL": "", "ANTHROPIC_API_KEY": "",
            "DJANGO_DEBUG": "", "DJANGO_HTTPS": "", "TEACHBACK_DEMO": "",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        })
        if self.worker_db_slots is not None:
            env["WORKER_DB_SLOTS"] = str(self.worker_db_slots)
        return env

    def _start(self):
        _raise_nofile()
        from explainers.fakellm import FakeLLM  # stdlib-only module (no Django needed)

        say("starting the fake LLM server")
        self.fake = FakeLLM(port_file_dir=str(self.tmp)).start()
        self.children["fakellm"] = self.fake.process
        if self.fake_behaviour:
            self.fake.set_behaviour(**self.fake_behaviour)
        env = self.env()
        os.environ.update(env)  # this process sets Django up on the same database
        self._fresh_database()
        self._flush_redis()
        say("migrate + collectstatic")
        self._manage(["migrate", "--noinput", "-v", "0"])
        self._manage(["collectstatic", "--noinput", "-v", "0"])
        import django

        django.setup()
        self.version = self._launch_study()
        say(f"study {SLUG!r} v{self.version.number} launched (chat arm only)")
        if self.want_web:
            self._start_web()
        if self.want_worker:
            self._start_worker()

    def close(self):
        for name in ("web", "worker", "fakellm"):
            process = self.children.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            try:
                if name == "fakellm":  # started by FakeLLM, not in a process group of its own
                    process.terminate()
                else:
                    os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    process.kill() if name == "fakellm" else os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=5)
        if self.fake is not None:
            self.fake.process = None  # already stopped above
            self.fake.stop()
            self.fake = None
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        keep = Path(tempfile.gettempdir()) / "teachback-bench-logs"
        keep.mkdir(exist_ok=True)
        for log in self.tmp.glob("*.log"):
            shutil.copy(log, keep / log.name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    # ------------------------------------------------------------------ pieces
    def _fresh_database(self):
        import psycopg

        say(f"fresh database {self.db_name}")
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    def _flush_redis(self):
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()

    def _manage(self, args):
        result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def _launch_study(self):
        from ruamel.yaml import YAML

        from studies.services import study_launch, study_version_create
        from studies.spec import study_file_read

        folder = self.tmp / "study"
        shutil.copytree(EXAMPLE, folder)
        yaml = YAML(typ="rt")
        data = yaml.load((folder / "study.yaml").read_text(encoding="utf-8"))
        data["arms"] = [a for a in data["arms"] if a["kind"] == "chat"]
        data["arms"][0]["limits"]["min_seconds"] = 0
        data["arms"][0]["limits"]["turns"] = 1000
        # Not in the brief, but needed: at ~1.5 k prompt tokens a turn, the example's 20 000-token budget
        # would end a benchmark conversation after a dozen turns (409 "limit").
        data["arms"][0]["limits"]["tokens"] = 100_000_000
        data["allocation"]["block_size"] = 1
        with (folder / "study.yaml").open("w", encoding="utf-8") as out:
            yaml.dump(data, out)
        version, _ = study_version_create(study_file=study_file_read(folder))
        return study_launch(slug=version.study.slug, number=version.number)

    def _spawn(self, name, command):
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_raise_nofile)
        self.children[name] = process
        return process

    def log(self, name) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start_web(self):
        self.web_port = free_port()
        say(f"starting uvicorn (1 process, uvloop + httptools) on 127.0.0.1:{self.web_port}")
        process = self._spawn("web", [
            PYTHON, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(self.web_port),
            "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
            "--backlog", "4096", "--timeout-keep-alive", "60",
        ])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.log('web')[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.web_port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("uvicorn did not answer /healthz in 30 s")

    def _start_worker(self):
        say(f"starting Celery worker: --pool threads --concurrency {self.worker_concurrency}"
            f" (WORKER_DB_SLOTS={self.worker_db_slots or 'default'})")
        process = self._spawn("worker", [
            PYTHON, "-m", "celery", "-A", "config", "worker", "--pool", "threads",
            "--concurrency", str(self.worker_concurrency), "--loglevel", self.worker_loglevel,
            "--without-mingle", "--without-gossip", "-n", f"bench-{os.getpid()}@%h",
        ])
        from config.celery import app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.log('worker')[-3000:]}")
            if app.control.ping(timeout=0.5):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the worker did not answer a ping:\n{self.log('worker')[-3000:]}")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.children.items()}

    # ------------------------------------------------------------------ participants
    def participants(self, n: int, *, prefix: str, step: str = "explanation") -> list:
        """Create n participants through the services, up to `step` ('pre_test' or 'explanation')."""
        from participants import services
        from participants.bots import AnswerPolicy
        from participants.models import Participant, Step
        from participants.selectors import participant_current_item
        from studies.protocol import Protocol

        version = self.version
        policy = AnswerPolicy("key", Protocol(version.spec), version.target_keys, random.Random(0))
        made = []
        for i in range(n):
            pid = hashlib.sha256(f"{prefix}-{i:05d}".encode()).hexdigest()[:24]  # a valid Prolific id
            participant = services.participant_enter(slug=SLUG, pid=pid, language="en")
            services.participant_consent(participant_id=participant.pk, accept=True)
            if step == "explanation":
                participant = Participant.objects.get(pk=participant.pk)
                while participant.step == Step.PRE_TEST:
                    current = participant_current_item(participant=participant)
                    answer = policy.answer(current.item["id"])
                    values = answer["answer"] if isinstance(answer["answer"], list) else [answer["answer"]]
                    participant, _ = services.response_submit(
                        participant_id=participant.pk, phase=Step.PRE_TEST, item_id=current.item["id"],
                        values=values, confidence=answer.get("confidence"),
                    )
                    participant = Participant.objects.get(pk=participant.pk)
                assert participant.step == Step.EXPLANATION, participant.step
            made.append(Participant.objects.get(pk=participant.pk))
        return made

    def cookies(self, participant) -> tuple[str, dict]:
        """A session cookie for this participant (and a CSRF cookie + header): (cookie header, extra headers)."""
        from django.conf import settings
        from django.contrib.sessions.backends.db import SessionStore
        from django.middleware.csrf import _get_new_csrf_string

        session = SessionStore()
        session[f"teachback:participant:{SLUG}"] = participant.token
        session.save()
        csrf = _get_new_csrf_string()
        cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}; {settings.CSRF_COOKIE_NAME}={csrf}"
        return cookie, {"X-CSRFToken": csrf}


# ---------------------------------------------------------------------- a small async HTTP client


class HTTPError(Exception):
    pass


class HTTP:
    """One HTTP/1.1 keep-alive connection on plain asyncio streams."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def _request_bytes(self, method, path, headers, body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def _head(self):
        raw = await self.reader.readuntil(b"\r\n\r\n")
        head = raw.decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    async def _send(self, method, path, headers, body):
        for attempt in (1, 2):  # a reused keep-alive connection may have been closed by the server
            if self.writer is None:
                await self._connect()
            try:
                self.writer.write(self._request_bytes(method, path, headers, body))
                await self.writer.drain()
                return await self._head()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise

    async def request(self, method, path, headers=None, body: bytes = b""):
        """Return (status, headers, body)."""
        status, h = await self._send(method, path, headers, body)
        if h.get("transfer-encoding") == "chunked":
            parts = []
            async for chunk in self._chunks():
                parts.append(chunk)
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(int(h.get("content-length", "0")))
        if h.get("connection", "").lower() == "close":
            self.close()
        return status, h, data

    async def _chunks(self):
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def events(self, path, headers=None):
        """GET a text/event-stream; yield (monotonic time, kind, data) per event, until the server ends it."""
        status, h = await self._send("GET", path, {**(headers or {}), "Accept": "text/event-stream"}, b"")
        if status != 200:
            body = await self.reader.read(2000)
            self.close()
            raise HTTPError(f"events: HTTP {status} {body[:300]!r}")
        buffer = b""
        async for chunk in self._chunks():
            now = time.monotonic()
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                yield (now, *sse_event(block))


def sse_event(block: bytes) -> tuple[str, str]:
    """(kind, data) of one server-sent-events block (the bytes between two blank lines); a comment line gives
    ("comment", its text)."""
    kind, data = "message", ""
    for line in block.decode().split("\n"):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line.startswith(":"):
            kind, data = "comment", line[1:].strip()
    return kind, data


async def chat_turn(post: HTTP, sse: HTTP, cookie: str, extra: dict, text: str, timeout: float = 45.0) -> dict:
    """One chat turn as a browser does it: POST the message, then follow the reply's event stream.

    Returns {"turn", "t_send", "t_first" (first delta event), "t_done", "status"}."""
    import json
    from urllib.parse import urlencode

    body = urlencode({"text": text}).encode()
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded", **extra}
    t_send = time.monotonic()
    try:
        status, _, data = await asyncio.wait_for(post.request("POST", f"/s/{SLUG}/chat/send/", headers, body), 30)
    except asyncio.TimeoutError:
        post.close()
        raise HTTPError("chat send: no answer in 30 s")
    if status != 202:
        raise HTTPError(f"chat send: HTTP {status} {data[:300]!r}")
    turn = json.loads(data)["turn"]
    t_accepted = time.monotonic()
    result = {"turn": turn, "t_send": t_send, "t_accepted": t_accepted, "t_first": None, "t_done": None, "final": None}
    async def follow():
        async for now, kind, _data in sse.events(f"/s/{SLUG}/chat/events/{turn}/", {"Cookie": cookie}):
            if kind == "delta" and result["t_first"] is None:
                result["t_first"] = now
            elif kind in ("done", "failed"):
                result["t_done"], result["final"] = now, kind

    try:
        await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError:
        sse.close()
        raise HTTPError(f"turn {turn}: no end of the event stream in {timeout:.0f} s (first delta seen: {result['t_first'] is not None})")
    return result


class PgSampler:
    """A thread counting connections to one database in pg_stat_activity every `every` s (max, by state)."""

    def __init__(self, db_url: str, db_name: str, every: float = 0.5):
        import threading

        self.db_url, self.db_name, self.every = db_url.replace("postgres://", "postgresql://"), db_name, every
        self.max_total = self.max_active = self.max_idle_in_tx = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self._stop.wait(self.every):
                try:
                    total, active, idle_tx = conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'active'),"
                        " count(*) FILTER (WHERE state LIKE 'idle in transaction%%') FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,)).fetchone()
                except Exception:
                    self.errors += 1
                    continue
                self.max_total = max(self.max_total, total)
                self.max_active = max(self.max_active, active)
                self.max_idle_in_tx = max(self.max_idle_in_tx, idle_tx)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(5)
        return (f"PostgreSQL connections to the bench DB: max {self.max_total} (max active {self.max_active},"
                f" max idle in transaction {self.max_idle_in_tx}) of max_connections 100")
