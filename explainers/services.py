"""Writes of the explainer: conversations, participants' turns, and the reply to a turn.

`reply_generate` is the worker's job. It is safe to run twice for one turn: the turn's status, a
Redis lease held while a provider call is in flight, and the unique `Turn.reply_to` make sure a
turn gets exactly one reply. It makes one provider attempt per run; a retryable failure asks the
task to run again after a backoff (docs/chat.md explains the timing budget). An agentic turn takes
several calls (learner-model update, tool rounds, reply): each run makes the next one and answers
"continue" (docs/agentic.md).
"""
import logging
import random
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from studies.models import StudyVersion
from studies.protocol import Protocol

from . import agentic, tutor
from .endpoints import llm_endpoint
from .models import Conversation, LLMCall, Turn
from .policies import chat_messages
from .providers import LLMRequest, ProviderError, llm_call
from .selectors import conversation_usage, yoked_transcript_pick
from .streaming import TurnStream, _sync_client

logger = logging.getLogger(__name__)

REPLY = "reply"
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 120.0
LEASE_RENEW_EVERY_S = 2.0

# Worker threads hold a database connection only inside these slots, never across a provider call.
_db_slots = threading.BoundedSemaphore(settings.WORKER_DB_SLOTS)


class LimitReached(Exception):
    """The conversation reached one of its arm's limits; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TurnInFlight(Exception):
    """The previous message is still waiting for its reply."""


class ArmUnavailable(Exception):
    """No language model is configured for this arm."""


@dataclass(frozen=True)
class ReplyOutcome:
    state: str                    # answered | failed | retry | skipped | busy | continue (another call is due)
    retry_in_s: float | None = None


@contextmanager
def _db():
    """Hold one of the worker's database slots, and give the connection back afterwards."""
    with _db_slots:
        try:
            yield
        finally:
            connection.close()


def conversation_start(*, version: StudyVersion, arm_id: str, language: str,
                       pretest: list[tuple[str, float]], position: int | None = None) -> Conversation:
    """Start the conversation of a chat, agentic or tutor arm (the tutor and a proactive agentic arm
    speak first), or the record of what a yoked static arm shows.

    `pretest` is the participant's (item id, score) per scored pre-test item: the learner model starts from it.
    `position` is the participant's place in their arm's allocation order (1 = first): a yoked arm shows
    the transcript that ended in that place. Call inside a transaction.
    """
    arm = Protocol(version.spec).arms[arm_id]
    if arm["kind"] == "tutor":
        conversation = Conversation.objects.create(
            version=version, version_sha256=version.sha256, arm=arm_id, language=language
        )
        tutor.tutor_open(conversation=conversation, pretest=pretest)
        return conversation
    yoked_to = (arm.get("options") or {}).get("yoked_to")
    if arm["kind"] == "static" and yoked_to:
        shown = yoked_transcript_pick(version=version, arm_id=yoked_to, position=position or 1)
        return Conversation.objects.create(
            version=version, version_sha256=version.sha256, arm=arm_id, language=language, yoked_from=shown,
            scripted=bool(shown and shown.scripted),
        )
    endpoint = llm_endpoint(arm.get("llm")) if arm["kind"] in ("chat", "agentic") else None
    if endpoint is None:
        raise ArmUnavailable(arm_id)
    conversation = Conversation.objects.create(
        version=version, version_sha256=version.sha256, arm=arm_id, language=language, scripted=endpoint.scripted
    )
    if arm["kind"] == "agentic":
        opening = agentic.agentic_open(conversation=conversation, pretest=pretest)
        if opening is not None:
            _enqueue_on_commit(opening.id)
    return conversation


def conversation_finish(*, conversation: Conversation, post_items: list[dict]) -> None:
    """End the explanation step: the explainer predicts the post-test answers and writes its note."""
    conversation_end(conversation=conversation, reason=Conversation.EndReason.PARTICIPANT)
    kind = Protocol(conversation.version.spec).arms[conversation.arm]["kind"]
    if kind == "tutor":
        tutor.tutor_finish(conversation=conversation, post_items=post_items)
    elif kind == "agentic":
        agentic.agentic_finish(conversation=conversation, post_items=post_items)


def conversation_end(*, conversation: Conversation, reason: str) -> None:
    if not conversation.ended_at:
        conversation.ended_at = timezone.now()
        conversation.end_reason = reason
        conversation.save(update_fields=["ended_at", "end_reason"])


def turn_create(*, conversation: Conversation, text: str, nonce: str = "") -> Turn:
    """Save a participant's message and queue its reply. A repeated nonce returns the first turn.

    Call inside a transaction that holds the participant's row lock.
    """
    if nonce:
        existing = conversation.turns.filter(client_nonce=nonce).first()
        if existing is not None:
            return existing
    usage = conversation_usage(conversation=conversation)
    if usage.end_reason:
        conversation_end(conversation=conversation, reason=usage.end_reason)
        raise LimitReached(usage.end_reason)
    if usage.turns_max is not None and usage.turns_used >= usage.turns_max:
        raise LimitReached(Conversation.EndReason.TURNS)
    if conversation.turns.filter(status=Turn.Status.PENDING).exists():  # a message's reply, or the opening
        raise TurnInFlight()
    turn = Turn.objects.create(
        conversation=conversation, author=Turn.Author.PARTICIPANT, text=text, status=Turn.Status.PENDING,
        client_nonce=nonce, enqueued_at=timezone.now(),
    )
    if Protocol(conversation.version.spec).arms[conversation.arm]["kind"] == "tutor":
        tutor.tutor_reply(conversation=conversation, turn=turn)  # offline: answered at once
        turn.refresh_from_db()
        return turn
    _enqueue_on_commit(turn.id)
    return turn


def turn_retry(*, turn: Turn) -> Turn:
    """Send a failed turn again (the participant's text was kept). Call with the participant's row locked."""
    if turn.status != Turn.Status.FAILED:
        return turn
    turn.status = Turn.Status.PENDING
    turn.error_kind = ""
    turn.not_before = None
    turn.enqueued_at = timezone.now()
    turn.save(update_fields=["status", "error_kind", "not_before", "enqueued_at"])
    TurnStream(turn.id).publish("reset")
    _enqueue_on_commit(turn.id)
    return turn


def _enqueue_on_commit(turn_id: int) -> None:
    from .tasks import reply_generate_task

    transaction.on_commit(lambda: reply_generate_task.delay(turn_id))


def reply_generate(*, turn_id: int) -> ReplyOutcome:
    """Make one provider attempt at the reply to a participant's turn (or at an agentic arm's opening, or
    at one of the other calls of an agentic turn) and store what came of it."""
    with _db():
        turn = Turn.objects.select_related("conversation__version").filter(pk=turn_id).first()
        if turn is None or turn.status != Turn.Status.PENDING:
            return ReplyOutcome("skipped")  # answered, failed, or gone: a second delivery adds nothing
        if turn.not_before and turn.not_before > timezone.now():
            return ReplyOutcome("retry", (turn.not_before - timezone.now()).total_seconds())
        conversation = turn.conversation
        arm = Protocol(conversation.version.spec).arms[conversation.arm]
        llm = arm["llm"]
        budget_s = float(llm["timeout_s"])  # at most studies.spec.LLM_TIMEOUT_MAX_S, by the file's schema
        lease = _Lease(turn_id, ttl_s=budget_s + 5)
        if not lease.acquire():
            # another worker is on it, or was (a killed worker's lease outlives it while its message is
            # restored): look again once the lease can have expired; the sweeper stays the second line
            return ReplyOutcome("busy", lease.remaining_s() + 0.5)
        endpoint = llm_endpoint(llm)
        if endpoint is None:
            lease.release()
            return _fail(turn, "unavailable", TurnStream(turn_id))
        if arm["kind"] == "agentic":
            plan = agentic.agentic_plan(turn=turn, conversation=conversation, arm=arm, endpoint=endpoint)
        else:
            request = LLMRequest(
                provider=endpoint.provider, model=llm["model"], messages=chat_messages(conversation=conversation, upto=turn),
                params=dict(llm["params"]), base_url=endpoint.base_url, timeout_s=budget_s,
            )
            plan = agentic.Plan(REPLY, request, streams=True)
        previous = list(turn.llm_calls.filter(purpose=plan.purpose).values_list("status", flat=True))
        call = _call_create(turn, plan, len(previous) + 1, endpoint, conversation)
        failures = sum(1 for status in previous if status == LLMCall.Status.ERROR)
    stream = TurnStream(turn_id)
    if plan.streams and previous and previous[-1] != LLMCall.Status.OK:
        stream.publish("reset")  # a new attempt after a failed one: the browser drops what it showed

    def on_delta(text: str) -> None:
        if plan.streams:  # a structured answer (the learner model) is never shown to the participant
            stream.delta(text)
        lease.renew()

    try:
        result = llm_call(plan.request, on_delta=on_delta)
    except ProviderError as error:
        result = error
    stream.flush()  # the last coalesced text, before the outcome is written
    lease.release()
    if isinstance(result, ProviderError):
        if plan.purpose != REPLY:  # the learner-model update: no retry, the next run falls back to the rules
            _call_failed(call, result)
            return ReplyOutcome("continue")
        return _attempt_failed(turn, call, result, failures + 1, llm, stream)
    if arm["kind"] != "agentic":
        return _reply_store(turn, call, result, llm, stream,
                            lambda locked, first: _chat_reply_save(locked, result, endpoint.scripted, first))
    tool_results = agentic.tool_round_results(plan, result)  # runs the target locally: no network
    if plan.purpose != REPLY or tool_results is not None:
        response = result.response if tool_results is None else {**result.response, "tool_results": tool_results}
        with _db():
            _call_succeeded(call, result, llm, response)
        return ReplyOutcome("continue")
    return _reply_store(turn, call, result, llm, stream, lambda locked, first: agentic.agentic_reply_save(
        plan=plan, turn=locked, result=result, scripted=endpoint.scripted, first_token_at=first))


def _call_create(turn: Turn, plan, attempt: int, endpoint, conversation: Conversation) -> LLMCall:
    return LLMCall.objects.create(
        turn=turn, purpose=plan.purpose, attempt=attempt, provider=endpoint.provider, model=plan.request.model,
        scripted=endpoint.scripted, request=_request_log(plan.request), started_at=timezone.now(),
        version_sha256=conversation.version_sha256,
    )


def _call_succeeded(call: LLMCall, result, llm: dict, response: dict | None = None) -> None:
    LLMCall.objects.filter(pk=call.pk).update(
        status=LLMCall.Status.OK, response=result.response if response is None else response,
        model_reported=result.model or "", ttft_ms=result.ttft_ms, latency_ms=result.latency_ms,
        input_tokens=result.input_tokens, output_tokens=result.output_tokens,
        cost_usd=_cost(llm, result.input_tokens, result.output_tokens),
    )


def _call_failed(call: LLMCall, error: ProviderError) -> None:
    with _db():
        LLMCall.objects.filter(pk=call.pk).update(
            status=LLMCall.Status.ERROR, error_kind=error.kind, error=str(error)[:2000], http_status=error.status,
            retry_after_s=error.retry_after, ttft_ms=getattr(error, "ttft_ms", None),
            latency_ms=getattr(error, "latency_ms", None), response={"partial_text": error.partial_text or ""},
        )


def _request_log(request: LLMRequest) -> dict:
    return {
        "provider": request.provider, "model": request.model, "messages": request.messages,
        "params": request.params, "tools": request.tools, "response_schema": request.response_schema,
        "base_url": request.base_url, "timeout_s": request.timeout_s,
    }


def _cost(llm: dict, input_tokens: int | None, output_tokens: int | None) -> Decimal:
    prices = llm["prices"]
    total = Decimal(str(prices["input_per_mtok"])) * (input_tokens or 0)
    total += Decimal(str(prices["output_per_mtok"])) * (output_tokens or 0)
    return (total / Decimal(1_000_000)).quantize(Decimal("0.000001"))


def _reply_store(turn, call, result, llm, stream, save) -> ReplyOutcome:
    """Store a successful last call and the reply, `save(locked_turn, first_token_at)`, in one transaction."""
    now = timezone.now()
    first_token_at = now - timedelta(milliseconds=result.latency_ms - (result.ttft_ms or result.latency_ms))
    with _db(), transaction.atomic():
        locked = Turn.objects.select_for_update(of=("self",)).select_related("conversation__version").get(pk=turn.pk)
        _call_succeeded(call, result, llm)
        if locked.status != Turn.Status.PENDING:
            return ReplyOutcome("skipped")
        reply = save(locked, first_token_at)
        conversation = locked.conversation
        usage = conversation_usage(conversation=conversation)
        if usage.end_reason:
            conversation_end(conversation=conversation, reason=usage.end_reason)
    stream.publish("done", reply_id=reply.id)
    return ReplyOutcome("answered")


def _chat_reply_save(locked: Turn, result, scripted: bool, first_token_at) -> Turn:
    reply = Turn.objects.create(
        conversation_id=locked.conversation_id, author=Turn.Author.EXPLAINER, text=result.text, reply_to=locked,
        status=Turn.Status.COMPLETE, scripted=scripted, first_token_at=first_token_at, completed_at=timezone.now(),
    )
    locked.status = Turn.Status.ANSWERED
    locked.save(update_fields=["status"])
    return reply


def _attempt_failed(turn, call, error: ProviderError, failures: int, llm, stream) -> ReplyOutcome:
    _call_failed(call, error)
    with _db():
        logger.warning("reply attempt failed: turn %s attempt %s %s", turn.pk, call.attempt, error.kind)
        if error.retryable and failures <= int(llm["max_retries"]):
            delay = _backoff_s(failures, error.retry_after)
            Turn.objects.filter(pk=turn.pk, status=Turn.Status.PENDING).update(
                not_before=timezone.now() + timedelta(seconds=delay)
            )
            stream.publish("retrying", in_s=round(delay, 1))
            return ReplyOutcome("retry", delay)
        return _fail(turn, error.kind, stream)


def _fail(turn: Turn, kind: str, stream: TurnStream) -> ReplyOutcome:
    Turn.objects.filter(pk=turn.pk, status=Turn.Status.PENDING).update(status=Turn.Status.FAILED, error_kind=kind)
    stream.publish("failed", error=kind)
    return ReplyOutcome("failed")


def _backoff_s(failures: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a provider's Retry-After wins when it asks for longer."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1)) + random.uniform(0, 0.5)
    if retry_after:
        delay = max(delay, min(float(retry_after), RETRY_AFTER_CAP_S))
    return delay


def conversation_wrapup(*, conversation_id: int) -> ReplyOutcome:
    """Make the next end-of-step call of an agentic conversation (post-test predictions, then the note).

    One attempt each, no retry: the rule-based versions written when the step ended stay when a call
    fails. Safe to run twice: a call already made (whatever its outcome) is not made again.
    """
    with _db():
        conversation = Conversation.objects.select_related("version").filter(pk=conversation_id).first()
        if conversation is None:
            return ReplyOutcome("skipped")
        arm = Protocol(conversation.version.spec).arms[conversation.arm]
        endpoint = llm_endpoint(arm.get("llm")) if arm["kind"] == "agentic" else None
        last = conversation.turns.order_by("-id").first()  # the calls are logged against the conversation's last turn
        if endpoint is None or last is None:
            return ReplyOutcome("skipped")
        done = set(LLMCall.objects.filter(turn__conversation=conversation, purpose__in=[agentic.PREDICTION, agentic.NOTE])
                   .values_list("purpose", flat=True))
        plan = agentic.wrapup_plan(conversation=conversation, arm=arm, endpoint=endpoint, done=done)
        if plan is None:
            return ReplyOutcome("answered")
        lease = _Lease(conversation_id, ttl_s=float(arm["llm"]["timeout_s"]) + 5, kind="conversation")
        if not lease.acquire():
            return ReplyOutcome("busy", lease.remaining_s() + 0.5)
        attempt = last.llm_calls.filter(purpose=plan.purpose).count() + 1
        call = _call_create(last, plan, attempt, endpoint, conversation)
    try:
        result = llm_call(plan.request, on_delta=lambda _text: lease.renew())
    except ProviderError as error:
        result = error
    lease.release()
    if isinstance(result, ProviderError):
        _call_failed(call, result)
        return ReplyOutcome("continue")
    with _db(), transaction.atomic():
        _call_succeeded(call, result, arm["llm"])
        agentic.wrapup_save(plan=plan, conversation=conversation, result=result)
    return ReplyOutcome("continue")


def turns_sweep() -> list[int]:
    """Queue again the turns left without a reply (broker flushed, worker lost); return their ids."""
    stale = timezone.now() - timedelta(seconds=settings.TURN_SWEEP_STALE_S)
    with _db():
        candidates = list(
            Turn.objects.filter(status=Turn.Status.PENDING, enqueued_at__lt=stale).values_list("id", "not_before")
        )
        requeued = []
        for turn_id, not_before in candidates:
            if _Lease(turn_id, ttl_s=1).held():
                continue
            Turn.objects.filter(pk=turn_id, status=Turn.Status.PENDING).update(enqueued_at=timezone.now())
            requeued.append(turn_id)
    from .tasks import reply_generate_task

    for turn_id in requeued:
        reply_generate_task.delay(turn_id)
    if requeued:
        logger.info("sweeper queued %d turn(s) again", len(requeued))
    return requeued


class _Lease:
    """A short Redis lease on a turn (or a conversation's end-of-step calls): at most one provider call in flight."""

    def __init__(self, turn_id: int, *, ttl_s: float, kind: str = "turn"):
        self.key = f"teachback:{kind}:{turn_id}:lease"
        self.token = secrets.token_hex(8)
        self.ttl_ms = int(ttl_s * 1000)
        self._renewed = 0.0

    def acquire(self) -> bool:
        self._renewed = time.monotonic()
        return bool(_sync_client().set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> None:
        if time.monotonic() - self._renewed >= LEASE_RENEW_EVERY_S:
            self._renewed = time.monotonic()
            _sync_client().pexpire(self.key, self.ttl_ms)

    def release(self) -> None:
        client = _sync_client()
        if client.get(self.key) == self.token.encode():
            client.delete(self.key)

    def remaining_s(self) -> float:
        return max(0.0, _sync_client().pttl(self.key) / 1000)

    def held(self) -> bool:
        return bool(_sync_client().exists(self.key))
