"""How the chat looks to the participant: the reply's HTML, the limits, the end-of-chat messages."""
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from explainers.learner.play import option_letters
from explainers.models import Turn
from explainers.selectors import conversation_usage
from studies.protocol import Protocol
from studies.spec import model_links_allowed

from .markdown import render_markdown


def limit_message(reason: str) -> str:
    return {
        "turns": _("You have used all the messages of this conversation. Please continue."),
        "minutes": _("The time for this conversation is over. Please continue."),
        "tokens": _("This conversation has reached its length limit. Please continue."),
    }.get(reason, _("This conversation has ended. Please continue."))


def page_texts(protocol: Protocol, arm: dict, language: str) -> dict:
    """The chat page's heading, instructions and the message box's placeholder for this arm: the study file's
    `arms[].page` where it gives them, else what fits the arm's kind (an explainer that leads says so)."""
    with translation.override(language):
        texts = _page_texts_by_kind(arm)
    for name, value in (arm.get("page") or {}).items():
        if value:
            texts[name] = protocol.text(value, language)
    return texts


def _page_texts_by_kind(arm: dict) -> dict:
    kind = arm["kind"]
    if kind == "agentic" and (arm.get("options") or {}).get("proactive", True):
        texts = {
            "heading": _("Learn how the model decides"),
            "instructions": _("The explainer will lead: it explains the model step by step and asks you short "
                              "questions to check your understanding. Answer them, and ask your own questions at "
                              "any time. When you feel you understand the model, continue."),
            "placeholder": _("Your answer or your question"),
        }
    elif kind == "tutor":
        texts = {
            "heading": _("Learn how the model decides, step by step"),
            "instructions": _("The tutor takes you through the model one idea at a time and asks short questions. "
                              "Pick an answer with its button (or type its letter), press “Go on” when you are "
                              "ready for the next idea, or type a question. When you feel you understand the "
                              "model, continue."),
            "placeholder": _("Your answer or your question"),
        }
    else:
        texts = {
            "heading": _("Ask about the model"),
            "instructions": _("Ask the assistant anything about how the model decides. When you feel you "
                              "understand it, continue."),
            "placeholder": _("Your question"),
        }
    return texts


def choices_of(conversation, turn) -> list[dict]:
    """The buttons under the explainer's latest turn: one per option of the check question it asks (the button
    sends the option's letter, as the question says to answer), or "Go on" after a teaching move of an arm that
    leads with buttons (the tutor). [{"send", "label"}]."""
    if turn is None or turn.author != Turn.Author.EXPLAINER or turn.status != Turn.Status.COMPLETE:
        return []
    protocol = Protocol(conversation.version.spec)
    if turn.check_item and turn.check_item in protocol.items and protocol.items[turn.check_item].get("options"):
        item = protocol.items[turn.check_item]
        return [{"send": letter, "label": f"{letter}: {protocol.text(option['text'], conversation.language)}"}
                for letter, option in option_letters(item)]
    arm = protocol.arms[conversation.arm]
    if arm["kind"] == "tutor" and turn.act and turn.act != "summary":
        return [{"send": _("ok"), "label": _("Go on")}]
    return []


def usage_view(conversation) -> dict:
    """The limits as the participant sees them (JSON for the page's script)."""
    usage = conversation_usage(conversation=conversation)
    return {
        "turns_left": usage.turns_left,
        "seconds_left": usage.seconds_left,
        "ended": bool(usage.end_reason),
        "message": limit_message(usage.end_reason) if usage.end_reason else "",
    }


def reply_html(text: str, *, links: bool = False) -> str:
    """LLM output, rendered as sanitised Markdown: no raw HTML, no script links, no images, and no clickable
    links unless `links` (a link becomes "its text (its address)" as plain text; see participants/markdown.py)."""
    return render_markdown(text, links=links)


def model_links(conversation) -> bool:
    """Whether the study lets this conversation's arm show the model's links as links (`display.model_links`)."""
    return model_links_allowed(conversation.version.spec, conversation.arm)


def failed_view(turn, *, links: bool = False) -> dict:
    """How a failed reply looks to the page: plain, or cut off with the sanitised text the participant saw.

    `turn` is the participant's turn, or an agentic arm's opening (`opening`: the explainer spoke first).
    `kept_chars` is the length of the kept text, so the page can tell a continuation's first new words
    from the replay of what it already showed.
    """
    cut_off = turn.cut_off
    return {
        "error": turn.error_kind,
        "cut_off": cut_off,
        "opening": turn.author == Turn.Author.EXPLAINER,
        "html": reply_html(turn.shown_text, links=links) if cut_off else "",
        "kept_chars": len(turn.shown_text) if cut_off else 0,
    }


def transcript_view(turns, *, links: bool = False) -> dict:
    """The transcript as the page renders it: the turns, and the one still waiting for its reply (how long it
    has waited, how much of it was kept from a cut-off attempt).

    A cut-off reply is shown after its message as an explainer item with the text the participant saw; a
    failed opening shows as an explainer item too, so the participant can ask for it again.
    """
    items = []
    pending = None
    waited_s = kept_chars = 0
    for turn in turns:
        is_explainer = turn.author == Turn.Author.EXPLAINER
        if turn.status == Turn.Status.PENDING:
            pending = turn.id
            started = turn.enqueued_at or turn.created_at
            waited_s = max(0, int((timezone.now() - started).total_seconds())) if started else 0
            kept_chars = len(turn.shown_text)  # a continuation under way starts from the text kept
        if turn.status == Turn.Status.FAILED and (turn.cut_off or (is_explainer and turn.reply_to_id is None)):
            if not is_explainer:
                items.append(_item(turn, links))
            items.append({"id": None, "author": Turn.Author.EXPLAINER, "status": turn.status, "reply_to": turn.id,
                          "text": turn.shown_text, **failed_view(turn, links=links)})
            continue
        if is_explainer and turn.status != Turn.Status.COMPLETE:
            continue  # an agentic opening still being written: followed live
        items.append(_item(turn, links))
    return {"turns": items, "pending": pending, "waited_s": waited_s, "pending_kept_chars": kept_chars}


def _item(turn, links: bool) -> dict:
    is_explainer = turn.author == Turn.Author.EXPLAINER
    return {"id": turn.id, "author": turn.author, "status": turn.status,
            "html": reply_html(turn.text, links=links) if is_explainer else "", "text": turn.text}
