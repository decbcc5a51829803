"""Writes on the participant's journey (each takes the participant's row lock first), budgets, withdrawal,
erasure and the retention of PID hashes."""
import functools
import hashlib
import hmac
import json
import random
import re
import secrets
import time
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from explainers import services as explainer_services
from explainers.arms import AVAILABLE_ARM_KINDS, arm_unavailable_reason
from explainers.models import LLMCall, Turn
from studies.audit import audit_record
from studies.models import Study, StudyVersion
from studies.protocol import Protocol
from studies.scoring import answer_evaluate
from studies.selectors import study_get_for_researcher, study_version_open
from studies.services import ARM_UNAVAILABLE, BUDGET, StudyStateError, study_state_set
from studies.spec import pid_pattern_of

from .models import STEP_ORDER, AllocationSequence, ErasedSpend, PageVisit, Participant, Response, ResumeLink, Step
from .pseudonyms import pseudonym as pseudonym_of
from .selectors import arms_open, cost_by_arm, participant_chat_turn, seats_held

_rng = random.SystemRandom()
CLIENT_EVENT_KEYS = ("visibility_changes", "hidden_ms", "paste_count", "first_input_ms", "blur_count")


class EntryRefused(Exception):
    """Entry is not possible; `reason` is one of not_open, paused, full (every arm at its cap), pid_required,
    pid_invalid (not of the study's `recruitment.pid_pattern`), in_progress (that PID's run is active in
    another browser and recruiter session: resuming it needs the same browser or the same SESSION_ID)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StepError(Exception):
    """The participant is not at the step this action belongs to."""


class ConsentRequired(Exception):
    """Nothing may be stored for a participant who has not consented."""


class TooEarly(Exception):
    """The participant tried to leave a page before its minimum time; `remaining_s` says how long."""

    def __init__(self, remaining_s: int):
        super().__init__(f"{remaining_s} s left")
        self.remaining_s = remaining_s


class AllocationError(Exception):
    """No arm of the study can be allocated."""


class ArmsFull(AllocationError):
    """Every arm the platform can run is at its budget cap: nobody new can be allocated."""


class SeatsTaken(AllocationError):
    """The participant's arm filled its seats (`budget.max_completers`) between their consent and their first
    answer: the answer is not stored and they hold no seat (docs/allocation.md, "Budgets")."""


class ArmUnavailable(AllocationError):
    """An arm that allocation would draw cannot run here: the study pauses, nobody is sent elsewhere."""

    def __init__(self, version, arm_id: str, reason: str):
        super().__init__(f"arm {arm_id} of {version} cannot run here: {reason}")
        self.version, self.arm_id, self.reason = version, arm_id, reason


def _pause_on_unavailable_arm(service):
    """Pause the study when `service` met an arm that cannot run. The pause is made after the service's
    transaction has rolled back (nothing of this participant is stored), so that it is kept."""

    @functools.wraps(service)
    def wrapper(*args, **kwargs):
        try:
            return service(*args, **kwargs)
        except ArmUnavailable as unavailable:
            _arm_unavailable_pause(unavailable)
            raise

    return wrapper


SEATS_STRATUM = "seats"  # the AllocationSequence row whose lock serialises allocation under arm caps
FINISHED = (Participant.Status.COMPLETED, Participant.Status.WITHDRAWN, Participant.Status.DECLINED)


def identifier_hash(value: str) -> str:
    """Return the keyed hash under which a recruiter's identifier (PID, session id) is stored."""
    return hmac.new(settings.PID_HASH_KEY.encode(), value.strip().encode(), hashlib.sha256).hexdigest()


def participant_enter(
    *, slug: str, pid: str, recruiter_study_id: str = "", session_id: str = "", language: str = "en",
    link_kind: str | None = None, browser_token: str = "",
) -> Participant:
    """Return the participant for this PID (resuming), or create one. Safe under concurrent entries.

    A PID must match the study's `recruitment.pid_pattern` in full, unless the entry comes through a signed
    pilot or simulated-participant link. An active participant is resumed only by the same browser (its
    session holds `browser_token`, the participant's token) or the same recruiter session (the SESSION_ID
    whose hash was stored at their first entry); anyone else with the PID is refused as `in_progress`.
    """
    version = study_version_open(slug=slug)
    if version is None:
        raise EntryRefused("not_open")
    pid = pid.strip()
    if pid and not link_kind and not pid_valid(spec=version.spec, pid=pid):
        raise EntryRefused("pid_invalid")
    pid_hash = identifier_hash(pid) if pid else None
    session_hash = identifier_hash(session_id) if session_id else ""
    if pid_hash:
        existing = Participant.objects.filter(study_id=version.study_id, pid_hash=pid_hash).first()
        if existing is not None:
            return _resumable(existing, session_hash=session_hash, browser_token=browser_token)
    if version.state != StudyVersion.State.LIVE:
        raise EntryRefused("paused")
    if not pid_hash and not (version.spec["recruitment"]["allow_without_pid"] or link_kind):
        raise EntryRefused("pid_required")
    if _arm_caps(version.spec) and not arms_open(version=version):
        raise EntryRefused("full")
    language = language if language in version.spec["languages"] else version.spec["languages"][0]
    try:
        with transaction.atomic():
            participant = Participant.objects.create(
                token=secrets.token_urlsafe(32),
                study_id=version.study_id,
                version=version,
                version_sha256=version.sha256,
                pid_hash=pid_hash,
                session_hash=session_hash,
                recruiter_study_id=recruiter_study_id[:64],
                language=language,
                is_pilot=link_kind == "pilot",
                is_simulated=link_kind == "simulated",
            )
            participant.pseudonym = pseudonym_of(participant.pk)  # the id is known only now
            participant.save(update_fields=["pseudonym"])
            return participant
    except IntegrityError:
        existing = Participant.objects.get(study_id=version.study_id, pid_hash=pid_hash)
        return _resumable(existing, session_hash=session_hash, browser_token=browser_token)


def pid_valid(*, spec: dict, pid: str) -> bool:
    """Whether `pid` matches the study's recruiter-id pattern in full (docs/study-file.md, `recruitment`)."""
    return re.fullmatch(pid_pattern_of(spec), pid) is not None


def _resumable(participant: Participant, *, session_hash: str, browser_token: str) -> Participant:
    """Return the existing participant if this entry may resume them, else raise EntryRefused("in_progress").

    A finished participant (completed, withdrawn, declined) lands on their end page, which shows nothing of
    their run. An active one needs the same browser or the same recruiter session.
    """
    if participant.status != Participant.Status.ACTIVE:
        return participant
    same_browser = bool(browser_token) and hmac.compare_digest(browser_token, participant.token)
    same_session = bool(session_hash) and hmac.compare_digest(session_hash, participant.session_hash or "")
    if not (same_browser or same_session):
        raise EntryRefused("in_progress")
    return participant


def entry_rate_allow(*, ip: str, session_id: str = "") -> bool:
    """Count one arrival for this client address and recruiter session; return whether both are within
    ENTRY_RATE_PER_IP and ENTRY_RATE_PER_SESSION per ENTRY_RATE_WINDOW_S (0: that limit is off).

    Fixed windows in the cache (Redis); the keys hold keyed hashes, never the address or the session id.
    """
    window = max(1, settings.ENTRY_RATE_WINDOW_S)
    allowed = True
    for kind, value, limit in (("ip", ip, settings.ENTRY_RATE_PER_IP),
                               ("session", session_id, settings.ENTRY_RATE_PER_SESSION)):
        if limit > 0 and value:
            allowed = _window_count(f"entry-rate:{kind}:{identifier_hash(value)[:32]}", window) <= limit and allowed
    return allowed


def _window_count(key: str, window: int) -> int:
    """Add one to the counter of the current `window`-second window of `key`; return the new count."""
    bucket = f"{key}:{int(time.time() // window)}"
    cache.add(bucket, 0, timeout=window + 1)
    try:
        return cache.incr(bucket)
    except ValueError:  # expired between add and incr
        cache.set(bucket, 1, timeout=window + 1)
        return 1


def resume_link_create(*, participant: Participant) -> tuple[str, ResumeLink]:
    """Issue the participant's one-time link to continue on another device; return (token, link).

    Only the token's sha256 is stored. An earlier unused link of theirs stops working: one at a time.
    """
    _require_consent(participant)
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        ResumeLink.objects.filter(participant=participant, used_at__isnull=True).delete()
        link = ResumeLink.objects.create(
            participant=participant, token_hash=_resume_hash(token),
            expires_at=timezone.now() + timedelta(hours=settings.RESUME_LINK_HOURS),
        )
    return token, link


def resume_link_redeem(*, slug: str, token: str) -> Participant | None:
    """Consume a one-time resume link; return its participant with a new token (the run moves to the
    browser that opened the link: the old browser's session no longer finds it), or None when the link is
    unknown, used, expired, of another study, or its participant has finished."""
    if not token:
        return None
    with transaction.atomic():
        link = (ResumeLink.objects.select_for_update(of=("self",)).select_related("participant__study")
                .filter(token_hash=_resume_hash(token), used_at__isnull=True, expires_at__gt=timezone.now()).first())
        if link is None or link.participant.study.slug != slug:
            return None
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
        participant = _lock(link.participant_id)
        if participant.status != Participant.Status.ACTIVE:
            return None
        participant.token = secrets.token_urlsafe(32)
        participant.save(update_fields=["token"])
        return participant


def _resume_hash(token: str) -> str:
    return hashlib.sha256(f"resume:{token}".encode()).hexdigest()


def participant_language_set(*, participant: Participant, language: str) -> None:
    if language in participant.version.spec["languages"] and language != participant.language:
        participant.language = language
        participant.save(update_fields=["language"])


@_pause_on_unavailable_arm
def participant_consent(*, participant_id: int, accept: bool) -> Participant:
    """Record consent (allocating when the study allocates at consent) or the refusal."""
    with transaction.atomic():
        participant = _lock(participant_id)
        if participant.step != Step.CONSENT:
            raise StepError(participant.step)
        spec = participant.version.spec
        now = timezone.now()
        if not accept:
            participant.status = Participant.Status.DECLINED
            participant.step = Step.DONE
            participant.completed_at = now
            participant.save(update_fields=["status", "step", "completed_at"])
            return participant
        consent = spec["consent"]
        participant.consent_version = consent["version"]
        participant.consent_sha256 = hashlib.sha256(
            json.dumps(consent, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()
        participant.consented_at = now
        if spec["allocation"]["when"] == "consent":
            _allocate(participant, stratum="arms")
            participant.form_order = _draw(participant.version, f"forms:{participant.arm}", ["AB", "BA"])[0]
        else:
            participant.form_order = _draw(participant.version, "forms", ["AB", "BA"])[0]
        participant.step = Step.PRE_TEST
        participant.save()
        return participant


def page_visit_shown(*, participant: Participant, page: str) -> PageVisit:
    """Record that a page was shown (first time and count); the clock for its time runs from the first."""
    _require_consent(participant)
    now = timezone.now()
    visit, created = PageVisit.objects.get_or_create(
        participant=participant, page=page,
        defaults={"first_shown_at": now, "last_shown_at": now, "version_sha256": participant.version_sha256},
    )
    if not created:
        PageVisit.objects.filter(pk=visit.pk).update(last_shown_at=now, shown_count=F("shown_count") + 1)
    Participant.objects.filter(pk=participant.pk).update(last_seen_at=now)
    return visit


@_pause_on_unavailable_arm
def response_submit(
    *, participant_id: int, phase: str, item_id: str, values: list[str], confidence: str | None = None,
    client: str = "",
) -> tuple[Participant, bool]:
    """Store the answer to the participant's current item; return (participant, stored).

    A submit for an item that is not the current one (a double click, a stale tab) stores nothing.
    Raises AnswerInvalid, with nothing stored, when the answer does not fit the item.
    """
    with transaction.atomic():
        participant = _lock(participant_id)
        _require_step(participant, phase)
        protocol = Protocol(participant.version.spec)
        item_ids = protocol.phase_item_ids(phase, participant.form_order)
        answered = set(participant.responses.filter(phase=phase).values_list("item_id", flat=True))
        remaining = [i for i in item_ids if i not in answered]
        if not remaining or item_id != remaining[0]:
            return participant, False
        scored = answer_evaluate(protocol, item_id, values, confidence, participant.version.target_keys)
        if participant.arm and not Response.objects.filter(participant=participant).exists():
            _seat_take(participant)  # the first answer takes the seat (raises SeatsTaken: nothing stored)
        visit = _visit_submit(participant, page=f"{phase}:{item_id}", client=client)
        Response.objects.create(
            participant=participant,
            phase=phase,
            item_id=item_id,
            form=protocol.phase_form(phase, participant.form_order),
            concept=protocol.items[item_id].get("concept") or "",
            value=scored.value,
            score=scored.score,
            correct=scored.correct,
            confidence=scored.confidence,
            time_ms=visit.server_ms,
            version_sha256=participant.version_sha256,
        )
        if len(remaining) == 1:
            if phase == Step.PRE_TEST and not participant.arm:
                _allocate(participant, stratum=_pretest_stratum(participant, protocol))
            _advance(participant)
        return participant, True


def chat_conversation(*, participant_id: int):
    """Return the participant's conversation with their arm's explainer, starting it on first use."""
    with transaction.atomic():
        return _conversation(_lock(participant_id))


def chat_send(*, participant_id: int, text: str, nonce: str = "") -> Turn:
    """Save the participant's chat message and queue the reply (raises LimitReached, TurnInFlight)."""
    with transaction.atomic():
        conversation = _conversation(_lock(participant_id))
        try:
            return explainer_services.turn_create(conversation=conversation, text=text, nonce=nonce)
        except explainer_services.LimitReached as reached:
            limit = reached  # commit the conversation's end that turn_create stored, then tell the caller
    raise limit


def _conversation(participant: Participant):
    """Call with the participant's row locked."""
    _require_step(participant, Step.EXPLANATION)
    if participant.conversation is None:
        pretest = [(r.item_id, r.score) for r in participant.responses.filter(phase=Step.PRE_TEST) if r.score is not None]
        participant.conversation = explainer_services.conversation_start(
            version=participant.version, arm_id=participant.arm, language=participant.language, pretest=pretest,
            position=_arm_position(participant),
        )
        participant.save(update_fields=["conversation"])
    return participant.conversation


def _arm_position(participant: Participant) -> int:
    """The participant's place (from 1) in their arm's allocation order: a yoked arm matches on it."""
    earlier = Q(allocated_at__lt=participant.allocated_at) | Q(allocated_at=participant.allocated_at, pk__lt=participant.pk)
    return Participant.objects.filter(earlier, version=participant.version, arm=participant.arm).count() + 1


CHAT_RETRY_MODES = explainer_services.RETRY_MODES  # "again", "continue"


def chat_retry(*, participant_id: int, turn_id: int, mode: str = "again") -> Turn:
    """Ask again for the reply to a failed message (or a failed agentic opening).

    `again` starts the reply afresh; `continue` carries on from the text the participant saw before it
    was cut off. Raise ValueError for another mode, and Turn.DoesNotExist unless the turn is one of this
    participant's own failed turns.
    """
    if mode not in CHAT_RETRY_MODES:
        raise ValueError(f"unknown retry mode: {mode!r}")
    with transaction.atomic():
        participant = _lock(participant_id)
        _require_step(participant, Step.EXPLANATION)
        turn = participant_chat_turn(participant=participant, turn_id=turn_id)
        if turn is None or turn.status != Turn.Status.FAILED:
            raise Turn.DoesNotExist(turn_id)
        return explainer_services.turn_retry(turn=turn, mode=mode)


def explanation_finish(*, participant_id: int, client: str = "") -> Participant:
    """Leave the explanation step, once the arm's minimum time has passed."""
    with transaction.atomic():
        participant = _lock(participant_id)
        _require_step(participant, Step.EXPLANATION)
        arm = Protocol(participant.version.spec).arms[participant.arm]
        min_seconds = int(arm.get("limits", {}).get("min_seconds") or 0)
        visit = PageVisit.objects.filter(participant=participant, page=Step.EXPLANATION).first()
        conversation = participant.conversation
        if conversation is not None and conversation.ended_at:
            min_seconds = 0  # a limit ended the conversation: nothing more to do on this page
        if min_seconds:
            if visit is None:  # posted without ever loading the page: the clock has not started
                raise TooEarly(min_seconds)
            left = visit.first_shown_at + timedelta(seconds=min_seconds) - timezone.now()
            if left.total_seconds() > 0:
                raise TooEarly(int(left.total_seconds()) + 1)
        _visit_submit(participant, page=Step.EXPLANATION, client=client)
        if conversation is not None:
            protocol = Protocol(participant.version.spec)
            post_items = [protocol.items[i] for i in protocol.phase_item_ids(Step.POST_TEST, participant.form_order)]
            explainer_services.conversation_finish(conversation=conversation, post_items=post_items)
        _advance(participant)
        return participant


def participant_complete(*, participant_id: int, client: str = "") -> tuple[Participant, bool]:
    """Finish the study from the debrief; return (participant, completed_now). A second call completes nothing."""
    with transaction.atomic():
        participant = _lock(participant_id)
        if participant.status == Participant.Status.COMPLETED:
            return participant, False
        _require_step(participant, Step.DEBRIEF)
        _visit_submit(participant, page=Step.DEBRIEF, client=client)
        participant.status = Participant.Status.COMPLETED
        participant.step = Step.DONE
        participant.completed_at = timezone.now()
        participant.save(update_fields=["status", "step", "completed_at"])
        return participant, True


# --- internals -------------------------------------------------------------------------------


def _lock(participant_id: int) -> Participant:
    return Participant.objects.select_for_update(of=("self",)).select_related("version", "conversation").get(pk=participant_id)


def _require_consent(participant: Participant) -> None:
    if not participant.has_consented or participant.status != Participant.Status.ACTIVE:
        raise ConsentRequired(f"participant {participant.pk} has no active consent")


def _require_step(participant: Participant, step: str) -> None:
    """Refuse unless the participant has an active consent and is at `step`."""
    _require_consent(participant)
    if participant.step != step:
        raise StepError(participant.step)


def _advance(participant: Participant) -> None:
    """Move to the next step, skipping an empty questionnaire. Call with the participant's row locked."""
    index = STEP_ORDER.index(participant.step) + 1
    if STEP_ORDER[index] == Step.QUESTIONNAIRE and not participant.version.spec["instruments"].get("questionnaire"):
        index += 1
    participant.step = STEP_ORDER[index]
    participant.save(update_fields=["step", "arm", "stratum", "allocation_index", "allocated_at"])


def _visit_submit(participant: Participant, *, page: str, client: str) -> PageVisit:
    now = timezone.now()
    visit, _ = PageVisit.objects.get_or_create(
        participant=participant, page=page,
        defaults={"first_shown_at": now, "last_shown_at": now, "version_sha256": participant.version_sha256},
    )
    visit.submitted_at = now
    visit.server_ms = int((now - visit.first_shown_at).total_seconds() * 1000)
    visit.client = _client_events(client)
    visit.save(update_fields=["submitted_at", "server_ms", "client"])
    return visit


def _client_events(raw: str) -> dict:
    """Keep only the known, non-negative integer client counters; the browser is not trusted."""
    if not raw or len(raw) > settings.CLIENT_EVENTS_MAX_BYTES:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: int(v) for k, v in data.items()
        if k in CLIENT_EVENT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 10**9
    }


def _pretest_stratum(participant: Participant, protocol: Protocol) -> str:
    scores = [r.score for r in participant.responses.filter(phase=Step.PRE_TEST) if r.score is not None]
    proportion = sum(scores) / len(scores) if scores else 0.0
    cuts = protocol.spec["allocation"].get("strata") or [0.5]
    band = sum(1 for cut in cuts if proportion >= cut)
    return f"band{band}:{participant.form_order}"


def _allocate(participant: Participant, *, stratum: str) -> None:
    """Assign an arm from the stratum's permuted blocks (or weighted draw). Call with the row locked.

    Arms at a budget cap are left out (docs/allocation.md, "Budgets"): under caps, every allocation of
    the version first takes the lock of its "seats" row, so seats are counted and taken one at a time.
    An arm that could be drawn but cannot run here (no language model) is never skipped: ArmUnavailable
    is raised, and the service's wrapper pauses the study (docs/allocation.md, "An arm that cannot run").
    """
    version = participant.version
    spec = version.spec
    arms = list(spec["arms"])
    unknown = [a["id"] for a in arms if a["kind"] not in AVAILABLE_ARM_KINDS]
    if unknown:
        raise AllocationError(f"arm(s) {', '.join(unknown)} of {version} are of a kind this platform cannot run")
    study_budget_check(version=version)  # may pause the study: new entries stop, this participant goes on
    allowed = None
    if _arm_caps(spec):
        _sequence_locked(version, SEATS_STRATUM)
        allowed = arms_open(version=version, arms=arms)
        arms = [a for a in arms if a["id"] in allowed]
        if not arms:
            raise ArmsFull(f"every arm of {version} is at its cap")
    for arm in arms:  # every arm of a block will be drawn: one that cannot run would be dropped
        reason = arm_unavailable_reason(arm) if int(arm.get("weight") or 0) > 0 else None
        if reason is not None:
            raise ArmUnavailable(version, arm["id"], reason)
    allocation = spec["allocation"]
    if allocation["method"] == "blocked":
        per_block = max(1, int(allocation["block_size"]) // sum(int(a["weight"]) for a in spec["arms"]))
        block = [a["id"] for a in arms for _ in range(int(a["weight"]) * per_block)]
        arm_id, index = _draw(version, stratum, block, allowed=allowed)
    else:
        choice = _rng.choices([a["id"] for a in arms], weights=[a["weight"] for a in arms])
        arm_id, index = _draw(version, stratum, choice)
    participant.arm = arm_id
    participant.stratum = stratum.split(":")[0] if stratum.startswith("band") else ""
    participant.allocation_index = index
    participant.allocated_at = timezone.now()


def _seat_take(participant: Participant) -> None:
    """Check, under the version's seats lock, that the participant's arm still has a seat for them; raise
    SeatsTaken if its `budget.max_completers` seats were all taken since they were allocated at consent.

    Call with the participant's row locked, before their first answer is stored: that answer is the seat.
    """
    version = participant.version
    arm = next((a for a in version.spec["arms"] if a["id"] == participant.arm), None)
    cap = ((arm or {}).get("budget") or {}).get("max_completers")
    if cap is None or participant.is_pilot or participant.is_simulated:
        return
    _sequence_locked(version, SEATS_STRATUM)
    if seats_held(version=version).get(participant.arm, 0) >= cap:
        raise SeatsTaken(f"arm {participant.arm} of {version} has no seat left")


def _arm_unavailable_pause(unavailable: ArmUnavailable) -> None:
    """Pause the live version, audited as the system with the arm and the reason (a no-op if not live)."""
    version = unavailable.version
    try:
        study_state_set(slug=version.study.slug, state=StudyVersion.State.PAUSED, actor=None, reason=ARM_UNAVAILABLE,
                        number=version.number, figures={"arm": unavailable.arm_id, "why": unavailable.reason})
    except StudyStateError:
        pass  # paused, closed or replaced meanwhile


def _draw(version: StudyVersion, stratum: str, block: list[str], *, allowed: set[str] | None = None) -> tuple[str, int]:
    """Take the next entry of the stratum's current permuted block (a fresh shuffle of `block` when used up).

    Entries not in `allowed` (arms that reached a cap since the block was drawn) are passed over.
    Returns (entry, running index in the stratum). Locks the stratum's row for the transaction.
    """
    sequence = _sequence_locked(version, stratum)
    while True:
        if sequence.position >= len(sequence.block):
            sequence.block = _rng.sample(block, len(block))
            sequence.block_number += 1
            sequence.position = 0
        entry = sequence.block[sequence.position]
        sequence.position += 1
        if allowed is None or entry in allowed:
            break
    sequence.arm_counts[entry] = sequence.arm_counts.get(entry, 0) + 1
    sequence.total += 1
    sequence.save()
    return entry, sequence.total


def _sequence_locked(version: StudyVersion, stratum: str) -> AllocationSequence:
    sequence, _ = AllocationSequence.objects.get_or_create(version=version, stratum=stratum)
    return AllocationSequence.objects.select_for_update().get(pk=sequence.pk)


# --- budgets ---------------------------------------------------------------------------------------


def _arm_caps(spec: dict) -> bool:
    """Whether any arm has a cap that closes it (completers or cost)."""
    return any((arm.get("budget") or {}).keys() & {"max_completers", "max_cost_usd"} for arm in spec["arms"])


def study_budget_check(*, version: StudyVersion) -> bool:
    """Pause the live version when its LLM calls have cost `budget.max_cost_usd`; return whether it paused now.

    Called at every allocation and by a beat task (`participants.tasks.budgets_check_task`). The pause is
    audited as "budget_pause" by the system, with the figures. People inside finish.
    """
    cap = (version.spec.get("budget") or {}).get("max_cost_usd")
    if cap is None or version.state != StudyVersion.State.LIVE:
        return False
    cost = sum(cost_by_arm(version=version).values(), Decimal(0))
    if cost < Decimal(str(cap)):
        return False
    try:
        study_state_set(slug=version.study.slug, state=StudyVersion.State.PAUSED, actor=None, reason=BUDGET,
                        number=version.number, figures={"cost_usd": str(cost), "max_cost_usd": cap})
    except StudyStateError:
        return False  # paused, closed or replaced meanwhile
    version.state = StudyVersion.State.PAUSED
    return True


def budgets_check() -> int:
    """Check the cost cap of every live version that has one; return how many were paused now."""
    versions = StudyVersion.objects.select_related("study").filter(state=StudyVersion.State.LIVE)
    return sum(study_budget_check(version=v) for v in versions if (v.spec.get("budget") or {}).get("max_cost_usd"))


# --- withdrawal, erasure, retention ------------------------------------------------------------------


def participant_withdraw(*, participant_id: int) -> tuple[Participant, bool]:
    """Withdraw the participant (any step); return (participant, withdrawn_now). A second call does nothing.

    The study file's `withdrawal.data` decides: `keep` keeps everything, `delete` deletes their answers,
    page visits and conversation (turns, LLM calls, learner-model snapshots). The row stays as a withdrawn
    stub either way, so the same PID lands on the withdrawn page instead of starting again.
    """
    with transaction.atomic():
        participant = _lock(participant_id)
        if participant.status != Participant.Status.ACTIVE:
            return participant, False
        mode = (participant.version.spec.get("withdrawal") or {}).get("data", "keep")
        before = {"status": participant.status, "step": participant.step}
        if mode == "delete":
            _data_delete(participant)
        participant.status = Participant.Status.WITHDRAWN
        participant.step = Step.DONE
        participant.completed_at = timezone.now()
        participant.save(update_fields=["status", "step", "completed_at", "conversation"])
        # the pseudonym is the stub's name too: it links to nothing the stub does not already show
        audit_record(actor=None, action="participant_withdraw", study_slug=participant.study.slug,
                     object_type="participant", object_id=participant.pseudonym, before=before,
                     after={"status": participant.status, "data": mode, "arm": participant.arm})
        return participant, True


@transaction.atomic
def participant_erase(*, actor, study: Study, pseudonym: str) -> dict:
    """Delete everything of one participant, their row and its identifiers included; return what the audit says.

    Owners only (the service checks, whatever the caller did). The audit row holds no identifier: not the
    pseudonym, token or PID hash, only that one participant of that arm and step was erased.
    """
    if actor is not None:
        study_get_for_researcher(user=actor, slug=study.slug, needs="members")
    participant = (Participant.objects.select_for_update(of=("self",)).select_related("version", "conversation")
                   .filter(study=study, pseudonym=pseudonym).first())
    if participant is None or not pseudonym:
        raise Http404("no such participant in this study")
    summary = {"erased": 1, "version": participant.version.number, "arm": participant.arm,
               "step": participant.step, "status": participant.status}
    _data_delete(participant)
    participant.delete()
    audit_record(actor=actor, action="participant_erase", study_slug=study.slug, object_type="participant",
                 object_id="", before=None, after=summary)
    return summary


def _data_delete(participant: Participant) -> None:
    """Delete the participant's answers, page visits and conversation; keep what its LLM calls cost.

    Call with the participant's row locked. Another conversation that was shown this one (a yoked or a
    mismatched learner model) keeps its own record but loses the link to it (SET_NULL).
    """
    Response.objects.filter(participant=participant).delete()
    PageVisit.objects.filter(participant=participant).delete()
    conversation = participant.conversation
    if conversation is None:
        return
    spent = LLMCall.objects.filter(turn__conversation=conversation).aggregate(
        c=Coalesce(Sum("cost_usd"), Decimal(0)), i=Coalesce(Sum("input_tokens"), 0), o=Coalesce(Sum("output_tokens"), 0),
    )
    row, _ = ErasedSpend.objects.get_or_create(version_id=participant.version_id, arm=participant.arm)
    ErasedSpend.objects.filter(pk=row.pk).update(
        participants=F("participants") + 1, cost_usd=F("cost_usd") + spent["c"], tokens=F("tokens") + spent["i"] + spent["o"],
    )
    participant.conversation = None
    participant.save(update_fields=["conversation"])
    conversation.delete()


def participant_identifiers_expire(*, days: int | None = None) -> int:
    """Clear the PID and session hashes of participants who finished more than `days` ago; return how many.

    `days` defaults to PID_HASH_RETENTION_DAYS (0: keep them for ever). Afterwards the same PID is a new
    person to the study: duplicate detection ends there (docs/participant-journey.md). Audited per study.
    """
    days = settings.PID_HASH_RETENTION_DAYS if days is None else days
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    expired = (Participant.objects.filter(status__in=FINISHED, completed_at__lt=cutoff)
               .filter(Q(pid_hash__isnull=False) | ~Q(session_hash="")))
    cleared = 0
    for study_id, slug in Study.objects.filter(participants__in=expired).distinct().values_list("id", "slug"):
        with transaction.atomic():
            n = expired.filter(study_id=study_id).update(pid_hash=None, session_hash="")
            if n:
                audit_record(actor=None, action="pid_hashes_expire", study_slug=slug, object_type="participant",
                             after={"participants": n, "finished_before": cutoff.isoformat(), "days": days})
            cleared += n
    return cleared
