"""The participant list and the transcript: what they show, filters, pagination, and a constant number of queries."""
import secrets

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from analysis.selectors import participant_transcript, snapshot_changes
from api_support import Api, chat_history, make_user, no_throttles, token_for  # noqa: F401 - fixtures
from participants.models import PageVisit, Participant
from participants.pseudonyms import pseudonym as pseudonym_of

pytestmark = pytest.mark.django_db


def arrive(version, n: int, **fields) -> list[Participant]:
    """`n` participants of the version, made directly (the list does not care how they came)."""
    made = []
    for _ in range(n):
        p = Participant.objects.create(token=secrets.token_hex(16), study=version.study, version=version,
                                       version_sha256=version.sha256, arm="static", **fields)
        p.pseudonym = pseudonym_of(p.pk)
        p.save(update_fields=["pseudonym"])
        made.append(p)
    return made


def queries(call) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


def test_the_list_filters_paginates_and_flags(live_study, no_throttles):  # noqa: F811
    owner = make_user("olga", live_study.study, "analyst")
    api = Api(token_for(owner))
    url = f"/api/studies/{live_study.study.slug}/participants/"
    humans = arrive(live_study, 3, step="pre_test")
    bots = arrive(live_study, 2, step="done", status="completed", is_simulated=True)
    PageVisit.objects.create(participant=humans[0], page="pre_test:1", first_shown_at=humans[0].created_at,
                             last_shown_at=humans[0].created_at, shown_count=2, version_sha256=live_study.sha256,
                             client={"paste_count": 3, "hidden_ms": 1200, "visibility_changes": 2})

    status, page = api.get(url)
    assert status == 200 and [p["pseudonym"] for p in page["results"]] == [p.pseudonym for p in humans + bots]
    first = page["results"][0]
    assert first["integrity"] == {"paste_count": 3, "hidden_ms": 1200, "visibility_changes": 2, "pages_reloaded": 1}
    assert page["results"][1]["integrity"] is None and first["version"] == live_study.number
    assert {p["pseudonym"] for p in api.get(url, {"simulated": "true"})[1]["results"]} == {b.pseudonym for b in bots}
    assert len(api.get(url, {"simulated": "false", "step": "pre_test"})[1]["results"]) == 3
    assert len(api.get(url, {"status": "completed", "arm": "static"})[1]["results"]) == 2
    assert api.get(url, {"arm": "nope"})[1]["results"] == []
    assert api.get(url, {"step": "nowhere"})[0] == 400

    seen, next_url = [], url + "?page_size=2"
    while next_url:
        status, page = api.get(next_url.replace("http://testserver", ""))
        seen += [p["pseudonym"] for p in page["results"]]
        next_url = page["next"]
    assert seen == [p.pseudonym for p in humans + bots]
    assert api.get(url, {"cursor": "garbage"})[0] == 404


def test_the_list_costs_the_same_queries_for_5_or_50_participants(live_study, no_throttles):  # noqa: F811
    api = Api(token_for(make_user("olga", live_study.study, "owner")))
    url = f"/api/studies/{live_study.study.slug}/participants/"
    api.get(url)  # the token's last_used_at is written once a minute: not in what is counted
    arrive(live_study, 5)
    few = queries(lambda: api.get(url))
    arrive(live_study, 45)
    many = queries(lambda: api.get(url))
    assert few == many <= 6, (few, many)


def test_the_transcript_shows_turns_calls_and_what_the_learner_model_changed(live_study, no_throttles):  # noqa: F811
    participant = arrive(live_study, 1)[0]
    chat_history(participant, turns=2)
    api = Api(token_for(make_user("ana", live_study.study, "analyst")))
    slug = live_study.study.slug
    status, transcript = api.get(f"/api/studies/{slug}/participants/{participant.pseudonym}/transcript/")
    assert status == 200
    assert transcript["participant"]["pseudonym"] == participant.pseudonym
    assert transcript["initial_snapshot"]["source"] == "pretest"
    turns = transcript["turns"]
    assert [t["author"] for t in turns] == ["explainer", "participant", "explainer", "participant", "explainer"]
    asked = turns[1]
    calls = [(c["attempt"], c["status"], c["http_status"]) for c in asked["llm_calls"]]
    assert calls == [(1, "error", 429), (2, "ok", 200)]
    assert asked["llm_calls"][1]["cost_usd"] == pytest.approx(0.000123) and asked["llm_calls"][1]["ttft_ms"] == 120
    assert asked["snapshot"]["index"] == 1
    assert asked["changes"]["mastery"] == {"debt": {"before": 0.2, "after": 0.5, "delta": 0.3}}
    assert asked["changes"]["next_goal"] is None
    second = turns[3]
    assert second["answers_check"] == asked["id"] and second["check_correct"] is True
    assert second["changes"]["misconceptions_removed"] == ["income matters most"]
    assert second["changes"]["next_goal"] == {"before": {"concept": "debt", "act": "explain"},
                                              "after": {"concept": "income", "act": "check"}}
    assert turns[2]["tool_calls"][0]["name"] == "predict" and turns[2]["act"] == "check"
    assert turns[2]["snapshot"] is None and turns[2]["llm_calls"] == []  # calls and models hang on the asking turn


def test_the_transcript_costs_the_same_queries_for_2_or_20_turns(live_study):
    short, long = arrive(live_study, 2)
    chat_history(short, turns=2)
    chat_history(long, turns=20)
    study = live_study.study
    assert queries(lambda: participant_transcript(study=study, pseudonym=short.pseudonym)) == \
        queries(lambda: participant_transcript(study=study, pseudonym=long.pseudonym)) == 4


def test_a_pseudonym_of_another_study_is_not_found(live_study, no_throttles):  # noqa: F811
    from studies.models import Study

    other = Study.objects.create(slug="other", title="Other")
    api = Api(token_for(make_user("ana", other, "analyst")))
    participant = arrive(live_study, 1)[0]
    assert api.get(f"/api/studies/other/participants/{participant.pseudonym}/transcript/")[0] == 404


def test_snapshot_changes_names_what_moved():
    before = {"concepts": {"a": {"mastery": 0.5}, "b": {"mastery": 0.1}}, "misconceptions": ["x"],
              "next_goal": {"concept": "a", "act": "explain"}}
    after = {"concepts": {"a": {"mastery": 0.5}, "c": {"mastery": 0.4}}, "misconceptions": ["y"],
             "next_goal": {"concept": "a", "act": "explain"}, "why": "because"}
    assert snapshot_changes(before, after) == {
        "mastery": {"b": {"before": 0.1, "after": None, "delta": None},
                    "c": {"before": None, "after": 0.4, "delta": None}},
        "misconceptions_added": ["y"], "misconceptions_removed": ["x"], "next_goal": None, "why": "because",
    }
