"""A chat turn gets exactly one reply whatever happens to the worker, the broker or the provider.

Every test runs a REAL Celery worker process (`celery_worker_factory`) on the test database and a
flushed Redis broker database, with the fake provider on loopback. Figures are printed (run with -s).
"""
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from explainers.fakellm import last_user_text
from explainers.models import LLMCall, Turn
from explainers.providers import FINAL_KINDS
from explainers.tasks import reply_generate_task
from participants.models import Participant
from participants.services import chat_send
from conftest import chat_only, chat_participants, wait_until
from conftest import turns_settled as settled

pytestmark = pytest.mark.django_db(transaction=True)



# --------------------------------------------------------------------------- helpers


def send_all(participants, tag: str) -> list[Turn]:
    """One chat message per participant (each enqueues its reply task on commit)."""
    return [chat_send(participant_id=p.pk, text=f"{tag} question from participant number {i}?")
            for i, p in enumerate(participants)]


def provider_calls_by_text(fake) -> Counter:
    """How many requests reached the fake provider for each participant message."""
    return Counter(last_user_text(r["body"].get("messages")) for r in fake.requests() if r.get("body"))


def assert_exactly_one_reply(turn: Turn) -> Turn:
    turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED, (turn.id, turn.status, turn.error_kind)
    assert Turn.objects.filter(reply_to=turn).count() == 1
    assert LLMCall.objects.filter(turn=turn, purpose="reply", status=LLMCall.Status.OK).count() == 1
    return turn


def broker() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


@pytest.fixture(autouse=True)
def _broker_is_ours():
    """Fail fast, and say why, when another process consumes from this run's Redis database: its
    worker would take our messages (and look our turn ids up in its own database)."""
    # a consumer is blocked in BRPOP nearly all the time (flag "b"), re-issued every second; a connection
    # whose last BRPOP ended earlier is an idle pooled one, e.g. the reply queue of an earlier control.ping
    foreign = [c for c in broker().client_list() if c.get("db") == str(broker().connection_pool.connection_kwargs.get("db", 0))
               and c.get("cmd") in ("brpop", "blpop", "bzpopmin") and ("b" in c.get("flags", "") or int(c.get("idle", 0)) <= 1)]
    assert not foreign, f"another consumer is on the broker database of this run: {foreign}; use another REDIS_URL db"
    # a worker holds up to WORKER_DB_SLOTS connections; when other processes have taken nearly all of
    # PostgreSQL's, the worker's tasks die on "too many clients" and the timings below mean nothing
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity")
        free = cursor.fetchone()[0]
    connection.close()
    assert free >= settings.WORKER_DB_SLOTS + 5, f"only {free} PostgreSQL connections free (other processes hold the rest)"


# --------------------------------------------------------------------------- 1. kill -9 mid-reply


def test_kill_9_mid_reply_every_turn_gets_exactly_one_reply(chat_study, fake_llm, celery_worker_factory):
    fake_llm.set_behaviour(latency_s=2, ttft_s=0.2)
    participants = chat_participants(chat_study, 20, "KILL")
    first = celery_worker_factory(concurrency=50)
    turns = send_all(participants, "kill")
    assert wait_until(lambda: fake_llm.stats()["in_flight"] > 0, 20, 0.05), "no provider call started"
    calls_started = time.monotonic()
    time.sleep(max(0.0, calls_started + 1.0 - time.monotonic()))
    in_flight_at_kill = fake_llm.stats()["in_flight"]
    assert in_flight_at_kill > 0
    killed_at = timezone.now()
    first.kill()
    kills = 1
    assert Turn.objects.filter(pk__in=[t.id for t in turns], status=Turn.Status.PENDING).exists()

    # The broker gives the killed worker's messages back only after its visibility timeout (an hour): the
    # sweeper finds the turns whose calls are still `started` once their leases expire.
    celery_worker_factory(concurrency=50, beat=True, TURN_SWEEP_EVERY_S=5)
    assert wait_until(lambda: settled(turns), 90, 0.5), (
        "not every turn answered within 90 s of the kill: "
        f"{list(Turn.objects.filter(pk__in=[t.id for t in turns]).values_list('id', 'status'))}"
    )

    calls = provider_calls_by_text(fake_llm)
    extra = 0
    for turn in turns:
        assert_exactly_one_reply(turn)
        made = calls[turn.text]
        assert made >= 1
        assert made - 1 <= kills, (turn.id, made)  # per turn: provider calls - 1 <= number of kills
        extra += made - 1
    assert extra <= kills * in_flight_at_kill
    last_reply = Turn.objects.filter(reply_to__in=turns).order_by("-completed_at").first()
    recovery_s = (last_reply.completed_at - killed_at).total_seconds()
    print(f"\n[kill -9] in flight at the kill: {in_flight_at_kill}; extra provider calls: {extra} "
          f"(bound: {kills} kill x {in_flight_at_kill} in flight, and <= {kills} per turn); "
          f"worst recovery (kill -> last reply): {recovery_s:.1f} s")


def test_a_silent_90_s_call_is_answered_once_and_re_answered_once_after_a_kill(launch, fake_llm, celery_worker_factory):
    """A provider that takes 90 s to its first token, with `timeout_s: 120`: the call is not cut, not
    redelivered and not made twice (the broker's visibility timeout is longer than any call; the lease is
    renewed by the heartbeat while the socket is silent). A worker killed in the middle of that wait is
    replaced: its lease expires, the sweeper queues the turn again, and it is answered once, within
    30 s + the call's time of the kill."""
    version = launch(lambda d: chat_only(d, timeout_s=120))
    fake_llm.set_behaviour(ttft_s=90, latency_s=90.5)
    quiet, killed = chat_participants(version, 2, "SLOW")
    first = celery_worker_factory(concurrency=8, beat=True, TURN_SWEEP_EVERY_S=5)
    turn = chat_send(participant_id=quiet.pk, text="slow: a question for a model that thinks a long time?")
    doomed = chat_send(participant_id=killed.pk, text="slow: a question whose worker is killed?")
    assert wait_until(lambda: fake_llm.stats()["in_flight"] >= 2, 20, 0.1), "the calls did not start"
    time.sleep(20)  # the heartbeat has renewed both leases several times by now, with no byte from the provider
    lease = f"{settings.REDIS_NAMESPACE}:turn:{doomed.id}:lease"
    assert broker().pttl(lease) > 0, "the lease of a silent call expired while its worker was alive"
    killed_at = time.monotonic()
    first.kill()
    celery_worker_factory(concurrency=8, beat=True, TURN_SWEEP_EVERY_S=5)
    assert wait_until(lambda: settled([doomed]), 30 + 95, 1), "the killed worker's turn was not answered again"
    recovered_s = time.monotonic() - killed_at
    assert recovered_s <= 30 + 95  # the sweeper's 30 s bound plus the call's own 90 s (and its 0.5 s tail)
    reply = assert_exactly_one_reply(doomed)
    lost = LLMCall.objects.get(turn=doomed, attempt=1)
    assert lost.status == LLMCall.Status.ERROR and lost.error_kind == "worker_lost"
    assert provider_calls_by_text(fake_llm)[doomed.text] == 2  # the killed attempt and the one after it
    # the other turn was cut off by the kill too (same worker): it is answered once as well
    assert wait_until(lambda: settled([turn]), 30 + 95, 1)
    assert_exactly_one_reply(turn)
    print(f"\n[90 s to the first token] killed {reply.completed_at} ... re-answered {recovered_s:.1f} s after the kill "
          f"(bound 30 s + the call's 90 s)")


def test_a_slow_call_under_a_live_worker_is_made_once(launch, fake_llm, celery_worker_factory):
    version = launch(lambda d: chat_only(d, timeout_s=120))
    fake_llm.set_behaviour(ttft_s=90, latency_s=90.5)
    (participant,) = chat_participants(version, 1, "ONCE")
    celery_worker_factory(concurrency=4, beat=True, TURN_SWEEP_EVERY_S=5, TURN_SWEEP_STALE_S=10)
    turn = chat_send(participant_id=participant.pk, text="once: a question for a slow model?")
    assert wait_until(lambda: settled([turn]), 120, 1), "the slow call was not answered"
    assert_exactly_one_reply(turn)
    call = LLMCall.objects.get(turn=turn)
    assert call.ttft_ms >= 89_000
    assert provider_calls_by_text(fake_llm)[turn.text] == 1  # no second call while the first was silent


# --------------------------------------------------------------------------- 2. broker flushed


def test_broker_flushed_with_turns_queued_the_sweeper_answers_them(chat_study, fake_llm, celery_worker_factory):
    participants = chat_participants(chat_study, 20, "FLUSH")
    turns = send_all(participants, "flush")
    client = broker()
    assert client.llen(settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] + "celery") == 20  # the 20 reply messages wait in the broker (Redis db of this run)
    # FLUSHDB on this run's Redis database only (not FLUSHALL): the same loss for our broker, and other
    # sessions' databases on this Redis are left alone.
    client.flushdb()
    flushed_at = time.monotonic()
    celery_worker_factory(concurrency=50, beat=True, TURN_SWEEP_STALE_S=2, TURN_SWEEP_EVERY_S=2)
    assert wait_until(lambda: settled(turns), 60, 0.5), "the sweeper did not recover the flushed turns in 60 s"
    recovered_s = time.monotonic() - flushed_at
    for turn in turns:
        assert_exactly_one_reply(turn)
    calls = provider_calls_by_text(fake_llm)
    assert all(calls[t.text] == 1 for t in turns), calls
    print(f"\n[flush] 20 queued turns lost with FLUSHDB; all answered {recovered_s:.1f} s after the flush "
          "(worker start + sweeper every 2 s, stale after 2 s)")


# --------------------------------------------------------------------------- 3. 30 % failures of mixed kinds


def test_thirty_percent_failures_of_mixed_kinds(launch, fake_llm, celery_worker_factory):
    max_retries = 2
    version = launch(lambda d: chat_only(d, timeout_s=2, max_retries=max_retries))
    participants = chat_participants(version, 30, "MIX")
    # one turn is made to fail every attempt, so that the retry path is always exercised
    doomed_text = "mix question from participant number 0?"
    fake_llm.match(doomed_text, {"fail": "500"}, times=None)
    # seed 1 draws no "drop" among the first ~40 requests: one dropped stream is forced
    fake_llm.match("mix question from participant number 1?", {"fail": "drop"}, times=1)
    fake_llm.set_behaviour(failure_rate=0.3, failures=["429", "500", "529", "hang", "drop"], retry_after_s=1,
                           seed=1, latency_s=0.2)
    celery_worker_factory(concurrency=50)
    started = time.monotonic()
    turns = send_all(participants, "mix")
    assert turns[0].text == doomed_text
    assert wait_until(lambda: settled(turns), 90, 0.5), "not every turn settled within 90 s"
    elapsed = time.monotonic() - started

    outcomes = Counter()
    attempt_kinds = Counter()
    checked_429 = 0
    for turn in turns:
        turn.refresh_from_db()
        outcomes[turn.status] += 1
        attempts = list(LLMCall.objects.filter(turn=turn, purpose="reply").order_by("attempt"))
        assert 1 <= len(attempts) <= 1 + max_retries, (turn.id, len(attempts))
        for call in attempts:
            attempt_kinds[call.error_kind or call.status] += 1
        for before, after in zip(attempts, attempts[1:]):
            if before.http_status == 429 and before.error_kind == "rate_limit":
                assert before.retry_after_s == 1
                earliest = before.started_at + timedelta(
                    milliseconds=before.latency_ms or 0, seconds=before.retry_after_s
                )
                assert after.started_at >= earliest, (turn.id, before.started_at, after.started_at)
                checked_429 += 1
        if turn.status == Turn.Status.ANSWERED:
            assert Turn.objects.filter(reply_to=turn).count() == 1
            assert sum(1 for c in attempts if c.status == LLMCall.Status.OK) == 1
        else:
            assert turn.status == Turn.Status.FAILED and turn.error_kind
            assert not Turn.objects.filter(reply_to=turn).exists()
            # attempts ran out, or a final error, or the stream broke after text was shown (kept, not retried)
            assert len(attempts) == 1 + max_retries or attempts[-1].error_kind in FINAL_KINDS or turn.cut_off
            if turn.cut_off:
                assert turn.shown_text == attempts[-1].response["partial_text"]
    assert outcomes[Turn.Status.FAILED] >= 1 and turns[0].status == Turn.Status.FAILED
    assert {"server", "dropped"} <= set(attempt_kinds), attempt_kinds

    # the participant sends a failed turn again (failures off): it gets its reply, the text was kept
    fake_llm.reset()
    fake_llm.set_behaviour(latency_s=0.2)
    failed = Turn.objects.get(pk=turns[0].id)
    owner = Participant.objects.get(conversation_id=failed.conversation_id)
    browser = Client()
    session = browser.session
    session[f"teachback:participant:{version.study.slug}"] = owner.token
    session.save()
    response = browser.post(f"/s/{version.study.slug}/chat/retry/{failed.id}/")
    assert response.status_code == 202, response.content
    assert wait_until(lambda: Turn.objects.get(pk=failed.id).status == Turn.Status.ANSWERED, 20)
    assert_exactly_one_reply(failed)
    assert failed.text == doomed_text

    print(f"\n[failure mix] 30 turns in {elapsed:.1f} s: answered {outcomes[Turn.Status.ANSWERED]}, "
          f"failed {outcomes[Turn.Status.FAILED]} (1 of them forced); attempts by outcome {dict(attempt_kinds)}; "
          f"429 -> next attempt gaps checked: {checked_429}; the forced failure answered after /chat/retry/")


# --------------------------------------------------------------------------- 4. delivered twice


def test_the_same_task_delivered_twice_adds_one_reply(launch, fake_llm, celery_worker_factory):
    version = launch(lambda d: chat_only(d, timeout_s=3))  # lease TTL 8 s: the busy delivery looks again soon
    fake_llm.set_behaviour(latency_s=1, ttft_s=0.1)
    one, two = chat_participants(version, 2, "TWICE")

    # (a) two eager runs at once, from two threads of this process
    turn = chat_send(participant_id=one.pk, text="twice: eager question?")
    broker().flushdb()  # drop the message chat_send queued: only the two runs below deliver it
    results = []
    gate = threading.Barrier(2)

    def run():
        try:
            gate.wait()
            results.append(reply_generate_task.apply(args=[turn.id]).get())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) in (["answered", "busy"], ["answered", "skipped"]), results
    assert_exactly_one_reply(turn)
    assert provider_calls_by_text(fake_llm)[turn.text] == 1

    # (b) two deliveries through the broker, taken at once by a running worker
    turn = chat_send(participant_id=two.pk, text="twice: queued question?")
    reply_generate_task.delay(turn.id)
    assert broker().llen(settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] + "celery") == 2
    worker = celery_worker_factory(concurrency=50)
    assert wait_until(lambda: settled([turn]), 30)
    # wait until both deliveries have finished (the second one skipped, possibly after a busy retry)
    assert wait_until(lambda: worker.log().count("succeeded in") >= 2 and "'skipped'" in worker.log(), 20), worker.log()[-3000:]
    assert_exactly_one_reply(turn)
    assert provider_calls_by_text(fake_llm)[turn.text] == 1
    print(f"\n[delivered twice] eager: {sorted(results)}; via the broker: "
          f"{[line.split(': ')[-1] for line in worker.log().splitlines() if 'succeeded in' in line]}")


# --------------------------------------------------------------------------- 5. final errors


def test_spend_cap_or_bad_request_is_not_retried(chat_study, fake_llm, celery_worker_factory):
    cases = [("quota", "spend_cap"), ("400", "bad_request")]
    participants = chat_participants(chat_study, len(cases), "FINAL")
    texts = [f"final: a question met by {fail}?" for fail, _ in cases]
    for (fail, _), text in zip(cases, texts):
        fake_llm.match(text, {"fail": fail}, times=None)
    celery_worker_factory(concurrency=4)
    turns = [chat_send(participant_id=p.pk, text=text) for p, text in zip(participants, texts)]
    assert wait_until(lambda: settled(turns), 20)
    time.sleep(1.5)  # a (wrong) retry would have come back by now (backoff >= 1 s)
    calls = provider_calls_by_text(fake_llm)
    for (fail, kind), turn, text in zip(cases, turns, texts):
        turn.refresh_from_db()
        assert turn.status == Turn.Status.FAILED and turn.error_kind == kind, (fail, turn.status, turn.error_kind)
        attempts = list(LLMCall.objects.filter(turn=turn, purpose="reply"))
        assert len(attempts) == 1 and attempts[0].status == LLMCall.Status.ERROR and attempts[0].error_kind == kind
        assert calls[text] == 1
        assert Turn.objects.get(pk=turn.id).text == text  # nothing typed is lost
        assert not Turn.objects.filter(reply_to=turn).exists()
