"""Fixtures and helpers of the real-model suite, imported by its test modules (a conftest.py here would
shadow tests/conftest.py for the modules that import from it).

Opt-in: pyproject's addopts deselect the marker `real_llm`; run it with

    python3 run.py test -m real_llm tests/real_llm -s

against the server at REAL_LLM_URL (default http://127.0.0.1:8090/v1, e.g. llama.cpp's own server started
by ../shared/real-llm/start.sh). Every test that needs it skips, saying why, when nothing answers there.
The arms' `llm` comes from llm.yaml beside this file, adjusted by REAL_LLM_ARM_LLM (JSON, merged; null
removes a key).
"""
import copy
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "http://127.0.0.1:8090/v1"
PROBE_TIMEOUT_S = 5.0


def real_llm_url() -> str:
    return (os.environ.get("REAL_LLM_URL") or DEFAULT_URL).rstrip("/")


def arm_llm_blocks() -> dict[str, dict]:
    """The `llm` of the chat and agentic arms: llm.yaml, with REAL_LLM_ARM_LLM merged into both."""
    blocks = YAML(typ="safe").load((HERE / "llm.yaml").read_text(encoding="utf-8"))
    override = json.loads(os.environ.get("REAL_LLM_ARM_LLM") or "{}")
    for block in blocks.values():
        for key, value in override.items():
            if value is None:
                block.pop(key, None)
            else:
                block[key] = value
    return blocks


def real_model_arms(data, *, agentic_weight: int = 3, chat_weight: int = 2) -> None:
    """Keep the chat and agentic arms, give them the real model's `llm`, and allocate one block of
    `agentic_weight + chat_weight` participants: exactly that many of each, in random order."""
    blocks = arm_llm_blocks()
    weights = {"agentic": agentic_weight, "chat": chat_weight}
    data["arms"] = [a for a in data["arms"] if a["kind"] in weights]
    for arm in data["arms"]:
        arm["weight"] = weights[arm["kind"]]
        arm["llm"] = copy.deepcopy(blocks[arm["kind"]])
        # the small model is slow: the limits must not end a conversation before the suite's messages are sent
        arm["limits"] = {"minutes": 120, "turns": 40, "tokens": 1_000_000, "min_seconds": 0}
    data["allocation"]["block_size"] = agentic_weight + chat_weight


def _server_answers(url: str) -> str:
    """'' when an OpenAI-compatible server lists its models at `url`, else why not."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=PROBE_TIMEOUT_S) as response:
            body = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as error:  # refused, timed out, not JSON
        return f"{type(error).__name__}: {error}"
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return "GET /models did not return an OpenAI model list"
    return ""


@pytest.fixture(scope="session")
def real_llm():
    """The real server's base URL; skips the test when nothing answers there."""
    url = real_llm_url()
    why = _server_answers(url)
    if why:
        pytest.skip(f"no OpenAI-compatible server answers at {url} ({why}): start one "
                    f"(bash ../shared/real-llm/start.sh DIR 8090) or set REAL_LLM_URL")
    return url


@pytest.fixture
def real_endpoint(real_llm, fake_llm, settings):
    """Point this process (the live server, the launch checks) at the real server instead of the fake."""
    settings.SCRIPTED_LLM_URL = ""
    settings.LLM_BASE_URL = real_llm
    settings.LLM_API_KEY = ""
    return real_llm


@pytest.fixture
def real_study_folder(study_folder):
    """A copy of the example study with the real model's arms (the file the suite launches)."""
    return study_folder(real_model_arms)


@pytest.fixture
def real_study(real_endpoint, launch):
    """The example study launched with its chat and agentic arms on the real model (3 agentic, 2 chat)."""
    return launch(real_model_arms)


@pytest.fixture
def real_worker(real_endpoint, celery_worker_factory):
    """A real Celery worker (with beat: the sweeper runs as in production) calling the real server."""
    return celery_worker_factory(concurrency=8, beat=True, LLM_BASE_URL=real_endpoint, LLM_API_KEY="",
                                 SCRIPTED_LLM_URL="")
