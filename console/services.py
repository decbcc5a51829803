"""Writes of the researcher side: personal API tokens, export and report jobs."""
import hashlib
import io
import secrets
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from studies.audit import audit_record

from .models import ApiToken, Job

KEY_PREFIX = "tb_"
PREFIX_CHARS = 8  # of the random part, kept in clear to recognise a token in the list
LAST_USED_EVERY = timedelta(seconds=60)  # last_used_at is written at most this often per token
EXPORT_FORMATS = ("csv", "parquet", "jsonl")


class JobNotReady(Exception):
    """The job has no file to download (yet, or it failed); the message says which."""


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# --- personal API tokens ------------------------------------------------------------------------


@transaction.atomic
def api_token_create(*, user, name: str, scope: str) -> tuple[ApiToken, str]:
    """Create a token for `user` and return it with its key. The key is not stored: show it once."""
    assert scope in ApiToken.Scope.values, scope
    key = KEY_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes
    token = ApiToken.objects.create(
        user=user, name=name, scope=scope, prefix=key[: len(KEY_PREFIX) + PREFIX_CHARS], key_sha256=_key_hash(key)
    )
    audit_record(actor=user, action="api_token_create", object_type="api_token", object_id=token.pk,
                 after={"name": name, "scope": scope, "prefix": token.prefix})
    return token, key


@transaction.atomic
def api_token_revoke(*, user, token_id: int) -> ApiToken:
    """Revoke one of `user`'s active tokens; raise ApiToken.DoesNotExist for any other id."""
    if not 0 < token_id < 2**63:  # the URL's <int:> takes any digits; the column is a bigint
        raise ApiToken.DoesNotExist
    token = ApiToken.objects.select_for_update().get(pk=token_id, user=user, revoked_at__isnull=True)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(actor=user, action="api_token_revoke", object_type="api_token", object_id=token.pk,
                 before={"name": token.name, "scope": token.scope, "prefix": token.prefix}, after={"revoked": True})
    return token


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """Return the active token with this key (its user loaded), or None. Notes when it was last used."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    token = (ApiToken.objects.select_related("user")
             .filter(key_sha256=_key_hash(key), revoked_at__isnull=True, user__is_active=True).first())
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_EVERY:
        # One conditional UPDATE, not a write per request: a busy script would otherwise serialise on the row.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- export and report jobs ---------------------------------------------------------------------


@transaction.atomic
def export_job_start(*, user, study, fmt: str, tables: list[str] | None = None, include_simulated: bool = True,
                     include_pilot: bool = False) -> Job:
    """Queue an export of the study's dataset (the same files as `manage.py study_export`, zipped).

    `tables`: the tables to put in the zip (None: all); the codebook and the manifest always go in.
    The start is audited ("export"); the worker picks the job up once this transaction commits.
    """
    from analysis.codebook import TABLE_NAMES

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    unknown = sorted(set(tables or ()) - set(TABLE_NAMES))
    if unknown:
        raise ValueError(f"unknown tables: {', '.join(unknown)}")
    options = {"format": fmt, "tables": sorted(tables) if tables else None,
               "include_simulated": include_simulated, "include_pilot": include_pilot}
    return _job_start(user=user, study=study, kind=Job.Kind.EXPORT, options=options)


@transaction.atomic
def report_job_start(*, user, study, include_simulated: bool = False, include_pilot: bool = False) -> Job:
    """Queue the study report (the same HTML as `manage.py study_report`). Audited as an export."""
    options = {"include_simulated": include_simulated, "include_pilot": include_pilot}
    return _job_start(user=user, study=study, kind=Job.Kind.REPORT, options=options)


def _job_start(*, user, study, kind: str, options: dict) -> Job:
    from .tasks import job_run_task

    job = Job.objects.create(study=study, kind=kind, options=options, created_by=user)
    audit_record(actor=user, action="export", study_slug=study.slug, object_type=f"{kind}_job", object_id=job.pk,
                 after={"kind": kind, **options})
    job_run_task.delay_on_commit(job.pk)
    return job


def job_run(*, job_id: int) -> None:
    """Run a queued job to the end, storing its file (or its error) on the row. Safe to call twice.

    Claims the job first (queued → running in one UPDATE), so a second delivery of the task finds it
    claimed and does nothing. The export itself runs outside any write transaction (it takes its own
    read-only snapshot).
    """
    claimed = Job.objects.filter(pk=job_id, state=Job.State.QUEUED).update(
        state=Job.State.RUNNING, started_at=timezone.now(), progress=5
    )
    if not claimed:
        return
    job = Job.objects.select_related("study").defer("content").get(pk=job_id)
    try:
        if job.kind == Job.Kind.EXPORT:
            filename, content_type, content = _export_zip(job)
        else:
            filename, content_type, content = _report_html(job)
    except Exception as exc:  # noqa: BLE001 - any failure ends the job as failed, with its reason for the researcher
        Job.objects.filter(pk=job_id).update(state=Job.State.FAILED, finished_at=timezone.now(),
                                             error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    Job.objects.filter(pk=job_id).update(
        state=Job.State.DONE, progress=100, finished_at=timezone.now(), filename=filename, content_type=content_type,
        size=len(content), sha256=hashlib.sha256(content).hexdigest(), content=content,
    )


def _progress(job: Job, value: int) -> None:
    Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(progress=value)


def _export_zip(job: Job) -> tuple[str, str, bytes]:
    from analysis.export import study_export

    options, slug = job.options, job.study.slug
    fmt = options["format"]
    with tempfile.TemporaryDirectory(prefix="teachback-export-") as folder:
        _progress(job, 10)
        study_export(slug=slug, out=folder, fmt=fmt, include_simulated=options["include_simulated"],
                     include_pilot=options["include_pilot"])
        _progress(job, 80)
        keep = set(options.get("tables") or ())
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(folder).iterdir()):
                if keep and path.stem not in keep and path.name not in ("codebook.json", "codebook.md",
                                                                       "manifest.json"):
                    continue
                zf.write(path, f"{slug}/{path.name}")
        _progress(job, 95)
    return f"{slug}-export-{fmt}-{job.pk}.zip", "application/zip", buffer.getvalue()


def _report_html(job: Job) -> tuple[str, str, bytes]:
    from analysis.report import report_html

    _progress(job, 10)
    page = report_html(slug=job.study.slug, include_simulated=job.options.get("include_simulated", False),
                       include_pilot=job.options.get("include_pilot", False))
    return f"{job.study.slug}-report-{job.pk}.html", "text/html; charset=utf-8", page.encode()
