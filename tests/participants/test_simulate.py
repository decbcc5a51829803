"""Simulated learners through the real HTTP flow: the tutor's learner model recovers their planted state, and
the command says, per arm, what the LLM arms answered, failing loudly when they answered nothing."""
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from explainers.models import LearnerModelSnapshot, Turn
from participants.models import Participant


def tutor_and_static(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("tutor", "static")]
    for arm in data["arms"]:
        arm["limits"]["min_seconds"] = 0
        arm["limits"].pop("turns", None)
    data["allocation"]["block_size"] = 2


def every_arm(data) -> None:
    """The example's four arms, one block of four, short conversations, one retry of a failed call."""
    for arm in data["arms"]:
        arm["limits"]["min_seconds"] = 0
        if "turns" in arm["limits"]:
            arm["limits"]["turns"] = 4
        if "llm" in arm:
            arm["llm"]["max_retries"] = 1
    data["allocation"]["block_size"] = len(data["arms"])


def arm_block(out: str, arm: str) -> str:
    """The lines the command printed for one arm: its head line and the indented lines under it."""
    match = re.search(rf"^{arm} .*\n(?:  .*\n)*", out, re.M)
    assert match, out
    return match.group(0)


@pytest.mark.django_db(transaction=True)
def test_forty_simulated_learners_and_the_tutors_recovery_beats_chance(launch, live_server, capsys, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(tutor_and_static)
    call_command("study_simulate", version.study.slug, n=40, seed=1, base_url=live_server.url, concurrency=8)
    out = capsys.readouterr().out
    print(out)
    assert "40 completed" in out
    assert Participant.objects.filter(is_simulated=True, status="completed").count() == 40
    tutor = arm_block(out, "tutor")
    assert re.search(r"allocated +20, completed +20", tutor)
    recovered = re.search(r"^  learner-model recovery \(rules, 20 conversations.*: accuracy ([0-9.]+) over (\d+) "
                          r"concepts; balanced accuracy ([0-9.]+) \(chance 0.50\)", tutor, re.M)
    assert recovered, out
    assert int(recovered.group(2)) == 20 * len(version.spec["concepts"])
    assert float(recovered.group(3)) > 0.5  # better than chance, whatever the share of known concepts
    assert "(no learner model in this arm)" in arm_block(out, "static")
    assert "no snapshot after a participant turn" not in out


@pytest.mark.django_db(transaction=True)
def test_against_a_provider_that_always_fails_the_run_fails_and_names_the_llm_arms(
        launch, fake_llm, live_server, celery_worker_factory, capsys):
    celery_worker_factory(concurrency=8)
    version = launch(every_arm)
    fake_llm.set_behaviour(failure_rate=1.0, failures=["500"])
    with pytest.raises(CommandError) as failed:
        call_command("study_simulate", version.study.slug, n=4, seed=2, base_url=live_server.url, concurrency=4,
                     reply_timeout=60)
    out = capsys.readouterr().out
    print(out)
    message = str(failed.value)
    assert re.search(r"arm chat \(chat\): answered 0 of [1-9]\d* participant turns", message), message
    assert re.search(r"arm agentic \(agentic\): answered 0 of [1-9]\d* participant turns", message), message
    assert "opening(s) not written" in message  # the agentic arm speaks first: its opening failed too
    assert "arm static" not in message and "arm tutor" not in message
    assert "FAILED: arm chat" in out and "FAILED: arm agentic" in out
    # the counts are the database's: every participant turn of the LLM arms failed
    for arm in ("chat", "agentic"):
        sent = Turn.objects.filter(conversation__arm=arm, author=Turn.Author.PARTICIPANT)
        assert sent.exists() and not sent.exclude(status=Turn.Status.FAILED).exists()
        assert re.search(rf"turns: {sent.count()} sent; replies 0 answered, {sent.count()} failed", arm_block(out, arm))
    # no recovery figure from the pre-test snapshot alone; the tutor, which needs no LLM, still answered
    agentic = arm_block(out, "agentic")
    assert "accuracy" not in agentic
    if not LearnerModelSnapshot.objects.filter(conversation__arm="agentic", index__gt=0).exists():
        assert "no snapshot after a participant turn" in agentic
    assert re.search(r"replies (\d+) answered, 0 failed", arm_block(out, "tutor"))


@pytest.mark.django_db(transaction=True)
def test_with_a_healthy_provider_the_run_passes_and_prints_every_arms_counts(
        launch, fake_llm, live_server, celery_worker_factory, capsys):
    celery_worker_factory(concurrency=8)
    version = launch(every_arm)
    call_command("study_simulate", version.study.slug, n=4, seed=3, base_url=live_server.url, concurrency=4,
                 reply_timeout=60)
    out = capsys.readouterr().out
    print(out)
    assert "4 completed" in out and "counts from the server's database (4 of 4 participants found" in out
    for arm in ("static", "chat", "agentic", "tutor"):
        assert re.search(r"allocated +1, completed +1", arm_block(out, arm)), arm
    for arm in ("chat", "agentic", "tutor"):
        sent = Turn.objects.filter(conversation__arm=arm, author=Turn.Author.PARTICIPANT).count()
        assert sent > 0
        assert f"turns: {sent} sent; replies {sent} answered, 0 failed, 0 cut off, 0 unanswered" in arm_block(out, arm)
    agentic = arm_block(out, "agentic")
    assert "openings 1 written, 0 failed" in agentic
    for block in (agentic, arm_block(out, "chat")):
        assert "replies from the scripted demo model" in block
    llm_snapshots = LearnerModelSnapshot.objects.filter(conversation__arm="agentic", source="llm").count()
    assert llm_snapshots > 0 and f"llm {llm_snapshots}" in agentic
    tools = sum(len(t) for t in Turn.objects.filter(conversation__arm="agentic").values_list("tool_calls", flat=True))
    assert f"target-tool calls: {tools};" in agentic
    assert re.search(r"learner-model recovery \(llm, 1 conversation;", agentic)
    assert "(no learner model in this arm)" in arm_block(out, "chat")
    assert "FAILED" not in out
