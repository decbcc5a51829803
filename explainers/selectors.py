"""Reads on conversations."""
from dataclasses import dataclass

from django.db.models import Sum
from django.utils import timezone

from studies.protocol import Protocol

from .models import Conversation, LearnerModelSnapshot, LLMCall, TranscriptScreening, Turn


@dataclass(frozen=True)
class ConversationUsage:
    turns_used: int
    turns_max: int | None
    seconds_left: int | None
    tokens_used: int
    tokens_max: int | None
    end_reason: str  # '' while the conversation is open

    @property
    def turns_left(self) -> int | None:
        return None if self.turns_max is None else max(0, self.turns_max - self.turns_used)


def conversation_usage(*, conversation: Conversation) -> ConversationUsage:
    """Return what the conversation has used of its arm's limits, and why it ended if it did."""
    arm = Protocol(conversation.version.spec).arms[conversation.arm]
    limits = dict(arm.get("limits") or {})
    # The arm's budget caps the tokens per participant too: the tighter of the two ends the chat.
    budget_tokens = (arm.get("budget") or {}).get("max_tokens_per_participant")
    if budget_tokens:
        limits["tokens"] = min(limits.get("tokens") or budget_tokens, budget_tokens)
    # A message whose reply failed or was cut off does not use up the limit: the participant may send it again.
    turns_used = conversation.turns.filter(author=Turn.Author.PARTICIPANT).exclude(status=Turn.Status.FAILED).count()
    tokens = LLMCall.objects.filter(turn__conversation=conversation).aggregate(
        i=Sum("input_tokens"), o=Sum("output_tokens")
    )
    tokens_used = (tokens["i"] or 0) + (tokens["o"] or 0)
    seconds_left = None
    if limits.get("minutes"):
        elapsed = (timezone.now() - conversation.started_at).total_seconds()
        seconds_left = max(0, int(limits["minutes"] * 60 - elapsed))
    pending = conversation.turns.filter(author=Turn.Author.PARTICIPANT, status=Turn.Status.PENDING).exists()
    end_reason = conversation.end_reason
    if not end_reason:
        if limits.get("turns") and turns_used >= limits["turns"] and not pending:
            end_reason = Conversation.EndReason.TURNS
        elif seconds_left == 0:
            end_reason = Conversation.EndReason.MINUTES
        elif limits.get("tokens") and tokens_used >= limits["tokens"]:
            end_reason = Conversation.EndReason.TOKENS
    return ConversationUsage(
        turns_used=turns_used, turns_max=limits.get("turns"), seconds_left=seconds_left,
        tokens_used=tokens_used, tokens_max=limits.get("tokens"), end_reason=end_reason,
    )


def conversation_transcript(*, conversation: Conversation) -> list[Turn]:
    return list(conversation.turns.order_by("id"))


def latest_snapshot(conversation: Conversation) -> LearnerModelSnapshot | None:
    """The conversation's newest learner-model snapshot, or None."""
    return conversation.snapshots.order_by("-index").first()


def previous_explainer_turn(conversation: Conversation, before: Turn) -> Turn | None:
    """The explainer's last written turn before `before`: the one a participant's message answers."""
    return (conversation.turns.filter(author=Turn.Author.EXPLAINER, status=Turn.Status.COMPLETE, pk__lt=before.pk)
            .order_by("-id").first())


def yoked_transcript_pick(*, version, arm_id: str, position: int) -> Conversation | None:
    """Return the `position`-th (from 1) conversation of an arm to have passed its screen, in the order they
    passed, or None yet. Only a screened transcript can be shown: explainers.services.transcript_screenings_prepare
    screens the ended ones, in order of ending."""
    passed = (TranscriptScreening.objects.filter(conversation__version=version, conversation__arm=arm_id,
                                                 status=TranscriptScreening.Status.PASSED)
              .select_related("conversation").order_by("decided_at", "id"))
    screening = passed[position - 1:position].first() if position >= 1 else None
    return screening.conversation if screening else None


def written_turns(*, conversation_id: int) -> list[Turn]:
    """The written turns of a conversation, as another participant would read them: no reply still being
    written or failed, no message whose reply failed."""
    return list(Turn.objects.filter(conversation_id=conversation_id)
                .exclude(author=Turn.Author.EXPLAINER, status__in=[Turn.Status.PENDING, Turn.Status.FAILED])
                .exclude(author=Turn.Author.PARTICIPANT, status=Turn.Status.FAILED).order_by("id"))


@dataclass(frozen=True)
class ScreenedTurn:
    author: str
    text: str


def yoked_transcript(*, conversation: Conversation) -> list[ScreenedTurn]:
    """Return the turns a yoked participant reads: the screened (redacted) text of the transcript shown to them
    (none when no transcript was available and the material was shown instead)."""
    if conversation.yoked_from_id is None:
        return []
    screening = TranscriptScreening.objects.filter(
        conversation_id=conversation.yoked_from_id, status=TranscriptScreening.Status.PASSED).first()
    if screening is None:  # never: only a passed transcript is picked, and a decision is final
        return []
    return [ScreenedTurn(author=t["author"], text=t["text"]) for t in screening.turns]


def screenings_for_study(*, study, status: str | None = None) -> list[TranscriptScreening]:
    """The transcript screenings of a study's conversations (all versions), oldest first."""
    found = TranscriptScreening.objects.filter(conversation__version__study=study).select_related(
        "conversation__version", "decided_by").order_by("created_at", "id")
    return list(found.filter(status=status) if status else found)
