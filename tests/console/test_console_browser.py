"""The researcher's whole path in a real browser: headless Debian Chromium (Playwright), the app under uvicorn
(ASGI, as in production) and a real Celery worker running the bots against that server.

Log in, upload a study file with an error (the error shows with its line), upload the fixed file, launch,
run 10 bots from the checklist, watch the monitor's numbers change without a reload, open a transcript.
Screenshots go to tests/artifacts/console/. The app is served by the `asgi_server` fixture of tests/conftest.py.
"""
import re
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ARTIFACTS, CSP_MARKERS
from pages_support import PASSWORD, researcher
from participants.models import Participant
from studies.models import StudyVersion

SHOTS = ARTIFACTS / "console"
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def browser_environment(monkeypatch):
    """Let the sync Playwright API and the ORM share the test thread."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)


def quick_study(data) -> None:
    """The static and tutor arms (no language model), one second of minimum time: bots finish in seconds."""
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("static", "tutor")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 1
    data["allocation"]["block_size"] = 2


def _zip(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    return path


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _tile(page, name: str) -> int:
    return int(page.locator(f'#monitor-live [data-total="{name}"]').inner_text())


def test_a_researcher_uploads_fixes_launches_runs_bots_watches_the_monitor_and_reads_a_transcript(
    browser, asgi_server, celery_worker_factory, study_folder, tmp_path
):
    started = time.monotonic()
    researcher("ada", password=PASSWORD)
    broken = study_folder(lambda data: (quick_study(data), data["arms"][0].__setitem__("weight", "heavy")), "broken")
    fixed = study_folder(quick_study, "fixed")
    error_line = next(n for n, line in enumerate((broken / "study.yaml").read_text().splitlines(), 1)
                      if "weight: heavy" in line)
    worker = celery_worker_factory(concurrency=4)

    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    messages, errors, failed = [], [], []
    page.on("console", lambda m: messages.append((m.type, m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("dialog", lambda dialog: dialog.accept())  # data-confirm on launch

    # log in
    page.goto(f"{asgi_server}/console/")
    assert page.url.startswith(f"{asgi_server}/console/login/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit].primary")
    assert page.url == f"{asgi_server}/console/"
    assert page.locator("body").get_attribute("data-page") == "study-list"

    # a study file with an error: listed with its file and line, nothing stored
    page.set_input_files("form[data-upload] input[type=file]", str(_zip(broken, tmp_path / "broken.zip")))
    with page.expect_navigation():
        page.click("form[data-upload] button[type=submit]")
    errors_box = page.locator("[data-spec-errors]")
    assert errors_box.is_visible()
    assert f"study.yaml, line {error_line}" in errors_box.inner_text()
    assert errors_box.locator(f'li[data-line="{error_line}"]').count() == 1
    _shot(page, "1-upload-error.png")
    assert not StudyVersion.objects.exists()

    # the fixed file: a draft version, then launch it
    page.set_input_files("form[data-upload] input[type=file]", str(_zip(fixed, tmp_path / "fixed.zip")))
    with page.expect_navigation():
        page.click("form[data-upload] button[type=submit]")
    assert page.url == f"{asgi_server}/console/loan-approval/"
    assert "Stored loan-approval v1 as a draft." in page.locator(".messages").inner_text()
    with page.expect_navigation():
        page.click('button[data-launch="1"]')
    assert page.locator("[data-state]").first.get_attribute("data-state") == "live"
    link = page.locator("[data-participant-link]").input_value()
    assert link.endswith("/s/loan-approval/?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")
    _shot(page, "2-launched-checklist.png")

    # the monitor, open before the bots start
    monitor = context.new_page()
    monitor.on("console", lambda m: messages.append((m.type, m.text, m.location.get("url", ""))))
    monitor.on("pageerror", lambda e: errors.append(str(e)))
    monitor.goto(f"{asgi_server}/console/loan-approval/monitor/")
    assert _tile(monitor, "participants") == 0
    monitor.evaluate("window.__notReloaded = true")

    # run 10 bots from the checklist; the fragment polls until they are done
    page.bring_to_front()
    page.click("button[data-run-bots]")
    page.wait_for_selector('[data-bots="running"], [data-bots="done"]')
    page.wait_for_selector('[data-bots="done"]', timeout=45_000)
    bots = page.locator("[data-bots]")
    assert bots.get_attribute("data-bots-done") == "10"
    assert page.locator("[data-bots-completed]").inner_text() == "10", bots.inner_text()
    assert page.locator("[data-bots-failed]").inner_text() == "0"
    _shot(page, "3-bots-done.png")
    assert Participant.objects.filter(is_simulated=True, status="completed").count() == 10

    # the monitor caught up by itself: htmx swaps its fragment every 5 s, and the numbers in it are at
    # most one poll old (a worker recomputes them when a poll finds them stale): same page, new numbers
    monitor.bring_to_front()
    # in the bots' own section: the tiles and the arm table count real participants only
    monitor.wait_for_function(
        "() => document.querySelector('#monitor-live [data-group=\"bot\"] [data-group-total=\"completed\"]')"
        "?.textContent.trim() === '10'",
        timeout=20_000,
    )
    assert monitor.evaluate("window.__notReloaded === true")
    assert _tile(monitor, "participants") == 0 and _tile(monitor, "simulated") == 10
    bots_section = monitor.locator('#monitor-live [data-group="bot"]')
    allocated = sum(int(bots_section.locator(f'tr[data-group-arm="{arm}"] [data-allocated]').inner_text())
                    for arm in ("static", "tutor"))
    assert allocated == 10
    _shot(monitor, "4-monitor.png")

    # a tutor participant's transcript, from the participant list
    monitor.goto(f"{asgi_server}/console/loan-approval/participants/?arm=tutor")
    rows = monitor.locator("tr[data-pseudonym]")
    assert rows.count() >= 1
    with monitor.expect_navigation():
        rows.first.locator("a").click()
    assert monitor.locator("body").get_attribute("data-page") == "transcript"
    assert monitor.locator("li.turn-row").count() >= 1
    assert monitor.locator(".snapshot").count() >= 1  # the learner model from the pre-test at least
    assert re.search(r"arm\s+tutor", monitor.locator(".head").inner_text())
    _shot(monitor, "5-transcript.png")

    csp = [text for _kind, text, _url in messages if any(marker in text for marker in CSP_MARKERS)]
    assert not csp, csp
    assert not errors, errors
    expected = {f"400 {asgi_server}/console/upload/"}  # the upload with an error answers 400 with its page
    assert not [f for f in failed if f not in expected], failed
    context.close()
    assert worker.process.poll() is None
    assert time.monotonic() - started < 60, time.monotonic() - started
