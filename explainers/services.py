"""Writes of the explainer: conversations, participants' turns, and the reply to a turn.

The lifecycle lives here (a conversation's start, a turn's lease and attempts, the stream, the stored
outcome, the end of the step); what differs between arm kinds is asked of the arm's object
(explainers.arms: `arm_behaviour(arm)`), which returns what to write and never writes itself.

`reply_generate` is the worker's job. It is safe to run twice for one turn: the turn's status, a
Redis lease held while a provider call is in flight, and the unique `Turn.reply_to` make sure a
turn gets exactly one reply. It makes one provider attempt per run; a retryable failure asks the
task to run again after a backoff (docs/chat.md explains the timing budget). An agentic turn takes
several calls (learner-model update, tool rounds, reply): each run makes the next one and answers
"continue" (docs/agentic.md).
"""
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from studies.audit import audit_record
from studies.models import StudyVersion
from studies.protocol import Protocol
from studies.selectors import study_get_for_researcher
from studies.spec import yoked_screen

from .arms import arm_behaviour
from .arms.base import NOTE, PREDICTION, REPLY, Finish, Opening, Reply
from .endpoints import llm_endpoint
from .learner import SCHEMA_VERSION, learner_model_validate
from .models import Conversation, LearnerModelSnapshot, LLMCall, PostTestPrediction, TranscriptScreening, Turn
from .prompts import PROMPT_MARKERS, prompt_echo_at
from .providers import LLMRequest, ProviderError, backoff_s, llm_call
from .screening import RULES_VERSION, transcript_redact
from .selectors import conversation_usage, latest_snapshot, written_turns, yoked_transcript_pick
from .streaming import TurnStream, _sync_client, redis_key

logger = logging.getLogger(__name__)

RETRY_MODES = ("again", "continue")

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
    the transcript that passed its screen in that place. Call inside a transaction.
    """
    arm = Protocol(version.spec).arms[arm_id]
    behaviour = arm_behaviour(arm)
    fields = {}
    shows = behaviour.shows_transcripts_of(arm)
    if shows:
        transcript_screenings_prepare(version=version, arm_id=shows)
        shown = yoked_transcript_pick(version=version, arm_id=shows, position=position or 1)
        fields = {"yoked_from": shown, "scripted": bool(shown and shown.scripted)}
    elif not behaviour.converses:
        raise ArmUnavailable(arm_id)
    if behaviour.uses_llm:
        endpoint = llm_endpoint(arm.get("llm"))
        if endpoint is None:
            raise ArmUnavailable(arm_id)
        fields["scripted"] = endpoint.scripted
    conversation = Conversation.objects.create(
        version=version, version_sha256=version.sha256, arm=arm_id, language=language, **fields)
    opening = behaviour.open(conversation=conversation, arm=arm, pretest=pretest)
    if opening is not None:
        _opening_store(conversation, opening)
    return conversation


def _opening_store(conversation: Conversation, opening: Opening) -> None:
    if opening.snapshot is not None:
        snapshot_store(conversation, opening.snapshot[0], turn=None, source=opening.snapshot[1])
    if opening.borrows_model:
        conversation.learner_model_from = (
            Conversation.objects.filter(version=conversation.version, arm=conversation.arm, pk__lt=conversation.pk)
            .order_by("-pk").first()
        )
        conversation.save(update_fields=["learner_model_from"])
    if opening.reply is not None:
        _reply_write(None, opening.reply, conversation=conversation, scripted=conversation.scripted)
    elif opening.pending:
        turn = Turn.objects.create(
            conversation=conversation, author=Turn.Author.EXPLAINER, text="", status=Turn.Status.PENDING,
            scripted=conversation.scripted, enqueued_at=timezone.now(),
        )
        _enqueue_on_commit(turn.id)


def snapshot_store(conversation: Conversation, state: dict, *, turn: Turn | None, source: str) -> LearnerModelSnapshot:
    """Store a new learner-model snapshot (never overwrite one). Call inside the transaction that saves the turn."""
    learner_model_validate(state)
    latest = latest_snapshot(conversation)
    return LearnerModelSnapshot.objects.create(
        conversation=conversation, index=0 if latest is None else latest.index + 1, turn=turn,
        source=source, schema_version=SCHEMA_VERSION, state=state,
    )


def _reply_write(turn: Turn | None, reply: Reply, *, conversation: Conversation, scripted: bool,
                 first_token_at=None) -> Turn:
    """Write what the explainer says: the reply to the participant's `turn` (then answered, with its check
    graded), the opening the worker was writing (`turn` is that explainer turn), or, with `turn` None, an
    opening said at once. The snapshot is stored with `turn`; a summary ends the conversation complete.
    Call inside the transaction that holds `turn`'s row lock."""
    now = timezone.now()
    fields = dict(text=reply.text, status=Turn.Status.COMPLETE, scripted=scripted, act=reply.act,
                  concept=reply.concept, check_item=reply.check_item, tool_calls=reply.tool_calls,
                  first_token_at=first_token_at or now, completed_at=now)
    if turn is not None and turn.author == Turn.Author.EXPLAINER:  # the opening, written by the worker
        for name, value in fields.items():
            setattr(turn, name, value)
        turn.save(update_fields=list(fields))
        written = turn
    else:
        written = Turn.objects.create(conversation=conversation, author=Turn.Author.EXPLAINER, reply_to=turn, **fields)
    if turn is not None and turn.author == Turn.Author.PARTICIPANT:
        turn.status = Turn.Status.ANSWERED
        update = ["status"]
        if reply.graded is not None:
            turn.answers_check_id, turn.check_correct = reply.graded
            update += ["answers_check", "check_correct"]
        turn.save(update_fields=update)
    if reply.snapshot is not None:
        snapshot_store(conversation, reply.snapshot[0], turn=turn, source=reply.snapshot[1])
    if reply.completes:  # nothing is left to teach
        conversation.ended_at = timezone.now()
        conversation.end_reason = Conversation.EndReason.COMPLETE
        conversation.save(update_fields=["ended_at", "end_reason"])
    return written


def transcript_screenings_prepare(*, version: StudyVersion, arm_id: str) -> int:
    """Screen every ended conversation of `arm_id` (an agentic arm a yoked arm shows) that has no screening yet,
    in order of ending: store its written turns redacted (explainers/screening.py). It passes at once when every
    yoked arm of the version that shows `arm_id` says `yoked_screen: redact`; otherwise it waits for a
    researcher. Return how many were screened. The conversation's own turns are left as they are.

    Runs when a yoked participant reaches the explanation and when a researcher opens the screening page; safe
    to run at the same time twice (one screening per conversation: the second insert is dropped).
    """
    readers = [a for a in Protocol(version.spec).arms.values() if arm_behaviour(a).shows_transcripts_of(a) == arm_id]
    if not readers:
        return 0
    redact_only = all(yoked_screen(a) == TranscriptScreening.Mode.REDACT for a in readers)
    ended = Conversation.objects.filter(version=version, arm=arm_id, ended_at__isnull=False,
                                        screening__isnull=True).order_by("ended_at", "id")
    rows = []
    for conversation in ended:
        turns = written_turns(conversation_id=conversation.pk)
        redacted = transcript_redact([(t.author, t.text) for t in turns])
        rows.append(TranscriptScreening(
            conversation=conversation, rules_version=RULES_VERSION, redactions=redacted.counts,
            turns=[{"turn": t.pk, "author": t.author, "text": text} for t, text in zip(turns, redacted.texts)],
            mode=TranscriptScreening.Mode.REDACT if redact_only else TranscriptScreening.Mode.APPROVE,
            status=TranscriptScreening.Status.PASSED if redact_only else TranscriptScreening.Status.PENDING,
            decided_at=timezone.now() if redact_only else None,  # in order of ending: the pick follows it
        ))
    TranscriptScreening.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def study_screenings_prepare(*, study) -> int:
    """Screen the ended, unscreened transcripts of every arm a yoked arm shows, in every version of `study`."""
    screened = 0
    for version in StudyVersion.objects.filter(study=study).order_by("number"):
        shown = {arm_behaviour(a).shows_transcripts_of(a) for a in version.spec.get("arms") or []}
        for arm_id in sorted(shown - {None}):
            screened += transcript_screenings_prepare(version=version, arm_id=arm_id)
    return screened


class ScreeningDecided(Exception):
    """The transcript's screen was decided already: a decision is final."""


@transaction.atomic
def transcript_screening_decide(*, actor, study, screening_id: int, approve: bool) -> TranscriptScreening:
    """A researcher (a role with "data" access) approves or rejects a transcript waiting for its screen; audited.

    Raises TranscriptScreening.DoesNotExist for a screening of another study, ScreeningDecided when it is not pending.
    """
    study = study_get_for_researcher(user=actor, slug=study.slug, needs="data")
    screening = (TranscriptScreening.objects.select_for_update()
                 .filter(pk=screening_id, conversation__version__study=study).first())
    if screening is None:
        raise TranscriptScreening.DoesNotExist(screening_id)
    if screening.status != TranscriptScreening.Status.PENDING:
        raise ScreeningDecided(screening.status)
    screening.status = TranscriptScreening.Status.PASSED if approve else TranscriptScreening.Status.REJECTED
    screening.decided_at = timezone.now()
    screening.decided_by = actor
    screening.save(update_fields=["status", "decided_at", "decided_by"])
    conversation = Conversation.objects.select_related("version").get(pk=screening.conversation_id)
    audit_record(
        actor=actor, action="transcript_approve" if approve else "transcript_reject", study_slug=study.slug,
        object_type="transcript_screening", object_id=screening.pk, before={"status": "pending"},
        after={"status": screening.status, "version": conversation.version.number, "arm": conversation.arm,
               "rules_version": screening.rules_version, "redactions": screening.redactions},
    )
    return screening


def conversation_finish(*, conversation: Conversation, post_items: list[dict]) -> None:
    """End the explanation step: the explainer predicts the post-test answers and writes its note."""
    conversation_end(conversation=conversation, reason=Conversation.EndReason.PARTICIPANT)
    arm = Protocol(conversation.version.spec).arms[conversation.arm]
    finish = arm_behaviour(arm).finish(conversation=conversation, arm=arm, post_items=post_items)
    if finish is not None:
        _finish_store(conversation, finish)


def _finish_store(conversation: Conversation, finish: Finish) -> None:
    """Store the explainer's predictions and note by rule; queue its provider's own versions when it has them
    (the participant never waits on a provider: the worker replaces them while they take the post-test)."""
    for prediction in finish.predictions:
        PostTestPrediction.objects.get_or_create(
            conversation=conversation, item_id=prediction["item_id"],
            defaults={k: prediction[k] for k in ("p_correct", "predicted_answer", "source")},
        )
    conversation.meeting_note = finish.note
    conversation.save(update_fields=["meeting_note"])
    if finish.wrapup:
        from .tasks import conversation_wrapup_task

        transaction.on_commit(lambda: conversation_wrapup_task.delay(conversation.pk))


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
    arm = Protocol(conversation.version.spec).arms[conversation.arm]
    reply = arm_behaviour(arm).answer(conversation=conversation, arm=arm, turn=turn)
    if reply is not None:  # an offline arm: answered at once
        _reply_write(turn, reply, conversation=conversation, scripted=False)
        turn.refresh_from_db()
        return turn
    _enqueue_on_commit(turn.id)
    return turn


def turn_retry(*, turn: Turn, mode: str = "again") -> Turn:
    """Send a failed turn again (the participant's text was kept). Call with the participant's row locked.

    `mode` "again" asks for a fresh reply; "continue" asks the model to go on from the text of a reply that
    was cut off (`Turn.shown_text`), and the reply stored is that text and its continuation. Events on the
    turn's stream: `reset` (the browser drops what it showed), then for "continue" the kept text again, so
    that a page that replays the stream from its start ends with the same text.
    """
    if mode not in RETRY_MODES:
        raise ValueError(f"unknown retry mode {mode!r}")
    if turn.status != Turn.Status.FAILED:
        return turn
    if mode == "again":
        turn.shown_text = ""
    turn.status = Turn.Status.PENDING
    turn.error_kind = ""
    turn.not_before = None
    turn.enqueued_at = timezone.now()
    turn.save(update_fields=["status", "error_kind", "not_before", "enqueued_at", "shown_text"])
    stream = TurnStream(turn.id)
    stream.publish("reset")
    if turn.shown_text:
        stream.publish("delta", text=turn.shown_text)
    _enqueue_on_commit(turn.id)
    return turn


def _enqueue_on_commit(turn_id: int) -> None:
    from .tasks import reply_generate_task

    transaction.on_commit(lambda: reply_generate_task.delay(turn_id))


def reply_generate(*, turn_id: int) -> ReplyOutcome:
    """Make one provider attempt at the reply to a participant's turn (or at an agentic arm's opening, or
    at one of the other calls of an agentic turn) and store what came of it.

    The turn's lease is held from before the call is logged until its outcome is stored; a heartbeat renews
    it while the call is alive, so a worker that dies leaves a lease that expires within LEASE_TTL_S and the
    sweeper queues the turn again.
    """
    with _db():
        turn = Turn.objects.select_related("conversation__version").filter(pk=turn_id).first()
        if turn is None or turn.status != Turn.Status.PENDING:
            return ReplyOutcome("skipped")  # answered, failed, or gone: a second delivery adds nothing
        if turn.not_before and turn.not_before > timezone.now():
            return ReplyOutcome("retry", (turn.not_before - timezone.now()).total_seconds())
        conversation = turn.conversation
        arm = Protocol(conversation.version.spec).arms[conversation.arm]
        llm = arm["llm"]
        lease = _Lease(turn_id)
        if not lease.acquire():
            # another worker is on it, or was a moment ago: look again once the lease can have expired
            return ReplyOutcome("busy", lease.remaining_s() + 0.5)
        try:
            endpoint = llm_endpoint(llm)
            if endpoint is None:
                lease.release()
                return _fail(turn, "unavailable", TurnStream(turn_id))
            plan = arm_behaviour(arm).plan(turn=turn, conversation=conversation, arm=arm, endpoint=endpoint)
            previous = list(turn.llm_calls.filter(purpose=plan.purpose).values_list("status", flat=True))
            call = _call_create(turn, plan, len(previous) + 1, endpoint, conversation)
            Turn.objects.filter(pk=turn_id).update(enqueued_at=timezone.now())  # the sweeper's "last touched"
        except BaseException:
            lease.release()
            raise
        failures = sum(1 for status in previous if status == LLMCall.Status.ERROR)
    try:
        stream = TurnStream(turn_id)
        if plan.streams and previous and previous[-1] != LLMCall.Status.OK and not plan.continuing:
            stream.publish("reset")  # a new attempt after a failed one: the browser drops what it showed
        on_delta = _EchoGuard(stream) if plan.streams else None  # a structured answer is never shown
        try:
            result = llm_call(plan.request, on_delta=on_delta)
        except ProviderError as error:
            result = error
        shown = on_delta.finish() if on_delta is not None else ""
        stream.flush()  # the last coalesced text, before the outcome is written
        return _outcome(turn, arm, endpoint, plan, call, result, failures, stream, shown)
    finally:
        lease.release()


def _outcome(turn, arm, endpoint, plan, call, result, failures: int, stream: TurnStream, shown: str) -> ReplyOutcome:
    """Store what one attempt gave: a failure (retried, cut off or final), a step of an agentic turn, or the reply."""
    llm = arm["llm"]
    if isinstance(result, ProviderError):
        if plan.purpose != REPLY:  # the learner-model update: no retry, the next run repairs it or uses the rules
            _call_failed(call, result)
            return ReplyOutcome("continue")
        shown = _shown_text(plan, shown)
        if shown:  # the participant saw part of it: keep that, never wipe it for a silent retry
            _call_failed(call, result)
            with _db():
                logger.warning("reply cut off: turn %s attempt %s %s", turn.pk, call.attempt, result.kind)
                return _fail(turn, result.kind, stream, shown=shown)
        return _attempt_failed(turn, call, result, failures + 1, llm, stream)
    if plan.continuing:
        result = replace(result, text=plan.continuing + result.text)
    step = arm_behaviour(arm).step(plan=plan, result=result)
    if not step.reply:  # another call is due: this one is logged, the next run makes it
        with _db():
            _call_succeeded(call, result, llm, step.response)
            if step.fallback_reason:
                LLMCall.objects.filter(pk=call.pk).update(fallback_reason=step.fallback_reason[:300])
        if step.reset:
            stream.publish("reset")
        return ReplyOutcome("continue")
    if step.fallback_reason:
        with _db():
            LLMCall.objects.filter(pk=call.pk).update(fallback_reason=step.fallback_reason[:300])
    if step.text is not None:
        result = replace(result, text=step.text)
    return _reply_store(turn, call, result, llm, stream, lambda locked, first: _reply_write(
        locked, arm_behaviour(arm).reply(plan=plan, turn=locked, result=result, conversation=locked.conversation),
        conversation=locked.conversation, scripted=endpoint.scripted, first_token_at=first))


class _EchoGuard:
    """Publish a reply's text deltas, holding back everything from the first marker of the prompt on (a
    small model can echo its instructions, the learner model among them) and a trailing "<" that may be
    the start of one."""

    HOLD = max(len(marker) for marker in PROMPT_MARKERS)

    def __init__(self, stream: TurnStream):
        self.stream, self.text, self.sent, self.stopped = stream, "", 0, False

    def __call__(self, delta: str) -> None:
        self.text += delta
        if self.stopped:
            return
        cut = prompt_echo_at(self.text)
        if cut is not None:
            self.stopped = True
            safe = cut
        else:
            tail = self.text.rfind("<", max(0, len(self.text) - self.HOLD))
            safe = tail if tail >= 0 else len(self.text)
        if safe > self.sent:
            self.stream.delta(self.text[self.sent:safe])
            self.sent = safe

    def finish(self) -> str:
        """Publish what was held back as a possible marker and was not one; return the text shown."""
        if not self.stopped and len(self.text) > self.sent:
            self.stream.delta(self.text[self.sent:])
            self.sent = len(self.text)
        return self.text[:self.sent]


def _shown_text(plan, partial: str) -> str:
    """What the participant has seen of a reply whose attempt broke off after `partial`."""
    if not partial:
        return ""
    before = plan.continuing or (f"{plan.earlier_text}\n\n" if plan.earlier_text else "")
    return before + partial


def _call_create(turn: Turn, plan, attempt: int, endpoint, conversation: Conversation) -> LLMCall:
    strategy = plan.strategy or {}
    return LLMCall.objects.create(
        turn=turn, purpose=plan.purpose, attempt=attempt, provider=endpoint.provider, model=plan.request.model,
        scripted=endpoint.scripted, request=_request_log(plan.request), started_at=timezone.now(),
        version_sha256=conversation.version_sha256, tool_choice=strategy.get("tool_choice") or "",
        structured_output=(strategy.get("structured_output") or "") if plan.request.response_schema else "",
        fallback_reason=(strategy.get("fallback_reason") or "")[:300], trimmed=plan.trimmed,
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
        "structured": request.structured if request.response_schema else None,
        "base_url": request.base_url, "timeout_s": request.timeout_s, "ttft_s": request.ttft_s,
        "idle_s": request.idle_s,
    }


def _cost(llm: dict, input_tokens: int | None, output_tokens: int | None) -> Decimal | None:
    """The call's cost from the arm's prices; None when the study file gives no price (never a guess)."""
    prices = llm.get("prices")
    if not prices:
        return None
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


def _attempt_failed(turn, call, error: ProviderError, failures: int, llm, stream) -> ReplyOutcome:
    _call_failed(call, error)
    with _db():
        logger.warning("reply attempt failed: turn %s attempt %s %s", turn.pk, call.attempt, error.kind)
        if error.retryable and failures <= int(llm["max_retries"]):
            delay = backoff_s(failures, error.retry_after)
            due = timezone.now() + timedelta(seconds=delay)
            # touched when due: the sweeper does not take a turn waiting out its backoff for a lost one
            Turn.objects.filter(pk=turn.pk, status=Turn.Status.PENDING).update(not_before=due, enqueued_at=due)
            stream.publish("retrying", in_s=round(delay, 1))
            return ReplyOutcome("retry", delay)
        return _fail(turn, error.kind, stream)


def _fail(turn: Turn, kind: str, stream: TurnStream, shown: str = "") -> ReplyOutcome:
    """Mark the turn failed; `shown` is what the participant saw of a reply that was cut off."""
    Turn.objects.filter(pk=turn.pk, status=Turn.Status.PENDING).update(
        status=Turn.Status.FAILED, error_kind=kind, shown_text=shown,
    )
    stream.publish("failed", error=kind, cut_off=bool(shown))
    return ReplyOutcome("failed")


def conversation_wrapup(*, conversation_id: int) -> ReplyOutcome:
    """Make the next end-of-step call of a conversation whose arm makes them (the agentic arm: its post-test
    predictions, then its note).

    One attempt each, no retry: the rule-based versions written when the step ended stay when a call
    fails. Safe to run twice: a call already made (whatever its outcome) is not made again.
    """
    with _db():
        conversation = Conversation.objects.select_related("version").filter(pk=conversation_id).first()
        if conversation is None:
            return ReplyOutcome("skipped")
        arm = Protocol(conversation.version.spec).arms[conversation.arm]
        behaviour = arm_behaviour(arm)
        endpoint = llm_endpoint(arm.get("llm")) if behaviour.uses_llm else None
        last = conversation.turns.order_by("-id").first()  # the calls are logged against the conversation's last turn
        if endpoint is None or last is None:
            return ReplyOutcome("skipped")
        made = list(LLMCall.objects.filter(turn__conversation=conversation, purpose__in=[PREDICTION, NOTE])
                    .order_by("id").values_list("purpose", "fallback_reason"))
        plan = behaviour.wrapup_plan(conversation=conversation, arm=arm, endpoint=endpoint, made=made)
        if plan is None:
            return ReplyOutcome("answered")
        lease = _Lease(conversation_id, kind="conversation")
        if not lease.acquire():
            return ReplyOutcome("busy", lease.remaining_s() + 0.5)
        try:
            attempt = last.llm_calls.filter(purpose=plan.purpose).count() + 1
            call = _call_create(last, plan, attempt, endpoint, conversation)
        except BaseException:
            lease.release()
            raise
    try:
        try:
            result = llm_call(plan.request)
        except ProviderError as error:
            result = error
        if isinstance(result, ProviderError):
            _call_failed(call, result)
            return ReplyOutcome("continue")
        with _db(), transaction.atomic():
            _call_succeeded(call, result, arm["llm"])
            kept = behaviour.wrapup_result(plan=plan, conversation=conversation, result=result)
            _wrapup_store(conversation, kept)
            if kept.unusable:
                LLMCall.objects.filter(pk=call.pk).update(fallback_reason=kept.unusable[:300])
        return ReplyOutcome("continue")
    finally:
        lease.release()


def _wrapup_store(conversation: Conversation, kept) -> None:
    """Keep what an end-of-step call gave (explainers.arms.base.Wrapup) in place of the rule-based versions."""
    if kept.note is not None:
        conversation.meeting_note = kept.note
        conversation.save(update_fields=["meeting_note"])
    for prediction in PostTestPrediction.objects.filter(conversation=conversation, item_id__in=list(kept.predictions)):
        prediction.p_correct, prediction.predicted_answer = kept.predictions[prediction.item_id]
        prediction.source = "llm"
        prediction.save(update_fields=["p_correct", "predicted_answer", "source"])


def turns_sweep() -> list[int]:
    """Queue again the turns left without a reply; return their ids.

    Two cases, both with the turn's lease free: a call still marked `started` (its worker died during the
    call: the lease expired within LEASE_TTL_S), queued at once and that call marked lost; or a turn no
    worker has touched for TURN_SWEEP_STALE_S (its broker message was lost). Turns waiting out a backoff are
    left alone. A second message for a turn is harmless: the lease and the turn's status make it a no-op.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TURN_SWEEP_STALE_S)
    requeued = []
    if _redis_uptime_s() < settings.LEASE_TTL_S:
        # Redis has just (re)started: a restart without persistence lost every lease, and the workers whose
        # calls are alive take theirs again at their next heartbeat. Until then a missing lease proves nothing.
        return requeued
    with _db():
        pending = dict(
            Turn.objects.filter(status=Turn.Status.PENDING)
            .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
            .values_list("id", "enqueued_at")
        )
        orphaned = set(LLMCall.objects.filter(turn_id__in=list(pending), status=LLMCall.Status.STARTED)
                       .values_list("turn_id", flat=True))
        for turn_id, touched in pending.items():
            if turn_id not in orphaned and touched and touched >= stale:
                continue
            if _Lease(turn_id).held():
                continue
            if turn_id in orphaned:
                LLMCall.objects.filter(turn_id=turn_id, status=LLMCall.Status.STARTED).update(
                    status=LLMCall.Status.ERROR, error_kind="worker_lost",
                    error="the worker was lost during the call; the sweeper queued the turn again",
                )
            if Turn.objects.filter(pk=turn_id, status=Turn.Status.PENDING).update(enqueued_at=now):
                requeued.append(turn_id)
    from .tasks import reply_generate_task

    for turn_id in requeued:
        reply_generate_task.delay(turn_id)
    if requeued:
        logger.info("sweeper queued %d turn(s) again", len(requeued))
    return requeued


def _redis_uptime_s() -> float:
    return float(_sync_client().info("server")["uptime_in_seconds"])


class _Lease:
    """A Redis lease on a turn (or a conversation's end-of-step calls): at most one provider call in flight.

    redis-py's `Lock` (its extend and release check the owner atomically). While held, the process's
    heartbeat renews it every LEASE_RENEW_EVERY_S whether or not data arrives; a dead worker's lease
    expires LEASE_TTL_S after its last renewal.
    """

    def __init__(self, turn_id: int, *, kind: str = "turn"):
        self.key = redis_key(kind, turn_id, "lease")
        self.lock = _sync_client().lock(self.key, timeout=settings.LEASE_TTL_S, blocking=False, thread_local=False)
        self._released = False
        self._mutex = threading.Lock()  # a renewal never runs after (or during) the release

    def acquire(self) -> bool:
        if not self.lock.acquire(blocking=False):
            return False
        _heartbeat.add(self)
        return True

    def renew(self) -> bool:
        with self._mutex:
            token = self.lock.local.token
            if self._released or token is None:
                return False
            try:
                self.lock.reacquire()
                return True
            except LockError:
                # The key is gone (Redis restarted without persistence, or this process stalled past the
                # TTL) while the call is alive: take it again, same token, unless another worker holds it.
                if self.lock.acquire(blocking=False, token=token):
                    logger.warning("the lease %s was gone while its call was alive: held again", self.key)
                    return True
                logger.warning("lost the lease %s while its call was alive", self.key)
                return False

    def release(self) -> None:
        _heartbeat.discard(self)
        with self._mutex:
            self._released = True
            try:
                self.lock.release()
            except LockError:
                pass  # it expired, or was never ours
            except (RedisConnectionError, RedisTimeoutError):
                logger.warning("could not release the lease %s (Redis unavailable): it expires on its own", self.key)

    def remaining_s(self) -> float:
        return max(0.0, _sync_client().pttl(self.key) / 1000)

    def held(self) -> bool:
        return bool(_sync_client().exists(self.key))


class _Heartbeat:
    """One thread per process that renews every lease held by it, every LEASE_RENEW_EVERY_S."""

    def __init__(self):
        self._leases: set[_Lease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, lease: _Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, lease: _Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(settings.LEASE_RENEW_EVERY_S)
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                try:
                    if not lease.renew():
                        self.discard(lease)
                except Exception:  # Redis away for a moment: the next beat tries again
                    logger.warning("lease heartbeat failed for %s", lease.key, exc_info=True)


_heartbeat = _Heartbeat()
