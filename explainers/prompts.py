"""The prompts of the language-model arms and the checks on what comes back.

The chat arm's prompt (its instructions, its material, the conversation so far), the rule that fits any
arm's prompt into its context window, and the tests that a reply is usable (it does not echo the prompt,
recite its instructions or repeat a message). docs/chat.md ("Prompt size") states the fitting rule.
"""
from studies.protocol import Protocol
from studies.selectors import study_asset_get

from .models import Conversation, Turn
from .providers import estimate_tokens

REPLY_RESERVE_TOKENS = 1024
# The cue that asks for the rest of a reply that was cut off, after the cut-off text as the model's own turn.
CONTINUE_CUE = "(Your last message was cut off after the text above. Continue it exactly where it stops, without repeating any of it.)"


def arm_material(*, conversation: Conversation) -> str:
    """Return the arm's Markdown material in the conversation's language ('' when it has none)."""
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    if not arm.get("material"):
        return ""
    asset = study_asset_get(version_id=conversation.version_id, path=protocol.text(arm["material"], conversation.language))
    return bytes(asset.content).decode("utf-8") if asset else ""


def conversation_history(*, conversation: Conversation, upto: Turn) -> list[dict]:
    """The conversation up to `upto` as chat messages: failed messages (other than `upto`) and explainer
    turns still being written are left out."""
    history = []
    for turn in conversation.turns.filter(pk__lte=upto.pk).order_by("id"):
        if turn.author == Turn.Author.PARTICIPANT and turn.status == Turn.Status.FAILED and turn.pk != upto.pk:
            continue
        if turn.author == Turn.Author.EXPLAINER and turn.status != Turn.Status.COMPLETE:
            continue
        role = "user" if turn.author == Turn.Author.PARTICIPANT else "assistant"
        history.append({"role": role, "content": turn.text})
    return history


def _material_cut(material: str, over_tokens: int) -> str:
    """Shorten the material by about `over_tokens`, at a paragraph boundary, and say it was shortened."""
    keep = max(0, len(material) - over_tokens * 4 - 200)
    cut = material[:keep]
    if "\n\n" in cut:
        cut = cut.rsplit("\n\n", 1)[0]
    return f"{cut}\n\n[…]" if cut else ""


def fit_prompt(*, build_system, material: str, history: list[dict], llm: dict,
               extra: list[dict] = ()) -> tuple[list[dict], dict]:
    """Fit a prompt into the arm's context window; return (messages, what was trimmed).

    The rule (docs/chat.md, "Prompt size"): the window is `context_tokens` less the reply's reserve
    (`max_tokens`, else 1,024). The oldest turns go first, down to the last message; if the prompt is
    still too long, the material is shortened from its end. The system prompt's instructions never are.
    `build_system(material)` returns the system prompt's text for a given material.
    """
    budget = llm["context_tokens"] - int(llm["params"].get("max_tokens") or REPLY_RESERVE_TOKENS)
    history = list(history)
    system = build_system(material)
    dropped = 0
    def messages(text):
        return ([{"role": "system", "content": text}] if text else []) + history
    while len(history) > 1 and estimate_tokens(messages(system) + list(extra)) > budget:
        history.pop(0)
        dropped += 1
    over = estimate_tokens(messages(system) + list(extra)) - budget
    material_cut = 0
    if over > 0 and material:
        shorter = _material_cut(material, over)
        material_cut = len(material) - len(shorter)
        system = build_system(shorter)
    out = messages(system)
    return out, {"budget_tokens": budget, "estimated_tokens": estimate_tokens(out + list(extra)),
                 "turns_dropped": dropped, "material_chars_dropped": material_cut}


def chat_messages(*, conversation: Conversation, upto: Turn) -> tuple[list[dict], dict]:
    """Build the `chat` arm's prompt: system prompt and material, then the conversation up to `upto`.

    Return (messages, what was trimmed to fit the context window, see `fit_prompt`). No participant
    identifier is in any message.
    """
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    instructions = protocol.text(arm.get("system_prompt"), conversation.language)

    def build_system(material: str) -> str:
        return "\n\n---\n\n".join(p for p in (instructions, material) if p)

    return fit_prompt(build_system=build_system, material=arm_material(conversation=conversation),
                      history=conversation_history(conversation=conversation, upto=upto), llm=arm["llm"])


# What only the explainer's prompt holds: a reply that contains one of these echoed its instructions.
PROMPT_MARKERS = ("<learner_model", "</learner_model", "<next_move", "</next_move", "<concepts", "</concepts",
                  "<material", "</material", "<tools>", "<meeting_note_request", "<evidence", "<post_test",
                  "A note for your reply, not written by the participant")


def prompt_echo_at(text: str) -> int | None:
    """Where the first marker of the prompt starts in `text`, or None."""
    found = [i for i in (text.find(marker) for marker in PROMPT_MARKERS) if i >= 0]
    return min(found) if found else None


ECHO_RUN = 40  # characters in a row taken from an instruction: the reply recites its instructions


def _recites(reply: str, instruction: str) -> bool:
    instruction = " ".join(instruction.split()).casefold()
    return any(instruction[i:i + ECHO_RUN] in reply for i in range(0, max(1, len(instruction) - ECHO_RUN + 1), 10))


def reply_unusable(text: str, *, messages: list[dict], instructions: tuple[str, ...] = ()) -> str:
    """Why a model's reply cannot be shown (it echoes the prompt or recites one of `instructions`, repeats
    the participant's message or an earlier reply of its own: small models do), or '' when it can."""
    def norm(value) -> str:
        return " ".join(str(value or "").split()).casefold()

    reply = norm(text)
    if not reply:
        return "the reply was empty"
    if prompt_echo_at(text) is not None or any(_recites(reply, i) for i in instructions if i):
        return "the reply echoed the prompt's instructions"
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if users and reply == norm(users[-1]["content"].split("\n\n(A note for your reply")[0]):
        return "the reply repeated the participant's message"
    if any(m.get("role") == "assistant" and reply == norm(m.get("content")) for m in messages):
        return "the reply repeated an earlier message of its own"
    return ""
