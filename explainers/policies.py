"""Arm policies: what the explainer is asked, given the arm, the material and the conversation.

The `chat` arm's prompt is built here, and so is everything the `tutor` and `agentic` arms share:
the learner-model snapshots, the state of play (what was taught, which check questions are left),
reading a participant's answer to a check question, the templated text of a move (the tutor's
language, and the agentic arm's fallback when a model writes nothing usable), and the predictions
and note written by rule at the end of the step.
"""
import re

from django.utils import timezone, translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol
from studies.selectors import study_asset_get

from .learner import (
    MASTERED, SCHEMA_VERSION, guess_rate, learner_model_initial, learner_model_validate, predict_correct,
)
from .models import Conversation, LearnerModelSnapshot, PostTestPrediction, Turn
from .providers import estimate_tokens

REPLY_RESERVE_TOKENS = 1024
# The cue that asks for the rest of a reply that was cut off, after the cut-off text as the model's own turn.
CONTINUE_CUE = "(Your last message was cut off after the text above. Continue it exactly where it stops, without repeating any of it.)"
TAUGHT_ACTS = ("explain", "example", "analogy", "correction")  # acts after which the learner may have learned


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


# --------------------------------------------------------------------------- the learner-model policy


def learner_model_from_pretest(protocol: Protocol, pretest: list[tuple[str, float]]) -> dict:
    """The model before the conversation, from the participant's (item id, score) pre-test answers."""
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    evidence = [(protocol.items[i].get("concept"), score, guess_rate(protocol.items[i])) for i, score in pretest]
    return learner_model_initial(concepts=concepts, pretest=evidence)


def latest_snapshot(conversation: Conversation) -> LearnerModelSnapshot | None:
    return conversation.snapshots.order_by("-index").first()


def snapshot_store(conversation: Conversation, state: dict, *, turn: Turn | None, source: str) -> LearnerModelSnapshot:
    """Store a new snapshot (never overwrite one). Call inside the transaction that saves the turn."""
    learner_model_validate(state)
    latest = latest_snapshot(conversation)
    return LearnerModelSnapshot.objects.create(
        conversation=conversation, index=0 if latest is None else latest.index + 1, turn=turn,
        source=source, schema_version=SCHEMA_VERSION, state=state,
    )


def state_of_play(conversation: Conversation) -> tuple[set[str], set[str], set[str]]:
    """Return (concepts with a check question left, concepts taught, practice items asked)."""
    protocol = Protocol(conversation.version.spec)
    asked = set(conversation.turns.exclude(check_item="").values_list("check_item", flat=True))
    left = {protocol.items[i]["concept"] for i in protocol.spec["instruments"].get("practice", []) if i not in asked}
    explained = set(conversation.turns.filter(act__in=TAUGHT_ACTS).values_list("concept", flat=True))
    return left, explained, asked


def previous_explainer_turn(conversation: Conversation, before: Turn) -> Turn | None:
    """The explainer's last written turn before `before`: the one a participant's message answers."""
    return (conversation.turns.filter(author=Turn.Author.EXPLAINER, status=Turn.Status.COMPLETE, pk__lt=before.pk)
            .order_by("-id").first())


def check_item_next(protocol: Protocol, concept: str, asked: set[str]) -> str:
    """The first practice item on `concept` not asked yet."""
    return next(i for i in protocol.spec["instruments"]["practice"]
                if protocol.items[i]["concept"] == concept and i not in asked)


def _text(protocol: Protocol, value, lang: str) -> str:
    return protocol.text(value, lang) if value else ""


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


def option_letters(item: dict) -> list[tuple[str, dict]]:
    """(letter, option) pairs as the participant reads a check question: the option ids when they are
    single letters, else A, B, C … in order."""
    options = item["options"]
    if all(len(o["id"]) == 1 and o["id"].isalpha() for o in options):
        return [(o["id"].upper(), o) for o in options]
    return [(chr(ord("A") + i), o) for i, o in enumerate(options)]


def option_chosen(text: str, item: dict, protocol: Protocol, lang: str) -> str | None:
    """The option a participant's message picks (by its letter, its id or its text), or None."""
    answer = re.sub(r"[\s).。:：]+$", "", text.strip()).strip()
    answer = re.sub(r"^[(（]", "", answer).strip().casefold()
    for letter, option in option_letters(item):
        if answer in (letter.casefold(), option["id"].casefold(), _text(protocol, option["text"], lang).casefold()):
            return option["id"]
    return None


def case_rows(protocol: Protocol, item: dict, lang: str) -> list[tuple[str, object]]:
    """A `predict` item's input as (feature label, value) rows, as the item's page shows it."""
    labels = (protocol.spec.get("target") or {}).get("feature_labels") or {}
    return [(_text(protocol, labels.get(name), lang) or name, value) for name, value in (item.get("input") or {}).items()]


def check_question_text(protocol: Protocol, item_id: str, lang: str) -> str:
    """The question (with its case, for a `predict` item) and its lettered options, as the participant reads
    them. Call with the language active."""
    item = protocol.items[item_id]
    parts = [_text(protocol, item["prompt"], lang)]
    rows = case_rows(protocol, item, lang)
    if rows:
        parts.append("\n".join(f"- {label}: **{value}**" for label, value in rows))
    parts.append("\n".join(f"- **{letter}**: {_text(protocol, o['text'], lang)}" for letter, o in option_letters(item)))
    parts.append(_("Answer with the letter of your choice."))
    return "\n\n".join(parts)


def move_text(conversation: Conversation, move: dict, check_item: str = "") -> str:
    """The templated Markdown of a move, in the conversation's language. Call with that language active."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    concepts = {c["id"]: c for c in protocol.spec["concepts"]}
    act, concept_id = move["act"], move["concept"]
    if act == "summary":
        lines = [f"- **{_text(protocol, c['label'], lang)}**: {_text(protocol, c['description'], lang)}"
                 for c in protocol.spec["concepts"]]
        return _("That covers the model. In short:") + "\n\n" + "\n".join(lines) + "\n\n" + _(
            "You can continue when you are ready.")
    concept = concepts[concept_id]
    label, description = _text(protocol, concept["label"], lang), _text(protocol, concept["description"], lang)
    go_on = "\n\n" + _("Send any message (for example “ok”) when you are ready to go on.")
    if act == "explain":
        return _("Let us look at **%(label)s**. %(description)s") % {"label": label, "description": description} + go_on
    if act in ("example", "analogy"):
        return _("One more way to see **%(label)s**: %(description)s") % {"label": label, "description": description} + go_on
    if act == "correction":
        return _("Not quite. Remember **%(label)s**: %(description)s") % {"label": label, "description": description} + go_on
    return _("A quick check on **%(label)s**.") % {"label": label} + "\n\n" + check_question_text(protocol, check_item, lang)


def conversation_end_complete(conversation: Conversation) -> None:
    """The explainer summarised: nothing is left to teach. Call inside the transaction that saves the summary."""
    conversation.ended_at = timezone.now()
    conversation.end_reason = Conversation.EndReason.COMPLETE
    conversation.save(update_fields=["ended_at", "end_reason"])


def predicted_answer(item: dict, keys: dict, p_correct: float):
    """The answer the model expects: the key when it thinks the participant is more likely right than not."""
    key = keys.get(item["id"]) if item.get("key") == "from_target" else item.get("key")
    return key if p_correct >= 0.5 else None


def predictions_by_rules(conversation: Conversation, post_items: list[dict], state: dict) -> None:
    """Predict each post-test answer from the learner model: P(right) = mastery × (1 − slip) + (1 − mastery) × guess."""
    keys = conversation.version.target_keys
    for item in post_items:
        p = predict_correct(state, item.get("concept"), guess=guess_rate(item))
        PostTestPrediction.objects.get_or_create(
            conversation=conversation, item_id=item["id"],
            defaults={"p_correct": p, "predicted_answer": predicted_answer(item, keys, p), "source": "rules"},
        )


def meeting_note_by_template(conversation: Conversation, state: dict | None) -> str:
    """A short note of what was covered, from the check answers and (when there is one) the learner model."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    labels = {c["id"]: _text(protocol, c["label"], lang) for c in protocol.spec["concepts"]}
    concepts = state["concepts"] if state else {}
    grasped = [labels[c] for c, v in concepts.items() if v["mastery"] >= MASTERED]
    review = [labels[c] for c, v in concepts.items() if v["mastery"] < MASTERED]
    checks = conversation.turns.filter(check_correct__isnull=False)
    with translation.override(lang):
        note = _("We went through %(n)s check questions; you answered %(right)s correctly.") % {
            "n": checks.count(), "right": checks.filter(check_correct=True).count()}
        if grasped:
            note += " " + _("Seemed clear: %(list)s.") % {"list": ", ".join(grasped)}
        if review:
            note += " " + _("Worth another look: %(list)s.") % {"list": ", ".join(review)}
    return note
