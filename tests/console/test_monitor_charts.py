"""The monitor draws real participants over time: cumulative arrivals, completions and dropouts per arm, and the
LLM calls' median TTFT and errors per bin, as inline SVG whose marks stay in their plot box; bots are not in it."""
import random
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from datetime import timezone as dt_timezone

import numpy as np
import pytest
from django.utils import timezone

from analysis.monitor import IDLE_AFTER, study_monitor
from bench.monitor import study_populate
from explainers.models import LLMCall
from conftest import ARTIFACTS, CSP_MARKERS
from pages_support import PASSWORD, as_role, assert_strict_page, researcher  # noqa: F401
from participants.models import Participant
from test_monitor_queries import three_arms

pytestmark = pytest.mark.django_db
SHOTS = ARTIFACTS / "console"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def spread_study(launch):
    """40 participants with chats over the last ten hours; every fifth is a bot, all of them early risers."""
    version = launch(three_arms)
    study_populate(version, 40, turns=300, seed=16)
    now = timezone.now()
    rng = random.Random(16)
    people = list(Participant.objects.filter(study=version.study).order_by("id"))
    for i, p in enumerate(people):
        start = now - timedelta(hours=10) + timedelta(minutes=rng.randrange(0, 9 * 60))
        p.is_simulated = i % 5 == 0
        p.created_at = start
        p.allocated_at = start + timedelta(minutes=2) if p.arm else None
        p.completed_at = start + timedelta(minutes=rng.randrange(20, 50)) if p.status == "completed" else None
        p.last_seen_at = p.completed_at or start + timedelta(minutes=rng.randrange(5, 50))
        if i % 7 == 3 and p.arm and p.status == "active":
            p.status = "withdrawn"
    Participant.objects.bulk_update(
        people, ["is_simulated", "created_at", "allocated_at", "completed_at", "last_seen_at", "status"])
    for call in LLMCall.objects.filter(turn__conversation__version=version).select_related("turn__conversation"):
        owner = next(p for p in people if p.conversation_id == call.turn.conversation_id)
        call.started_at = owner.created_at + timedelta(minutes=rng.randrange(3, 40))
        if call.id % 9 == 0:
            call.status, call.ttft_ms = LLMCall.Status.ERROR, None
        call.save(update_fields=["started_at", "status", "ttft_ms"])
    assert any(p.is_simulated for p in people) and any(p.status == "withdrawn" for p in people)
    return version


def _bin_end(bins, i):
    return bins[i] + timedelta(hours=1)


def test_the_timeline_matches_a_hand_count_of_real_participants_and_their_calls(spread_study):
    m = study_monitor(study=spread_study.study)
    t = m["timeline"]
    now = m["generated_at"]
    assert t["unit"] == "hour" and 10 <= len(t["bins"]) <= 12
    assert t["arms"] == ["static", "chat", "tutor"]  # the version's arms, each once, in its order
    assert all(b.minute == 0 and b.second == 0 and b.tzinfo is not None for b in t["bins"])
    real = [p for p in Participant.objects.filter(study=spread_study.study) if not p.is_simulated and not p.is_pilot]
    idle = now - IDLE_AFTER
    for arm in ("static", "chat", "tutor"):
        mine = [p for p in real if p.arm == arm]
        assert mine, arm
        for i in range(len(t["bins"])):
            end = _bin_end(t["bins"], i)
            assert t["allocated"][arm][i] == sum(p.allocated_at < end for p in mine), (arm, i)
            assert t["completed"][arm][i] == sum(p.status == "completed" and p.completed_at < end for p in mine)
            gone = [p for p in mine if p.status == "withdrawn" or (p.status == "active" and p.last_seen_at < idle)]
            assert t["dropped"][arm][i] == sum(p.last_seen_at < end for p in gone), (arm, i)
        assert t["allocated"][arm][-1] == len(mine)
        row = next(r for r in m["arms"] if r["id"] == arm)
        assert t["completed"][arm][-1] == row["completed"]
        assert t["dropped"][arm][-1] == row["withdrawn"] + row["idle"]

    real_ids = {p.conversation_id for p in real}
    calls = [c for c in LLMCall.objects.filter(turn__conversation__version=spread_study)
             .select_related("turn__conversation") if c.turn.conversation_id in real_ids]
    assert "chat" in t["llm_calls"] and "static" not in t["llm_calls"]  # the tutor and static arms call no model
    for arm, per_bin in t["llm_calls"].items():
        for i, start in enumerate(t["bins"]):
            end = _bin_end(t["bins"], i)
            here = [c for c in calls if c.turn.conversation.arm == arm and start <= c.started_at < end]
            assert per_bin[i] == len(here), (arm, i)
            assert t["llm_errors"][arm][i] == sum(c.status == "error" for c in here)
            ttft = [c.ttft_ms for c in here if c.status == "ok" and c.ttft_ms is not None]
            assert t["ttft_p50_ms"][arm][i] == (pytest.approx(np.percentile(ttft, 50)) if ttft else None)
    assert sum(sum(v) for v in t["llm_errors"].values()) > 0


def test_bots_are_not_in_the_timeline(spread_study):
    before = study_monitor(study=spread_study.study)["timeline"]
    Participant.objects.filter(study=spread_study.study, is_simulated=True).update(
        allocated_at=timezone.now() - timedelta(hours=1), status="completed", completed_at=timezone.now())
    bots_now = Participant.objects.filter(study=spread_study.study, is_simulated=True).count()
    assert bots_now
    after = study_monitor(study=spread_study.study)["timeline"]
    for kind in ("allocated", "completed", "dropped", "llm_calls", "llm_errors"):
        assert {a: v[-1] for a, v in after[kind].items()} == {a: v[-1] for a, v in before[kind].items()}, kind
    # and only bots: no chart at all
    Participant.objects.filter(study=spread_study.study).update(is_simulated=True)
    m = study_monitor(study=spread_study.study)
    assert m["timeline"]["bins"] == [] and m["charts"] == []


def _floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_every_chart_parses_has_a_title_axes_legend_and_text_alternative_and_its_marks_stay_in_the_box(spread_study):
    m = study_monitor(study=spread_study.study)
    assert [c["key"] for c in m["charts"]] == ["allocated", "completed", "dropped", "ttft_p50_ms", "llm_errors"]
    colors = {}  # an arm's colour, from its points' tooltips ("chat, 04 Dec 13:00: 5")
    for chart in m["charts"]:
        root = ET.fromstring(chart["svg"])
        assert root.find(f"{SVG}title").text == chart["title"]
        desc = root.find(f"{SVG}desc").text
        assert all(r["arm"] in desc for r in chart["rows"])
        axes = root.find(f"{SVG}g[@data-role='axes']")
        words = [t.text for t in axes.iter(f"{SVG}text")]
        assert chart["y_label"] in words and "hour (UTC)" in words  # axis labels
        assert all(r["arm"] in words for r in chart["rows"])       # the legend
        marks = root.find(f"{SVG}g[@data-role='marks']")
        x0, y0, x1, y1 = _floats(marks.get("data-box"))
        points = []
        for el in marks:
            tag = el.tag.removeprefix(SVG)
            if tag == "circle":
                points.append((float(el.get("cx")), float(el.get("cy"))))
                colors.setdefault(el.find(f"{SVG}title").text.split(",")[0], set()).add(el.get("fill"))
            elif tag == "polyline":
                xy = _floats(el.get("points"))
                points += list(zip(xy[::2], xy[1::2]))
            else:
                raise AssertionError(f"unexpected mark {tag}")
        assert points, chart["key"]
        for x, y in points:
            assert x0 <= x <= x1 and y0 <= y <= y1, (chart["key"], x, y)
    assert set(colors) == {"static", "chat", "tutor"} and all(len(c) == 1 for c in colors.values()), colors
    assert len({c.pop() for c in colors.values()}) == 3


def test_the_monitor_page_shows_the_charts_with_their_tables_under_the_strict_csp(spread_study, as_role):
    client = as_role(spread_study.study, "viewer")
    response = client.get(f"/console/{spread_study.study.slug}/monitor/")
    assert response.status_code == 200
    html = assert_strict_page(response)  # the CSP header, and nothing in the page it would block
    assert html.count("<svg") >= 5 and 'data-chart="allocated"' in html and 'data-chart-table="llm_errors"' in html
    assert "<script" not in html.split('id="over-time"')[1].split('id="apart"')[0]
    assert "http" not in "".join(re.findall(r"<svg.*?</svg>", html, re.S)).replace("http://www.w3.org/2000/svg", "")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_charts_draw_in_chromium_under_the_csp_at_desktop_and_phone_width(
    spread_study, browser, asgi_server, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    researcher("charts", spread_study.study, "viewer", password=PASSWORD)
    for width in (1280, 375):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        messages, requests = [], []
        page.on("console", lambda m: messages.append(m.text))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"{asgi_server}/console/login/?next=/console/{spread_study.study.slug}/monitor/")
        page.fill("input[name=username]", "charts")
        page.fill("input[name=password]", PASSWORD)
        with page.expect_navigation():
            page.locator("form button[type=submit]").first.click()
        charts = page.locator("#monitor-live figure.chart svg")
        assert charts.count() == 5
        for i in range(charts.count()):
            box = charts.nth(i).bounding_box()
            assert box["width"] > 100 and box["x"] + box["width"] <= width + 1, (width, i, box)  # fits the page
        # the page itself never scrolls sideways: wide tables scroll inside their own box
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1).slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (width, wide)
        page.locator("#over-time").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"monitor-charts-{width}.png"), full_page=True)
        assert not [m for m in messages if any(marker in m for marker in CSP_MARKERS)], messages
        assert all(url.startswith(asgi_server) for url in requests), requests  # nothing from elsewhere
        context.close()
