"""Arm policies: what the explainer is asked, given the arm, the material and the conversation."""
from studies.protocol import Protocol
from studies.selectors import study_asset_get

from .models import Conversation, Turn
from .providers import estimate_tokens

REPLY_RESERVE_TOKENS = 1024


def arm_material(*, conversation: Conversation) -> str:
    """Return the arm's Markdown material in the conversation's language ('' when it has none)."""
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    if not arm.get("material"):
        return ""
    asset = study_asset_get(version_id=conversation.version_id, path=protocol.text(arm["material"], conversation.language))
    return bytes(asset.content).decode("utf-8") if asset else ""


def chat_messages(*, conversation: Conversation, upto: Turn) -> list[dict]:
    """Build the `chat` arm's prompt: system prompt and material, then the conversation up to `upto`.

    The oldest turns are left out to keep within the arm's context budget; the system prompt never is.
    No participant identifier is in any message.
    """
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    system = protocol.text(arm.get("system_prompt"), conversation.language)
    material = arm_material(conversation=conversation)
    if material:
        system = f"{system}\n\n---\n\n{material}" if system else material
    history = []
    for turn in conversation.turns.filter(pk__lte=upto.pk).order_by("id"):
        if turn.author == Turn.Author.PARTICIPANT and turn.status == Turn.Status.FAILED and turn.pk != upto.pk:
            continue
        role = "user" if turn.author == Turn.Author.PARTICIPANT else "assistant"
        history.append({"role": role, "content": turn.text})
    llm = arm["llm"]
    budget = llm["context_tokens"] - int(llm["params"].get("max_tokens") or REPLY_RESERVE_TOKENS)
    system_messages = [{"role": "system", "content": system}] if system else []
    while len(history) > 1 and estimate_tokens(system_messages + history) > budget:
        history.pop(0)
    return system_messages + history
