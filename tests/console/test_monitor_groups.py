"""The monitor keeps bots, pilots and real participants apart everywhere: the tiles, the arm table, where
people are and the median times are over real participants; bots and pilots get sections of their own; and
its counts are the participant list's (filtered to the same people)."""
import re
from collections import Counter

import numpy as np
import pytest

from analysis.monitor import BOT, PILOT, REAL, study_monitor
from bench.monitor import study_populate
from explainers.models import LLMCall
from pages_support import as_role, assert_strict_page  # noqa: F401
from participants.models import PageVisit, Participant
from test_monitor_queries import three_arms

pytestmark = pytest.mark.django_db


def _group(p) -> str:
    return BOT if p.is_simulated else PILOT if p.is_pilot else REAL


@pytest.fixture
def mixed_study(launch):
    """60 participants with chats, about one in ten a bot; every fourth of the others is made a pilot."""
    version = launch(three_arms)
    study_populate(version, 60, turns=500, seed=21)
    humans = list(Participant.objects.filter(study=version.study, is_simulated=False).order_by("id"))
    Participant.objects.filter(pk__in=[p.pk for p in humans[::4]]).update(is_pilot=True)
    people = list(Participant.objects.filter(study=version.study))
    assert {_group(p) for p in people} == {REAL, BOT, PILOT}
    return version


def test_the_arm_table_tiles_and_steps_count_real_participants_and_bots_and_pilots_apart(mixed_study):
    m = study_monitor(study=mixed_study.study)
    people = list(Participant.objects.filter(study=mixed_study.study))
    sections = {REAL: m, **{s["group"]: s for s in m["apart"]}}
    assert [s["group"] for s in m["apart"]] == [BOT, PILOT]
    for group, section in sections.items():
        mine = [p for p in people if _group(p) == group]
        totals = section["totals"]
        status = Counter(p.status for p in mine)
        assert totals["participants"] == len(mine)
        assert {k: totals[k] for k in ("active", "completed", "declined", "withdrawn")} == {
            k: status[k] for k in ("active", "completed", "declined", "withdrawn")}, group
        for arm in section["arms"]:
            in_arm = [p for p in mine if p.arm == arm["id"]]
            assert (arm["participants"], arm["completed"]) == (
                len(in_arm), sum(p.status == "completed" for p in in_arm)), (group, arm["id"])
            calls = LLMCall.objects.filter(turn__conversation__participant__in=in_arm)
            assert arm["llm_calls"] == calls.count()
            ttft = list(calls.filter(status="ok").values_list("ttft_ms", flat=True))
            if ttft:
                assert arm["ttft_p50_ms"] == pytest.approx(np.percentile(ttft, 50))
        assert sum(row["total"] for row in section["steps"]) == len(mine)
    # the page's own keys are the real participants' section
    assert m["totals"]["simulated"] == sum(p.is_simulated for p in people)
    assert m["totals"]["pilot"] == sum(p.is_pilot for p in people)
    assert m["totals"]["participants"] + m["totals"]["simulated"] + m["totals"]["pilot"] == len(people)
    assert sum(s["totals"]["llm_calls"] for s in sections.values()) == LLMCall.objects.count()


def test_median_times_per_step_leave_bots_and_pilots_out(mixed_study):
    m = study_monitor(study=mixed_study.study)
    sections = {REAL: m, **{s["group"]: s for s in m["apart"]}}
    per = {}
    for v in PageVisit.objects.filter(server_ms__isnull=False).select_related("participant"):
        step = v.page.split(":")[0]
        if v.participant.step == step:
            continue
        key = (_group(v.participant), step)
        per.setdefault(key, Counter())[v.participant_id] += v.server_ms
    assert {g for g, _ in per} == {REAL, BOT, PILOT}
    for (group, step), times in per.items():
        row = next(r for r in sections[group]["step_times"] if r["step"] == step)
        assert row["n"] == len(times), (group, step)
        assert row["all_s"] == pytest.approx(np.median(list(times.values())) / 1000), (group, step)


def test_before_allocation_counts_only_people_in_progress_who_have_no_arm_yet(mixed_study):
    """The bug: it counted every participant without an arm, so those who declined consent and those
    who withdrew before allocation (and bots and pilots) showed as "before allocation" under "in progress"."""
    m = study_monitor(study=mixed_study.study)
    no_arm = Participant.objects.filter(study=mixed_study.study, arm="")
    assert no_arm.exclude(status="active").exists()  # declined and withdrawn before allocation exist here
    real = no_arm.filter(is_simulated=False, is_pilot=False)
    assert m["totals"]["unallocated"] == real.filter(status="active").count()
    assert m["totals"]["unallocated"] <= m["totals"]["active"]
    bots = next(s for s in m["apart"] if s["group"] == BOT)
    assert bots["totals"]["unallocated"] == no_arm.filter(is_simulated=True, status="active").count()


def _listed(client, query: str) -> int:
    html = client.get(f"/console/loan-approval/participants/?{query}").content.decode()
    return int(re.search(r"<p class=\"meta\">(\d+) participants?", html).group(1))


def test_the_monitors_counts_are_the_participant_lists(mixed_study, as_role):
    client = as_role(mixed_study.study, "analyst")
    m = study_monitor(study=mixed_study.study)
    sections = {REAL: m, **{s["group"]: s for s in m["apart"]}}
    for group, section in sections.items():
        totals = section["totals"]
        assert _listed(client, f"group={group}") == totals["participants"]
        for status in ("active", "completed", "declined", "withdrawn"):
            assert _listed(client, f"group={group}&status={status}") == totals[status], (group, status)
        for arm in section["arms"]:
            assert _listed(client, f"group={group}&arm={arm['id']}") == arm["participants"], (group, arm["id"])
            assert _listed(client, f"group={group}&arm={arm['id']}&status=completed") == arm["completed"]
    assert _listed(client, "") == sum(s["totals"]["participants"] for s in sections.values())


def test_the_page_shows_real_numbers_in_the_tiles_and_bots_and_pilots_in_their_own_sections(mixed_study, as_role):
    client = as_role(mixed_study.study, "analyst")
    html = assert_strict_page(client.get("/console/loan-approval/monitor/"))
    people = Participant.objects.filter(study=mixed_study.study)
    real = people.filter(is_simulated=False, is_pilot=False)
    assert f'data-total="participants">{real.count()}<' in html
    assert f'data-total="simulated">{people.filter(is_simulated=True).count()}<' in html
    arm_rows = re.findall(r'<tr data-arm="(\w+)">\s*<th[^>]*>.*?</th>\s*<td data-allocated>(\d+)</td>', html, re.S)
    assert {arm: int(n) for arm, n in arm_rows} == {
        arm: real.filter(arm=arm).count() for arm in ("static", "chat", "tutor")}
    for group, flags in ((BOT, {"is_simulated": True}), (PILOT, {"is_pilot": True})):
        section = re.search(rf'<section class="apart" data-group="{group}">(.*?)</section>', html, re.S).group(1)
        assert f'data-group-total="participants">{people.filter(**flags).count()}<' in section
        assert f'href="/console/loan-approval/participants/?group={group}"' in section
    viewer = as_role(mixed_study.study, "viewer").get("/console/loan-approval/monitor/").content.decode()
    assert "participants/?group=" not in viewer  # a viewer has no participant list to link to
