"""`run.py manage` runs a command against the running demo: its port, Redis and LLM settings."""
import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_py(tmp_path, monkeypatch):
    """run.py as a module, recording into a temporary folder instead of var/."""
    spec = importlib.util.spec_from_file_location("teachback_run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEMO_RUN_FILE", tmp_path / "demo-run.json")
    return module


@pytest.fixture
def demo_port():
    """A port something listens on, as the running demo's does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run_file(run_py, **record):
    run_py.DEMO_RUN_FILE.write_text(json.dumps({"pid": os.getpid(), "redis_url": "redis://127.0.0.1:6379/1",
                                                "llm": {}, **record}))


def test_manage_gets_the_llm_settings_and_redis_of_the_running_demo(run_py, demo_port, capsys):
    demo = {"LLM_BASE_URL": "http://127.0.0.1:8080/v1", "LLM_API_KEY": "sk-demo-secret-value",
            "ANTHROPIC_API_KEY": "ant-secret", "SCRIPTED_LLM_URL": "", "PATH": "/usr/bin", "HOME": "/root",
            "REDIS_URL": "redis://127.0.0.1:6390/0"}
    run_py.demo_run_record(demo, demo_port)

    out = capsys.readouterr().out
    assert "sk-demo-secret-value" not in out and f"port {demo_port}" in out  # names only in the log line
    assert stat.S_IMODE(run_py.DEMO_RUN_FILE.stat().st_mode) == 0o600
    running = run_py.demo_run_read()
    assert running["base_url"] == f"http://127.0.0.1:{demo_port}"
    env = run_py.manage_env({"PATH": "/bin", "DATABASE_URL": "sqlite:///demo"}, recorded_llm=running["llm"],
                            caller={"PATH": "/bin"}, redis_url=running["redis_url"])
    assert env["LLM_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["LLM_API_KEY"] == "sk-demo-secret-value"
    assert env["ANTHROPIC_API_KEY"] == "ant-secret"
    assert env["PATH"] == "/bin" and env["DATABASE_URL"] == "sqlite:///demo"  # only LLM variables are recorded
    assert env["REDIS_URL"] == "redis://127.0.0.1:6390/0"


def test_the_callers_llm_variables_win_even_when_empty(run_py):
    recorded = {"LLM_BASE_URL": "http://127.0.0.1:8080/v1", "LLM_MODEL": "small", "SCRIPTED_LLM_URL": "http://127.0.0.1:9/"}
    caller = {"LLM_BASE_URL": "http://other:8000/v1", "LLM_MODEL": ""}
    env = run_py.manage_env({**caller}, recorded_llm=recorded, caller=caller, redis_url="redis://x/1")
    assert env["LLM_BASE_URL"] == "http://other:8000/v1"
    assert env["LLM_MODEL"] == ""
    assert env["SCRIPTED_LLM_URL"] == "http://127.0.0.1:9/"  # not set by the caller: the demo's


def test_a_recorded_file_cannot_smuggle_other_variables(run_py, demo_port):
    write_run_file(run_py, port=demo_port, llm={"LLM_BASE_URL": "http://a/v1", "DATABASE_URL": "postgres://elsewhere/x"})
    env = run_py.manage_env({"DATABASE_URL": "sqlite:///demo"}, recorded_llm=run_py.demo_run_read()["llm"], caller={},
                            redis_url="redis://x/1")
    assert env["DATABASE_URL"] == "sqlite:///demo" and env["LLM_BASE_URL"] == "http://a/v1"


def test_no_run_file_means_no_running_demo(run_py):
    assert run_py.demo_run_read() is None


def test_a_file_left_by_a_demo_that_was_killed_means_no_running_demo(run_py, demo_port):
    write_run_file(run_py, port=closed_port())
    assert run_py.demo_run_read() is None  # nothing listens on its port
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_run_file(run_py, port=demo_port, pid=dead.pid)
    assert run_py.demo_run_read() is None  # its process is gone
    write_run_file(run_py, port=demo_port, pid=0)
    assert run_py.demo_run_read() is None
    run_py.DEMO_RUN_FILE.write_text("not json")
    assert run_py.demo_run_read() is None


def test_the_demo_removes_only_its_own_run_file(run_py, demo_port):
    write_run_file(run_py, port=demo_port, pid=os.getpid() + 1)  # another demo of this checkout wrote it since
    run_py.demo_run_remove()
    assert run_py.DEMO_RUN_FILE.exists()
    write_run_file(run_py, port=demo_port)
    run_py.demo_run_remove()
    assert not run_py.DEMO_RUN_FILE.exists()


def test_server_commands_get_the_running_demos_base_url(run_py, demo_port):
    write_run_file(run_py, port=demo_port)
    running = run_py.demo_run_read()
    url = f"http://127.0.0.1:{demo_port}"
    assert run_py.manage_command(["study_bots", "loan-approval", "-n", "5"], running) == [
        "study_bots", "loan-approval", "-n", "5", "--base-url", url]
    assert run_py.manage_command(["study_simulate", "loan-approval"], running)[-2:] == ["--base-url", url]
    assert run_py.manage_command(["study_launch", "loan-approval"], running)[-2:] == ["--base-url", url]
    # One the caller gave wins; other commands are left as they are.
    assert run_py.manage_command(["study_bots", "x", "--base-url", "http://h:1"], running) == [
        "study_bots", "x", "--base-url", "http://h:1"]
    assert run_py.manage_command(["study_bots", "x", "--base-url=http://h:1"], running) == [
        "study_bots", "x", "--base-url=http://h:1"]
    assert run_py.manage_command(["study_export", "x", "--format", "csv"], running) == ["study_export", "x", "--format", "csv"]


def test_without_a_running_demo_only_server_commands_refuse(run_py):
    with pytest.raises(run_py.SetupError, match="the demo is not running: start it with `python3 run.py demo`"):
        run_py.manage_command(["study_bots", "loan-approval"], None)
    assert run_py.manage_command(["study_bots", "x", "--base-url", "http://h:1"], None)[-1] == "http://h:1"
    assert run_py.manage_command(["study_launch", "loan-approval"], None) == ["study_launch", "loan-approval"]
    assert run_py.manage_command(["study_validate", "p"], None) == ["study_validate", "p"]


def test_manage_runs_the_command_against_the_running_demo(run_py, demo_port, monkeypatch):
    write_run_file(run_py, port=demo_port, redis_url="redis://127.0.0.1:6390/0", llm={"LLM_BASE_URL": "http://m/v1"})
    monkeypatch.setattr(run_py, "ensure_venv", lambda extras: None)
    monkeypatch.setattr(run_py, "VAR", run_py.DEMO_RUN_FILE.parent)
    monkeypatch.delenv("LLM_BASE_URL", raising=False)
    ran = {}

    def fake_run(command, **kwargs):
        ran.update(command=command, env=kwargs["env"])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_py.subprocess, "run", fake_run)
    assert run_py.main(["manage", "study_bots", "loan-approval", "-n", "50"]) == 0
    assert ran["command"][1:] == ["manage.py", "study_bots", "loan-approval", "-n", "50",
                                  "--base-url", f"http://127.0.0.1:{demo_port}"]
    assert ran["env"]["REDIS_URL"] == "redis://127.0.0.1:6390/0" and ran["env"]["LLM_BASE_URL"] == "http://m/v1"


def test_a_server_command_without_a_running_demo_fails_in_one_line(run_py, capsys):
    code = run_py.main(["manage", "study_bots", "loan-approval", "-n", "50"])

    captured = capsys.readouterr()
    assert code != 0
    assert captured.err.splitlines() == [
        "[run.py] the demo is not running: start it with `python3 run.py demo` (or give --base-url URL)"]
    assert "Traceback" not in captured.err + captured.out


def test_the_cli_says_so_in_one_line_too(tmp_path):
    """The real command line, in a checkout whose var/ has no run file (a copy of run.py alone is enough)."""
    (tmp_path / "run.py").write_bytes((ROOT / "run.py").read_bytes())
    result = subprocess.run([sys.executable, "run.py", "manage", "study_bots", "loan-approval"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "[run.py] the demo is not running: start it with `python3 run.py demo` (or give --base-url URL)"]


@pytest.mark.django_db(transaction=True)
def test_study_bots_against_no_server_fails_in_one_line_without_a_traceback(launch):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    version = launch()
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(CommandError) as raised:
        call_command("study_bots", version.study.slug, n=3, base_url=url)
    message = str(raised.value)
    assert message.startswith(f"no server answers at {url}") and "python3 run.py demo" in message
    assert "\n" not in message
    assert raised.value.__suppress_context__  # shown as "CommandError: ..." alone, not chained to the ConnectError
