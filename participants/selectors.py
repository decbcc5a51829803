"""Reads on the participant's journey."""
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from urllib.parse import quote

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from explainers.arms import arm_available
from explainers.models import LLMCall, Turn
from studies.models import StudyVersion
from studies.protocol import Protocol

from .models import ErasedSpend, Participant, Response, Step

INSTRUMENT_STEPS = (Step.PRE_TEST, Step.POST_TEST, Step.QUESTIONNAIRE)


@dataclass(frozen=True)
class CurrentItem:
    item: dict
    number: int
    total: int


def participant_get_by_token(*, token: str) -> Participant | None:
    """The gatekeeper: the only way views get a participant."""
    if not token:
        return None
    return Participant.objects.select_related("version", "study").filter(token=token).first()


def participant_current_item(*, participant: Participant) -> CurrentItem | None:
    """Return the first unanswered item of the participant's current instrument step."""
    if participant.step not in INSTRUMENT_STEPS:
        return None
    protocol = Protocol(participant.version.spec)
    item_ids = protocol.phase_item_ids(participant.step, participant.form_order)
    answered = set(
        Response.objects.filter(participant=participant, phase=participant.step).values_list("item_id", flat=True)
    )
    for number, item_id in enumerate(item_ids, start=1):
        if item_id not in answered:
            return CurrentItem(item=protocol.items[item_id], number=number, total=len(item_ids))
    return None


def completion_url(*, participant: Participant) -> str:
    """Return where a finished participant goes: the recruiter's URL with the right code.

    Only for a participant who completed, declined or withdrew (these two get the no-consent code); the
    completion code exists nowhere before.
    """
    recruitment = participant.version.spec["recruitment"]
    if participant.status == Participant.Status.COMPLETED:
        code = recruitment["completion_code"]
    elif participant.status in (Participant.Status.DECLINED, Participant.Status.WITHDRAWN):
        code = recruitment["no_consent_code"]
    else:
        raise ValueError("the participant has not finished")
    return recruitment["completion_url"].replace("{code}", quote(code))


def participant_chat_turn(*, participant: Participant, turn_id: int) -> Turn | None:
    """Return a turn of this participant's conversation whose reply they may follow: one of their own
    messages, or the explainer's opening (an agentic arm speaks first), else None."""
    if participant.conversation_id is None:
        return None
    followed = Q(author=Turn.Author.PARTICIPANT) | Q(author=Turn.Author.EXPLAINER, reply_to__isnull=True)
    return Turn.objects.filter(followed, pk=turn_id, conversation_id=participant.conversation_id).first()


# --- budgets -------------------------------------------------------------------------------------


def seats_held(*, version: StudyVersion) -> dict[str, int]:
    """Per arm, the seats taken: completed, or active with a first answer stored and seen within
    SEAT_HOLD_MINUTES. One query.

    Opening the link or consenting takes no seat: the first answer does (docs/allocation.md, "Budgets").
    Pilots and simulated participants take none. A seat is freed by withdrawal, erasure, or an active
    participant not seen for SEAT_HOLD_MINUTES.
    """
    cutoff = timezone.now() - timedelta(minutes=settings.SEAT_HOLD_MINUTES)
    recent = Q(last_seen_at__gte=cutoff) | Q(allocated_at__gte=cutoff)
    answered = Exists(Response.objects.filter(participant=OuterRef("pk")))
    held = Q(status=Participant.Status.COMPLETED) | (Q(status=Participant.Status.ACTIVE) & recent & answered)
    rows = (Participant.objects.filter(held, version=version, is_pilot=False, is_simulated=False)
            .exclude(arm="").values("arm").annotate(n=Count("id")).values_list("arm", "n"))
    return dict(rows)


def cost_by_arm(*, version: StudyVersion) -> dict[str, Decimal]:
    """Per arm, what its LLM calls cost (stored calls plus erased participants' spend). Two queries."""
    costs: dict[str, Decimal] = {}
    calls = (LLMCall.objects.filter(turn__conversation__version=version)
             .values("turn__conversation__arm").annotate(c=Coalesce(Sum("cost_usd"), Decimal(0)))
             .values_list("turn__conversation__arm", "c"))
    for arm, cost in calls:
        costs[arm] = costs.get(arm, Decimal(0)) + cost
    for arm, cost in ErasedSpend.objects.filter(version=version).values_list("arm", "cost_usd"):
        costs[arm] = costs.get(arm, Decimal(0)) + cost
    return costs


def arms_open(*, version: StudyVersion, arms: list[dict] | None = None) -> set[str]:
    """Return the ids of `arms` (default: all of the version's) below every cap of theirs.

    Whether an arm can run here is not a cap: allocation never skips such an arm, it pauses the study.
    """
    arms = list(version.spec["arms"]) if arms is None else arms
    budgets = {a["id"]: a.get("budget") or {} for a in arms}
    seats = seats_held(version=version) if any("max_completers" in b for b in budgets.values()) else {}
    costs = cost_by_arm(version=version) if any("max_cost_usd" in b for b in budgets.values()) else {}
    return {
        arm_id for arm_id, budget in budgets.items()
        if seats.get(arm_id, 0) < budget.get("max_completers", float("inf"))
        and costs.get(arm_id, Decimal(0)) < Decimal(str(budget.get("max_cost_usd", "Infinity")))
    }


def study_budget_state(*, version: StudyVersion) -> dict:
    """The budget figures of a version for the monitor: per arm seats used/cap and cost/cap, and the
    study's cost/cap and whether its budget paused it. Four queries, whatever the number of participants."""
    spec = version.spec
    seats = seats_held(version=version)
    costs = cost_by_arm(version=version)
    completers = dict(
        Participant.objects.filter(version=version, status=Participant.Status.COMPLETED, is_pilot=False,
                                   is_simulated=False).values("arm").annotate(n=Count("id")).values_list("arm", "n")
    )
    arms = []
    for arm in spec["arms"]:
        budget = arm.get("budget") or {}
        cost = costs.get(arm["id"], Decimal(0))
        cap_seats, cap_cost = budget.get("max_completers"), budget.get("max_cost_usd")
        full = (cap_seats is not None and seats.get(arm["id"], 0) >= cap_seats) or (
            cap_cost is not None and cost >= Decimal(str(cap_cost)))
        arms.append({
            "arm": arm["id"], "kind": arm["kind"],
            "seats_used": seats.get(arm["id"], 0), "completers": completers.get(arm["id"], 0),
            "max_completers": cap_seats,
            "cost_usd": float(cost), "max_cost_usd": cap_cost,
            "max_tokens_per_participant": budget.get("max_tokens_per_participant"),
            "open": not full,
            "available": arm_available(arm),
        })
    cost = sum(costs.values(), Decimal(0))
    cap = (spec.get("budget") or {}).get("max_cost_usd")
    return {
        "study": {
            "cost_usd": float(cost), "max_cost_usd": cap,
            "reached": cap is not None and cost >= Decimal(str(cap)),
            "paused_by_budget": version.state == StudyVersion.State.PAUSED and version.state_reason == "budget",
        },
        "arms": arms,
    }
