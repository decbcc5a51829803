"""Bots go through the real HTTP flow of a running server and end on the completion redirect; the run reports,
per arm, what the server did, and fails when an LLM arm left turns unanswered or an arm got nobody."""
import re

import pytest
from django.core.management import call_command

from conftest import static_only
from participants.models import Participant, Response


@pytest.mark.django_db(transaction=True)
def test_fifty_bots_complete_through_http(launch, live_server, capsys):
    version = launch(static_only)
    call_command("study_bots", version.study.slug, n=50, base_url=live_server.url, policy="accuracy:0.7",
                 concurrency=5, seed=1)
    out = capsys.readouterr().out
    print(out)
    assert "50 completion redirects (50 with the completion code)" in out
    assert Participant.objects.filter(status="completed", is_simulated=True).count() == 50
    pre_items = len(version.spec["instruments"]["pre_test"]["forms"]["A"])
    assert Response.objects.filter(phase="pre_test").count() == 50 * pre_items


@pytest.mark.django_db(transaction=True)
def test_a_bot_run_that_cannot_complete_fails_loudly(launch, live_server):
    version = launch(static_only)
    from studies.services import study_state_set

    study_state_set(slug=version.study.slug, state="paused")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not every bot completed"):
        call_command("study_bots", version.study.slug, n=2, base_url=live_server.url)


# --------------------------------------------------------------------------- what a run reports, and when it fails


def _arm(arm_id, kind, allocated=1, sent=0, answered=0, failed=0, openings=None, weight=1):
    from collections import Counter

    return {"id": arm_id, "kind": kind, "weight": weight, "allocated": allocated, "completed": allocated,
            "sent": sent, "answered": answered, "failed": failed, "cut_off": 0, "pending": sent - answered - failed,
            "openings": Counter(openings or {}), "snapshots": Counter(), "tool_calls": 0, "replies": answered,
            "scripted": 0}


def test_a_run_fails_when_an_llm_arm_answers_fewer_replies_than_turns_or_an_opening_is_missing():
    from participants.outcomes import run_problems

    arms = [_arm("static", "static"), _arm("chat", "chat", sent=3, answered=2, failed=1),
            _arm("agentic", "agentic", sent=2, answered=2, openings={"failed": 1}), _arm("tutor", "tutor", sent=4)]
    problems = run_problems(arms=arms, participants=4)
    assert len(problems) == 2
    assert problems[0].startswith("arm chat (chat): answered 2 of 3 participant turns (1 failed")
    assert problems[1] == "arm agentic (agentic): 1 opening(s) not written"
    # the tutor needs no LLM: its counts are reported, not judged; an LLM arm that answered all is fine
    assert run_problems(arms=[_arm("chat", "chat", sent=3, answered=3), _arm("tutor", "tutor", sent=4)],
                        participants=2) == []


def test_a_run_fails_when_a_designed_arm_got_nobody_once_there_were_as_many_participants_as_arms():
    from participants.outcomes import run_problems

    arms = [_arm("static", "static", allocated=3), _arm("chat", "chat", allocated=0), _arm("tutor", "tutor")]
    assert run_problems(arms=arms, participants=4) == [
        "arm chat (chat) got nobody of 4 participants although the design gives it weight 1"]
    assert run_problems(arms=arms, participants=2) == []  # fewer participants than arms: nobody is owed one


def test_a_page_shows_the_chat_outcome_a_remote_run_can_count():
    from participants.bots import page_parse

    page = page_parse(
        '<body data-page="explanation"><section class="chat" data-chat data-pending="">'
        '<p class="notice" data-scripted>Demo</p><ol>'
        '<li class="turn explainer" data-reply-to="1" data-status="failed" data-opening></li>'
        '<li class="turn participant" data-turn="2" data-status="answered">q</li>'
        '<li class="turn explainer" data-turn="3" data-status="complete">a</li>'
        '<li class="turn participant" data-turn="4" data-status="failed">q</li>'
        '<li class="turn explainer" data-reply-to="4" data-status="failed" data-cut-off data-kept-chars="5">a bit</li>'
        '<li class="turn participant" data-turn="5" data-status="failed">q</li>'
        '<li class="turn participant" data-turn="6" data-status="pending">q</li>'
        '</ol></section></body>')
    chat = page.chat
    assert (chat.sent, chat.answered, chat.failed, chat.cut_off, chat.pending, chat.replies) == (4, 1, 1, 1, 1, 1)
    assert chat.scripted and chat.opening_failed
    assert page_parse('<body data-page="explanation"><article>static</article></body>').chat is None


@pytest.mark.django_db
def test_a_run_against_another_database_says_so_and_judges_what_the_pages_showed(live_study):
    from participants.bots import BotResult, ChatSeen
    from participants.outcomes import run_report

    results = [BotResult(completed=True, pid="bot-a", chat=ChatSeen(sent=2, answered=1, failed=1)),
               BotResult(completed=True, pid="bot-b")]
    report = run_report(version=live_study, pids=["bot-a", "bot-b"], results=results, settle_s=0)
    assert report["source"] == "pages" and report["arms"] == []
    assert "not in this database" in report["lines"][0]
    assert "turns: 2 sent; replies 1 answered, 1 failed" in report["lines"][2]
    assert report["problems"] == ["a chat arm answered 1 of the 2 turns the bots sent (the pages do not name "
                                  "the arm: run against the server's database to see which)"]


def chat_and_static(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("static", "chat")]
    for arm in data["arms"]:
        arm["limits"]["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


@pytest.mark.django_db(transaction=True)
def test_bots_chat_in_the_chat_arm_and_the_report_counts_its_replies(
        launch, fake_llm, live_server, celery_worker_factory, capsys):
    celery_worker_factory(concurrency=8)
    version = launch(chat_and_static)
    call_command("study_bots", version.study.slug, n=4, base_url=live_server.url, concurrency=4, seed=1,
                 chat_turns=2, reply_timeout=60)
    out = capsys.readouterr().out
    print(out)
    from explainers.models import Turn

    sent = Turn.objects.filter(author=Turn.Author.PARTICIPANT, conversation__arm="chat")
    assert sent.count() == 2 * 2 and not sent.exclude(status=Turn.Status.ANSWERED).exists()
    assert "counts from the server's database (4 of 4 participants found)" in out
    assert re.search(r"^chat +chat +allocated +2, completed +2\n  turns: 4 sent; replies 4 answered, 0 failed, "
                     r"0 cut off, 0 unanswered\n", out, re.M), out
    assert "replies from the scripted demo model" in out
    assert re.search(r"^static +static +allocated +2, completed +2$", out, re.M)


def test_a_named_arm_is_owed_somebody_only_once_the_allocation_guarantees_it():
    from participants.outcomes import allocation_owes_every_arm

    arms = [{"id": a, "weight": 1} for a in "abcd"]
    # blocks of 8 over 4 arms: a run of 4 can miss an arm by chance, a full block cannot
    assert allocation_owes_every_arm(allocation={"method": "blocked", "block_size": 8, "when": "consent"}, arms=arms) == 8
    # stratified after the pre-test: a block per score band and form order
    assert allocation_owes_every_arm(
        allocation={"method": "blocked", "block_size": 4, "when": "after_pretest", "strata": [0.5]}, arms=arms) == 16
    # simple randomisation 3:1: enough draws that missing the light arm has a chance below 1 in 1,000
    owed = allocation_owes_every_arm(allocation={"method": "simple"}, arms=[{"id": "a", "weight": 3}, {"id": "b", "weight": 1}])
    assert 0.75 ** owed < 1e-3 <= 0.75 ** (owed - 1)
