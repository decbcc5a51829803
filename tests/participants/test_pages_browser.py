"""The participant's pages (issue 16, item 3): Back on the chat page shows the live transcript and the next send
works, a rejected answer stays in its box, figures open at full size on a phone and say so, one <h1> a page,
a favicon, check questions lettered as they are answered, and the scripted demo model in the page's language.

The browser tests drive headless Debian Chromium (Playwright's sync API) against the app under uvicorn (the
`asgi_server` fixture: the chat streams), with a real Celery worker where a reply is needed; they skip only
when /usr/bin/chromium is missing. The others use Django's test client.
"""
import json
import re
import uuid

import pytest
from django.db import transaction
from django.test import Client

from conftest import ARTIFACTS, CSP_MARKERS, chat_only, static_only
from explainers import services as explainer_services
from explainers.models import Turn
from participants.bots import page_parse
from participants.models import Participant, Step
from studies.selectors import study_asset_get

SHOTS = ARTIFACTS / "pages"
PID = "PID0000000000000000000016"
PHONE, DESKTOP = {"width": 375, "height": 800}, {"width": 1024, "height": 900}
VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
REPLY = "The model looks at the debt ratio first, then at the income, then at the late payments."
H1 = re.compile(r"<h1[\s>]")
pytestmark = pytest.mark.django_db  # the browser tests' own mark (transaction=True) is the closer one


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def browser_env(monkeypatch):
    """Let the sync Playwright API and the ORM share the test thread (browser tests only)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)


def _watch(page) -> dict:
    """Collect what the page must not show: CSP refusals, console errors (a missing favicon among them), script
    errors, failed requests."""
    seen = {"console": [], "errors": [], "failed": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("response", lambda r: seen["failed"].append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return seen


def _assert_clean(seen, *, allowed_failures=()) -> None:
    csp = [text for _kind, text, _url in seen["console"] if any(marker in text for marker in CSP_MARKERS)]
    assert not csp, csp
    failed = [f for f in seen["failed"] if not f.startswith(allowed_failures)] if allowed_failures else seen["failed"]
    assert not failed, failed
    errors = [(text, url) for kind, text, url in seen["console"] if kind == "error"]
    if allowed_failures:  # a 400 the test asked for (a rejected answer) is logged as a failed resource
        errors = [(t, u) for t, u in errors if "status of 400" not in t]
    assert not errors, errors
    assert not seen["errors"], seen["errors"]


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _kind(page) -> str:
    return page.locator("body").get_attribute("data-page")


def _enter(page, base_url: str, version, query: str = "") -> None:
    pid = uuid.uuid4().hex[:24]
    page.goto(f"{base_url}/s/{version.study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=s&SESSION_ID=x{query}")
    assert page.locator("h1").count() == 1
    with page.expect_navigation():
        page.locator("button[name=choice][value=accept]").click()


def _answer_items(page, *, on_item=None) -> None:
    """Answer item pages until another kind of page comes; `on_item(page)` first, on each."""
    while _kind(page) == "item":
        assert page.locator("h1").count() == 1
        if on_item is not None:
            on_item(page)
        form = page.locator("form[data-item]")
        choices = form.locator("input[name=answer][type=radio], input[name=answer][type=checkbox]")
        if choices.count():
            choices.first.check()
        else:
            form.locator("input[name=answer], textarea[name=answer]").first.fill("0.4")
        confidence = form.locator("input[name=confidence]")
        if confidence.count():
            confidence.fill("70")
        with page.expect_navigation():
            form.locator("button.primary").click()


def _words(text: str) -> str:
    return " ".join(text.split())


def _transcript(page) -> list[tuple[str, str]]:
    items = page.locator("ol[data-transcript] > li.turn")
    return [(items.nth(i).get_attribute("class").split()[-1], _words(items.nth(i).inner_text()))
            for i in range(items.count())]


def _send_and_wait(page, text: str) -> None:
    """Send a chat message and wait for its whole reply (the final HTML) and the send button again."""
    before = page.locator("ol[data-transcript] > li.turn.explainer p").count()
    page.locator("#chat-text").fill(text)
    page.locator("[data-chat-send]").click()
    page.wait_for_function(
        "(n) => document.querySelectorAll('ol[data-transcript] > li.turn.explainer p').length > n"
        " && !document.querySelector('[data-chat-send]').disabled", arg=before,
    )


# --------------------------------------------------------------------------- 1. Back on the chat page


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@VIEWPORTS
def test_back_to_the_chat_page_shows_the_live_transcript_and_the_next_send_works(
    viewport, browser_env, browser, asgi_server, celery_worker_factory, fake_llm, launch
):
    version = launch(chat_only)
    worker = celery_worker_factory(concurrency=4)
    fake_llm.set_behaviour(reply=REPLY, ttft_s=0.1, latency_s=0.5)
    name = "desktop" if viewport is DESKTOP else "phone"
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(20_000)
    seen = _watch(page)
    _enter(page, asgi_server, version)
    _answer_items(page)
    assert _kind(page) == "explanation"

    _send_and_wait(page, "What does the model look at first?")
    with page.expect_navigation():
        page.locator("footer a[href$='/withdraw/']").click()  # another page of the study
    assert _kind(page) == "withdraw"
    with page.expect_navigation() as back:
        page.go_back()
    assert _transcript(page) == [("participant", "What does the model look at first?"), ("explainer", REPLY)]
    assert page.locator("[data-limits]").inner_text().startswith("Messages left: 19")
    # It came from the server again, not from the browser's copy of its first rendering.
    assert "no-store" in (back.value.headers.get("cache-control") or "")
    _shot(page, f"back-{name}.png")
    _send_and_wait(page, "And then?")
    assert _transcript(page)[2:] == [("participant", "And then?"), ("explainer", REPLY)]
    assert page.locator("[data-chat-error]").is_hidden()

    # Left while the reply was still being written (the old "Please wait…"): Back follows the reply to its end.
    fake_llm.set_behaviour(reply=REPLY, ttft_s=1.5, latency_s=1.5)
    page.locator("#chat-text").fill("Why the debt ratio?")
    page.locator("[data-chat-send]").click()
    page.locator("li.turn.participant[data-status=pending]").wait_for()
    with page.expect_navigation():
        page.locator("footer a[href$='/device/']").click()
    with page.expect_navigation():
        page.go_back()
    assert _transcript(page)[4] == ("participant", "Why the debt ratio?")
    page.wait_for_function("() => document.querySelectorAll('ol[data-transcript] > li.turn.explainer p').length === 3"
                           " && !document.querySelector('[data-chat-send]').disabled")
    _send_and_wait(page, "Thank you.")
    assert len(_transcript(page)) == 8 and page.locator("[data-chat-error]").is_hidden()
    _shot(page, f"back-mid-reply-{name}.png")

    # Restored from the back/forward cache instead (the page as it was left): it asks the server again.
    with page.expect_navigation():
        page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
    assert len(_transcript(page)) == 8

    conversation = Participant.objects.get(study=version.study).conversation
    assert list(conversation.turns.filter(author=Turn.Author.PARTICIPANT).values_list("status", flat=True)) == [
        Turn.Status.ANSWERED] * 4
    _assert_clean(seen)
    context.close()
    assert worker.process.poll() is None


# --------------------------------------------------------------------------- 2, 3, 5 in the browser


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@VIEWPORTS
def test_a_rejected_number_stays_in_its_box_figures_open_full_size_and_the_favicon_loads(
    viewport, browser_env, browser, asgi_server, launch
):
    version = launch(static_only)
    name = "desktop" if viewport is DESKTOP else "phone"
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(15_000)
    seen = _watch(page)
    rejected = []

    def reject_a_number_once(page):
        box = page.locator("form[data-item] input[name=answer][type=text]")
        if rejected or not box.count():
            return
        box.fill("about 0.4")
        with page.expect_navigation():
            page.locator("form[data-item] button.primary").click()
        assert page.locator("form[data-item] .error").inner_text() == "Please enter a number."
        assert page.locator("form[data-item] input[name=answer][type=text]").input_value() == "about 0.4"
        _shot(page, f"rejected-number-{name}.png")
        rejected.append(True)

    _enter(page, asgi_server, version)
    _answer_items(page, on_item=reject_a_number_once)
    assert rejected, "the pre-test has a numeric item"
    assert _kind(page) == "explanation" and page.locator("h1").count() == 1

    figure = page.locator(".material a.figure")
    assert figure.count() == 1
    image = figure.locator("img")
    hint = page.locator(".material a.figure + .figure-hint")
    assert hint.inner_text() == "Tap the figure to enlarge it" and hint.is_visible()
    shown, natural = image.evaluate("(img) => [img.getBoundingClientRect().width, img.naturalWidth]")
    if viewport is PHONE:
        assert shown < natural  # shrunk to the screen's width, so the offer to enlarge matters
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    hint_box, image_box = hint.bounding_box(), image.bounding_box()
    assert hint_box["y"] >= image_box["y"] + image_box["height"] - 1  # under the figure
    _shot(page, f"figure-page-{name}.png")
    figure.locator("xpath=..").screenshot(path=str(SHOTS / f"figure-{name}.png"))  # the figure and its hint
    with context.expect_page() as opened:
        image.click()  # a tap on the figure
    full = opened.value
    full.wait_for_load_state()
    assert full.url == image.evaluate("(img) => img.src")
    size = full.evaluate("() => document.querySelector('svg').getBoundingClientRect().width")
    assert size == natural  # the figure at its own size (the phone zooms it further)
    full.screenshot(path=str(SHOTS / f"figure-enlarged-{name}.png"))
    full.close()

    favicon = page.request.get(f"{asgi_server}/favicon.ico")
    assert favicon.status == 200 and favicon.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(f"{asgi_server}{icon}").status == 200
    _assert_clean(seen, allowed_failures=(f"400 {asgi_server}/s/{version.study.slug}/pre-test/",))
    context.close()


# --------------------------------------------------------------------------- 2. rejected input is kept (client)


def _reach(client, version, kind: str, predicate=lambda html: True, answers=None):
    """Submit pages (answers from the key, or `answers(item_id)`) until a `kind` page satisfying `predicate`."""
    import random

    from participants.bots import AnswerPolicy
    from studies.protocol import Protocol

    policy = AnswerPolicy("key", Protocol(version.spec), version.target_keys, random.Random(0))
    for _ in range(30):
        response = client.get(f"/s/{version.study.slug}/", follow=True)
        html = response.content.decode()
        page = page_parse(html)
        if page.kind == kind and predicate(html):
            return response.redirect_chain[-1][0], html, page
        data = {"choice": "accept"} if page.kind == "consent" else {}
        if page.kind == "item":
            data = {"item": page.hidden["item"], **policy.answer(page.hidden["item"])}
        client.post(response.redirect_chain[-1][0], data)
    raise AssertionError(f"no {kind} page came")


def test_a_rejected_answer_is_shown_again_in_its_box_with_its_message(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    url, _html, page = _reach(client, live_study, "item", lambda html: 'inputmode="decimal"' in html)
    item = page.hidden["item"]
    response = client.post(url, {"item": item, "answer": "about 0.4"})
    html = response.content.decode()
    assert response.status_code == 400 and "Please enter a number." in html
    assert re.search(r'<input type="text"[^>]*name="answer"[^>]*value="about 0.4"', html)
    assert 'aria-invalid="true"' in html
    escaped = client.post(url, {"item": item, "answer": "<b>1</b>x"}).content.decode()
    assert escaped.count('value="&lt;b&gt;1&lt;/b&gt;x"') == 1 and "<b>1</b>x" not in escaped

    # A choice and a confidence out of range: both come back as they were sent.
    url, _html, page = _reach(client, live_study, "item", lambda html: 'name="confidence"' in html)
    item = page.hidden["item"]
    response = client.post(url, {"item": item, "answer": "yes", "confidence": "150"})
    html = response.content.decode()
    assert response.status_code == 400 and "Please say how confident you are, from 0 to 100." in html
    assert re.search(r'<input type="radio" name="answer" value="yes" required checked>', html)
    assert not re.search(r'value="no" required checked', html)
    assert re.search(r'name="confidence"[^>]*value="150"', html)
    # A fresh page has nothing filled in.
    fresh = client.get(url).content.decode()
    assert " checked" not in fresh and 'value="150"' not in fresh


# --------------------------------------------------------------------------- 4. one <h1> a page


def _one_h1(html: str, where: str) -> str:
    found = H1.findall(html)
    assert len(found) == 1, f"{where}: {len(found)} <h1>"
    return re.search(r"<h1[^>]*>(.*?)</h1>", html, re.S).group(1).strip()


@pytest.mark.parametrize("lang", ["en", "zh-hans"])
def test_every_participant_page_has_exactly_one_h1_and_the_study_s_own_headings_are_not_repeated(
    lang, launch, enter
):
    version = launch(static_only)
    spec = version.spec
    client, response = enter(version, pid=PID, lang=lang)
    slug = version.study.slug
    seen = set()
    for _ in range(30):
        response = client.get(f"/s/{slug}/", follow=True)
        html = response.content.decode()
        page = page_parse(html)
        if not page.kind:  # finished: sent on to Prolific
            break
        heading = _one_h1(html, page.kind)
        if page.kind == "consent":
            own = re.match(r"##\s*(.+)", spec["consent"]["text"][lang]).group(1).strip()
            assert heading == own and f"<h2>{own}</h2>" not in html
        elif page.kind == "item" and "item" not in seen:
            for other in ("withdraw", "device"):  # the pages the footer opens
                _one_h1(client.get(f"/s/{slug}/{other}/").content.decode(), other)
        elif page.kind == "explanation":
            material = study_asset_get(version_id=version.pk, path=f"material/static.{lang}.md")
            own = re.match(r"#\s*(.+)", bytes(material.content).decode()).group(1).strip()
            assert heading == own
        elif page.kind == "debrief":
            own = re.match(r"##\s*(.+)", spec["debrief"][lang]).group(1).strip()
            assert heading == own and f"<h2>{own}</h2>" not in html
        seen.add(page.kind)
        data = {"choice": "accept"} if page.kind == "consent" else {}
        if page.kind == "item":
            data = {"item": page.hidden["item"], **_any_answer(version, page.hidden["item"])}
        client.post(response.redirect_chain[-1][0], data)
    assert {"consent", "item", "explanation", "debrief"} <= seen
    session = client.session
    for key in [k for k in session.keys() if k.startswith("teachback:completed:")]:
        del session[key]  # a later visit: the done page itself
    session.save()
    done = client.get(f"/s/{slug}/done/")
    assert done.status_code == 200 and page_parse(done.content.decode()).kind == "done"
    _one_h1(done.content.decode(), "done")
    _one_h1(Client().get(f"/s/{slug}/done/").content.decode(), "notice")  # a browser the study does not know


def _any_answer(version, item_id: str) -> dict:
    item = next(i for i in version.spec["items"] if i["id"] == item_id)
    data = {}
    if item.get("options"):
        data["answer"] = item["options"][0]["id"]
    elif item["kind"] == "likert":
        data["answer"] = str(item["scale"]["min"])
    else:
        data["answer"] = "1"
    if item.get("confidence"):
        data["confidence"] = "50"
    return data


def test_a_study_text_without_a_heading_gets_the_page_s_own_and_its_h1s_become_h2s(launch, enter):
    def plain(data):
        static_only(data)
        data["consent"]["text"]["en"] = "Please read this.\n\n# Who we are\n\nResearchers."
        data["debrief"]["en"] = "# Thanks a lot\n\n# What we studied\n\nHow people learn."

    version = launch(plain)
    client, _ = enter(version, pid=PID)
    consent = client.get(f"/s/{version.study.slug}/consent/").content.decode()
    assert _one_h1(consent, "consent") == "Consent" and "<h2>Who we are</h2>" in consent
    client.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"})
    _url, debrief, _page = _reach(client, version, "debrief")
    assert _one_h1(debrief, "debrief") == "Thanks a lot" and "<h2>What we studied</h2>" in debrief


@pytest.mark.parametrize("arm", ["chat", "tutor"])
def test_a_chat_page_has_one_h1(arm, launch, fake_llm, enter):
    def only(data):
        data["arms"] = [a for a in data["arms"] if a["id"] == arm]
        data["arms"][0].setdefault("limits", {})["min_seconds"] = 0
        data["allocation"]["block_size"] = 1

    version = launch(only)
    client, _ = enter(version, pid=PID)
    _url, html, page = _reach(client, version, "explanation")
    assert page.chat is not None
    _one_h1(html, f"{arm} page")


# --------------------------------------------------------------------------- 1, 3, 5 through the client


def test_participant_pages_are_not_kept_by_the_browser_for_back_and_forward(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    slug = live_study.study.slug
    assert client.get(f"/s/{slug}/consent/")["Cache-Control"] == "no-store"
    url, _html, _page = _reach(client, live_study, "item")
    assert client.get(url)["Cache-Control"] == "no-store"
    url, _html, _page = _reach(client, live_study, "explanation")
    assert client.get(url)["Cache-Control"] == "no-store"
    assert client.get(f"/s/{slug}/pre-test/")["Cache-Control"] == "no-store"  # the redirect to where they are


@pytest.mark.parametrize("lang, words", [("en", "Tap the figure to enlarge it"), ("zh-hans", "点击图片可将其放大")])
def test_every_figure_links_to_its_image_and_says_it_can_be_enlarged(lang, words, live_study, enter):
    client, _ = enter(live_study, pid=PID, lang=lang)
    _url, html, _page = _reach(client, live_study, "explanation")
    figures = re.findall(r'<a class="figure" href="([^"]+)" target="_blank" rel="noopener"><img src="([^"]+)"[^>]*></a>'
                         r'<span class="figure-hint">([^<]+)</span>', html)
    assert len(figures) == 1 == html.count("<img ")
    href, src, hint = figures[0]
    assert href == src and hint == words
    assert client.get(href).status_code == 200


def test_the_favicon_answers_and_every_participant_page_links_it(live_study, enter):
    from django.contrib.staticfiles import finders

    response = Client().get("/favicon.ico")
    assert response.status_code == 302 and response["Location"].endswith("favicon.ico")
    assert finders.find("favicon.ico") and finders.find("favicon.svg")
    assert open(finders.find("favicon.ico"), "rb").read(4) == b"\x00\x00\x01\x00"  # an ICO file
    client, _ = enter(live_study, pid=PID)
    html = client.get(f"/s/{live_study.study.slug}/consent/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html


# --------------------------------------------------------------------------- 6, 7: check questions, the scripted model


def _settle(turn_id: int) -> None:
    for _ in range(12):
        if explainer_services.reply_generate(turn_id=turn_id).state != "continue":
            return
    raise AssertionError(f"turn {turn_id} did not settle")


def _agentic_only(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] == "agentic"]
    data["arms"][0]["limits"] = {"minutes": 15, "tokens": 500000, "min_seconds": 0}
    data["arms"][0]["options"] = {"show_meeting_note": True}
    data["allocation"]["block_size"] = 1


ENGLISH_PHRASES = ("Scripted demo", "Let us look at", "One more way", "A quick check", "Answer with the letter",
                   "Send any message", "You asked a question", "I asked the model", "Right!")


def _chat_until_a_check(client, version, participant, *, language_cue: str) -> list[Turn]:
    """Let the scripted agentic explainer open, answer 'ok' until it asks a check question; return its turns."""
    slug = version.study.slug
    client.get(f"/s/{slug}/explanation/")
    conversation = Participant.objects.get(pk=participant.pk).conversation
    opening = conversation.turns.get(author=Turn.Author.EXPLAINER, reply_to__isnull=True)
    _settle(opening.id)
    for _ in range(8):
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if last.act == "check":
            break
        sent = client.post(f"/s/{slug}/chat/send/", {"text": language_cue, "nonce": uuid.uuid4().hex})
        assert sent.status_code == 202, sent.content
        with transaction.atomic():
            _settle(json.loads(sent.content)["turn"])
    return list(conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("id"))


def test_the_scripted_explainer_writes_simplified_chinese_on_a_chinese_page_and_letters_its_options(
    launch, fake_llm, in_process, enter
):
    version = launch(_agentic_only)
    client, _ = enter(version, pid=PID, lang="zh-hans")
    _reach(client, version, "explanation")
    participant = Participant.objects.get(study=version.study)
    assert participant.language == "zh-hans" and participant.step == Step.EXPLANATION
    turns = _chat_until_a_check(client, version, participant, language_cue="好")
    assert all(t.scripted for t in turns)
    for turn in turns:
        assert turn.text.startswith("（脚本演示回复。）"), turn.text
        assert not [p for p in ENGLISH_PHRASES if p in turn.text], turn.text
    check = turns[-1]
    assert check.act == "check" and "请用所选选项的字母作答。" in check.text
    letters = re.findall(r"^- \*\*([A-Z])\*\*: ", check.text, re.M)
    assert letters and letters == [chr(ord("A") + i) for i in range(len(letters))]
    page = client.get(f"/s/{version.study.slug}/explanation/").content.decode()
    assert "<strong>A</strong>" in page and "请用所选选项的字母作答。" in page
    buttons = re.findall(r'<button type="button" data-send="([^"]+)">', page)
    assert buttons and set(buttons) <= set(letters)  # the buttons send what the question asks for


def test_the_scripted_explainer_still_writes_english_on_an_english_page(launch, fake_llm, in_process, enter):
    version = launch(_agentic_only)
    client, _ = enter(version, pid=PID)
    _reach(client, version, "explanation")
    participant = Participant.objects.get(study=version.study)
    turns = _chat_until_a_check(client, version, participant, language_cue="ok")
    assert all(t.text.startswith("(Scripted demo reply.) ") for t in turns)
    assert turns[-1].act == "check" and "Answer with the letter of your choice." in turns[-1].text
    assert re.search(r"^- \*\*A\*\*: ", turns[-1].text, re.M)


def test_the_tutor_s_check_question_lists_the_letters_it_asks_for(launch, enter):
    def tutor_only(data):
        data["arms"] = [a for a in data["arms"] if a["kind"] == "tutor"]
        data["arms"][0]["limits"]["min_seconds"] = 0
        data["allocation"]["block_size"] = 1

    version = launch(tutor_only)
    client, _ = enter(version, pid=PID)
    _reach(client, version, "explanation")
    slug = version.study.slug
    conversation = Participant.objects.get(study=version.study).conversation
    for _ in range(10):
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if last is not None and last.act == "check":
            break
        assert client.post(f"/s/{slug}/chat/send/", {"text": "ok", "nonce": uuid.uuid4().hex}).status_code == 202
    assert last.act == "check", "the tutor asked no check question"
    page = client.get(f"/s/{slug}/explanation/").content.decode()
    item = next(i for i in version.spec["items"] if i["id"] == last.check_item)
    letters = [chr(ord("A") + n) for n in range(len(item["options"]))]
    for letter, option in zip(letters, item["options"]):
        assert f"<li><strong>{letter}</strong>: {option['text']['en']}</li>" in page
    assert "Answer with the letter of your choice." in page
    buttons = re.findall(r'<button type="button" data-send="([^"]+)">', page)
    assert buttons == letters
