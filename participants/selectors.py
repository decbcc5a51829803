"""Reads on the participant's journey."""
from dataclasses import dataclass
from urllib.parse import quote

from explainers.models import Turn
from studies.protocol import Protocol

from .models import Participant, Response, Step

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

    Only for a participant who completed or declined; the completion code exists nowhere before.
    """
    recruitment = participant.version.spec["recruitment"]
    if participant.status == Participant.Status.COMPLETED:
        code = recruitment["completion_code"]
    elif participant.status == Participant.Status.DECLINED:
        code = recruitment["no_consent_code"]
    else:
        raise ValueError("the participant has not finished")
    return recruitment["completion_url"].replace("{code}", quote(code))


def participant_chat_turn(*, participant: Participant, turn_id: int) -> Turn | None:
    """Return a participant turn of this participant's conversation, or None."""
    if participant.conversation_id is None:
        return None
    return Turn.objects.filter(
        pk=turn_id, conversation_id=participant.conversation_id, author=Turn.Author.PARTICIPANT
    ).first()
