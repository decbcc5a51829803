"""The monitor and the participant list read a study in a fixed number of queries: 5 participants with
chats cost the same queries as 50 (the data grows with bench.monitor.study_populate, bulk inserts).

The monitor is pinned both ways it is served (console/monitoring.py): computed in the request (the cache
has no numbers for the study) and from the cache (numbers younger than FRESH_S).
"""
import pytest
from django.core.cache import cache

from bench.monitor import study_populate
from console.monitoring import cache_key
from pages_support import as_role  # noqa: F401

pytestmark = pytest.mark.django_db

# session, user, the gatekeeper's membership; then the page's own reads
MONITOR_COMPUTED = 3 + 8  # study_monitor: version, participants, LLM calls, turns, erased spend, step times, two timelines
MONITOR_SERVED = 3                 # the numbers come from the cache
PARTICIPANT_LIST_QUERIES = 3 + 4   # arms of the version, count, the page of participants, their integrity signals
TRANSCRIPT_QUERIES = 3 + 4 + 3     # participant_transcript (participant, turns, LLM calls, snapshots), participant_activity (3)


def three_arms(data) -> None:
    """Static, chat and tutor arms, no minimum time."""
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("static", "chat", "tutor")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 3


PAGES = [
    ("/console/loan-approval/monitor/", "viewer", MONITOR_COMPUTED),
    ("/console/loan-approval/monitor/live/", "viewer", MONITOR_SERVED),
    ("/console/loan-approval/participants/", "analyst", PARTICIPANT_LIST_QUERIES),
    ("/console/loan-approval/participants/?arm=chat&status=completed&page=1", "analyst", PARTICIPANT_LIST_QUERIES),
]


def test_the_monitor_and_the_participant_list_cost_the_same_queries_for_5_and_50_participants(
    launch, as_role, django_assert_num_queries
):
    version = launch(three_arms)
    clients = {role: as_role(version.study, role) for role in ("viewer", "analyst")}
    for size, turns, seed in ((5, 60, 1), (45, 600, 2)):
        made = study_populate(version, size, turns=turns, seed=seed)
        cache.delete(cache_key(version.study))  # the first request computes, the next one is served
        for url, role, queries in PAGES:
            with django_assert_num_queries(queries, info=url):
                assert clients[role].get(url).status_code == 200
    assert made["llm_calls"] > 50 and made["snapshots"] > 50 and made["page_visits"] > 300


def test_a_transcript_costs_the_same_queries_for_a_short_and_a_long_conversation(
    launch, as_role, django_assert_num_queries
):
    from participants.models import Participant

    version = launch(three_arms)
    client = as_role(version.study, "analyst")
    study_populate(version, 40, turns=400, seed=3)
    talkers = (Participant.objects.filter(study=version.study, conversation__isnull=False)
               .order_by("conversation__id"))
    lengths = {p.pseudonym: p.conversation.turns.count() for p in talkers}
    short, long = min(lengths, key=lengths.get), max(lengths, key=lengths.get)
    assert lengths[long] > lengths[short]
    for pseudonym in (short, long):
        with django_assert_num_queries(TRANSCRIPT_QUERIES):
            assert client.get(f"/console/loan-approval/participants/{pseudonym}/").status_code == 200
