"""Researcher reads shared by the console pages and the API: participants, transcripts, arm counts.

Every function takes a `study` already resolved through the gatekeeper
(`studies.selectors.study_get_for_researcher`); none checks access itself. Each runs a fixed number of
queries whatever the number of participants or turns.
"""
from __future__ import annotations

from collections import defaultdict

from django.db.models import BigIntegerField, Case, Count, IntegerField, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.http import Http404

from explainers.models import LearnerModelSnapshot, LLMCall
from participants.models import PageVisit, Participant, Response
from participants.services import identifier_hash
from studies.models import Membership, Study, StudyVersion
from studies.selectors import studies_for_researcher

from .monitor import BOT, PILOT, REAL

# Who a participant is, as the monitor counts them (analysis.monitor.participant_group): the filters of each.
PARTICIPANT_GROUPS = {
    REAL: {"is_simulated": False, "is_pilot": False},
    BOT: {"is_simulated": True},
    PILOT: {"is_simulated": False, "is_pilot": True},
}

def _current_versions():
    """The version researchers look at, per study: the open (live or paused) one, else the newest."""
    return StudyVersion.objects.filter(study=OuterRef("pk")).annotate(
        open_first=Case(When(state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED], then=Value(0)),
                        default=Value(1), output_field=IntegerField())
    ).order_by("open_first", "-number")


def study_list(*, user):
    """Return the user's studies, newest first, each with `role`, `state` and `version` (the current one's)."""
    current = _current_versions()
    return studies_for_researcher(user=user).annotate(
        state=Subquery(current.values("state")[:1]), version=Subquery(current.values("number")[:1]),
    )


def study_overview(*, study: Study) -> dict:
    """Return the study page's header numbers: its current version, how many versions and participants."""
    return {
        "current_version": study_version_current(study=study),
        "versions": StudyVersion.objects.filter(study=study).count(),
        "participants": Participant.objects.filter(study=study).count(),
    }


def study_members(*, study: Study):
    """Return the study's memberships with their users, owners first."""
    order = Case(*(When(role=r, then=Value(i)) for i, r in enumerate(Membership.Role.values)),
                 output_field=IntegerField())
    return Membership.objects.filter(study=study).select_related("user").order_by(order, "user__username")


PARTICIPANT_LIST_FIELDS = (
    "id", "pseudonym", "arm", "step", "status", "is_pilot", "is_simulated", "language", "form_order",
    "created_at", "consented_at", "allocated_at", "completed_at", "last_seen_at", "version__number",
)


def participants_for_study(*, study: Study, arm: str | None = None, step: str | None = None,
                           status: str | None = None, is_simulated: bool | None = None,
                           is_pilot: bool | None = None, group: str | None = None):
    """Return the study's participants, filtered, ordered by id, with what the participant list shows.

    `group` is a key of PARTICIPANT_GROUPS ("real", "bot", "pilot"): the participants the monitor counts
    under that name.
    """
    qs = Participant.objects.filter(study=study)
    if group:
        qs = qs.filter(**PARTICIPANT_GROUPS[group])
    if arm:
        qs = qs.filter(arm=arm)
    if step:
        qs = qs.filter(step=step)
    if status:
        qs = qs.filter(status=status)
    if is_simulated is not None:
        qs = qs.filter(is_simulated=is_simulated)
    if is_pilot is not None:
        qs = qs.filter(is_pilot=is_pilot)
    return qs.select_related("version").only(*PARTICIPANT_LIST_FIELDS).order_by("id")


def participant_find_by_pid(*, study: Study, pid: str) -> Participant | None:
    """Return the study's participant who entered with this recruiter id (Prolific PID), or None.

    The PID is hashed with the key the entry stored it under (participants.services.identifier_hash) and
    only the hash is compared: the PID itself is never stored, and callers must not log it. None also for
    a participant whose hash was cleared after PID_HASH_RETENTION_DAYS, and for pilots and bots (they
    entered without one). One query.
    """
    pid = pid.strip()
    if not pid:
        return None
    return (Participant.objects.filter(study=study, pid_hash=identifier_hash(pid))
            .select_related("version").only(*PARTICIPANT_LIST_FIELDS).first())


def _counter(key: str):
    return Cast(KeyTextTransform(key, "client"), BigIntegerField())


def participant_integrity(*, participant_ids: list[int]) -> dict[int, dict]:
    """Return the integrity signals of these participants (one query), as the export computes them.

    paste_count, hidden_ms and visibility_changes are sums over the participant's pages (the browser's
    counters); pages_reloaded counts pages shown more than once. A participant with no page visit is absent.
    """
    if not participant_ids:
        return {}
    rows = (
        PageVisit.objects.filter(participant_id__in=participant_ids).values("participant_id")
        .annotate(paste_count=Sum(_counter("paste_count")), hidden_ms=Sum(_counter("hidden_ms")),
                  visibility_changes=Sum(_counter("visibility_changes")),
                  pages_reloaded=Count("id", filter=Q(shown_count__gt=1)))
    )
    return {
        r["participant_id"]: {
            "paste_count": r["paste_count"] or 0, "hidden_ms": r["hidden_ms"] or 0,
            "visibility_changes": r["visibility_changes"] or 0, "pages_reloaded": r["pages_reloaded"],
        }
        for r in rows
    }


def participant_get(*, study: Study, pseudonym: str) -> Participant:
    """Return the study's participant with this pseudonym; Http404 if there is none in this study."""
    participant = (Participant.objects.select_related("version", "conversation")
                   .filter(study=study, pseudonym=pseudonym).first())
    if participant is None:
        raise Http404("no such participant in this study")
    return participant


# --- the transcript -----------------------------------------------------------------------------

_LLM_CALL_FIELDS = (
    "id", "turn_id", "purpose", "attempt", "status", "provider", "model", "model_reported", "scripted",
    "started_at", "ttft_ms", "latency_ms", "input_tokens", "output_tokens", "cost_usd", "error_kind", "error",
    "http_status", "retry_after_s",
)


def participant_transcript(*, study: Study, pseudonym: str) -> dict:
    """Return one participant's conversation turn by turn, with its LLM calls and learner-model timeline.

    {"participant": {...}, "conversation": {...} or None, "initial_snapshot": {...} or None,
     "turns": [{..., "llm_calls": [...], "snapshot": {...} or None, "changes": {...} or None}]}

    A turn's `snapshot` is the learner model stored after that turn (snapshots hang on the participant's
    turn they respond to) and `changes` what changed since the snapshot before it. LLM calls hang on the
    participant turn being answered. Five queries, whatever the length of the conversation.
    Raises Http404 for a pseudonym not in this study.
    """
    participant = participant_get(study=study, pseudonym=pseudonym)
    arms = {a["id"]: a for a in participant.version.spec["arms"]}
    summary = {
        "pseudonym": participant.pseudonym,
        "version": participant.version.number,
        "arm": participant.arm,
        "arm_kind": arms.get(participant.arm, {}).get("kind", ""),
        "step": participant.step,
        "status": participant.status,
        "language": participant.language,
        "is_pilot": participant.is_pilot,
        "is_simulated": participant.is_simulated,
        "created_at": participant.created_at,
        "consented_at": participant.consented_at,
        "allocated_at": participant.allocated_at,
        "completed_at": participant.completed_at,
    }
    conversation = participant.conversation
    if conversation is None:
        return {"participant": summary, "conversation": None, "initial_snapshot": None, "turns": []}

    turns = list(conversation.turns.order_by("created_at", "id"))
    calls: dict[int, list[dict]] = defaultdict(list)
    for call in (LLMCall.objects.filter(turn__conversation=conversation).order_by("started_at", "id")
                 .values(*_LLM_CALL_FIELDS)):
        call["cost_usd"] = None if call["cost_usd"] is None else float(call["cost_usd"])
        calls[call.pop("turn_id")].append(call)
    snapshots = list(LearnerModelSnapshot.objects.filter(conversation=conversation).order_by("index")
                     .values("index", "turn_id", "source", "schema_version", "state", "created_at"))

    initial = None
    by_turn: dict[int, tuple[dict, dict | None]] = {}
    previous = None
    for snapshot in snapshots:
        change = None if previous is None else snapshot_changes(previous["state"], snapshot["state"])
        if snapshot["turn_id"] is None and initial is None:
            initial = snapshot
        elif snapshot["turn_id"] is not None:
            by_turn[snapshot["turn_id"]] = (snapshot, change)  # the last one stored for the turn wins
        previous = snapshot

    rows = []
    for turn in turns:
        snapshot, change = by_turn.get(turn.pk, (None, None))
        rows.append({
            "id": turn.pk,
            "author": turn.author,
            "text": turn.text,
            "status": turn.status,
            "reply_to": turn.reply_to_id,
            "created_at": turn.created_at,
            "first_token_at": turn.first_token_at,
            "completed_at": turn.completed_at,
            "scripted": turn.scripted,
            "act": turn.act,
            "concept": turn.concept,
            "check_item": turn.check_item,
            "answers_check": turn.answers_check_id,
            "check_correct": turn.check_correct,
            "tool_calls": turn.tool_calls or [],
            "error_kind": turn.error_kind,
            "llm_calls": calls.get(turn.pk, []),
            "snapshot": _snapshot_out(snapshot),
            "changes": change if snapshot is not None else None,
        })
    return {
        "participant": summary,
        "conversation": {
            "arm": conversation.arm,
            "language": conversation.language,
            "scripted": conversation.scripted,
            "started_at": conversation.started_at,
            "ended_at": conversation.ended_at,
            "end_reason": conversation.end_reason,
            "meeting_note": conversation.meeting_note,
        },
        "initial_snapshot": _snapshot_out(initial),
        "turns": rows,
    }


def _snapshot_out(snapshot: dict | None) -> dict | None:
    if snapshot is None:
        return None
    return {k: snapshot[k] for k in ("index", "source", "schema_version", "state", "created_at")}


def snapshot_changes(before: dict, after: dict) -> dict:
    """Return what changed between two learner-model states.

    {"mastery": {concept: {"before": x or None, "after": y or None, "delta": y - x or None}} (changed only),
     "misconceptions_added": [...], "misconceptions_removed": [...],
     "next_goal": {"before": ..., "after": ...} or None (unchanged), "why": the new state's reason}
    """
    before_c = (before or {}).get("concepts") or {}
    after_c = (after or {}).get("concepts") or {}
    mastery = {}
    for concept in sorted(set(before_c) | set(after_c)):
        x = (before_c.get(concept) or {}).get("mastery")
        y = (after_c.get(concept) or {}).get("mastery")
        if x != y:
            delta = round(y - x, 3) if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None
            mastery[concept] = {"before": x, "after": y, "delta": delta}
    mis_before = list((before or {}).get("misconceptions") or [])
    mis_after = list((after or {}).get("misconceptions") or [])
    goal_before, goal_after = (before or {}).get("next_goal"), (after or {}).get("next_goal")
    return {
        "mastery": mastery,
        "misconceptions_added": [m for m in mis_after if m not in mis_before],
        "misconceptions_removed": [m for m in mis_before if m not in mis_after],
        "next_goal": None if goal_before == goal_after else {"before": goal_before, "after": goal_after},
        "why": (after or {}).get("why", ""),
    }


# --- arms ---------------------------------------------------------------------------------------


def study_version_current(*, study: Study) -> StudyVersion | None:
    """The version researchers look at: the open (live or paused) one, else the newest."""
    versions = StudyVersion.objects.filter(study=study)
    return (versions.filter(state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED]).first()
            or versions.order_by("-number").first())


def arm_counts(*, study: Study, version: StudyVersion | None = None) -> list[dict]:
    """Return each arm of the current version with its weight, kind, how many participants it holds and its budget.

    Counts are over the version's participants (allocation runs per version), pilots and simulated
    participants included and also counted apart. `budget` is the arm's caps and use
    (participants.selectors.study_budget_state): seats used, cost so far, and whether allocation still
    sends people there. Six queries.
    """
    from participants.selectors import study_budget_state

    version = version or study_version_current(study=study)
    if version is None:
        return []
    S = Participant.Status
    counts = {
        row["arm"]: row
        for row in Participant.objects.filter(version=version).exclude(arm="").values("arm").annotate(
            allocated=Count("id"),
            active=Count("id", filter=Q(status=S.ACTIVE)),
            completed=Count("id", filter=Q(status=S.COMPLETED)),
            completed_counted=Count("id", filter=Q(status=S.COMPLETED, is_pilot=False, is_simulated=False)),
            withdrawn=Count("id", filter=Q(status=S.WITHDRAWN)),
            simulated=Count("id", filter=Q(is_simulated=True)),
            pilot=Count("id", filter=Q(is_pilot=True)),
        )
    }
    budgets = {b["arm"]: b for b in study_budget_state(version=version)["arms"]}
    arms = []
    for arm in version.spec["arms"]:
        row = counts.get(arm["id"], {})
        label = arm.get("label")
        arms.append({
            "id": arm["id"],
            "kind": arm["kind"],
            "weight": arm["weight"],
            "label": label.get("en", "") if isinstance(label, dict) else (label or ""),
            "version": version.number,
            "allocated": row.get("allocated", 0),
            "active": row.get("active", 0),
            "completed": row.get("completed", 0),
            "completed_counted": row.get("completed_counted", 0),
            "withdrawn": row.get("withdrawn", 0),
            "simulated": row.get("simulated", 0),
            "pilot": row.get("pilot", 0),
            "budget": budgets[arm["id"]],
        })
    return arms


def participant_activity(*, study: Study, pseudonym: str) -> dict:
    """One participant's pages (time on each, reloads, pastes) and answers (score per phase), for the
    transcript page: the whole record of a static-arm participant, and the test scores of any other.

    Three queries; raises Http404 for a pseudonym not in this study.
    """
    participant = participant_get(study=study, pseudonym=pseudonym)
    pages = list(
        PageVisit.objects.filter(participant=participant).order_by("first_shown_at", "id")
        .values("page", "first_shown_at", "submitted_at", "server_ms", "shown_count", "client")
    )
    answers = list(
        Response.objects.filter(participant=participant).order_by("created_at", "id")
        .values("phase", "item_id", "concept", "value", "score", "correct", "confidence", "time_ms")
    )
    phases: dict[str, dict] = {}
    for answer in answers:
        phase = phases.setdefault(answer["phase"], {"phase": answer["phase"], "answers": [], "scored": 0, "total": 0.0})
        phase["answers"].append(answer)
        if answer["score"] is not None:
            phase["scored"] += 1
            phase["total"] += answer["score"]
    for phase in phases.values():
        phase["score"] = phase["total"] / phase["scored"] if phase["scored"] else None
    return {
        "pages": pages,
        "phases": list(phases.values()),
        "time_s": sum(p["server_ms"] or 0 for p in pages) / 1000,
    }
