"""Export and report jobs: started (and audited) by the API, run once by the worker's service, downloaded when done.

The run through a real Celery worker is in test_api_flows.py; here the service runs in-process.
"""
import io
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone

from api_support import Api, make_user, no_throttles, token_for  # noqa: F401 - fixtures
from console import services
from console.models import Job
from studies.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def analyst_api(live_study, no_throttles):  # noqa: F811
    return Api(token_for(make_user("ana", live_study.study, "analyst")))


def test_an_export_is_audited_when_it_starts_and_runs_once(live_study, analyst_api, enter):
    enter(live_study)
    slug = live_study.study.slug
    status, job = analyst_api.post(f"/api/studies/{slug}/exports/",
                                   {"format": "jsonl", "tables": ["participants", "responses"]})
    assert status == 202 and job["state"] == "queued" and job["options"]["tables"] == ["participants", "responses"]
    row = AuditEvent.objects.get(action="export")
    assert (row.actor, row.study_slug, row.object_type, row.object_id) == ("ana", slug, "export_job", str(job["id"]))
    assert row.after["format"] == "jsonl"

    status, _ = analyst_api.get(f"/api/studies/{slug}/exports/{job['id']}/download/")
    assert status == 409  # not done yet
    services.job_run(job_id=job["id"])
    services.job_run(job_id=job["id"])  # a second delivery finds the job claimed and does nothing
    done = Job.objects.get(pk=job["id"])
    assert done.state == "done" and done.progress == 100 and done.finished_at is not None

    status, shown = analyst_api.get(f"/api/studies/{slug}/exports/{job['id']}/")
    assert shown["state"] == "done" and shown["size"] == done.size and shown["download_url"].endswith("/download/")
    response = analyst_api.client.get(shown["download_url"], **analyst_api.headers)
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment;")
    names = {n.split("/", 1)[1] for n in zipfile.ZipFile(io.BytesIO(response.content)).namelist()}
    assert names == {"participants.jsonl", "responses.jsonl", "codebook.json", "codebook.md", "manifest.json"}
    assert [j["id"] for j in analyst_api.get(f"/api/studies/{slug}/exports/")[1]] == [job["id"]]


def test_a_failed_job_says_why_and_has_nothing_to_download(live_study, analyst_api, monkeypatch):
    import analysis.export

    def broken(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(analysis.export, "study_export", broken)
    slug = live_study.study.slug
    job = analyst_api.post(f"/api/studies/{slug}/exports/", {"format": "csv"})[1]
    with pytest.raises(OSError):
        services.job_run(job_id=job["id"])
    status, shown = analyst_api.get(f"/api/studies/{slug}/exports/{job['id']}/")
    assert shown["state"] == "failed" and shown["error"] == "OSError: disk full" and shown["download_url"] is None
    status, body = analyst_api.get(f"/api/studies/{slug}/exports/{job['id']}/download/")
    assert status == 409 and "failed" in body["detail"]


def test_a_job_whose_worker_was_lost_is_reported_failed(live_study, analyst_api):
    slug = live_study.study.slug
    job = analyst_api.post(f"/api/studies/{slug}/report/", {})[1]
    Job.objects.filter(pk=job["id"]).update(state="running", started_at=timezone.now() - timedelta(hours=4))
    shown = analyst_api.get(f"/api/studies/{slug}/report/{job['id']}/")[1]
    assert shown["state"] == "failed" and "lost" in shown["error"]


def test_the_report_is_one_html_file_with_its_own_csp(live_study, analyst_api):
    slug = live_study.study.slug
    status, job = analyst_api.post(f"/api/studies/{slug}/report/", {"include_simulated": True})
    assert status == 202 and AuditEvent.objects.get(action="export").after["kind"] == "report"
    services.job_run(job_id=job["id"])
    response = analyst_api.client.get(f"/api/studies/{slug}/report/{job['id']}/download/", **analyst_api.headers)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert response["Content-Security-Policy"].startswith("default-src 'none'")  # no scripts, nothing fetched
    # An export's id is not a report's: each kind has its own URLs.
    assert analyst_api.get(f"/api/studies/{slug}/exports/{job['id']}/")[0] == 404


def test_invalid_export_requests_are_400(live_study, analyst_api):
    slug = live_study.study.slug
    status, body = analyst_api.post(f"/api/studies/{slug}/exports/", {"format": "xlsx", "tables": ["nope"]})
    assert status == 400 and set(body["fields"]) == {"format", "tables"}
    assert not Job.objects.exists() and not AuditEvent.objects.filter(action="export").exists()
