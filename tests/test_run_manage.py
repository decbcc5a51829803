"""`run.py manage` runs a command with the LLM settings the demo was started with."""
import importlib.util
import stat
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
    monkeypatch.setattr(module, "DEMO_LLM_FILE", tmp_path / "demo-llm.json")
    return module


def test_manage_gets_the_llm_settings_the_demo_recorded(run_py, capsys):
    demo = {"LLM_BASE_URL": "http://127.0.0.1:8080/v1", "LLM_API_KEY": "sk-demo-secret-value",
            "ANTHROPIC_API_KEY": "ant-secret", "SCRIPTED_LLM_URL": "", "PATH": "/usr/bin", "HOME": "/root"}
    run_py.record_demo_llm(demo)

    assert "sk-demo-secret-value" not in capsys.readouterr().out  # names only in the log line
    assert stat.S_IMODE(run_py.DEMO_LLM_FILE.stat().st_mode) == 0o600
    env = run_py.manage_env({"PATH": "/bin", "DATABASE_URL": "sqlite:///demo"}, recorded_llm=run_py.read_demo_llm(),
                            caller={"PATH": "/bin"}, redis_url="redis://127.0.0.1:6379/1")
    assert env["LLM_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["LLM_API_KEY"] == "sk-demo-secret-value"
    assert env["ANTHROPIC_API_KEY"] == "ant-secret"
    assert env["PATH"] == "/bin" and env["DATABASE_URL"] == "sqlite:///demo"  # only LLM variables are recorded
    assert env["REDIS_URL"] == "redis://127.0.0.1:6379/1"


def test_the_callers_llm_variables_win_even_when_empty(run_py):
    recorded = {"LLM_BASE_URL": "http://127.0.0.1:8080/v1", "LLM_MODEL": "small", "SCRIPTED_LLM_URL": "http://127.0.0.1:9/"}
    caller = {"LLM_BASE_URL": "http://other:8000/v1", "LLM_MODEL": ""}
    env = run_py.manage_env({**caller}, recorded_llm=recorded, caller=caller, redis_url="redis://x/1")
    assert env["LLM_BASE_URL"] == "http://other:8000/v1"
    assert env["LLM_MODEL"] == ""
    assert env["SCRIPTED_LLM_URL"] == "http://127.0.0.1:9/"  # not set by the caller: the demo's


def test_a_recorded_file_cannot_smuggle_other_variables(run_py):
    run_py.DEMO_LLM_FILE.write_text('{"LLM_BASE_URL": "http://a/v1", "DATABASE_URL": "postgres://elsewhere/x"}')
    env = run_py.manage_env({"DATABASE_URL": "sqlite:///demo"}, recorded_llm=run_py.read_demo_llm(), caller={},
                            redis_url="redis://x/1")
    assert env["DATABASE_URL"] == "sqlite:///demo" and env["LLM_BASE_URL"] == "http://a/v1"


def test_no_demo_run_means_no_recorded_settings(run_py):
    assert run_py.read_demo_llm() == {}
