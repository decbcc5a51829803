"""Shared fixtures: the example study launched from a (possibly edited) copy of its folder, the fake model,
a real Celery worker, and the app under uvicorn with Debian Chromium for the browser tests."""
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.test import Client
from ruamel.yaml import YAML

from studies.services import study_launch, study_version_create
from studies.spec import study_file_read

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "studies" / "examples" / "loan-approval"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(autouse=True)
def _static_files_without_manifest(settings):
    """Tests do not run collectstatic: resolve static files from the source folders."""
    settings.STORAGES = {
        **settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def study_folder(tmp_path):
    """Return a function that copies the example study and applies `edit(data)` to its YAML."""

    def make(edit=None, name="study") -> Path:
        folder = tmp_path / name
        shutil.copytree(EXAMPLE, folder)
        if edit is not None:
            yaml = YAML(typ="rt")
            data = yaml.load((folder / "study.yaml").read_text(encoding="utf-8"))
            edit(data)
            with (folder / "study.yaml").open("w", encoding="utf-8") as out:
                yaml.dump(data, out)
        return folder

    return make


@pytest.fixture
def launch(study_folder):
    """Return a function that loads and launches a (possibly edited) copy of the example study."""

    def make(edit=None):
        version, _ = study_version_create(study_file=study_file_read(study_folder(edit)))
        return study_launch(slug=version.study.slug, number=version.number)

    return make


def static_only(data) -> None:
    """Keep the static arm only, with no minimum reading time."""
    data["arms"] = [a for a in data["arms"] if a["kind"] == "static"]
    data["arms"][0].setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


@pytest.fixture
def live_study(db, launch):
    """The example study, launched, allocating to its static arm with no minimum reading time."""
    return launch(static_only)


HEX_PID = re.compile(r"[0-9a-fA-F]{24}")


def hex_pid(label: str) -> str:
    """A valid Prolific id (24 hex digits) for a readable label: the label itself if it is one already,
    else the first 24 hex digits of its sha256 (the same label always gives the same id)."""
    return label if HEX_PID.fullmatch(label) else hashlib.sha256(label.encode()).hexdigest()[:24]


@pytest.fixture(autouse=True)
def _entry_rate_limits_off(settings):
    """Every test client comes from 127.0.0.1 and the counters live in Redis across tests: the entry limits
    are off unless a test turns them on (tests/participants/test_entry_hardening.py)."""
    settings.ENTRY_RATE_PER_IP = 0
    settings.ENTRY_RATE_PER_SESSION = 0


def chat_participants(version, n: int, tag: str) -> list:
    """Enter, consent and answer the pre-test (from the key) for `n` participants of the chat arm."""
    import random

    from participants.bots import AnswerPolicy
    from participants.models import Step
    from participants.services import participant_consent, participant_enter, response_submit
    from studies.protocol import Protocol

    protocol = Protocol(version.spec)
    out = []
    for i in range(n):
        participant = participant_enter(slug=version.study.slug, pid=hex_pid(f"{tag}{i:04d}"))
        participant = participant_consent(participant_id=participant.pk, accept=True)
        answers = AnswerPolicy("key", protocol, version.target_keys, random.Random(i))
        for item_id in protocol.phase_item_ids(Step.PRE_TEST, participant.form_order):
            answer = answers.answer(item_id)
            values = answer["answer"] if isinstance(answer["answer"], list) else [answer["answer"]]
            response_submit(participant_id=participant.pk, phase=Step.PRE_TEST, item_id=item_id, values=values,
                            confidence=answer.get("confidence"))
        participant.refresh_from_db()
        assert participant.step == Step.EXPLANATION and participant.arm == "chat", (participant.step, participant.arm)
        out.append(participant)
    return out


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def turns_settled(turns) -> bool:
    """Whether every one of `turns` is answered or failed."""
    from explainers.models import Turn

    ids = [t.pk for t in turns]
    return Turn.objects.filter(pk__in=ids, status__in=(Turn.Status.ANSWERED, Turn.Status.FAILED)).count() == len(ids)


class _KeepOpen:
    """`django.db.connection`, except that close() leaves the test's transaction alone."""

    def close(self):
        pass

    def __getattr__(self, name):
        from django.db import connection

        return getattr(connection, name)


@pytest.fixture
def in_process(monkeypatch):
    """Let the worker's services (`reply_generate`) and the event stream run inside the test's transaction.

    The worker gives its database connection back after every step (`services._db` closes it), and so does
    the event stream; inside the test's atomic block that would close the test's own connection. That is
    worker plumbing, not what such tests check. Stale Redis leases of an earlier run (turn ids restart with
    every test database) would make `reply_generate` answer "busy": the test Redis database is flushed first.
    """
    from contextlib import contextmanager

    import redis
    from django.conf import settings as django_settings

    from explainers import services as explainer_services
    from participants import chat_views

    @contextmanager
    def keep_connection():
        yield

    monkeypatch.setattr(explainer_services, "_db", keep_connection)
    monkeypatch.setattr(chat_views, "connection", _KeepOpen())
    redis.Redis.from_url(django_settings.REDIS_URL).flushdb()


def export_table_read(folder, table: str, fmt: str):
    """One table of an export folder (csv, parquet or jsonl) as a DataFrame."""
    import pandas as pd

    from analysis.codebook import TABLES

    path = folder / f"{table}.{fmt}"
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    if fmt == "parquet":
        return pd.read_parquet(path)
    if not path.stat().st_size:  # JSON Lines cannot name the columns of an empty table: the codebook does
        return pd.DataFrame(columns=TABLES[table].names)
    return pd.read_json(path, lines=True, dtype=False)


@pytest.fixture
def enter():
    """Return a function that enters a study as a participant through the study link.

    `pid` is a label or a Prolific id: a label becomes a valid id through `hex_pid`. Every participant
    has a recruiter session of their own (SESSION_ID), unless the test passes one.
    """

    def make(version, pid="PID0000000000000000000001", client=None, **params):
        client = client or Client()
        pid = hex_pid(pid)
        query = {"PROLIFIC_PID": pid, "STUDY_ID": "S1", "SESSION_ID": f"SESSION-{pid}", **params}
        response = client.get(f"/s/{version.study.slug}/", query)
        return client, response

    return make


@pytest.fixture
def step_through():
    """Return a function that submits the participant's current page `times` times (answers from the key)."""
    import random

    from participants.bots import AnswerPolicy, page_parse
    from studies.protocol import Protocol

    def submit(client, version, times=1, policy="key"):
        answers = AnswerPolicy(policy, Protocol(version.spec), version.target_keys, random.Random(0))
        response = None
        for _ in range(times):
            page_response = client.get(f"/s/{version.study.slug}/", follow=True)
            page = page_parse(page_response.content.decode())
            data = {}
            if page.kind == "consent":
                data["choice"] = "accept"
            elif page.kind == "item":
                data = {"item": page.hidden["item"], **answers.answer(page.hidden["item"])}
            elif page.kind not in ("explanation", "debrief"):
                raise AssertionError(f"nothing to submit on a {page.kind!r} page")
            response = client.post(page_response.redirect_chain[-1][0], data)
        return response

    return submit


# --- language models and Celery workers -------------------------------------------------------


@pytest.fixture(scope="session")
def fake_llm_server():
    """The scripted OpenAI-compatible (and Anthropic) server on loopback, one per test session."""
    from explainers.fakellm import FakeLLM

    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def fake_llm(fake_llm_server, settings):
    """The fake server, reset, serving this test as the scripted demo model."""
    fake_llm_server.reset()
    settings.SCRIPTED_LLM_URL = fake_llm_server.url
    settings.LLM_BASE_URL = ""
    settings.LLM_API_KEY = ""
    return fake_llm_server


def chat_only(data, **llm) -> None:
    """Keep the chat arm only, with no minimum time; `llm` overrides its model settings."""
    data["arms"] = [a for a in data["arms"] if a["kind"] == "chat"]
    data["arms"][0]["limits"]["min_seconds"] = 0
    data["arms"][0]["llm"].update(llm)
    data["allocation"]["block_size"] = 1


@pytest.fixture
def chat_study(launch, fake_llm):
    """The example study launched with its chat arm only, answered by the fake server."""
    return launch(chat_only)


class CeleryWorker:
    """A real `celery -A config worker` process on the test database and a flushed test broker.

    `args` replaces the command after `celery -A config` (e.g. a deployment file's worker or beat line)."""

    def __init__(self, env: dict, log_path: Path, concurrency: int, beat: bool, args: list[str] | None = None):
        self.env, self.log_path, self.concurrency, self.beat = env, log_path, concurrency, beat
        self.args = args
        self.process = None

    def start(self, timeout: float = 90.0) -> "CeleryWorker":  # generous: six test runs may share two cores
        import subprocess
        import sys
        import time

        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "threads",
                   "--concurrency", str(self.concurrency), "--loglevel", "INFO", "--without-mingle",
                   "--without-gossip", "-n", f"test-{time.monotonic_ns()}@%h"]
        ready = " ready."
        if self.args is not None:
            command = [sys.executable, "-m", "celery", "-A", "config", *self.args]
            if "worker" in self.args:
                command += ["-n", f"test-{time.monotonic_ns()}@%h"]
            else:
                ready = "beat: Starting..."
        env = self.env
        if self.beat:  # the tests' single-process setup; production refuses -B (config/celery.py)
            command += ["-B", "-s", str(self.log_path.with_suffix(".beat"))]
            env = {**env, "WORKER_BEAT_ALLOWED": "1"}
        log = self.log_path.open("a")
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited: {self.log()[-2000:]}")
            if ready in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the worker did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9 the whole worker (its process group), as a crash or an OOM kill would."""
        import os
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def app_process_env(fake_llm) -> dict:
    """The environment of an app process (worker, uvicorn) on this test's database and broker."""
    import os

    from django.conf import settings as django_settings
    from django.db import connection

    db = connection.settings_dict
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": django_settings.REDIS_URL,
        # The default namespace hashes the database name, and pytest-django renamed it (test_...).
        "REDIS_NAMESPACE": django_settings.REDIS_NAMESPACE,
        "SCRIPTED_LLM_URL": fake_llm.url,
        "LLM_BASE_URL": "",
        "LLM_API_KEY": "",
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
        "ENTRY_RATE_PER_IP": "0",  # every browser test arrives from 127.0.0.1 (see _entry_rate_limits_off)
        "ENTRY_RATE_PER_SESSION": "0",
    }


@pytest.fixture
def celery_worker_factory(transactional_db, fake_llm, tmp_path):
    """Return a function that starts a real worker process (call it again after a kill)."""

    import redis
    from django.conf import settings as django_settings

    redis.Redis.from_url(django_settings.REDIS_URL).flushdb()
    env = app_process_env(fake_llm)
    workers = []

    def start(concurrency: int = 50, beat: bool = False, args: list[str] | None = None, **extra_env) -> CeleryWorker:
        worker = CeleryWorker({**env, **{k: str(v) for k, v in extra_env.items()}},
                              tmp_path / f"worker-{len(workers)}.log", concurrency, beat, args)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


# --- the app under uvicorn (ASGI, as in production) and Debian Chromium, for the browser tests ------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",  # nothing leaves the machine
]
CSP_MARKERS = ("Content Security Policy", "Refused to")


@pytest.fixture(scope="session")
def asgi_static(tmp_path_factory):
    """A settings module whose STATIC_ROOT is a temporary folder, filled by collectstatic once per session.

    Server-sent events need an ASGI server (pytest-django's `live_server` is threaded WSGI), and that process
    uses the production static storage: the manifest (hashed names) without WhiteNoise's slow compression.
    Nothing is written in the checkout.
    """
    folder = tmp_path_factory.mktemp("asgi")
    static_root = folder / "static"
    (folder / "browser_asgi_settings.py").write_text(
        "from pathlib import Path\n"
        "from config.settings import *  # noqa: F403\n"
        f"STATIC_ROOT = Path({str(static_root)!r})\n"
        'STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}\n'  # noqa: E501
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
           "DJANGO_SETTINGS_MODULE": "browser_asgi_settings", "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "x"}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0", "-i", "rest_framework"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
    )
    assert (static_root / "staticfiles.json").exists()
    return folder


class AppServer:
    """A running `uvicorn config.asgi:application` of a test: its URL, port, process and log."""

    def __init__(self, port: int, process: subprocess.Popen, log_path: Path):
        self.url, self.port, self.process, self.log_path = f"http://127.0.0.1:{port}", port, process, log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def asgi_server_factory(transactional_db, fake_llm, asgi_static, tmp_path):
    """Return a function that starts `uvicorn config.asgi:application` (the app as deployed: the ASGI body limit,
    the database pool) on the test database, the test Redis and the fake model, with extra environment
    variables; it returns an AppServer once the server answers (a 503 without a database counts).

    Fails the test if a server logged a traceback.
    """
    servers = []

    def start(**extra_env) -> AppServer:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **app_process_env(fake_llm),
            "PYTHONPATH": os.pathsep.join([str(asgi_static), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "browser_asgi_settings",
            "DJANGO_DEBUG": "",
            **{k: str(v) for k, v in extra_env.items()},
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the app runs as in production
        log_path = tmp_path / f"uvicorn-{len(servers)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--no-access-log", "--backlog", "2048"],
            cwd=ROOT, env=env, stdout=log_path.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        server = AppServer(port, process, log_path)
        servers.append(server)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {server.log()[-2000:]}")
            try:
                urllib.request.urlopen(f"{server.url}/healthz", timeout=10).read()
                return server
            except urllib.error.HTTPError:  # it answers (503 without a database): up
                return server
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start: {server.log()[-2000:]}")
                time.sleep(0.1)

    yield start
    for server in servers:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.fixture
def asgi_server(asgi_server_factory) -> str:
    """The URL of one `asgi_server_factory` server with the default environment."""
    return asgi_server_factory().url


@pytest.fixture
def browser():
    """Headless Debian Chromium through Playwright's sync API (skips where Chromium is not installed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI has it)")
    from playwright.sync_api import sync_playwright

    from django.db import connections

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
            # Playwright's loop makes Django hand this thread a context-local connection pytest-django
            # never sees: close it, or dropping the test database at the end fails.
            connections.close_all()
