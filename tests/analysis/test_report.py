"""The study report: one self-contained HTML file, built from data that came through the real flow.

Twelve simulated learners walk a static + tutor study over HTTP (`study_simulate` against `live_server`),
two real participants finish through the test client and one declines; `study_report` writes the file,
whose numbers are checked against the database directly (not through `analysis.measures`), and which
headless Chromium opens from disk without a console error.
"""
import re
from pathlib import Path
from statistics import mean

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connections

from conftest import ARTIFACTS
from explainers.models import LearnerModelSnapshot, PostTestPrediction
from participants.models import Participant, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALL_STEPS = 1 + 5 + 1 + 5 + 3 + 1  # consent, pre-test, explanation, post-test, questionnaire, debrief
SECTIONS = ("1. Study", "2. Participant flow", "3. Measures per arm", "4. Statistics", "5. Learner-model fidelity")
SUBSECTIONS = ("ANCOVA", "Pairwise comparisons of gain", "Kruskal–Wallis", "Item-level model",
               "Power for the next study", "Calibration")


def tutor_and_static(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("tutor", "static")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


def _expected(study, include_simulated: bool) -> dict[str, dict]:
    """Per arm, straight from the ORM: completed participants and their mean gain (post − pre mean score)."""
    people = Participant.objects.filter(study=study, status=Participant.Status.COMPLETED, is_pilot=False)
    if not include_simulated:
        people = people.filter(is_simulated=False)
    out: dict[str, dict] = {}
    for p in people:
        scores = {phase: [r.score for r in Response.objects.filter(participant=p, phase=phase) if r.score is not None]
                  for phase in ("pre_test", "post_test")}
        arm = out.setdefault(p.arm, {"n": 0, "gains": []})
        arm["n"] += 1
        arm["gains"].append(mean(scores["post_test"]) - mean(scores["pre_test"]))
    return out


def _cell(page: str, arm: str, measure: str, stat: str) -> str:
    found = re.search(rf'data-arm="{arm}" data-measure="{measure}" data-stat="{stat}">([^<]*)<', page)
    assert found, (arm, measure, stat)
    return found.group(1)


def _self_contained(page: str) -> None:
    lowered = page.lower()
    for bad in ('src="http', "src='http", 'href="http', "href='http", "<script", "@import", "url(http", "<link"):
        assert bad not in lowered, bad


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_report_of_a_simulated_study_matches_the_database_and_opens_in_chromium(
        launch, live_server, enter, step_through, settings, tmp_path, monkeypatch):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(tutor_and_static)
    slug, study = version.study.slug, version.study
    call_command("study_simulate", slug, n=12, seed=1, base_url=live_server.url, concurrency=4)
    assert Participant.objects.filter(study=study, is_simulated=True, status="completed").count() == 12
    for pid in ("PIDREAL000000000000000001", "PIDREAL000000000000000002"):
        client, _ = enter(version, pid=pid)
        step_through(client, version, times=ALL_STEPS)
    client, _ = enter(version, pid="PIDDECLINE000000000000001")
    client.post(f"/s/{slug}/consent/", {"choice": "decline"})
    assert Participant.objects.filter(study=study, is_simulated=False, status="completed").count() == 2
    assert Participant.objects.filter(study=study, status="declined").count() == 1

    # --- with the simulated participants --------------------------------------------------------
    out = tmp_path / "report.html"
    call_command("study_report", slug, "--out", str(out), "--include-simulated")
    page = out.read_text(encoding="utf-8")
    for heading in SECTIONS + SUBSECTIONS:
        assert heading in page, heading
    _self_contained(page)
    assert version.sha256 in page and study.title in page
    assert "Simulated participants are <strong>included</strong>" in page

    expected = _expected(study, include_simulated=True)
    assert set(expected) == {"static", "tutor"} and sum(e["n"] for e in expected.values()) == 14
    for arm, e in expected.items():
        assert f'data-analysable="{arm}">{e["n"]}<' in page
        assert _cell(page, arm, "gain", "n") == str(e["n"])
        assert _cell(page, arm, "gain", "mean") == f"{mean(e['gains']):.3f}"
    assert re.search(r'data-flow="entered">15<', page) and re.search(r'data-flow="declined">1<', page)
    assert re.search(r'data-flow="allocated">14<', page)

    # every test ran: there are enough participants per arm
    assert "not enough data" not in page.split("4. Statistics")[1].split("Power for the next study")[0]
    assert "could not be computed" not in page
    assert "arm[tutor]:post" in page  # the item-level model's interaction

    # learner-model fidelity: the tutor arm predicts, the static arm does not
    snapshots = LearnerModelSnapshot.objects.filter(conversation__participant__study=study).count()
    assert snapshots > 0 and f'data-snapshots="total">{snapshots}<' in page
    assert PostTestPrediction.objects.filter(conversation__participant__study=study).exists()
    assert re.search(r'data-arm="tutor" data-lm="accuracy">[01]\.\d{3}<', page)
    assert 'data-arm="static" data-lm="accuracy"' not in page

    # --- without them (the default) -------------------------------------------------------------
    real = tmp_path / "real.html"
    call_command("study_report", slug, "--out", str(real))
    default = real.read_text(encoding="utf-8")
    _self_contained(default)
    assert "excluded (default): 12 simulated participants left out (12 completed)" in default
    expected = _expected(study, include_simulated=False)
    assert sum(e["n"] for e in expected.values()) == 2
    for arm, e in expected.items():
        assert _cell(default, arm, "gain", "n") == str(e["n"])
        assert _cell(default, arm, "gain", "mean") == f"{mean(e['gains']):.3f}"
    assert re.search(r'data-flow="entered">3<', default)
    assert "not enough data (n = " in default  # one real participant per arm: the tests say so, no crash

    # --- the file in a real browser ---------------------------------------------------------------
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    messages, errors, fetched = [], [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                 args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP * ~NOTFOUND"])
            try:
                tab = browser.new_page(viewport={"width": 1200, "height": 900})
                tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
                tab.on("pageerror", lambda e: errors.append(str(e)))
                tab.on("request", lambda r: fetched.append(r.url))
                tab.goto(out.as_uri())
                tab.wait_for_load_state("load")
                assert tab.locator("h2").count() == 5
                assert tab.locator("svg").count() >= 4  # flow, gain strip, mean gain, calibration
                box = tab.locator("svg").nth(1).bounding_box()
                assert box and box["width"] > 200 and box["height"] > 200
                tab.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            finally:
                browser.close()
    finally:
        connections.close_all()
    assert not errors, errors
    assert not [m for m in messages if m.startswith("error")], messages
    assert fetched == [out.as_uri()], fetched  # the page fetched nothing but itself


@pytest.mark.django_db
def test_the_admin_report_view_is_for_staff_only_and_carries_its_own_csp(
        launch, enter, step_through, client, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(tutor_and_static)
    client_p, _ = enter(version, pid="PIDADMIN00000000000000001")
    step_through(client_p, version, times=ALL_STEPS)
    study = version.study
    url = f"/admin/studies/study/{study.pk}/report/"

    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]

    User = get_user_model()
    clerk = User.objects.create_user("clerk", password="x", is_staff=True)  # staff, but no view permission
    client.force_login(clerk)
    assert client.get(url).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_study"))
    clerk = User.objects.get(pk=clerk.pk)
    client.force_login(clerk)
    response = client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert all(heading in page for heading in SECTIONS)
    assert "not enough data (n = " in page  # one participant: the statistics say so instead of failing
    csp = response["Content-Security-Policy"]
    assert "style-src 'unsafe-inline'" in csp and "img-src data:" in csp and "script-src" not in csp
    assert "default-src 'none'" in csp
    assert "excluded (default)" in page

    boss = User.objects.create_superuser("boss", password="x")
    client.force_login(boss)
    opened = client.post("/admin/studies/study/", {"action": "open_report", "_selected_action": [study.pk]})
    assert opened.status_code == 302 and opened["Location"] == url
    with_bots = client.get(url, {"simulated": "1"})
    assert with_bots.status_code == 200 and "Simulated participants are <strong>included</strong>" in with_bots.content.decode()
    download = client.get(url, {"download": "1"})
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    _self_contained(download.content.decode())

    client.logout()
    assert client.get(url).status_code == 302


@pytest.mark.django_db
def test_a_study_without_participants_still_reports(launch, tmp_path):
    version = launch(tutor_and_static)
    out = tmp_path / "empty.html"
    call_command("study_report", version.study.slug, "--out", str(out))
    page = out.read_text(encoding="utf-8")
    assert all(heading in page for heading in SECTIONS)
    assert 'data-flow="entered">0<' in page and "not enough data (n = " in page
    _self_contained(page)
