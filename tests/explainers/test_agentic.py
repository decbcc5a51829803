"""The agentic arm: an LLM explainer that keeps a learner model, opens the conversation, checks understanding
and asks the target through tools, with the fake provider scripted as a good explainer."""
import json
import random
import time

import pytest

from agentic_support import agentic_arms, answer_last_check, conversation_calls, converse, wrapup
from conftest import hex_pid
from explainers import services
from explainers.arms.agentic import OPENING_CUE, TOOL_ROUNDS_MAX
from explainers.models import Conversation, LearnerModelSnapshot, LLMCall, PostTestPrediction, Turn
from explainers.tasks import reply_generate_task
from explainers.tools import held_out_inputs
from participants.bots import bot_run
from participants.models import Participant
from participants.services import chat_conversation, chat_send, participant_consent, participant_enter, response_submit
from participants.simulate import Persona
from studies.protocol import Protocol
from studies.scoring import item_key
from studies.selectors import entry_link_token

TAUGHT = ("explain", "example", "analogy", "correction")


def full_only(data) -> None:
    agentic_arms(data, arms={"agentic": {}})


@pytest.fixture
def agentic_study(launch, fake_llm):
    return launch(full_only)


# --------------------------------------------------------------------------- a simulated learner, end to end


class Learner(Persona):
    """A persona who, on a test, never guesses right what they do not know (so the pre-test shows it)."""

    def answer(self, item_id: str) -> dict:
        data = super().answer(item_id)
        item = self.protocol.items[item_id]
        if not self._knows(item.get("concept")) and item.get("options"):
            key = item_key(item, self.target_keys)
            wrong = [o["id"] for o in item["options"] if o["id"] != key and o["id"] not in (key or [])]
            data["answer"] = [wrong[0]] if item["kind"] == "multi_choice" else wrong[0]
        return data


@pytest.mark.django_db(transaction=True)
def test_a_learner_who_does_not_know_a_concept_is_taught_and_checked_on_it(
        launch, fake_llm, live_server, celery_worker_factory):
    celery_worker_factory(concurrency=8)
    version = launch(full_only)
    protocol = Protocol(version.spec)
    unknown = "all_three"  # measured twice in either pre-test form: the weakest concept after the pre-test
    knows = {c["id"]: c["id"] != unknown for c in version.spec["concepts"]}
    learner = Learner(protocol=protocol, target_keys=version.target_keys, rng=random.Random(3), knows=knows,
                      knows_after=dict(knows), slip=0.0)
    token = entry_link_token(slug=version.study.slug, kind="simulated")
    result = bot_run(base_url=live_server.url, slug=version.study.slug, policy=learner, link_token=token,
                     pid="agentic-learner-000000001")
    assert result.completed, result.error

    conversation = Participant.objects.get().conversation
    turns = list(conversation.turns.order_by("id"))
    explainer = [t for t in turns if t.author == Turn.Author.EXPLAINER]
    mine = [t for t in turns if t.author == Turn.Author.PARTICIPANT]
    assert explainer[0].reply_to is None and turns[0] == explainer[0]  # the explainer opened
    assert explainer[0].act in TAUGHT and explainer[0].concept == unknown  # with the weakest concept
    assert unknown in learner.addressed
    checks = [t for t in explainer if t.act == "check" and t.concept == unknown]
    assert checks and all(t.check_item in version.spec["instruments"]["practice"] for t in checks)
    answered = [t for t in mine if t.answers_check_id in {c.id for c in checks}]
    assert answered and all(t.check_correct is not None for t in answered)
    assert all(t.status == Turn.Status.ANSWERED for t in mine)
    assert all(t.scripted and t.text.startswith("(Scripted demo reply.)") for t in explainer)
    snapshots = list(conversation.snapshots.order_by("index"))
    assert len(snapshots) == 1 + len(mine)  # one from the pre-test, then one per participant turn
    assert {s.source for s in snapshots[1:]} == {"llm"}
    assert [s.turn_id for s in snapshots[1:]] == [t.id for t in mine]
    purposes = set(LLMCall.objects.filter(turn__conversation=conversation).values_list("purpose", flat=True))
    assert {"learner_update", "reply"} <= purposes
    # the end of the step: the worker replaces the rule-based predictions and note with the LLM's
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and conversation.predictions.exclude(source="llm").exists():
        time.sleep(0.2)
    assert conversation.predictions.count() == 5 and not conversation.predictions.exclude(source="llm").exists()
    conversation.refresh_from_db()
    assert conversation.meeting_note.startswith("(Scripted demo note.)")


# --------------------------------------------------------------------------- the opening


@pytest.mark.django_db(transaction=True)
def test_the_opening_is_written_once_even_when_its_task_is_delivered_three_times(
        launch, fake_llm, celery_worker_factory):
    version = launch(full_only)
    participant = participant_enter(slug=version.study.slug, pid=hex_pid("opening-twice-0000000001"))
    participant = participant_consent(participant_id=participant.pk, accept=True)
    protocol = Protocol(version.spec)
    for item_id in protocol.phase_item_ids("pre_test", participant.form_order):
        item = protocol.items[item_id]
        value = (item.get("options") or [{"id": "0.5"}])[0]["id"]
        response_submit(participant_id=participant.pk, phase="pre_test", item_id=item_id, values=[value],
                        confidence="50" if item.get("confidence") else None)
    fake_llm.set_behaviour(latency_s=0.5)  # the duplicates arrive while the first call is in flight
    conversation = chat_conversation(participant_id=participant.pk)  # queues the opening on commit
    opening = conversation.turns.get()
    assert opening.author == Turn.Author.EXPLAINER and opening.status == Turn.Status.PENDING and opening.text == ""
    with pytest.raises(services.TurnInFlight):  # nothing is sent before the explainer has spoken
        chat_send(participant_id=participant.pk, text="hello?")
    reply_generate_task.delay(opening.id)
    reply_generate_task.delay(opening.id)
    worker = celery_worker_factory(concurrency=8)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "'answered'" not in worker.log():
        time.sleep(0.1)
    # one delivery wrote the opening; the two others found its lease held and were put off, and when they
    # come back (or any later delivery does) they find it written and add nothing
    time.sleep(0.3)
    log = worker.log()
    assert log.count("'answered'") == 1 and log.count("retry: Retry in") + log.count("'skipped'") == 2, log[-3000:]
    assert services.reply_generate(turn_id=opening.id).state == "skipped"
    opening.refresh_from_db()
    assert opening.status == Turn.Status.COMPLETE and opening.text and opening.act
    assert conversation.turns.count() == 1
    calls = LLMCall.objects.filter(turn=opening)
    assert calls.count() == 1 and calls.get().status == LLMCall.Status.OK
    asked = [r for r in fake_llm.requests() if OPENING_CUE in json.dumps(r["body"].get("messages"), ensure_ascii=False)]
    assert len(asked) == 1


# --------------------------------------------------------------------------- in-process conversations


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _dicts(value):
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v)


@pytest.mark.django_db
def test_no_test_input_reaches_the_provider_and_a_tool_call_on_one_is_refused(agentic_study, fake_llm, in_process):
    version = agentic_study
    held_out = held_out_inputs(version.spec)
    post_input = next(i["input"] for i in version.spec["items"] if i["id"] == "post_a4")
    assert post_input in held_out
    # the model asks the target about a post-test case (every tool round of that turn), then about a case of its own
    fake_llm.match("which applicants", {"tool_calls": [{"name": "predict", "arguments": {"input": post_input}}]}, times=None)
    own_case = {**post_input, "income": 52}
    fake_llm.match("for my case", {"tool_calls": [{"name": "predict", "arguments": {"input": own_case}}]}, times=None)
    messages = ["which applicants get approved?", "what would it say for my case?"]
    messages += [answer_last_check(False), "ok", answer_last_check(True)] * 3
    conversation = converse(version, "agentic", messages)
    services.conversation_finish(conversation=conversation, post_items=[
        i for i in version.spec["items"] if i["id"] in version.spec["instruments"]["post_test"]["forms"]["B"]])
    wrapup(conversation)

    record = [call for t in conversation.turns.all() for call in t.tool_calls]
    refused = [c for c in record if c["refused"]]
    assert len(refused) == TOOL_ROUNDS_MAX and all(c["arguments"]["input"] == post_input for c in refused)
    answered = [c for c in record if not c["refused"]]
    assert answered and all(c["result"]["output"] in ("yes", "no") for c in answered)  # the target's real output
    calls = conversation_calls(conversation)
    assert {c.purpose for c in calls} == {"learner_update", "reply", "posttest_prediction", "meeting_note"}
    told = [m for c in calls for m in c.request["messages"] if m["role"] == "tool" and "refused" in m["content"]]
    assert told  # the model was told that its call was refused (and, below, never shown the input again)
    forms = []
    for case in held_out:
        forms += [json.dumps(case), json.dumps(case, separators=(",", ":")), json.dumps(case, sort_keys=True),
                  str(case), ", ".join(f"{k}={v}" for k, v in case.items()), ", ".join(f"{k}: {v}" for k, v in case.items())]
    for call in calls:
        for text in _strings(call.request):
            assert not [f for f in forms if f in text], call.purpose
        for found in _dicts(call.request):
            assert found not in held_out, call.purpose


@pytest.mark.django_db
def test_an_invalid_learner_model_update_falls_back_to_the_rules_and_says_why(agentic_study, fake_llm, in_process):
    version = agentic_study
    broken = {"schema_version": 1, "concepts": {}, "misconceptions": [], "background": "", "why": "x",
              "next_goal": {"concept": None, "act": "explain"}}
    fake_llm.match("please go on", {"json": broken}, times=1)  # the update call comes first
    fake_llm.match("fail the update", {"fail": "500"}, times=1)
    conversation = converse(version, "agentic", ["please go on", "fail the update", "ok"])
    snapshots = list(conversation.snapshots.order_by("index"))
    assert [s.source for s in snapshots] == ["pretest", "rules", "rules", "llm"]
    assert "could not be used (its concepts are not the study's)" in snapshots[1].state["why"]
    assert "could not be used (the call did not succeed (server))" in snapshots[2].state["why"]
    first = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("id")[0]
    taught = snapshots[1].state["concepts"][first.concept]["mastery"]
    assert taught > snapshots[0].state["concepts"][first.concept]["mastery"]  # the rule's learning step
    assert all(t.status == Turn.Status.ANSWERED for t in conversation.turns.filter(author=Turn.Author.PARTICIPANT))
    updates = LLMCall.objects.filter(turn__conversation=conversation, purpose="learner_update").order_by("id")
    assert [u.status for u in updates] == ["ok", "error", "ok"]  # one attempt each: no retry keeps anyone waiting


@pytest.mark.django_db
def test_a_wrong_answer_to_a_check_is_corrected_and_lowers_mastery(agentic_study, fake_llm, in_process):
    version = agentic_study
    conversation = converse(version, "agentic", [answer_last_check(False)] * 8)
    answer = conversation.turns.filter(check_correct=False).order_by("id").first()
    check, correction = answer.answers_check, answer.reply
    assert check.act == "check" and check.concept and check.check_item in version.spec["instruments"]["practice"]
    assert correction.act == "correction" and correction.concept == check.concept
    after = answer.snapshots.get()
    before = conversation.snapshots.get(index=after.index - 1)
    assert after.state["concepts"][check.concept]["mastery"] < before.state["concepts"][check.concept]["mastery"]
    update = LLMCall.objects.filter(turn=answer, purpose="learner_update").get()
    assert update.request["response_schema"]["name"] == "learner_model"
    # a correction shows the concept on a case the target decides: a tool round, then the reply
    tool_round, reply = LLMCall.objects.filter(turn=answer, purpose="reply").order_by("attempt")
    assert tool_round.response["tool_results"] and answer.reply.tool_calls
    system = reply.request["messages"][0]["content"]
    assert '"act": "correction"' in system and '"previous_answer": "wrong"' in system
    assert json.dumps(after.state["concepts"][check.concept]["mastery"]) in system  # the updated model is shown


@pytest.mark.django_db
def test_the_conversation_ends_with_a_summary_once_everything_is_mastered(agentic_study, fake_llm, in_process):
    version = agentic_study
    conversation = converse(version, "agentic", [answer_last_check(True)] * 30, right=True)
    last = conversation.turns.order_by("-id").first()
    assert last.act == "summary" and conversation.end_reason == Conversation.EndReason.COMPLETE
    assert LearnerModelSnapshot.objects.filter(conversation=conversation).count() == 1 + conversation.turns.filter(
        author=Turn.Author.PARTICIPANT).count()
    services.conversation_finish(conversation=conversation,
                                 post_items=[i for i in version.spec["items"] if i["id"] == "post_a1"])
    assert PostTestPrediction.objects.get(conversation=conversation).source == "rules"  # until the worker's call
    wrapup(conversation)
    assert PostTestPrediction.objects.get(conversation=conversation).source == "llm"
