"""The researcher's screening of yoked transcripts: the transcripts waiting for approval, with the redacted text
a yoked participant would read, and approve / reject buttons (docs/console.md, "Screening yoked transcripts")."""
from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from explainers import services as explainer_services
from explainers.models import TranscriptScreening
from explainers.selectors import screenings_for_study
from participants.chat_display import reply_html
from participants.models import Participant
from studies import selectors as study_selectors

from .access import researcher_view

RECENT = 20


class ScreeningDecisionForm(forms.Form):
    screening = forms.IntegerField(min_value=1)
    decision = forms.ChoiceField(choices=[("approve", "approve"), ("reject", "reject")])


def _view(screening: TranscriptScreening, pseudonyms: dict[int, str]) -> dict:
    conversation = screening.conversation
    return {
        "id": screening.pk, "status": screening.status, "mode": screening.mode, "arm": conversation.arm,
        "version": conversation.version.number, "ended_at": conversation.ended_at,
        "decided_at": screening.decided_at, "decided_by": getattr(screening.decided_by, "username", ""),
        "redactions": screening.redactions, "pseudonym": pseudonyms.get(conversation.pk, ""),
        "turns": [{**t, "html": reply_html(t["text"]) if t["author"] == "explainer" else ""} for t in screening.turns],
    }


@require_GET
@researcher_view(needs="data")
def screenings(request: HttpRequest, slug: str, study) -> HttpResponse:
    """The transcripts awaiting a researcher's screen (oldest first), then the latest decided ones."""
    explainer_services.study_screenings_prepare(study=study)
    found = screenings_for_study(study=study)
    pseudonyms = dict(Participant.objects.filter(conversation_id__in=[s.conversation_id for s in found])
                      .values_list("conversation_id", "pseudonym"))
    pending = [_view(s, pseudonyms) for s in found if s.status == TranscriptScreening.Status.PENDING]
    decided = [_view(s, pseudonyms) for s in sorted((s for s in found if s.status != TranscriptScreening.Status.PENDING),
                                        key=lambda s: s.decided_at, reverse=True)[:RECENT]]
    can = {needs: study_selectors.role_allows(role=study.role, needs=needs) for needs in study_selectors.NEEDS}
    return render(request, "console/screenings.html", {
        "study": study, "can": can, "pending": pending, "decided": decided,
    })


@require_POST
@researcher_view(needs="data")
def screening_decide(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Approve or reject one transcript (audited); back to the list."""
    form = ScreeningDecisionForm(request.POST)
    if not form.is_valid():
        return HttpResponse("say which transcript (screening) and the decision (approve or reject)", status=400,
                            content_type="text/plain")
    approve = form.cleaned_data["decision"] == "approve"
    try:
        explainer_services.transcript_screening_decide(
            actor=request.user, study=study, screening_id=form.cleaned_data["screening"], approve=approve)
    except TranscriptScreening.DoesNotExist:
        raise Http404("no such transcript") from None
    except explainer_services.ScreeningDecided as decided:
        messages.error(request, f"That transcript was decided already ({decided}).")
    else:
        messages.success(request, "Transcript approved: yoked participants may read it now." if approve
                         else "Transcript rejected: no yoked participant will read it.")
    return HttpResponseRedirect(reverse("console:screenings", kwargs={"slug": study.slug}), status=303)
