"""Shared fixtures: the example study launched from a (possibly edited) copy of its folder."""
import shutil
from pathlib import Path

import pytest
from django.test import Client
from ruamel.yaml import YAML

from studies.services import study_launch, study_version_create
from studies.spec import study_file_read

EXAMPLE = Path(__file__).resolve().parent.parent / "studies" / "examples" / "loan-approval"
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


@pytest.fixture
def enter():
    """Return a function that enters a study as a participant through the study link."""

    def make(version, pid="PID0000000000000000000001", client=None, **params):
        client = client or Client()
        query = {"PROLIFIC_PID": pid, "STUDY_ID": "S1", "SESSION_ID": "SESSION1", **params}
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
    """A real `celery -A config worker` process on the test database and a flushed test broker."""

    def __init__(self, env: dict, log_path: Path, concurrency: int, beat: bool):
        self.env, self.log_path, self.concurrency, self.beat = env, log_path, concurrency, beat
        self.process = None

    def start(self, timeout: float = 30.0) -> "CeleryWorker":
        import subprocess
        import sys
        import time

        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "threads",
                   "--concurrency", str(self.concurrency), "--loglevel", "INFO", "--without-mingle",
                   "--without-gossip", "-n", f"test-{time.monotonic_ns()}@%h"]
        if self.beat:
            command += ["-B", "-s", str(self.log_path.with_suffix(".beat"))]
        log = self.log_path.open("a")
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited: {self.log()[-2000:]}")
            if " ready." in self.log():
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
        "SCRIPTED_LLM_URL": fake_llm.url,
        "LLM_BASE_URL": "",
        "LLM_API_KEY": "",
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def celery_worker_factory(transactional_db, fake_llm, tmp_path):
    """Return a function that starts a real worker process (call it again after a kill)."""

    import redis
    from django.conf import settings as django_settings

    redis.Redis.from_url(django_settings.REDIS_URL).flushdb()
    env = app_process_env(fake_llm)
    workers = []

    def start(concurrency: int = 50, beat: bool = False, **extra_env) -> CeleryWorker:
        worker = CeleryWorker({**env, **{k: str(v) for k, v in extra_env.items()}},
                              tmp_path / f"worker-{len(workers)}.log", concurrency, beat)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()
