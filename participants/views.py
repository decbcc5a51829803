"""The participant's pages. Each view resolves the participant through the gatekeeper, checks the step,
calls one service and renders or redirects. The server owns the sequence of steps."""
import mimetypes
import re
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.html import escape
from django.utils.translation import get_language_from_request
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from explainers.models import Turn
from explainers.selectors import conversation_transcript, yoked_transcript
from explainers.services import ArmUnavailable
from studies.protocol import Protocol
from studies.scoring import AnswerInvalid
from studies.selectors import entry_link_verify, study_asset_get
from studies.spec import model_links_allowed

from . import services
from .chat_display import choices_of, model_links, page_texts, reply_html, transcript_view, usage_view
from .markdown import reading_minutes, render_markdown
from .models import STEP_ORDER, Participant, Step
from .selectors import completion_url, participant_current_item, participant_get_by_token

PID_MAX_CHARS = 128
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"}
RECENT_COMPLETION = timedelta(minutes=10)


def _session_key(slug: str) -> str:
    return f"teachback:participant:{slug}"


def step_url(participant: Participant) -> str:
    return reverse(f"participants:{participant.step}", kwargs={"slug": participant.study.slug})


ANSWER_ERRORS = {
    "required": lambda: _("Please answer this question."),
    "choose": lambda: _("Please choose one of the options."),
    "number": lambda: _("Please enter a number."),
    "confidence": lambda: _("Please say how confident you are, from 0 to 100."),
    "too_long": lambda: _("Your answer is too long."),
}


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    return render(request, f"participants/{template}", context, status=status)


def _notice(request: HttpRequest, title: str, message: str, *, status: int) -> HttpResponse:
    return _page(request, "notice.html", {"title": title, "message": message}, status=status)


def _closed(request: HttpRequest) -> HttpResponse:
    """The polite page for a study that takes nobody new: paused, or every arm at its cap."""
    return _notice(request, _("This study is closed for now"), _("Thank you for your interest. The study is not taking new participants at the moment. Please return it on Prolific."), status=403)


ENTRY_LINK_PROBLEMS = {
    "invalid": (403, lambda: _("This link is not valid"), lambda: _("This study link is not valid. Please open the study from the link you were given.")),
    "old_version": (410, lambda: _("This link is out of date"), lambda: _("This link belongs to an earlier version of the study. Please ask the researcher for the current link.")),
    "expired": (410, lambda: _("This link has expired"), lambda: _("This link is no longer valid. Please ask the researcher for a new link.")),
}


def _client_ip(request: HttpRequest) -> str:
    """The client's address: from CLIENT_IP_HEADER when a trusted proxy sets it (X-Forwarded-For: the last
    address, the one the proxy added), else the socket's."""
    header = settings.CLIENT_IP_HEADER
    if header:
        value = request.META.get("HTTP_" + header.upper().replace("-", "_"), "")
        value = value.split(",")[-1].strip()
        if value:
            return value
    return request.META.get("REMOTE_ADDR", "")


@require_GET
def entry(request: HttpRequest, slug: str) -> HttpResponse:
    """The study link: create or resume the participant, then land on their current step.

    `?resume=` is a one-time link to continue on this device. The browser that holds the participant in its
    session resumes without counting against the entry limits; any other arrival is counted first.
    """
    params = request.GET
    if params.get("resume"):
        moved = services.resume_link_redeem(slug=slug, token=params["resume"][:128])
        if moved is None:
            return _notice(request, _("This link no longer works"), _("This link to continue on another device has been used already or has expired. Please continue in the browser where you were, or open the study again from your Prolific link there."), status=410)
        request.session.cycle_key()
        request.session[_session_key(slug)] = moved.token
        return redirect(step_url(moved))
    pid = (params.get("PROLIFIC_PID") or params.get("pid") or "").strip()[:PID_MAX_CHARS]
    link_kind = None
    for name in ("pilot", "sim"):
        if params.get(name):
            link_kind, problem = entry_link_verify(slug=slug, token=params[name])
            if problem:
                status, title, message = ENTRY_LINK_PROBLEMS[problem]
                return _notice(request, title(), message(), status=status)
    browser_token = request.session.get(_session_key(slug), "")
    resumed = participant_get_by_token(token=browser_token)
    if resumed is not None and resumed.study.slug == slug and not link_kind and (
            not pid or resumed.pid_hash == services.identifier_hash(pid)):
        return redirect(step_url(resumed))
    if link_kind != "simulated" and not services.entry_rate_allow(
            ip=_client_ip(request), session_id=params.get("SESSION_ID", "")):
        response = _notice(request, _("Please wait a moment"), _("There have been too many attempts to open this study from your connection. Please wait a few minutes, then open the study again from your Prolific link."), status=429)
        response["Retry-After"] = str(settings.ENTRY_RATE_WINDOW_S)
        return response
    language = params.get("lang") or get_language_from_request(request)
    try:
        participant = services.participant_enter(
            slug=slug, pid=pid, recruiter_study_id=params.get("STUDY_ID", ""),
            session_id=params.get("SESSION_ID", ""), language=language, link_kind=link_kind,
            browser_token=browser_token,
        )
    except services.EntryRefused as refused:
        if refused.reason in ("paused", "full"):
            return _closed(request)
        messages = {
            "not_open": (404, _("This study is not open"), _("There is no study at this address, or it has not started yet.")),
            "pid_required": (403, _("Please use your study link"), _("This address needs your Prolific ID. Please open the study from the link on Prolific.")),
            "pid_invalid": (400, _("Please use your study link"), _("The participant ID in this address is not one we can accept. Please open the study from the link on Prolific, without changing it.")),
            "in_progress": (409, _("This study is already in progress in another browser"), _("Please continue in the browser where you started: it takes you back to where you were. To switch devices, open \"Continue on another device\" at the bottom of any study page there, and open the link it gives you on this device.")),
        }
        status, title, message = messages[refused.reason]
        return _notice(request, title, message, status=status)
    request.session[_session_key(slug)] = participant.token
    return redirect(step_url(participant))


def participant_page(step: str | None):
    """Resolve the participant from the session and keep them on their current step (None: any step)."""

    def decorator(view):
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args, **kwargs) -> HttpResponse:
            participant = participant_get_by_token(token=request.session.get(_session_key(slug), ""))
            if participant is None or participant.study.slug != slug:
                return _notice(
                    request, _("Please use your study link"),
                    _("We could not find your place in this study. Please open the study again from your Prolific link; you will continue where you left off."),
                    status=403,
                )
            if request.GET.get("lang"):
                services.participant_language_set(participant=participant, language=request.GET["lang"])
            translation.activate(participant.language)
            request.LANGUAGE_CODE = participant.language
            if step is not None and participant.step != step:
                response = HttpResponseRedirect(step_url(participant), status=303 if request.method == "POST" else 302)
            else:
                response = view(request, participant, *args, **kwargs)
            # Back and Forward must ask the server again: a copy kept by the browser shows the page as it was
            # first rendered (the chat without its last question and reply, an item already answered).
            if not response.has_header("Cache-Control"):
                response["Cache-Control"] = "no-store"
            return response

        return wrapper

    return decorator


def _context(participant: Participant, **extra) -> dict:
    protocol = Protocol(participant.version.spec)
    return {
        "participant": participant,
        "protocol": protocol,
        "lang": participant.language,
        "study_title": protocol.text(protocol.spec["title"], participant.language),
        "languages": [(code, name) for code, name in settings.LANGUAGES if code in protocol.languages],
        "progress": _progress(participant),
        **extra,
    }


def _progress(participant: Participant) -> int:
    return round(100 * STEP_ORDER.index(participant.step) / (len(STEP_ORDER) - 1))


_IMAGE = re.compile(r'(<a\b[^>]*>\s*)?<img\b[^>]*\bsrc="([^"]+)"[^>]*>')
_LEAD_HEADING = re.compile(r"\A\s*<h([1-4])>(.*?)</h\1>\s*", re.S)
_H1 = re.compile(r"<(/?)h1>")


def _figures(html: str) -> str:
    """Make every image a link to itself, with a line under it that says so: a figure shrunk to a phone's width
    can then be read at its own size (a plain link, so it works under the CSP and without JavaScript)."""
    hint = escape(_("Tap the figure to enlarge it"))

    def linked(match: re.Match) -> str:
        if match.group(1):  # the study made the image a link of its own
            return match.group(0)
        return (f'<a class="figure" href="{match.group(2)}" target="_blank" rel="noopener">{match.group(0)}</a>'
                f'<span class="figure-hint">{hint}</span>')

    return _IMAGE.sub(linked, html)


def _md(participant: Participant, text: str, source: str = "") -> str:
    """The study's Markdown as HTML for a page whose <h1> is the page's own: any h1 of the text becomes an h2."""
    return _H1.sub(r"<\1h2>", _md_raw(participant, text, source))


def _md_raw(participant: Participant, text: str, source: str = "") -> str:
    slug = participant.study.slug
    return _figures(render_markdown(
        text, source=source,
        asset_url=lambda path: reverse("participants:asset", kwargs={"slug": slug, "path": path}),
    ))


def _md_headed(participant: Participant, text: str, fallback: str, source: str = "") -> tuple[str, str]:
    """(heading, body) HTML of study Markdown shown under one <h1>: the text's own first heading when it starts
    with one (so the page does not say it twice), else `fallback`; every other h1 of the text becomes an h2."""
    html = _md_raw(participant, text, source)
    lead = _LEAD_HEADING.match(html)
    if lead:
        heading, html = lead.group(2), html[lead.end():]
    else:
        heading = escape(fallback)
    return heading, _H1.sub(r"<\1h2>", html)


@require_http_methods(["GET", "POST"])
@participant_page(Step.CONSENT)
def consent(request: HttpRequest, participant: Participant) -> HttpResponse:
    if request.method == "POST":
        choice = request.POST.get("choice")
        if choice not in ("accept", "decline"):
            return redirect(step_url(participant))
        try:
            participant = services.participant_consent(participant_id=participant.pk, accept=choice == "accept")
        except services.StepError:
            return HttpResponseRedirect(step_url(participant), status=303)
        except services.AllocationError:  # every arm at its cap since they came in: nothing was stored
            return _closed(request)
        if choice == "accept":
            request.session.cycle_key()
            return HttpResponseRedirect(step_url(participant), status=303)
        return HttpResponseRedirect(_finish_url(participant), status=303)
    consent_spec = participant.version.spec["consent"]
    protocol = Protocol(participant.version.spec)
    heading, html = _md_headed(participant, protocol.text(consent_spec["text"], participant.language), _("Consent"))
    return _page(request, "consent.html", _context(
        participant, consent_heading=heading, consent_html=html, consent_version=consent_spec["version"],
    ))


def _instrument(request: HttpRequest, participant: Participant) -> HttpResponse:
    current = participant_current_item(participant=participant)
    if current is None:  # an instrument with nothing left: the service has moved on already
        return redirect(step_url(participant))
    error = None
    if request.method == "POST":
        try:
            participant, _stored = services.response_submit(
                participant_id=participant.pk, phase=participant.step, item_id=request.POST.get("item", ""),
                values=request.POST.getlist("answer"), confidence=request.POST.get("confidence"),
                client=request.POST.get("client_events", ""),
            )
        except AnswerInvalid as invalid:
            error = ANSWER_ERRORS.get(str(invalid), ANSWER_ERRORS["required"])()
        except services.StepError:
            pass
        except services.SeatsTaken:  # their arm filled up between their consent and this first answer
            return _notice(request, _("This study has just filled up"), _("We are sorry: the places in this study were taken while you were reading the consent form, and nothing you answered was stored. Please return the study on Prolific."), status=403)
        except services.AllocationError:  # allocation after the pre-test found every arm at its cap
            return _closed(request)
        if error is None:
            return HttpResponseRedirect(step_url(participant), status=303)
    services.page_visit_shown(participant=participant, page=f"{participant.step}:{current.item['id']}")
    # A rejected answer comes back in its boxes, as it was sent, with its message.
    submitted = {"answers": request.POST.getlist("answer"), "confidence": request.POST.get("confidence", "")}
    return _page(request, "item.html", _context(
        participant, current=current, item=_item_view(participant, current.item), error=error,
        submitted=submitted if error else {},
    ), status=400 if error else 200)


def _item_view(participant: Participant, item: dict) -> dict:
    """Return what the item template needs, localised."""
    protocol = Protocol(participant.version.spec)
    lang = participant.language
    view = {
        "id": item["id"],
        "kind": item["kind"],
        "prompt_html": _md(participant, protocol.text(item["prompt"], lang)),
        "options": [{"id": o["id"], "text": protocol.text(o["text"], lang)} for o in item.get("options") or []],
        "unit": protocol.text(item.get("unit"), lang),
        "confidence": bool(item.get("confidence")),
        "max_length": item.get("max_length", 2000),
    }
    if item["kind"] == "likert":
        scale = item["scale"]
        view["scale"] = list(range(scale["min"], scale["max"] + 1))
        view["min_label"] = protocol.text(scale.get("min_label"), lang)
        view["max_label"] = protocol.text(scale.get("max_label"), lang)
    if item["kind"] == "predict":
        labels = (participant.version.spec.get("target") or {}).get("feature_labels") or {}
        view["input"] = [
            {"label": protocol.text(labels.get(name), lang) or name, "value": value}
            for name, value in item["input"].items()
        ]
    return view


@require_http_methods(["GET", "POST"])
@participant_page(Step.PRE_TEST)
def pre_test(request: HttpRequest, participant: Participant) -> HttpResponse:
    return _instrument(request, participant)


@require_http_methods(["GET", "POST"])
@participant_page(Step.POST_TEST)
def post_test(request: HttpRequest, participant: Participant) -> HttpResponse:
    return _instrument(request, participant)


@require_http_methods(["GET", "POST"])
@participant_page(Step.QUESTIONNAIRE)
def questionnaire(request: HttpRequest, participant: Participant) -> HttpResponse:
    return _instrument(request, participant)


@require_http_methods(["GET", "POST"])
@participant_page(Step.EXPLANATION)
def explanation(request: HttpRequest, participant: Participant) -> HttpResponse:
    error = None
    if request.method == "POST":
        try:
            participant = services.explanation_finish(
                participant_id=participant.pk, client=request.POST.get("client_events", "")
            )
            return HttpResponseRedirect(step_url(participant), status=303)
        except services.TooEarly as early:
            error = _("Please take a little more time with the explanation (%(seconds)s more seconds).") % {
                "seconds": early.remaining_s
            }
    visit = services.page_visit_shown(participant=participant, page=Step.EXPLANATION)
    protocol = Protocol(participant.version.spec)
    arm = protocol.arms[participant.arm]
    material, path = "", ""
    if arm["kind"] == "static" and arm.get("material"):
        path = protocol.text(arm["material"], participant.language)
        asset = study_asset_get(version_id=participant.version_id, path=path)
        material = bytes(asset.content).decode("utf-8") if asset else ""
    min_seconds = int(arm.get("limits", {}).get("min_seconds") or 0)
    waited = (timezone.now() - visit.first_shown_at).total_seconds()
    chat = _chat_context(participant) if arm["kind"] in ("chat", "agentic", "tutor") else None
    if chat and chat["usage"]["ended"]:
        min_seconds = 0
    yoked = _yoked_context(participant) if (arm.get("options") or {}).get("yoked_to") else None
    material_heading, material_html = _md_headed(participant, material, _("Read this explanation"), source=path)
    return _page(request, "explanation.html", _context(
        participant, arm_kind=arm["kind"], material_heading=material_heading, material_html=material_html,
        minutes=reading_minutes(material), error=error, chat=chat, yoked=yoked,
        wait_seconds=max(0, int(min_seconds - waited + 0.999)),
    ), status=400 if error else 200)


def _chat_context(participant: Participant) -> dict | None:
    """The transcript from the database, the limits, and the turn still waiting for its reply."""
    try:
        conversation = services.chat_conversation(participant_id=participant.pk)
    except ArmUnavailable:
        return None
    slug = participant.study.slug
    turns = conversation_transcript(conversation=conversation)
    protocol = Protocol(participant.version.spec)
    return {
        **transcript_view(turns, links=model_links(conversation)),
        "page": page_texts(protocol, protocol.arms[participant.arm], participant.language),
        "choices": choices_of(conversation, turns[-1] if turns else None),
        "scripted": conversation.scripted,
        "usage": usage_view(conversation), "max_chars": settings.CHAT_MESSAGE_MAX_CHARS,
        "send_url": reverse("participants:chat_send", kwargs={"slug": slug}),
        "events_url": reverse("participants:chat_events", kwargs={"slug": slug, "turn_id": 0}),
        "retry_url": reverse("participants:chat_retry", kwargs={"slug": slug, "turn_id": 0}),
    }


def _yoked_context(participant: Participant) -> dict | None:
    """A yoked static arm: the screened (redacted) transcript of another participant's agentic conversation, or
    None when none had passed its screen for this participant's place (the arm's material is shown; the
    conversation records it)."""
    conversation = services.chat_conversation(participant_id=participant.pk)
    links = model_links_allowed(participant.version.spec, participant.arm)
    turns = [{"author": t.author, "text": t.text,
              "html": reply_html(t.text, links=links) if t.author == Turn.Author.EXPLAINER else ""}
             for t in yoked_transcript(conversation=conversation)]
    return {"turns": turns, "scripted": conversation.scripted} if turns else None


@require_http_methods(["GET", "POST"])
@participant_page(Step.DEBRIEF)
def debrief(request: HttpRequest, participant: Participant) -> HttpResponse:
    if request.method == "POST":
        participant, _now = services.participant_complete(
            participant_id=participant.pk, client=request.POST.get("client_events", "")
        )
        request.session[f"teachback:completed:{participant.token}"] = True
        return HttpResponseRedirect(_finish_url(participant), status=303)
    services.page_visit_shown(participant=participant, page=Step.DEBRIEF)
    protocol = Protocol(participant.version.spec)
    arm = protocol.arms.get(participant.arm) or {}
    show_note = arm.get("options", {}).get("show_meeting_note") and participant.conversation
    text = protocol.text(protocol.spec["debrief"], participant.language)
    heading, html = _md_headed(participant, text, _("Thank you"))
    return _page(request, "debrief.html", _context(
        participant, debrief_heading=heading, debrief_html=html,
        meeting_note=participant.conversation.meeting_note if show_note else "",
    ))


@require_http_methods(["GET", "POST"])
@participant_page(Step.DONE)
def done(request: HttpRequest, participant: Participant) -> HttpResponse:
    """The end. The browser that completed is sent to the recruiter again for a few minutes (a double
    click or a reload may have dropped the first redirect); anyone else sees 'already completed', no code."""
    just_finished = (
        request.session.get(f"teachback:completed:{participant.token}")
        and participant.completed_at
        and timezone.now() - participant.completed_at < RECENT_COMPLETION
    )
    if just_finished and _has_url(participant):
        return HttpResponseRedirect(_finish_url(participant), status=303)
    if participant.status == Participant.Status.DECLINED:
        return _page(request, "done.html", _context(participant, declined=True, finish_url=_finish_url(participant)))
    if participant.status == Participant.Status.WITHDRAWN:
        has_url = _has_url(participant)
        return _page(request, "done.html", _context(
            participant, withdrawn=True, finish_url=_finish_url(participant) if has_url else "",
            code="" if has_url else participant.version.spec["recruitment"]["no_consent_code"],
        ))
    code = participant.version.spec["recruitment"]["completion_code"] if just_finished and not _has_url(participant) else None
    return _page(request, "done.html", _context(participant, declined=False, code=code))


@require_http_methods(["GET", "POST"])
@participant_page(None)
def withdraw(request: HttpRequest, participant: Participant) -> HttpResponse:
    """Withdraw from the study, from any step: a confirmation page, then the no-consent code."""
    if participant.status != Participant.Status.ACTIVE:
        return redirect(step_url(participant))
    if request.method == "POST":
        participant, _now = services.participant_withdraw(participant_id=participant.pk)
        return HttpResponseRedirect(_finish_url(participant), status=303)
    mode = (participant.version.spec.get("withdrawal") or {}).get("data", "keep")
    return _page(request, "withdraw.html", _context(
        participant, deletes=mode == "delete", back_url=step_url(participant), withdrawing=True,
    ))


@require_http_methods(["GET", "POST"])
@participant_page(None)
def device(request: HttpRequest, participant: Participant) -> HttpResponse:
    """Continue on another device: a POST issues a one-time link that moves the run to the browser that opens it."""
    if participant.status != Participant.Status.ACTIVE or not participant.has_consented:
        return redirect(step_url(participant))
    link, expires_at = "", None
    if request.method == "POST":
        token, resume = services.resume_link_create(participant=participant)
        entry_url = reverse("participants:entry", kwargs={"slug": participant.study.slug})
        link, expires_at = request.build_absolute_uri(f"{entry_url}?resume={token}"), resume.expires_at
    response = _page(request, "device.html", _context(
        participant, link=link, expires_at=expires_at, back_url=step_url(participant), withdrawing=True,  # no footer
        hours=settings.RESUME_LINK_HOURS,
    ))
    response["Cache-Control"] = "no-store"
    return response


def _has_url(participant: Participant) -> bool:
    return bool(participant.version.spec["recruitment"].get("completion_url"))


def _finish_url(participant: Participant) -> str:
    if _has_url(participant):
        return completion_url(participant=participant)
    return reverse("participants:done", kwargs={"slug": participant.study.slug})


@require_GET
def asset(request: HttpRequest, slug: str, path: str) -> HttpResponse:
    """Serve an image from the participant's study version."""
    participant = participant_get_by_token(token=request.session.get(_session_key(slug), ""))
    content_type = mimetypes.guess_type(path)[0]
    found = participant and content_type in IMAGE_TYPES and study_asset_get(version_id=participant.version_id, path=path)
    if not found:
        return HttpResponse(status=404)
    response = HttpResponse(bytes(found.content), content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response
