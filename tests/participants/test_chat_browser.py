"""The chat in a real browser: headless Debian Chromium (Playwright), the app under uvicorn (ASGI), and a
real Celery worker answering from the fake language-model server.

Server-sent events need an ASGI server: pytest-django's `live_server` is a threaded WSGI server, so the app
runs here as `uvicorn config.asgi:application` in a subprocess on the test database. That process uses the
production static storage (WhiteNoise's manifest), so a small settings module in a temporary folder points
STATIC_ROOT there and `collectstatic` fills it once per session; nothing is written in the checkout.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.db import connections

from conftest import ARTIFACTS, app_process_env, chat_only
from explainers.models import Turn
from participants.models import Participant, Step

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",  # nothing leaves the machine
]
CSP_MARKERS = ("Content Security Policy", "Refused to")
REPLY = " ".join(
    f"The model first looks at income{n} and then at the debt ratio, and it approves the loan when both are good."
    for n in range(12)
)  # plain text: its Markdown rendering is one paragraph with the same words
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def browser_environment(monkeypatch):
    """Let the sync Playwright API and the ORM share the test thread."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def asgi_static(tmp_path_factory):
    """A settings module whose STATIC_ROOT is a temporary folder, filled by collectstatic."""
    folder = tmp_path_factory.mktemp("asgi")
    static_root = folder / "static"
    (folder / "chat_browser_settings.py").write_text(
        "from pathlib import Path\n"
        "from config.settings import *  # noqa: F403\n"
        f"STATIC_ROOT = Path({str(static_root)!r})\n"
        "# The manifest (hashed names, as in production) without WhiteNoise's slow compression pass.\n"
        'STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}\n'  # noqa: E501
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
           "DJANGO_SETTINGS_MODULE": "chat_browser_settings", "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "x"}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0", "-i", "admin", "-i", "rest_framework"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
    )
    assert (static_root / "staticfiles.json").exists()
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def asgi_server(transactional_db, fake_llm, asgi_static, tmp_path):
    """`uvicorn config.asgi:application` on the test database, the test Redis and the fake model; its URL."""
    port = _free_port()
    env = {
        **app_process_env(fake_llm),
        "PYTHONPATH": os.pathsep.join([str(asgi_static), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "chat_browser_settings",
        "DJANGO_DEBUG": "",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the app runs as in production
    log_path = tmp_path / "uvicorn.log"
    log = log_path.open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/static/js/chat.js", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"uvicorn did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI has it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
            # Playwright's loop makes Django hand this thread a context-local connection pytest-django
            # never sees: close it, or dropping the test database at the end fails.
            connections.close_all()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _words(text: str) -> str:
    return " ".join(text.split())


def _answer_pre_test(page) -> None:
    while page.locator("body").get_attribute("data-page") == "item":
        form = page.locator("form[data-item]")
        choices = form.locator("input[name=answer][type=radio], input[name=answer][type=checkbox]")
        if choices.count():
            choices.first.check()
        else:
            form.locator("input[name=answer], textarea[name=answer]").first.fill("1")
        confidence = form.locator("input[name=confidence]")
        if confidence.count():
            confidence.fill("70")
        with page.expect_navigation():
            form.locator("button.primary").click()


def _lengths_while_streaming(page, bubble, *, at_least: int, timeout_s: float = 6.0) -> list[int]:
    """Poll the reply bubble's text length until it grew `at_least` times while still incomplete."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        length = len(bubble.text_content() or "") if bubble.count() else 0
        if length and (not seen or length > seen[-1]) and length < len(REPLY) * 0.9:
            seen.append(length)
            if len(seen) >= at_least:
                return seen
        time.sleep(0.08)
    raise AssertionError(f"the reply did not arrive progressively: lengths {seen}")


def test_a_reply_streams_survives_a_reload_and_the_page_matches_the_database(
    browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    started = time.monotonic()
    version = launch(chat_only)
    worker = celery_worker_factory(concurrency=4)
    fake_llm.set_behaviour(reply=REPLY, ttft_s=0.3, latency_s=4)
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    messages, errors = [], []
    page.on("console", lambda message: messages.append((message.type, message.text, message.location.get("url", ""))))
    page.on("pageerror", lambda error: errors.append(str(error)))
    failed = []  # responses >= 400, to tell which "Failed to load resource" a console error is about
    page.on("response", lambda response: failed.append(f"{response.status} {response.url}") if response.status >= 400 else None)

    pid = uuid.uuid4().hex[:24]
    page.goto(f"{asgi_server}/s/{version.study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=s&SESSION_ID=x")
    assert page.locator("body").get_attribute("data-page") == "consent"
    with page.expect_navigation():
        page.locator("button[name=choice][value=accept]").click()
    assert page.locator("body").get_attribute("data-page") == "item", (page.url, page.content()[:2000])
    _answer_pre_test(page)
    assert page.locator("body").get_attribute("data-page") == "explanation", (page.url, page.content()[:2000])
    participant = Participant.objects.get(study=version.study)
    assert participant.step == Step.EXPLANATION and participant.arm == "chat"
    assert page.locator("[data-scripted]").is_visible()

    question = "How does the model decide whether to approve a loan?"
    page.locator("#chat-text").fill(question)
    page.locator("[data-chat-send]").click()
    reply = page.locator("li.turn.explainer")
    early = _lengths_while_streaming(page, reply, at_least=2)
    assert page.locator("[data-chat-send]").is_disabled()  # one message at a time
    _shot(page, "chat-mid-stream.png")
    turn = Turn.objects.get(author=Turn.Author.PARTICIPANT)
    assert turn.status == Turn.Status.PENDING and turn.text == question

    page.reload()
    participant_item = page.locator("li.turn.participant")
    assert participant_item.count() == 1
    assert participant_item.get_attribute("data-turn") == str(turn.pk)  # rendered by the server, from the database
    assert participant_item.get_attribute("data-status") == "pending"
    assert participant_item.inner_text().strip() == question
    assert page.locator("[data-chat]").get_attribute("data-pending") == str(turn.pk)
    later = _lengths_while_streaming(page, reply, at_least=2)  # picked up again, still streaming
    _shot(page, "chat-after-reload.png")
    assert later[0] > 0 and later[-1] > later[0]

    page.wait_for_function(
        "() => { const r = document.querySelector('li.turn.explainer'); return r && r.querySelector('p'); }",
        timeout=15_000,
    )  # the final HTML replaced the streamed text
    page.wait_for_function("() => !document.querySelector('[data-chat-send]').disabled")
    _shot(page, "chat-final.png")

    turns = list(Turn.objects.filter(conversation_id=Participant.objects.get(pk=participant.pk).conversation_id).order_by("id"))
    assert [(t.author, t.status) for t in turns] == [("participant", "answered"), ("explainer", "complete")]
    assert turns[1].text == REPLY and turns[1].reply_to_id == turns[0].pk

    def transcript_matches_database():
        items = page.locator("ol[data-transcript] > li.turn")
        shown = [(items.nth(i).get_attribute("class").split()[-1], _words(items.nth(i).inner_text()))
                 for i in range(items.count())]
        assert shown == [(t.author, _words(t.text)) for t in turns], shown

    transcript_matches_database()
    page.reload()  # and the same from the server's rendering
    transcript_matches_database()
    assert page.locator("li.turn.participant").get_attribute("data-status") == "answered"
    assert page.locator("[data-chat]").get_attribute("data-pending") == ""
    assert page.locator("[data-limits]").inner_text().startswith("Messages left: 19")

    csp = [text for kind, text, _url in messages if any(marker in text for marker in CSP_MARKERS)]
    assert not csp, csp
    assert not failed, failed
    # The browser asks for /favicon.ico on its own; the site has none (a 404 no participant sees).
    console_errors = [(text, url) for kind, text, url in messages if kind == "error" and not url.endswith("/favicon.ico")]
    assert not console_errors, console_errors
    assert not errors, errors
    assert early and later
    context.close()
    assert worker.process.poll() is None
    assert time.monotonic() - started < 60
