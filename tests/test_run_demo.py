"""`python3 run.py demo`, started twice in a copy of the checkout: it says what it is doing, how long each
phase took, lets `run.py manage` find it while it runs, and keeps a password the researcher changed."""
import json
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 240  # a loaded 2-core machine; a start here takes about 15-30 s
BANNER = "Teachback demo is running."
CHANGED_PASSWORD = "chosen-by-the-researcher-42"

pytestmark = pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                                reason="needs the .venv that run.py creates")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def checkout(tmp_path):
    """A copy of this checkout without its var/, sharing its installed .venv (the stamp matches: no pip)."""
    copy = tmp_path / "teachback"
    shutil.copytree(ROOT, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "var", "__pycache__", "node_modules", "*.pyc"))
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


@pytest.fixture
def demo_env():
    """The caller's environment with no LLM configured (the demo starts its scripted model) and a free port."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM_", "ANTHROPIC_", "DJANGO_", "DATABASE_URL", "SCRIPTED_LLM_URL"))}
    env["PORT"] = str(free_port())
    return env


class Demo:
    """`python3 run.py demo` in the background, its output read line by line."""

    def __init__(self, checkout: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self.process = subprocess.Popen([sys.executable, "run.py", "demo"], cwd=checkout, env=env, text=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} from the demo; its output:\n" + "\n".join(self.lines))
            self.lines.append(line)

    def stop(self) -> int:
        """Press Ctrl-C (SIGINT); return its exit code once it has stopped everything it started."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        while (line := self._queue.get(timeout=10)) is not None:  # the rest of its output
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def start_demo(checkout, demo_env):
    started = []

    def start() -> Demo:
        demo = Demo(checkout, demo_env)
        started.append(demo)
        demo.wait_for(BANNER, READY_TIMEOUT_S)
        demo.wait_for("Stop with Ctrl-C", 10)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.stop()


def manage(checkout: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "manage", *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=120)


def researcher_shell(checkout, env, code: str) -> str:
    result = manage(checkout, env, "shell", "--no-imports", "-c",
                    "from django.contrib.auth import get_user_model\n"
                    "user = get_user_model().objects.get(username='researcher')\n" + code)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def phase_seconds(output: str, title: str) -> float:
    """Check that `title` was said as it started, then with its seconds; return them."""
    start = output.find(f"[run.py] {title} ...")
    done = re.search(rf"^\[run\.py\] {re.escape(title)}: (\d+\.\d) s$", output, re.M)
    assert start >= 0 and done and done.start() > start, f"no progress lines for {title!r}:\n{output}"
    return float(done.group(1))


def test_two_starts_keep_a_password_the_researcher_changed_and_say_what_they_do(checkout, demo_env, start_demo):
    port = demo_env["PORT"]
    first = start_demo()
    out = first.output
    print(out)
    for title in ("starting the scripted demo model", "migrating the database (var/demo.sqlite3)",
                  "collecting static files", "loading and launching the example study",
                  "setting up the researcher account", f"waiting for http://127.0.0.1:{port}/healthz"):
        phase_seconds(out, title)
    assert f"starting the web server (uvicorn on 127.0.0.1:{port}" in out and "starting the worker" in out
    assert re.search(r"^\[run\.py\] ready in \d+ s \(.*migrate \d+\.\d s, collectstatic \d+\.\d s", out, re.M)
    demo_password = (checkout / "var" / "demo-password").read_text().strip()
    assert f"password: {demo_password}" in out

    # While it runs, `run.py manage` finds it through var/demo-run.json (owner-only: it may hold an API key).
    run_file = checkout / "var" / "demo-run.json"
    record = json.loads(run_file.read_text())
    assert record["port"] == int(port) and record["pid"] == first.process.pid
    assert "SCRIPTED_LLM_URL" in record["llm"]
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
    assert first.stop() == 0
    assert not run_file.exists()

    # The researcher changes the password (as the console's password page does), then the demo restarts.
    researcher_shell(checkout, demo_env, f"user.set_password({CHANGED_PASSWORD!r}); user.save()")
    second = start_demo()
    out = second.output
    assert "password: (the password you set)" in out
    assert demo_password not in out
    assert "manage.py researcher_create" not in out  # the account was left alone
    assert second.stop() == 0
    assert researcher_shell(checkout, demo_env, f"print(user.check_password({CHANGED_PASSWORD!r}))") == "True"

    # Stopped, a command that needs the server says so in one line, and so does study_bots at a dead URL.
    stopped = manage(checkout, demo_env, "study_bots", "loan-approval", "-n", "1")
    assert stopped.returncode != 0
    assert stopped.stderr.strip().splitlines() == [
        "[run.py] the demo is not running: start it with `python3 run.py demo` (or give --base-url URL)"]
    dead = manage(checkout, demo_env, "study_bots", "loan-approval", "-n", "1", "--base-url", f"http://127.0.0.1:{port}")
    assert dead.returncode != 0
    assert "Traceback" not in dead.stderr
    assert dead.stderr.strip().splitlines()[-1].startswith(f"CommandError: no server answers at http://127.0.0.1:{port}")
