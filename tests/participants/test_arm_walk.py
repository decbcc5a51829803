"""A walk of every arm of the example study (issue 16): at 1280 px and 375 px, in English and Simplified Chinese, a
participant in headless Chromium goes from the study link through consent and the pre-test to the explanation
page, which shows that arm's own heading and instructions; the tutor answers a free question with its
"Good question" template instead of refusing it. Screenshots go to tests/artifacts/arms/<arm>-<lang>-<width>.png.

One browser, one app server (uvicorn) and one worker per arm; the four viewports × languages run inside the test.
"""
import re

import pytest
from django.utils import translation
from django.utils.translation import gettext

from conftest import ARTIFACTS, EXAMPLE
from explainers.learner.moves import ONCE_MORE
from participants.chat_display import page_texts
from studies.protocol import Protocol
from test_pages_browser import _answer_items, _assert_clean, _enter, _kind, _send_and_wait, _watch, _words
from test_pages_browser import browser_env  # noqa: F401  (the fixture)

SHOTS = ARTIFACTS / "arms"
WIDTHS = (1280, 375)
LANGUAGES = ("en", "zh-hans")
QUESTION = "Why does the income matter?"
REFUSALS = ("cannot answer", "can't answer", "scripted tutor", "无法回答", "不能回答")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _only(arm_id: str):
    def edit(data) -> None:
        data["arms"] = [a for a in data["arms"] if a["id"] == arm_id]
        data["arms"][0].setdefault("limits", {})["min_seconds"] = 0
        data["allocation"]["block_size"] = 1
    return edit


def _material_heading(lang: str) -> str:
    text = (EXAMPLE / "material" / f"static.{lang}.md").read_text(encoding="utf-8")
    return next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))


def _good_question(lang: str) -> str:
    """The first sentence of the tutor's ONCE_MORE template in the page's language ("Good question.")."""
    with translation.override(lang):
        text = gettext(ONCE_MORE)
    return re.match(r"[^.。]*[.。]", text).group(0)


def _walk(browser, server: str, version, arm_id: str, check) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    protocol = Protocol(version.spec)
    for lang in LANGUAGES:
        for width in WIDTHS:
            context = browser.new_context(viewport={"width": width, "height": 900}, locale=lang)
            page = context.new_page()
            page.set_default_timeout(20_000)
            seen = _watch(page)
            _enter(page, server, version, f"&lang={lang}")
            assert _kind(page) == "item", (arm_id, lang, page.url)
            _answer_items(page)
            assert _kind(page) == "explanation", (arm_id, lang, page.url)
            assert page.locator("html").get_attribute("lang") == lang
            assert page.locator("h1").count() == 1
            check(page, protocol, lang)
            page.screenshot(path=str(SHOTS / f"{arm_id}-{lang}-{width}.png"), full_page=True)
            _assert_clean(seen)
            context.close()


def _chat_page_is_the_arm_s_own(arm_id: str):
    def check(page, protocol, lang) -> None:
        texts = page_texts(protocol, protocol.arms[arm_id], lang)
        assert _words(page.locator("[data-chat] h1").inner_text()) == _words(texts["heading"])
        assert _words(page.locator("[data-chat] > p.meta").first.inner_text()) == _words(texts["instructions"])
        assert page.locator("#chat-text").get_attribute("placeholder") == texts["placeholder"]
    return check


def _settled(page) -> None:
    """Wait until the explainer's opening (an arm that leads) is on the page and a message can be sent."""
    page.wait_for_function("() => document.querySelector('ol[data-transcript] > li.turn.explainer p')"
                           " && !document.querySelector('[data-chat-send]').disabled")


def test_the_static_arm_shows_its_material_under_its_own_heading(browser_env, browser, asgi_server, launch):
    version = launch(_only("static"))

    def check(page, protocol, lang) -> None:
        assert _words(page.locator("article.material h1").inner_text()) == _material_heading(lang)
        assert page.locator("[data-chat]").count() == 0
        assert page.locator("article.material p.meta").first.is_visible()  # "About n minutes of reading"

    _walk(browser, asgi_server, version, "static", check)


def test_the_chat_arm_asks_for_questions(browser_env, browser, asgi_server, celery_worker_factory, fake_llm, launch):
    version = launch(_only("chat"))
    celery_worker_factory(concurrency=4)
    _walk(browser, asgi_server, version, "chat", _chat_page_is_the_arm_s_own("chat"))


def test_the_agentic_arm_says_the_explainer_leads_and_opens_the_conversation(
    browser_env, browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    version = launch(_only("agentic"))
    celery_worker_factory(concurrency=4)
    own = _chat_page_is_the_arm_s_own("agentic")

    def check(page, protocol, lang) -> None:
        own(page, protocol, lang)
        _settled(page)

    _walk(browser, asgi_server, version, "agentic", check)


def test_the_tutor_leads_and_answers_a_free_question_with_its_template(
    browser_env, browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    version = launch(_only("tutor"))
    celery_worker_factory(concurrency=4)
    own = _chat_page_is_the_arm_s_own("tutor")

    def check(page, protocol, lang) -> None:
        own(page, protocol, lang)
        _settled(page)
        assert page.locator("[data-choices] button").count() >= 1  # it leads with buttons
        _send_and_wait(page, QUESTION)
        reply = _words(page.locator("ol[data-transcript] > li.turn.explainer").last.inner_text())
        assert reply.startswith(_good_question(lang)), (lang, reply)
        assert not any(words in reply for words in REFUSALS), reply

    _walk(browser, asgi_server, version, "tutor", check)
