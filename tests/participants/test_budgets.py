"""Budgets: an arm at its cap of completers gets nobody new (exactly the cap, under 300 concurrent arrivals), the
study's cost cap pauses it (new entries see the closed page, people inside finish), a token budget ends the chat."""
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from conftest import chat_only, hex_pid
from explainers.models import LLMCall, Turn
from explainers.selectors import conversation_usage
from participants import services
from participants.bots import AnswerPolicy
from participants.models import Participant, Step
from participants.selectors import study_budget_state
from participants.tasks import budgets_check_task
from studies.models import AuditEvent, StudyVersion
from studies.protocol import Protocol

pytestmark = pytest.mark.django_db

ARRIVALS = 300
CAP = 50


def capped_arms(data, *, cap=CAP, arms=2):
    """`arms` static arms of weight 1, the first with a cap of `cap` completers."""
    template = next(a for a in data["arms"] if a["kind"] == "static")
    template["limits"]["min_seconds"] = 0
    data["arms"] = [{**template, "id": f"static_{i}", "weight": 1} for i in range(arms)]
    data["arms"][0]["budget"] = {"max_completers": cap}
    data["allocation"]["block_size"] = arms


def first_answer(participant: Participant) -> Participant:
    """Answer the participant's first pre-test item from the key: the answer that takes the seat."""
    participant.refresh_from_db()
    protocol = Protocol(participant.version.spec)
    item_id = protocol.phase_item_ids(Step.PRE_TEST, participant.form_order)[0]
    answer = AnswerPolicy("key", protocol, participant.version.target_keys, random.Random(0)).answer(item_id)
    values = answer["answer"] if isinstance(answer["answer"], list) else [answer["answer"]]
    participant, stored = services.response_submit(participant_id=participant.pk, phase=Step.PRE_TEST, item_id=item_id,
                                                   values=values, confidence=answer.get("confidence"))
    assert stored
    return participant


def _arrive_consent_and_answer(slug: str, n: int) -> str:
    try:
        participant = services.participant_enter(slug=slug, pid=hex_pid(f"arrival-{n:06d}"))
        participant = services.participant_consent(participant_id=participant.pk, accept=True)
        return first_answer(participant).arm
    except services.EntryRefused as refused:
        return refused.reason
    except services.SeatsTaken:
        return "seats_taken"
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_300_concurrent_arrivals_against_a_cap_of_50_leave_exactly_50_in_that_arm(launch):
    version = launch(capped_arms)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=30) as pool:
        arms = list(pool.map(lambda n: _arrive_consent_and_answer(version.study.slug, n), range(ARRIVALS)))
    elapsed = time.monotonic() - started
    answered = Participant.objects.filter(version=version, responses__isnull=False).values_list("pk", "arm").distinct()
    counts = Counter(arm for _, arm in answered)
    late = Counter(Participant.objects.filter(version=version, responses__isnull=True).values_list("arm", flat=True))
    print(f"\n{ARRIVALS} concurrent arrivals against a cap of {CAP} in {elapsed:.1f} s: seated {dict(sorted(counts.items()))}, "
          f"allocated at consent but too late for a seat {dict(late)}")
    assert counts == {"static_0": CAP, "static_1": ARRIVALS - CAP - late["static_0"]}
    assert set(late) <= {"static_0"}  # only the capped arm turns anyone away, and only at the first answer
    assert Counter(arms) == counts + Counter({"seats_taken": late["static_0"]})
    state = {a["arm"]: a for a in study_budget_state(version=version)["arms"]}
    assert state["static_0"]["seats_used"] == CAP and state["static_0"]["open"] is False
    assert state["static_1"]["open"] is True and state["static_1"]["max_completers"] is None


def test_when_every_arm_is_full_new_arrivals_see_the_closed_page_and_a_withdrawal_frees_a_seat(launch, enter, step_through):
    version = launch(lambda d: capped_arms(d, cap=2, arms=1))
    late, _ = enter(version, pid="arrived-before-the-cap-0")  # enters while seats are left...
    clients = []
    for n in range(2):
        client, _ = enter(version, pid=f"seated-{n:018d}")
        assert client.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"}).status_code == 303
        assert step_through(client, version).status_code == 303  # the first answer takes the seat
        clients.append(client)
    _, refused = enter(version, pid="too-late-000000000000000")
    assert refused.status_code == 403 and "closed for now" in refused.content.decode()
    assert not Participant.objects.filter(pid_hash=services.identifier_hash(hex_pid("too-late-000000000000000"))).exists()
    answer = late.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"})  # ...and consents after it
    assert answer.status_code == 403 and "closed for now" in answer.content.decode()
    stuck = Participant.objects.get(pid_hash=services.identifier_hash(hex_pid("arrived-before-the-cap-0")))
    assert stuck.step == Step.CONSENT and stuck.arm == "" and stuck.consented_at is None  # nothing stored
    clients[0].post(f"/s/{version.study.slug}/withdraw/")
    assert late.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"}).status_code == 303
    assert Participant.objects.get(pk=stuck.pk).arm == "static_0"


def test_an_active_participant_unseen_for_the_hold_time_gives_the_seat_back(launch, settings):
    settings.SEAT_HOLD_MINUTES = 60
    version = launch(lambda d: capped_arms(d, cap=1, arms=1))

    def arrive(pid: str) -> str:
        try:
            participant = services.participant_enter(slug=version.study.slug, pid=hex_pid(pid))
        except services.EntryRefused as refused:
            return refused.reason
        return first_answer(services.participant_consent(participant_id=participant.pk, accept=True)).arm

    assert arrive("gone-quiet-0000000000000") == "static_0"
    assert arrive("no-seat-left-00000000000") == "full"
    long_ago = timezone.now() - timedelta(minutes=61)
    Participant.objects.filter(arm="static_0").update(last_seen_at=long_ago, allocated_at=long_ago)
    assert [arrive(f"next-{n:020d}") for n in range(3)] == ["static_0", "full", "full"]  # the quiet one's seat, once


def _launch_chat(launch, **budget):
    def edit(data):
        chat_only(data)
        if "study" in budget:
            data["budget"] = budget["study"]
        if "arm" in budget:
            data["arms"][0]["budget"] = budget["arm"]

    return launch(edit)


def _spend(participant: Participant, *, cost: str = "0", tokens: tuple[int, int] = (10, 10)) -> None:
    """Record an LLM call of the participant's conversation (as the worker would) with this cost and tokens."""
    conversation = services.chat_conversation(participant_id=participant.pk)
    turn = Turn.objects.create(conversation=conversation, author=Turn.Author.PARTICIPANT, text="hello",
                               status=Turn.Status.ANSWERED)
    LLMCall.objects.create(
        turn=turn, purpose="reply", attempt=1, status=LLMCall.Status.OK, provider="openai", model="m", request={},
        started_at=timezone.now(), input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=Decimal(cost),
        version_sha256=participant.version_sha256,
    )


def _in_chat(version, enter, step_through, pid):
    client, _ = enter(version, pid=pid)
    step_through(client, version, times=1 + 5)
    participant = Participant.objects.get(token=client.session[f"teachback:participant:{version.study.slug}"])
    assert participant.step == Step.EXPLANATION
    return client, participant


def test_the_study_cost_cap_pauses_the_study_new_entries_see_closed_people_inside_finish(
        launch, fake_llm, enter, step_through, django_assert_num_queries):
    version = _launch_chat(launch, study={"max_cost_usd": 0.05})
    inside, participant = _in_chat(version, enter, step_through, "inside-000000000000000000")
    waiting, _ = enter(version, pid="at-consent-0000000000000")
    _spend(participant, cost="0.03")
    assert budgets_check_task() == 0
    _spend(participant, cost="0.02")
    assert budgets_check_task() == 1 and budgets_check_task() == 0  # paused once
    version.refresh_from_db()
    assert version.state == StudyVersion.State.PAUSED and version.state_reason == "budget"
    event = AuditEvent.objects.get(action="budget_pause")
    assert event.actor == "system" and event.after["cost_usd"] == "0.050000" and event.after["max_cost_usd"] == 0.05
    _, refused = enter(version, pid="newcomer-000000000000000")
    assert refused.status_code == 403 and "closed for now" in refused.content.decode()
    assert inside.post(f"/s/{version.study.slug}/explanation/").status_code == 303  # people inside go on
    assert inside.get(f"/s/{version.study.slug}/post-test/").status_code == 200
    assert waiting.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"}).status_code == 303
    with django_assert_num_queries(4):
        state = study_budget_state(version=version)
    assert state["study"] == {"cost_usd": 0.05, "max_cost_usd": 0.05, "reached": True, "paused_by_budget": True}
    assert state["arms"][0]["cost_usd"] == 0.05


def test_allocation_checks_the_cost_cap_too(launch, fake_llm, enter, step_through):
    version = _launch_chat(launch, study={"max_cost_usd": 0.01})
    _, participant = _in_chat(version, enter, step_through, "spender-00000000000000000")
    _spend(participant, cost="0.02")
    newcomer, _ = enter(version, pid="consents-after-the-cap-0")
    assert newcomer.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"}).status_code == 303
    assert StudyVersion.objects.get(pk=version.pk).state_reason == "budget"  # no beat task ran
    assert AuditEvent.objects.filter(action="budget_pause").count() == 1


def test_an_arm_cost_cap_closes_the_arm(launch, fake_llm, enter, step_through):
    version = _launch_chat(launch, arm={"max_cost_usd": 0.01})
    _, participant = _in_chat(version, enter, step_through, "spender-00000000000000000")
    _spend(participant, cost="0.01")
    _, refused = enter(version, pid="arm-is-closed-0000000000")
    assert refused.status_code == 403 and "closed for now" in refused.content.decode()
    assert StudyVersion.objects.get(pk=version.pk).state == StudyVersion.State.LIVE  # the study itself runs on


def test_the_token_budget_per_participant_ends_the_chat(launch, fake_llm, enter, step_through):
    version = _launch_chat(launch, arm={"max_tokens_per_participant": 100})
    client, participant = _in_chat(version, enter, step_through, "talker-000000000000000000")
    _spend(participant, tokens=(60, 30))
    conversation = Participant.objects.get(pk=participant.pk).conversation
    usage = conversation_usage(conversation=conversation)
    assert usage.tokens_max == 100 and usage.end_reason == ""  # tighter than limits.tokens (20000)
    assert client.post(f"/s/{version.study.slug}/chat/send/", {"text": "one more"}).status_code == 202
    _spend(participant, tokens=(8, 2))
    response = client.post(f"/s/{version.study.slug}/chat/send/", {"text": "and another"})
    assert response.status_code == 409 and response.json()["error"] == "limit"
    assert conversation_usage(conversation=conversation).end_reason == "tokens"
    assert "reached its length limit" in client.get(f"/s/{version.study.slug}/explanation/").content.decode()


def test_the_beat_schedule_runs_the_budget_check_every_15_s_and_the_retention_daily():
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    assert schedule["budgets-check"] == {"task": "participants.tasks.budgets_check_task", "schedule": 15.0}
    assert schedule["pid-hashes-expire"]["task"] == "participants.tasks.pid_hashes_expire_task"
    assert schedule["pid-hashes-expire"]["schedule"] == 86400.0


def test_budget_mistakes_in_the_study_file_are_reported_with_their_lines(study_folder):
    from studies.spec import StudyFileInvalid, study_file_read

    def edit(data):
        data["budget"] = {"max_cost_usd": 0}
        static = next(a for a in data["arms"] if a["kind"] == "static")
        static["budget"] = {"max_completers": 1.5, "max_tokens_per_participant": 100}
        chat = next(a for a in data["arms"] if a["kind"] == "chat")
        chat["budget"] = {"max_completers": 50, "max_cost_usd": 2.5, "max_tokens_per_participant": 30000, "max_complters": 3}

    folder = study_folder(edit)
    lines = (folder / "study.yaml").read_text(encoding="utf-8").splitlines()

    def line_of(text, start=0):
        return next(n for n, t in enumerate(lines, 1) if n > start and text in t)

    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    errors = {(e.path, e.message, e.line) for e in caught.value.errors}
    static_at = line_of("kind: static")
    assert errors == {
        ("budget.max_cost_usd", "must be greater than 0", line_of("max_cost_usd: 0")),
        ("arms[0].budget.max_completers", "must be a whole number", line_of("max_completers: 1.5")),
        ("arms[0].budget.max_tokens_per_participant",
         "static arms call no language model; only chat and agentic arms take this cap",
         line_of("max_tokens_per_participant: 100", static_at)),
        ("arms[1].budget.max_complters", "unknown key; did you mean 'max_completers'?", line_of("max_complters: 3")),
    }
    def fixed(data):
        edit(data)
        data["budget"]["max_cost_usd"] = 40
        data["arms"][0].pop("budget")
        data["arms"][1]["budget"].pop("max_complters")

    spec = study_file_read(study_folder(fixed, name="fixed")).spec
    assert spec["budget"] == {"max_cost_usd": 40}
    assert spec["arms"][1]["budget"] == {"max_completers": 50, "max_cost_usd": 2.5, "max_tokens_per_participant": 30000}
    assert "budget" not in spec["arms"][0]
