"""The chat in a real browser: headless Debian Chromium (Playwright), the app under uvicorn (ASGI), and a
real Celery worker answering from the fake language-model server.

Server-sent events need an ASGI server, so the app runs as `uvicorn config.asgi:application` in a subprocess
on the test database (the `asgi_server` fixture of tests/conftest.py).
"""
import re
import time
import uuid

import pytest

from conftest import ARTIFACTS, CSP_MARKERS, chat_only
from explainers.models import Turn
from participants.models import Participant, Step
from test_pages_browser import _answer_items

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


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _words(text: str) -> str:
    return " ".join(text.split())


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
    _answer_items(page)
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
    console_errors = [(text, url) for kind, text, url in messages if kind == "error"]
    assert not console_errors, console_errors
    assert not errors, errors
    assert early and later
    context.close()
    assert worker.process.poll() is None
    assert time.monotonic() - started < 60


# --- cut-off and slow replies ----------------------------------------------------------------------

SHOTS = ARTIFACTS / "chat"
CONTINUATION = " That is the whole rule: income first, then the debt ratio."


def _watch(page) -> dict:
    """Collect what the page must not show: CSP refusals, console errors, script errors, failed requests."""
    seen = {"console": [], "errors": [], "failed": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("response", lambda r: seen["failed"].append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return seen


def _assert_clean(seen) -> None:
    csp = [text for _kind, text, _url in seen["console"] if any(marker in text for marker in CSP_MARKERS)]
    assert not csp, csp
    assert not seen["failed"], seen["failed"]
    console_errors = [(t, u) for kind, t, u in seen["console"] if kind == "error"]
    assert not console_errors, console_errors
    assert not seen["errors"], seen["errors"]


def _enter_chat(page, base_url: str, version, query: str = "") -> Participant:
    pid = uuid.uuid4().hex[:24]
    page.goto(f"{base_url}/s/{version.study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=s&SESSION_ID=x{query}")
    with page.expect_navigation():
        page.locator("button[name=choice][value=accept]").click()
    _answer_items(page)
    assert page.locator("body").get_attribute("data-page") == "explanation", (page.url, page.content()[:2000])
    return Participant.objects.get(study=version.study)


def _fits(page, width: int) -> None:
    """Nothing wider than the phone's screen: no sideways scrolling."""
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width


def test_a_half_streamed_reply_is_kept_marked_cut_off_survives_a_reload_and_continue_completes_it(
    browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    SHOTS.mkdir(parents=True, exist_ok=True)
    version = launch(chat_only)
    worker = celery_worker_factory(concurrency=4)
    # The first attempt streams half of REPLY and loses its connection; the next request continues it.
    fake_llm.queue({"fail": "drop", "reply": REPLY, "ttft_s": 0.2, "latency_s": 2},
                   {"reply": CONTINUATION, "ttft_s": 0.2, "latency_s": 1})
    context = browser.new_context(viewport={"width": 375, "height": 800})  # a phone
    page = context.new_page()
    page.set_default_timeout(20_000)
    seen = _watch(page)
    _enter_chat(page, asgi_server, version)

    page.locator("#chat-text").fill("How does the model decide?")
    page.locator("[data-chat-send]").click()
    kept = page.locator("li.turn.explainer[data-cut-off]")
    kept.locator("[data-retry-mode=continue]").wait_for()
    turn = Turn.objects.get(author=Turn.Author.PARTICIPANT)
    assert turn.status == Turn.Status.FAILED and turn.cut_off and REPLY.startswith(turn.shown_text)
    assert 0 < len(turn.shown_text) < len(REPLY)

    def shows_the_kept_text():
        assert kept.count() == 1
        assert kept.get_attribute("data-reply-to") == str(turn.pk)
        assert _words(kept.locator("p").first.inner_text()) == _words(turn.shown_text)
        assert kept.locator(".retry-note").inner_text() == "This answer was cut off."
        assert kept.locator("[data-retry-mode=continue]").inner_text() == "Continue"
        assert kept.locator("[data-retry-mode=again]").inner_text() == "Send again"
        assert not page.locator("li.turn.participant .retry").count()  # one set of buttons, on the reply
        assert page.locator("[data-chat-send]").is_enabled()  # the chat is not stuck
        assert page.locator("[data-thinking]").is_hidden()
        _fits(page, 375)

    shows_the_kept_text()
    _shot(page, "chat/cut-off.png")
    page.reload()  # the same, rendered by the server from the database
    shows_the_kept_text()
    assert page.locator("li.turn.participant").get_attribute("data-status") == "failed"
    _shot(page, "chat/cut-off-after-reload.png")

    kept.locator("[data-retry-mode=continue]").click()
    reply = page.locator(f'li.turn.explainer[data-reply-to="{turn.pk}"]')
    page.wait_for_function(
        "() => { const r = document.querySelector('li.turn.explainer'); return r && !r.hasAttribute('data-status') "
        "&& r.querySelector('p') && !document.querySelector('[data-chat-send]').disabled; }"
    )  # the final HTML of the whole reply
    full = Turn.objects.get(reply_to_id=turn.pk)
    assert full.text == turn.shown_text + CONTINUATION
    assert _words(reply.inner_text()) == _words(full.text)
    assert not page.locator("[data-retry], [data-cut-off]").count()
    assert page.locator("li.turn.participant").get_attribute("data-status") == "answered"
    _fits(page, 375)
    _shot(page, "chat/continued.png")
    page.reload()
    assert _words(page.locator("li.turn.explainer").inner_text()) == _words(full.text)
    assert not page.locator("[data-retry], [data-cut-off]").count()
    assert page.locator("[data-limits]").inner_text().startswith("Messages left: 19")  # the cut-off used none
    _assert_clean(seen)
    context.close()
    assert worker.process.poll() is None


def test_still_thinking_with_the_seconds_waited_shows_while_the_model_is_slow_to_start(
    browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    SHOTS.mkdir(parents=True, exist_ok=True)
    version = launch(chat_only)
    celery_worker_factory(concurrency=4)
    fake_llm.set_behaviour(reply="Income comes first.", ttft_s=8)
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    seen = _watch(page)
    _enter_chat(page, asgi_server, version, query="&lang=zh-hans")  # in the page's language

    page.locator("#chat-text").fill("模型先看什么？")
    page.locator("[data-chat-send]").click()
    thinking = page.locator("[data-thinking]")
    thinking.wait_for(state="visible")
    pattern = re.compile(r"^仍在思考…… 已 (\d+) 秒$")
    first = pattern.match(thinking.inner_text())
    assert first and int(first.group(1)) >= 5, thinking.inner_text()  # not before five seconds
    assert not page.locator("li.turn.explainer").inner_text().strip()  # no word yet
    page.wait_for_function(  # counted up, once a second
        "(n) => { const m = /(\\d+)/.exec(document.querySelector('[data-thinking]').textContent); return m && +m[1] > n; }",
        arg=int(first.group(1)),
    )
    _fits(page, 375)
    _shot(page, "chat/still-thinking.png")
    page.wait_for_function("() => document.querySelector('li.turn.explainer p')")  # the answer came
    assert thinking.is_hidden() and not thinking.inner_text()
    assert _words(page.locator("li.turn.explainer").inner_text()) == "Income comes first."
    assert Turn.objects.get(author=Turn.Author.PARTICIPANT).status == Turn.Status.ANSWERED
    _assert_clean(seen)
    context.close()
