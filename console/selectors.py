"""Reads of the researcher side's own rows: API tokens and jobs. Callers pass a user or a gatekept study."""
from django.http import Http404

from .models import ApiToken, Job

JOB_LIST_MAX = 50
ID_MAX = 2**63


def api_tokens_for_user(*, user):
    """Return the user's active tokens, newest first."""
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).order_by("-created_at", "-id")


def jobs_for_study(*, study, kind: str):
    """Return the study's latest jobs of one kind, newest first, without their files."""
    return (Job.objects.filter(study=study, kind=kind).select_related("study").defer("content")
            .order_by("-created_at", "-id")[:JOB_LIST_MAX])


def job_get(*, study, kind: str, job_id: int, with_content: bool = False) -> Job:
    """Return one job of the study; Http404 for a job of another study or kind."""
    if not 0 < job_id < ID_MAX:  # the URL's <int:> takes any digits; the column is a bigint
        raise Http404("no such job in this study")
    qs = Job.objects.filter(study=study, kind=kind, pk=job_id).select_related("study")
    job = (qs if with_content else qs.defer("content")).first()
    if job is None:
        raise Http404("no such job in this study")
    return job
