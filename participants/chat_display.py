"""How the chat looks to the participant: the reply's HTML, the limits, the end-of-chat messages."""
from django.utils.translation import gettext as _

from explainers.selectors import conversation_usage

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


def reply_html(text: str) -> str:
    """LLM output, rendered as sanitised Markdown: no raw HTML, no script links, no images."""
    return render_markdown(text)
