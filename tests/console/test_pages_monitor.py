"""The live monitor: every role sees it, its numbers are the database's, and the page refreshes a fragment."""
import re
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from analysis.monitor import IDLE_AFTER, percentile, study_monitor
from bench.monitor import study_populate
from explainers.models import LLMCall, Turn
from pages_support import as_role, assert_strict_page, client_for, researcher  # noqa: F401
from participants.models import PageVisit, Participant
from test_monitor_queries import three_arms

pytestmark = pytest.mark.django_db

# The monitor's tiles, arm table, steps and median times are over real participants (test_monitor_groups.py).
REAL = Participant.objects.filter(is_simulated=False, is_pilot=False)


@pytest.fixture
def busy_study(launch):
    version = launch(three_arms)
    study_populate(version, 60, turns=500, seed=7)
    return version


def test_every_role_sees_the_monitor_and_it_polls_a_fragment(busy_study, as_role):
    for role in ("viewer", "analyst", "editor", "owner"):
        client = as_role(busy_study.study, role)
        html = assert_strict_page(client.get("/console/loan-approval/monitor/"))
        assert 'hx-get="/console/loan-approval/monitor/live/"' in html and 'hx-trigger="every 5s"' in html
        assert f'data-total="participants">{REAL.count()}<' in html  # bots and pilots apart
    fragment = client.get("/console/loan-approval/monitor/live/", headers={"HX-Request": "true"})
    html = assert_strict_page(fragment, fragment=True)
    assert html.lstrip().startswith('<div id="monitor-live"') and "<html" not in html
    assert client_for(researcher("outsider")).get("/console/loan-approval/monitor/").status_code == 404


def test_the_viewer_has_no_link_to_participants_data(busy_study, as_role):
    html = as_role(busy_study.study, "viewer").get("/console/loan-approval/monitor/").content.decode()
    assert "/console/loan-approval/participants/" not in html and "/console/loan-approval/exports/" not in html


def test_the_numbers_are_the_databases(busy_study):
    m = study_monitor(study=busy_study.study)
    people = list(REAL.filter(study=busy_study.study).values("arm", "status", "step", "last_seen_at"))
    status = Counter(p["status"] for p in people)
    assert m["totals"]["participants"] == len(people)
    assert {k: m["totals"][k] for k in ("active", "completed", "declined", "withdrawn")} == {
        k: status[k] for k in ("active", "completed", "declined", "withdrawn")}
    cutoff = timezone.now() - IDLE_AFTER
    arms = {a["id"]: a for a in m["arms"]}
    assert set(arms) == {"static", "chat", "tutor"}
    for arm_id, arm in arms.items():
        mine = [p for p in people if p["arm"] == arm_id]
        assert arm["participants"] == len(mine)
        assert arm["completed"] == sum(p["status"] == "completed" for p in mine)
        idle = sum(p["status"] == "active" and p["last_seen_at"] < cutoff for p in mine)
        withdrawn = sum(p["status"] == "withdrawn" for p in mine)
        assert arm["dropout_rate"] == pytest.approx((idle + withdrawn) / len(mine))
        calls = LLMCall.objects.filter(turn__conversation__arm=arm_id, turn__conversation__participant__in=REAL)
        assert arm["llm_calls"] == calls.count()
        assert arm["llm_errors"] == calls.filter(status="error").count()
        ttft = list(calls.filter(status="ok").values_list("ttft_ms", flat=True))
        if ttft:
            assert arm["ttft_p50_ms"] == pytest.approx(np.percentile(ttft, 50))
            assert arm["ttft_p95_ms"] == pytest.approx(np.percentile(ttft, 95))
            assert arm["cost_usd"] == pytest.approx(float(sum(c.cost_usd or 0 for c in calls)))
        assert arm["turns"] == Turn.objects.filter(conversation__arm=arm_id, author="participant",
                                                   conversation__participant__in=REAL).count()
    assert arms["chat"]["llm_calls"] > 0 and arms["tutor"]["llm_calls"] == 0
    # where people are: every participant in exactly one row
    assert sum(row["total"] for row in m["steps"]) == len(people)
    active_at = Counter(p["step"] for p in people if p["status"] == "active")
    assert {row["step"]: row["total"] for row in m["steps"] if row["step"] in active_at} == dict(active_at)


def test_the_median_time_per_step_counts_only_participants_who_left_the_step(busy_study):
    m = study_monitor(study=busy_study.study)
    by_step = {row["step"]: row for row in m["step_times"]}
    per_participant = {}
    for v in PageVisit.objects.filter(server_ms__isnull=False, participant__in=REAL).select_related("participant"):
        step = v.page.split(":")[0]
        if v.participant.step == step:
            continue
        per_participant.setdefault(step, {}).setdefault(v.participant_id, 0)
        per_participant[step][v.participant_id] += v.server_ms
    for step, times in per_participant.items():
        assert by_step[step]["n"] == len(times)
        assert by_step[step]["all_s"] == pytest.approx(np.median(list(times.values())) / 1000)


def test_a_participant_not_seen_for_half_an_hour_counts_as_dropped_out(launch):
    version = launch(three_arms)
    study_populate(version, 30, seed=11)
    active = REAL.filter(status="active")
    Participant.objects.update(last_seen_at=timezone.now())
    before = study_monitor(study=version.study)["totals"]["idle"]
    active.update(last_seen_at=timezone.now() - IDLE_AFTER - timedelta(minutes=1))
    after = study_monitor(study=version.study)["totals"]["idle"]
    assert before == 0 and after == active.count() > 0


def test_the_python_percentile_matches_postgresql_percentile_cont():
    values = [5, 1, 9, 3, 7, 2]
    assert percentile(values, 0.5) == pytest.approx(np.percentile(values, 50))
    assert percentile(values, 0.95) == pytest.approx(np.percentile(values, 95))
    assert percentile([], 0.5) is None and percentile([4], 0.95) == 4


def test_an_empty_study_shows_dashes_not_zeros(launch, as_role):
    version = launch(three_arms)
    html = assert_strict_page(as_role(version.study, "viewer").get("/console/loan-approval/monitor/"))
    assert 'data-total="participants">0<' in html
    row = re.search(r'<tr data-arm="chat">.*?</tr>', html, re.S).group(0)
    assert "–" in row  # no completion rate, no TTFT: nothing to divide


def test_pages_serve_cached_numbers_and_a_worker_refreshes_stale_ones(
    busy_study, as_role, monkeypatch, django_capture_on_commit_callbacks, django_assert_num_queries
):
    from django.core.cache import cache

    from console import monitoring, tasks

    queued = []
    monkeypatch.setattr(tasks.monitor_refresh_task, "delay", lambda study_id: queued.append(study_id))
    client = as_role(busy_study.study, "viewer")
    url = "/console/loan-approval/monitor/live/"
    key = monitoring.cache_key(busy_study.study)

    def shown() -> int:
        html = client.get(url).content.decode()
        return int(re.search(r'data-total="participants">(\d+)<', html).group(1))

    def age_by(seconds: float) -> None:
        entry = cache.get(key)
        entry["computed_at"] -= seconds
        cache.set(key, entry)

    before = shown()
    study_populate(busy_study, 5, seed=99)
    assert shown() == before  # fresh numbers are served as they are
    age_by(monitoring.FRESH_S)
    with django_capture_on_commit_callbacks(execute=True):
        assert shown() == before  # stale: still served, and a refresh is queued ...
        assert shown() == before  # ... once
    assert queued == [busy_study.study.pk]
    monitoring.monitor_refresh(study_id=queued[0])  # what the worker does
    assert shown() == before + 5
    age_by(monitoring.STALE_S)  # no worker refreshed them: the request computes
    study_populate(busy_study, 2, seed=98)
    with django_assert_num_queries(3 + 8):
        client.get(url)
    assert shown() == before + 7
