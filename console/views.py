"""The researcher's pages. Each view gets its study only through `researcher_view` (the gatekeeper), reads
through selectors, changes things through one service call, and renders a template or an htmx fragment.

A form that fails is rendered again with its errors (status 400); a change that worked redirects (303).
Buttons a role cannot use are not shown, and the server checks the role again whatever the page showed.
"""
from urllib.parse import quote

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from analysis import selectors as analysis_selectors
from console import accounts
from console import services as console_services
from console import selectors as console_selectors
from console.models import ApiToken, Job
from explainers.arms import arm_unavailable_reason, launch_problems
from explainers.launch import LaunchRefused, study_launch_checked
from explainers.probe import version_llm_check
from participants import services as participant_services
from participants.chat_display import reply_html
from studies import selectors as study_selectors
from studies import services as study_services
from studies.models import Membership, StudyVersion
from studies.spec import StudyFileInvalid

from .access import researcher_view
from .bots import BotsRefused, bots_run_get, bots_run_latest, bots_run_start
from .forms import (ApiTokenForm, ApiTokenRevokeForm, DiffForm, JobForm, MemberForm, MemberRemoveForm, MemberUnlockForm,
                    ParticipantFilterForm, ParticipantFindForm, StateForm, StudyUploadForm)
from .logins import UnlockRefused, login_locked_until, login_unlock
from .monitoring import monitor_get

PER_PAGE = 50
PROLIFIC_QUERY = "PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
MEMBER_ERRORS = (study_services.MembershipError, PermissionDenied)


def _see_other(url: str) -> HttpResponseRedirect:
    """303: after a POST, the browser GETs the page (a reload does not post again)."""
    return HttpResponseRedirect(url, status=303)


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _can(study) -> dict:
    """What the user's role on the study allows, for templates (the server checks again on every request)."""
    return {needs: study_selectors.role_allows(role=study.role, needs=needs) for needs in study_selectors.NEEDS}


def _study_context(study, **extra) -> dict:
    return {"study": study, "can": _can(study), **extra}


# --- the account --------------------------------------------------------------------------------


def tokens_revoked_text(n: int) -> str:
    if n == 0:
        return "You had no API tokens to revoke."
    return f"Your {n} API token was revoked." if n == 1 else f"Your {n} API tokens were revoked."


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change, saying before and after that it revokes the account's API tokens."""

    template_name = "console/password_change.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs),
                "api_tokens_active": accounts.api_tokens_active_count(user=self.request.user)}

    def form_valid(self, form):
        active = accounts.api_tokens_active_count(user=self.request.user)
        with accounts.password_change_by(self.request.user):  # the hook in console.accounts revokes them
            response = super().form_valid(form)
        messages.success(self.request, tokens_revoked_text(active))
        return response


@require_http_methods(["GET", "POST"])
@researcher_view(needs="account")
def api_tokens(request: HttpRequest) -> HttpResponse:
    """The account's API tokens; POST creates one and shows its key on this answer only (it is not stored).

    The key is rendered, not redirected with: a redirect would have to keep it somewhere (the session, a
    cookie) until the next page. The answer is marked no-store so no cache keeps it either.
    """
    form = ApiTokenForm(request.POST if request.method == "POST" else None)
    created, status = None, 200
    if form.is_bound:
        if form.is_valid():
            created, key = console_services.api_token_create(
                user=request.user, name=form.cleaned_data["name"], scope=form.cleaned_data["scope"]
            )
            created.key = key
            form, status = ApiTokenForm(), 201
        else:
            status = 400
    response = render(request, "console/tokens.html", {
        "tokens": console_selectors.api_tokens_for_user(user=request.user), "form": form, "created": created,
    }, status=status)
    add_never_cache_headers(response)
    return response


@require_POST
@researcher_view(needs="account")
def api_token_revoke(request: HttpRequest) -> HttpResponse:
    """Revoke one of the account's own tokens (any other id is "no such token", whoever holds it)."""
    form = ApiTokenRevokeForm(request.POST)
    try:
        if not form.is_valid():
            raise ApiToken.DoesNotExist
        token = console_services.api_token_revoke(user=request.user, token_id=form.cleaned_data["token"])
    except ApiToken.DoesNotExist:
        messages.error(request, "No such active token of yours.")
    else:
        messages.success(request, f"Revoked the token “{token.name}” ({token.prefix}…): it answers 401 from now on.")
    return _see_other(reverse("console:api_tokens"))


# --- the study list and uploads -------------------------------------------------------------------


@require_GET
@researcher_view(needs="account")
def study_list(request: HttpRequest) -> HttpResponse:
    return render(request, "console/study_list.html", {"studies": analysis_selectors.study_list(user=request.user), "form": StudyUploadForm()})


@require_POST
@researcher_view(needs="account")
def study_upload(request: HttpRequest) -> HttpResponse:
    """A study file for a new study (the uploader becomes its owner) or a new version of one they may edit."""
    form, spec_errors = _upload(request)
    if form is None:
        return spec_errors
    return render(request, "console/study_list.html", {
        "studies": analysis_selectors.study_list(user=request.user), "form": form, "spec_errors": spec_errors,
    }, status=400)


@require_POST
@researcher_view(needs="edit")
def study_version_upload(request: HttpRequest, slug: str, study) -> HttpResponse:
    """A new version of this study from the study page."""
    form, spec_errors = _upload(request, expected_slug=study.slug)
    if form is None:
        return spec_errors
    return render(request, "console/study_detail.html", _detail_context(
        request, study, upload_form=form, spec_errors=spec_errors,
    ), status=400)


def _upload(request: HttpRequest, expected_slug: str = ""):
    """Return (None, redirect) when the file was stored, else (the form, the study file's errors)."""
    form = StudyUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return form, []
    upload = form.cleaned_data["file"]
    try:
        version, created = study_services.study_file_upload(
            user=request.user, filename=upload.name, content=upload.read()
        )
    except StudyFileInvalid as invalid:
        return form, invalid.errors
    except PermissionDenied:  # a study the user may only read (one they have no role on is a StudyFileInvalid)
        form.add_error("file", "Your role on the study this file names does not allow loading versions.")
        return form, []
    slug = version.study.slug
    if not created:
        messages.info(request, f"Nothing new: this file is the same as {slug} v{version.number}.")
    elif expected_slug and slug != expected_slug:
        messages.warning(request, f"This file is for the study {slug!r}: it was stored there as v{version.number}.")
    else:
        messages.success(request, f"Stored {slug} v{version.number} as a draft.")
    return None, _see_other(reverse("console:study", kwargs={"slug": slug}))


# --- the study page -------------------------------------------------------------------------------


def _detail_context(request: HttpRequest, study, **extra) -> dict:
    versions = list(study_selectors.study_versions(study=study))  # without their specs
    current = analysis_selectors.study_version_current(study=study)  # the open one, else the newest, with its spec
    open_version = current if current and current.state in (StudyVersion.State.LIVE, StudyVersion.State.PAUSED) else None
    can = _can(study)
    members = list(Membership.objects.filter(study=study).select_related("user").order_by("user__username"))
    if can["members"]:  # owners see which members' logins are locked, and can lift the lock
        locked = login_locked_until(usernames=[m.user.username for m in members])
        for m in members:
            m.locked_until = locked.get(m.user.username)
    latest = versions[0] if versions else None
    context = _study_context(
        study, versions=versions, open_version=open_version, members=members,
        upload_form=StudyUploadForm(), member_form=MemberForm(), roles=Membership.Role.choices,
        diff_form=DiffForm(initial={"a": max(1, latest.number - 1), "b": latest.number} if latest else None),
        checklist=_checklist(request, study, current, can) if current else None,
        bots=bots_run_latest(study=study) if can["edit"] else None,
    )
    context.update(extra)
    return context


def _checklist(request: HttpRequest, study, version: StudyVersion, can: dict) -> dict:
    """What to check before sharing the link: the links, the codes and whether every arm can run."""
    entry = request.build_absolute_uri(reverse("participants:entry", kwargs={"slug": study.slug}))
    recruitment = version.spec.get("recruitment") or {}
    completion_url = recruitment.get("completion_url") or ""
    report = version.llm_report or {}
    problems = launch_problems(spec=version.spec, llm_report=version.llm_report)
    waivers = version.launch_waivers or {}
    arms = [
        {"id": a["id"], "kind": a["kind"], "available": arm_unavailable_reason(a) is None,
         "problems": problems.get(a["id"], []), "waived": waivers.get(a["id"]),
         "probe": (report.get("arms") or {}).get(a["id"])}
        for a in version.spec.get("arms") or []
    ]
    pilot = (study_selectors.entry_link_issue(slug=study.slug, kind="pilot", number=version.number)
             if can["edit"] else None)
    return {
        "version": version,
        "live": version.state == StudyVersion.State.LIVE,
        "participant_link": f"{entry}?{PROLIFIC_QUERY}",
        "completion_code": recruitment.get("completion_code", ""),
        "no_consent_code": recruitment.get("no_consent_code", ""),
        "completion_url": completion_url.replace("{code}", quote(recruitment.get("completion_code", ""))),
        "no_consent_url": completion_url.replace("{code}", quote(recruitment.get("no_consent_code", ""))),
        "allow_without_pid": recruitment.get("allow_without_pid", False),
        "pilot_link": f"{entry}?pilot={pilot.token}" if pilot else "",
        "pilot_link_expires": pilot.expires_at if pilot else None,  # the link admits to this version only
        "arms": arms,
        "all_arms_run": not problems,
        "problems": problems,
        "waivers": waivers,
        "llm_report": version.llm_report,
        "llm_arms": [a for a in arms if a["kind"] in ("chat", "agentic")],
        "draft": version.state == StudyVersion.State.DRAFT,
    }


@require_GET
@researcher_view(needs="monitor")
def study_detail(request: HttpRequest, slug: str, study) -> HttpResponse:
    return render(request, "console/study_detail.html", _detail_context(request, study))


@require_GET
@researcher_view(needs="monitor")
def version_diff(request: HttpRequest, slug: str, study) -> HttpResponse:
    """The unified diff between two versions' study files (a fragment for htmx, else a page)."""
    form = DiffForm(request.GET)
    diff, error = "", ""
    if form.is_valid():
        try:
            diff = study_selectors.study_version_diff(study=study, a=form.cleaned_data["a"], b=form.cleaned_data["b"])
        except (StudyVersion.DoesNotExist, Http404, ValueError):
            error = "No such version."
    else:
        error = "Choose two version numbers."
    lines = [{"text": line, "kind": _diff_kind(line)} for line in diff.splitlines()]
    template = "console/_diff.html" if _is_htmx(request) else "console/diff.html"
    return render(request, template, _study_context(study, form=form, lines=lines, error=error),
                  status=400 if error else 200)


def _diff_kind(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "same")


@require_POST
@researcher_view(needs="edit")
def study_state(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Launch a draft version, or pause, resume or close the open one."""
    form = StateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return _see_other(reverse("console:study", kwargs={"slug": study.slug}))
    action = form.cleaned_data["action"]
    try:
        if action == "launch":
            version = study_launch_checked(slug=study.slug, number=form.cleaned_data["number"], actor=request.user,
                                           allow=form.cleaned_data["allow"])
        else:
            version = study_services.study_state_set(slug=study.slug, state=StateForm.ACTIONS[action], actor=request.user)
    except LaunchRefused as refused:  # the page again, with the reasons and a "Launch anyway" button
        messages.error(request, str(refused).replace("--allow ARM", "“Launch anyway”"))
        return render(request, "console/study_detail.html", _detail_context(request, study), status=400)
    except study_services.StudyStateError as refused:
        messages.error(request, str(refused))
    except StudyFileInvalid as invalid:  # launching trains the target, which can still fail
        messages.error(request, "The version cannot be launched: " + "; ".join(str(e) for e in invalid.errors))
    else:
        messages.success(request, f"{study.slug} v{version.number} is {version.state}.")
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}))


@require_POST
@researcher_view(needs="edit")
def llm_check(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Probe the current version's LLM endpoints now and store the report the checklist shows.

    Synchronous, from the web process: what matters is whether the arms can run where participants are
    allocated, and the probe is bounded (explainers.probe.PROBE_BUDGET_S, arms probed side by side).
    """
    version = analysis_selectors.study_version_current(study=study)
    if version is None:
        messages.error(request, "No version to check.")
    else:
        report = version_llm_check(version=version)
        messages.success(request, f"Checked the endpoints of {len(report['arms'])} LLM arm(s) of v{version.number}.")
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#checklist")


@require_POST
@researcher_view(needs="members")
def member_set(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Add a member or change their role (owner only)."""
    form = MemberForm(request.POST)
    if form.is_valid():
        try:
            study_services.membership_set(actor=request.user, study=study, username=form.cleaned_data["username"],
                                          role=form.cleaned_data["role"])
        except MEMBER_ERRORS as refused:
            messages.error(request, _message(refused))
        else:
            messages.success(request, f"{form.cleaned_data['username']} is now {form.cleaned_data['role']}.")
    else:
        messages.error(request, "Give a username and a role.")
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#members")


@require_POST
@researcher_view(needs="members")
def member_remove(request: HttpRequest, slug: str, study) -> HttpResponse:
    form = MemberRemoveForm(request.POST)
    if form.is_valid():
        try:
            study_services.membership_remove(actor=request.user, study=study, username=form.cleaned_data["username"])
        except MEMBER_ERRORS as refused:
            messages.error(request, _message(refused))
        else:
            messages.success(request, f"{form.cleaned_data['username']} is no longer a member.")
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#members")


@require_POST
@researcher_view(needs="members")
def member_unlock(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Lift a member's login lock (too many failed logins) before it ends by itself (owner only; audited)."""
    form = MemberUnlockForm(request.POST)
    if form.is_valid():
        username = form.cleaned_data["username"]
        try:
            lifted = login_unlock(actor=request.user, study=study, username=username)
        except UnlockRefused as refused:
            messages.error(request, str(refused))
        else:
            messages.success(request, f"{username} can log in again." if lifted else f"{username}'s login was not locked.")
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#members")


def _message(error: Exception) -> str:
    text = str(error.args[0]) if getattr(error, "args", None) else str(error)
    return text or "That change is not allowed."


@require_POST
@researcher_view(needs="edit")
def bots_start(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Start 10 bots against this very site (the base URL of the request that asked)."""
    try:
        run = bots_run_start(actor=request.user, study=study, base_url=request.build_absolute_uri("/"))
    except BotsRefused as refused:
        if _is_htmx(request):
            return render(request, "console/_bots.html", _study_context(study, bots=None, bots_error=str(refused)))
        messages.error(request, str(refused))
        return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#bots")
    if _is_htmx(request):
        return render(request, "console/_bots.html", _study_context(study, bots=run))
    return _see_other(reverse("console:study", kwargs={"slug": study.slug}) + "#bots")


@require_GET
@researcher_view(needs="edit")
def bots_status(request: HttpRequest, slug: str, run: str, study) -> HttpResponse:
    bots = bots_run_get(study=study, run_id=run)
    if bots is None:
        raise Http404("no such run")
    return render(request, "console/_bots.html", _study_context(study, bots=bots))


# --- monitor ----------------------------------------------------------------------------------------


@require_GET
@researcher_view(needs="monitor")
def monitor(request: HttpRequest, slug: str, study) -> HttpResponse:
    return render(request, "console/monitor.html", _study_context(study, m=monitor_get(study=study)))


@require_GET
@researcher_view(needs="monitor")
def monitor_live(request: HttpRequest, slug: str, study) -> HttpResponse:
    """The monitor's numbers alone: the page swaps this fragment in every few seconds."""
    return render(request, "console/_monitor.html", _study_context(study, m=monitor_get(study=study)))


# --- participants and transcripts ---------------------------------------------------------------


@require_GET
@researcher_view(needs="data")
def participant_list(request: HttpRequest, slug: str, study) -> HttpResponse:
    return render(request, "console/participants.html", _participant_list_context(request, study))


@require_POST
@sensitive_post_parameters("pid")  # masked in Django's error reports, should the view ever fail
@researcher_view(needs="data")
def participant_find(request: HttpRequest, slug: str, study) -> HttpResponse:
    """Find the participant who entered with a Prolific ID (posted: the PID is in no URL, log or page).

    Shown above the list: their row, a link to the transcript and, for owners, the erase button. The
    PID is only hashed (analysis.selectors.participant_find_by_pid) and the form is not filled in again.
    """
    form = ParticipantFindForm(request.POST)
    if not form.is_valid():
        response = render(request, "console/participants.html", _participant_list_context(
            request, study, find_form=form, find_done=False), status=400)
    else:
        found = analysis_selectors.participant_find_by_pid(study=study, pid=form.cleaned_data["pid"])
        if found is not None:
            integrity = analysis_selectors.participant_integrity(participant_ids=[found.pk])
            found.flags = _flags(found, integrity.get(found.pk))
        response = render(request, "console/participants.html", _participant_list_context(
            request, study, find_done=True, found=found))
    add_never_cache_headers(response)
    return response


def _participant_list_context(request: HttpRequest, study, **extra) -> dict:
    """The participant list (filters from the query string) and the find-by-PID form."""
    arms = _arm_ids(study)
    form = ParticipantFilterForm(request.GET or None, arms=arms)
    filters = form.filters()
    page = Paginator(analysis_selectors.participants_for_study(study=study, **filters), PER_PAGE).get_page(
        request.GET.get("page")
    )
    participants = list(page.object_list)
    integrity = analysis_selectors.participant_integrity(participant_ids=[p.pk for p in participants])
    for p in participants:
        p.flags = _flags(p, integrity.get(p.pk))
    query = {k: v for k, v in filters.items() if v}
    return _study_context(
        study, form=form, page=page, rows=participants,
        filter_query="&".join(f"{k}={quote(v)}" for k, v in query.items()),
        find_form=extra.pop("find_form", None) or ParticipantFindForm(),
        pid_retention_days=settings.PID_HASH_RETENTION_DAYS, **extra,
    )


HIDDEN_FLAG_MS = 60_000  # away from the tab for over a minute in all: worth a look, not proof of anything


def _flags(participant, integrity: dict | None) -> list[dict]:
    """The marks beside a participant in the list: who they are (pilot, bot) and integrity signals."""
    flags = []
    if participant.is_pilot:
        flags.append({"kind": "pilot", "label": "pilot", "title": "entered through the pilot link"})
    if participant.is_simulated:
        flags.append({"kind": "bot", "label": "bot", "title": "a simulated participant"})
    integrity = integrity or {}
    if integrity.get("paste_count"):
        flags.append({"kind": "paste", "label": f"pasted ×{integrity['paste_count']}", "title": "pasted into the page"})
    if (integrity.get("hidden_ms") or 0) > HIDDEN_FLAG_MS:
        flags.append({"kind": "hidden", "label": f"away {integrity['hidden_ms'] // 1000} s",
                      "title": "time the page was hidden (another tab or window)"})
    if integrity.get("pages_reloaded"):
        flags.append({"kind": "reload", "label": f"reloads ×{integrity['pages_reloaded']}",
                      "title": "pages shown more than once"})
    return flags


def _arm_ids(study) -> list[str]:
    version = analysis_selectors.study_version_current(study=study)
    return [a["id"] for a in version.spec.get("arms") or []] if version else []


@require_GET
@researcher_view(needs="data")
def transcript(request: HttpRequest, slug: str, pseudonym: str, study) -> HttpResponse:
    """One participant's conversation turn by turn, with the learner model beside each turn."""
    data = analysis_selectors.participant_transcript(study=study, pseudonym=pseudonym)
    for turn in data["turns"]:  # the explainer writes Markdown: show it as the participant saw it (sanitised)
        turn["html"] = reply_html(turn["text"]) if turn["author"] == "explainer" else ""
    activity = analysis_selectors.participant_activity(study=study, pseudonym=pseudonym)
    return render(request, "console/transcript.html", _study_context(
        study, t=data, activity=activity, pseudonym=pseudonym,
    ))


@require_POST
@researcher_view(needs="members")
def participant_erase(request: HttpRequest, slug: str, pseudonym: str, study) -> HttpResponse:
    """Erase one participant and everything of theirs (owners; audited without any identifier)."""
    summary = participant_services.participant_erase(actor=request.user, study=study, pseudonym=pseudonym)
    messages.success(request, f"Erased one participant ({summary['arm'] or 'no arm'}, {summary['step']}, "
                              f"{summary['status']}). Nothing of theirs is left but the audit row.")
    return _see_other(reverse("console:participants", kwargs={"slug": study.slug}))


# --- exports and reports ------------------------------------------------------------------------


@require_GET
@researcher_view(needs="data")
def jobs(request: HttpRequest, slug: str, study) -> HttpResponse:
    recent = Job.objects.filter(study=study).select_related("created_by").defer("content")[:20]
    return render(request, "console/jobs.html", _study_context(study, jobs=recent, form=JobForm()))


@require_POST
@researcher_view(needs="data")
def job_start(request: HttpRequest, slug: str, study) -> HttpResponse:
    form = JobForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose an export format.")
        return _see_other(reverse("console:jobs", kwargs={"slug": study.slug}))
    if form.cleaned_data["kind"] == "report":
        job = console_services.report_job_start(user=request.user, study=study)
    else:
        job = console_services.export_job_start(user=request.user, study=study, fmt=form.cleaned_data["fmt"] or "csv")
    if _is_htmx(request):
        return render(request, "console/_job.html", _study_context(study, job=job))
    messages.success(request, f"The {job.kind} has started.")
    return _see_other(reverse("console:jobs", kwargs={"slug": study.slug}))


@require_GET
@researcher_view(needs="data")
def job_status(request: HttpRequest, slug: str, job_id: int, study) -> HttpResponse:
    job = Job.objects.filter(study=study, pk=job_id).select_related("created_by").defer("content").first()
    if job is None:
        raise Http404("no such job")
    return render(request, "console/_job.html", _study_context(study, job=job))


@require_GET
@researcher_view(needs="data")
def job_download(request: HttpRequest, slug: str, job_id: int, study) -> HttpResponse:
    job = Job.objects.filter(study=study, pk=job_id, state=Job.State.DONE).first()
    if job is None or job.content is None:
        raise Http404("no such file")
    response = HttpResponse(bytes(job.content), content_type=job.content_type or "application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{job.filename or f"{study.slug}-{job.kind}-{job.pk}"}"'
    return response
