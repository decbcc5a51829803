"""How the chat looks to the participant: the reply's HTML, the limits, the end-of-chat messages."""
from django.utils import timezone
from django.utils.translation import gettext as _

from explainers.models import Turn
from explainers.selectors import conversation_usage
from studies.spec import model_links_allowed

from .markdown import render_markdown


def limit_message(reason: str) -> str:
    return {
        "turns": _("You have used all the messages of this conversation. Please continue."),
        "minutes": _("The time for this conversation is over. Please continue."),
        "tokens": _("This conversation has reached its length limit. Please continue."),
    }.get(reason, _("This conversation has ended. Please continue."))


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
