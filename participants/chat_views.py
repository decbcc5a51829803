"""The chat of the explanation step: send a message, send a failed one again, follow a reply live.

The reply itself is written by a Celery worker; these views only save the participant's turn and
relay the worker's events (server-sent events, served by the ASGI app so no thread waits on them).
"""
import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from explainers.models import Turn
from explainers.services import ArmUnavailable, LimitReached, TurnInFlight
from explainers.streaming import stream_follow

from . import services
from .chat_display import choices_of, failed_view, limit_message, model_links, reply_html, usage_view
from .models import Participant, Step
from .selectors import participant_chat_turn, participant_get_by_token
from .views import _session_key, participant_page

KEEPALIVE_S = 10.0


@require_POST
@participant_page(Step.EXPLANATION)
def chat_send(request: HttpRequest, participant: Participant) -> HttpResponse:
    text = request.POST.get("text", "").strip()
    if len(text) > settings.CHAT_MESSAGE_MAX_CHARS:
        return JsonResponse({"error": "too_long", "message": _(
            "Your message is too long (at most %(n)s characters). Please shorten it."
        ) % {"n": settings.CHAT_MESSAGE_MAX_CHARS}}, status=413)
    if not text:
        return JsonResponse({"error": "empty", "message": _("Please type a message.")}, status=400)
    try:
        turn = services.chat_send(participant_id=participant.pk, text=text, nonce=request.POST.get("nonce", "")[:64])
    except LimitReached as limit:
        return JsonResponse({"error": "limit", "message": limit_message(limit.reason)}, status=409)
    except TurnInFlight:
        return JsonResponse({"error": "busy", "message": _("Please wait for the answer to your last message.")}, status=409)
    except ArmUnavailable:
        return JsonResponse({"error": "unavailable", "message": _("The chat is not available right now.")}, status=503)
    return JsonResponse({"turn": turn.id, "status": turn.status}, status=202)


@require_POST
@participant_page(Step.EXPLANATION)
def chat_retry(request: HttpRequest, participant: Participant, turn_id: int) -> HttpResponse:
    """Ask again for a failed reply: `mode=again` (the default) afresh, `mode=continue` on from the cut-off text."""
    mode = request.POST.get("mode", "") or "again"
    if mode not in services.CHAT_RETRY_MODES:
        return JsonResponse({"error": "mode"}, status=400)
    try:
        turn = services.chat_retry(participant_id=participant.pk, turn_id=turn_id, mode=mode)
    except Turn.DoesNotExist:
        return JsonResponse({"error": "not_found"}, status=404)
    return JsonResponse({"turn": turn.id, "status": turn.status}, status=202)


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _final_event(turn_id: int, language: str) -> str | None:
    """The event that ends the stream if the turn is settled in the database, else None.

    Called every few seconds while the stream is open: give the connection back each time, so an
    open stream holds none.
    """
    try:
        with translation.override(language):  # the participant's language, as on their pages
            return _final_event_text(turn_id)
    finally:
        connection.close()


def _final_event_text(turn_id: int) -> str | None:
    turn = Turn.objects.select_related("reply", "conversation__version").filter(pk=turn_id).first()
    if turn is None:
        return _event("failed", {"error": "gone"})
    links = model_links(turn.conversation)  # display.model_links of the study or arm
    if turn.author == Turn.Author.EXPLAINER and turn.status == Turn.Status.COMPLETE:  # an agentic arm's opening
        return _event("done", {"html": reply_html(turn.text, links=links), "usage": usage_view(turn.conversation),
                               "choices": choices_of(turn.conversation, turn)})
    if turn.status == Turn.Status.ANSWERED:
        return _event("done", {"html": reply_html(turn.reply.text, links=links), "usage": usage_view(turn.conversation),
                               "choices": choices_of(turn.conversation, turn.reply)})
    if turn.status == Turn.Status.FAILED:
        return _event("failed", {**failed_view(turn, links=links), "usage": usage_view(turn.conversation)})
    return None


# A stream ended because its participant opened a newer one: the browser waits this long before
# reconnecting on its own (a page still open somewhere takes its turn again, slowly; a closed one never does).
SUPERSEDED_RETRY_MS = 60_000


async def _relay(turn_id: int, language: str, participant_id: int):
    final = await sync_to_async(_final_event)(turn_id, language)
    if final:
        yield final
        return
    yield ": open\n\n"
    # At most CHAT_STREAMS_PER_PARTICIPANT streams per participant: a newer one ends the oldest, so a reload
    # or the browser's reconnect always gets through while old connections linger.
    async for event in stream_follow(turn_id, keepalive_s=KEEPALIVE_S, owner=f"participant:{participant_id}",
                                     cap=settings.CHAT_STREAMS_PER_PARTICIPANT):
        if event is not None and event["kind"] == "superseded":
            yield f"retry: {SUPERSEDED_RETRY_MS}\n" + _event("superseded", {})
            return
        if event is None or event["kind"] in ("done", "failed"):
            final = await sync_to_async(_final_event)(turn_id, language)
            if final:
                yield final
                return
            yield ": keep-alive\n\n"
            continue
        yield _event(event["kind"], {k: v for k, v in event.items() if k in ("text", "in_s")})


def _stream_target(request: HttpRequest, slug: str, turn_id: int) -> tuple[int, str, int] | None:
    """Return (turn id, language, participant id) if the turn is this participant's, else None; close the
    connection after.

    An open stream must hold no database connection: 200 people waiting for replies would hold 200.
    """
    try:
        participant = participant_get_by_token(token=request.session.get(_session_key(slug), ""))
        if participant is None or participant.study.slug != slug:
            return None
        turn = participant_chat_turn(participant=participant, turn_id=turn_id)
        return (turn.id, participant.language, participant.pk) if turn else None
    finally:
        connection.close()


@require_GET
async def chat_events(request: HttpRequest, slug: str, turn_id: int) -> HttpResponse:
    """Server-sent events of one reply: what streamed so far, then live deltas, then the final HTML."""
    target = await sync_to_async(_stream_target)(request, slug, turn_id)
    if target is None:
        return HttpResponse(status=404)
    response = StreamingHttpResponse(_relay(*target), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
