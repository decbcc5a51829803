"""The participant's pages in a real browser: headless Debian Chromium driven by Playwright's sync API.

Static files: pytest-django's `live_server` wraps the site in `django.contrib.staticfiles`'
StaticFilesHandler, which serves /static/ through the finders; `tests/conftest.py` swaps in the plain
`StaticFilesStorage` so `{% static %}` needs no collectstatic manifest.
"""
import http.server
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.db import connections

from conftest import ARTIFACTS, static_only
from participants.models import PageVisit, Participant, Response, Step

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PROLIFIC_PAGE = "<!doctype html><html><head><title>Prolific</title></head><body><h1>Prolific</h1></body></html>"
CSP_MARKERS = ("Content Security Policy", "Refused to")
# The innermost elements that stick out past the right edge of the viewport, for a readable failure.
OVERFLOWING = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
  .filter(e => !Array.from(e.children).some(c => c.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5))
  .slice(0, 8)
  .map(e => `<${e.tagName.toLowerCase()}${e.className ? '.' + e.className : ''}> right=${Math.round(e.getBoundingClientRect().right)}px "${(e.textContent || '').trim().slice(0, 40)}"`)"""
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def browser_environment(monkeypatch):
    """Let the sync Playwright API and the ORM share the test thread."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


class _ProlificStandIn(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        body = PROLIFIC_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def prolific(tmp_path):
    """A local HTTPS stand-in for app.prolific.com (self-signed; the browser maps the name to it).

    `page.route("https://app.prolific.com/**")` is not enough here: with Debian's Chromium, Playwright
    does not call route handlers for the target of a server redirect (checked: the handler never runs
    and the browser goes to DNS), and Finish is a 303 from the server. The test still routes the
    address, in case a later Chromium does call the handler."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the Prolific stand-in's certificate")
    cert, key = tmp_path / "prolific.pem", tmp_path / "prolific.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=app.prolific.com", "-addext", "subjectAltName=DNS:app.prolific.com"],
        check=True, capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProlificStandIn)
    server.paths = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(prolific):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI has it)")
    from playwright.sync_api import sync_playwright

    # Nothing leaves the machine: Prolific goes to the stand-in, every other name fails to resolve.
    rules = f"MAP app.prolific.com:443 127.0.0.1:{prolific.server_port}, MAP * ~NOTFOUND, EXCLUDE localhost"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--host-resolver-rules={rules}"], headless=True,
        )
        try:
            yield browser
        finally:
            browser.close()
            # While Playwright's sync API is active its event loop counts as running in this thread, so
            # Django's thread-critical `connections` hands the test body a separate, context-local
            # connection that pytest-django never sees. Close it here, or dropping the test database
            # at the end of the session fails with "being accessed by other users".
            connections.close_all()


def _entry_url(live_server, version, **extra) -> str:
    pid = uuid.uuid4().hex[:24]
    query = "&".join(f"{k}={v}" for k, v in {"PROLIFIC_PID": pid, "STUDY_ID": "s", "SESSION_ID": "x", **extra}.items())
    return f"{live_server.url}/s/{version.study.slug}/?{query}"


def _page_kind(page) -> str:
    return page.locator("body").get_attribute("data-page")


def _item_id(page) -> str:
    return page.locator("form[data-item]").get_attribute("data-item")


def _answer_current_item(page) -> None:
    """Answer the item on screen by its kind, then press Next."""
    form = page.locator("form[data-item]")
    radios = form.locator("input[name=answer][type=radio]")
    checkboxes = form.locator("input[name=answer][type=checkbox]")
    texts = form.locator("input[name=answer][type=text]")
    textareas = form.locator("textarea[name=answer]")
    if radios.count():
        radios.first.check()
    elif checkboxes.count():
        checkboxes.first.check()
    elif texts.count():
        texts.first.fill("1")
    elif textareas.count():
        textareas.first.fill("text")
    else:
        raise AssertionError(f"item {_item_id(page)!r} has no answer input")
    confidence = form.locator("input[name=confidence]")
    if confidence.count():
        confidence.fill("70")
    with page.expect_navigation():
        form.locator("button.primary").click()


def _answer_phase(page, step: str, on_item=None) -> list[str]:
    """Answer every item of the current instrument; return the item ids in the order shown."""
    seen = []
    path = f"/{step.replace('_', '-')}/"
    while _page_kind(page) == "item" and page.url.endswith(path):
        item = _item_id(page)
        assert item not in seen, f"{step}: item {item} shown again after it was answered (error: {_error(page)})"
        seen.append(item)
        if on_item is not None:
            on_item(len(seen), item)
        _answer_current_item(page)
    return seen


def _error(page) -> str | None:
    error = page.locator(".error")
    return error.first.inner_text() if error.count() else None


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_a_participant_walks_the_static_arm_end_to_end_with_a_reload_in_the_middle(browser, prolific, live_server, launch):
    started = time.monotonic()
    version = launch(static_only)
    slug = version.study.slug
    code = version.spec["recruitment"]["completion_code"]
    context = browser.new_context(viewport={"width": 1024, "height": 800}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    finished = []

    def routed(route):
        finished.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body=PROLIFIC_PAGE)

    page.route("https://app.prolific.com/**", routed)

    page.goto(_entry_url(live_server, version))
    assert _page_kind(page) == "consent"
    assert page.url == f"{live_server.url}/s/{slug}/consent/"  # the PID is not left in the address bar
    _shot(page, "a-consent.png")
    with page.expect_navigation():
        page.locator("button[name=choice][value=accept]").click()

    participant = Participant.objects.get(study=version.study)
    assert participant.step == Step.PRE_TEST
    assert _page_kind(page) == "item"
    _shot(page, "a-item.png")

    def reload_in_the_middle(number, item):
        if number != 3:
            return
        stored = Response.objects.filter(participant=participant).count()
        assert stored == 2
        page.reload()
        assert _page_kind(page) == "item" and _item_id(page) == item
        assert Response.objects.filter(participant=participant).count() == stored
        # Back goes to the previous entry in history (the same pre-test address); the server shows the current item.
        page.go_back()
        assert _page_kind(page) == "item" and _item_id(page) == item, page.url
        assert page.url == f"{live_server.url}/s/{slug}/pre-test/"
        assert Response.objects.filter(participant=participant).count() == stored

    pre = _answer_phase(page, "pre_test", reload_in_the_middle)
    assert len(pre) == 5

    assert _page_kind(page) == "explanation"
    material = page.locator("article.material")
    assert "decision tree" in material.inner_text()
    image = material.locator("img").first
    assert "/asset/" in image.get_attribute("src")
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") > 0, f"the figure {image.get_attribute('src')} did not load"
    _shot(page, "a-explanation.png")
    with page.expect_navigation():
        page.locator("button.primary").click()

    post = _answer_phase(page, "post_test")
    assert len(post) == 5
    questionnaire = _answer_phase(page, "questionnaire")
    assert questionnaire == ["q_understand", "q_trust", "q_confusing"]

    assert _page_kind(page) == "debrief"
    finish_url = f"https://app.prolific.com/submissions/complete?cc={code}"
    with page.expect_response(lambda r: r.url.endswith("/debrief/") and r.request.method == "POST") as posted:
        with page.expect_navigation(url=re.compile(r"^https://app\.prolific\.com/")):
            page.locator("button.primary").click()
    assert (posted.value.status, posted.value.headers.get("location")) == (303, finish_url)
    assert page.url == finish_url and f"cc={code}" in page.url
    assert page.locator("h1").inner_text() == "Prolific"
    assert (finished or prolific.paths) == [f"/submissions/complete?cc={code}"] or finished == [finish_url]
    _shot(page, "a-final.png")
    context.close()

    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED
    assert participant.step == Step.DONE and participant.completed_at is not None
    responses = list(Response.objects.filter(participant=participant).values_list("phase", "item_id"))
    assert len(responses) == len(set(responses)) == 13
    assert sorted(i for p, i in responses if p == "pre_test") == sorted(pre)
    assert sorted(i for p, i in responses if p == "post_test") == sorted(post)
    assert sorted(i for p, i in responses if p == "questionnaire") == sorted(questionnaire)
    visits = {v.page: v for v in PageVisit.objects.filter(participant=participant)}
    expected = {f"pre_test:{i}" for i in pre} | {f"post_test:{i}" for i in post} | {
        f"questionnaire:{i}" for i in questionnaire} | {"explanation", "debrief"}
    assert expected <= set(visits)
    assert all(visits[name].server_ms is not None for name in expected), [n for n in expected if visits[n].server_ms is None]
    assert visits[f"pre_test:{pre[2]}"].shown_count >= 2  # the reload and the back were seen by the server
    assert time.monotonic() - started < 30


def test_pages_are_readable_on_a_375_px_phone_and_the_csp_holds(browser, live_server, launch):
    started = time.monotonic()
    version = launch(static_only)
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    messages, errors = [], []
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))

    def check(kind: str, *, bar: bool = True) -> None:
        assert _page_kind(page) == kind
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the {kind} page is {width} px wide on a 375 px phone: {page.evaluate(OVERFLOWING)}"
        if bar:
            bar_width = page.evaluate("document.querySelector('.progress span').getBoundingClientRect().width")
            assert bar_width > 0, f"the progress bar on the {kind} page is empty: page.js did not run"

    page.goto(_entry_url(live_server, version))
    check("consent", bar=False)  # consent is step 0 of 6: its bar is 0 % by design
    assert page.evaluate("document.querySelector('.progress span').style.width") == "0%"  # page.js ran
    _shot(page, "b-phone-consent.png")
    with page.expect_navigation():
        page.locator("button[name=choice][value=accept]").click()
    check("item")
    _shot(page, "b-phone-item.png")
    for _ in range(5):
        _answer_current_item(page)
    check("explanation")
    _shot(page, "b-phone-explanation.png")

    csp = [m for m in messages if any(marker in m for marker in CSP_MARKERS)]
    assert not csp, csp
    assert not errors, errors
    context.close()

    # Chinese, chosen on the entry URL.
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(_entry_url(live_server, version, lang="zh-hans"))
    check("consent", bar=False)
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.locator("button[name=choice][value=accept]").inner_text().strip() == "我同意参加"
    assert "知情同意" in page.locator("h1").inner_text()  # the consent text's own heading is the page's one h1
    _shot(page, "b-phone-consent-zh.png")
    csp = [m for m in messages if any(marker in m for marker in CSP_MARKERS)]
    assert not csp, csp
    assert not errors, errors
    context.close()
    assert time.monotonic() - started < 30
