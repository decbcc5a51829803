"""Exports and the report from the console: a job starts, its progress bar polls, the file downloads."""
import io
import zipfile

import pytest

from conftest import static_only
from console import services
from console.models import Job
from pages_support import as_role, assert_strict_page  # noqa: F401

pytestmark = pytest.mark.django_db


def test_an_analyst_starts_an_export_watches_it_and_downloads_the_zip(launch, as_role, enter, step_through,
                                                                      django_capture_on_commit_callbacks):
    version = launch(static_only)
    participant, _ = enter(version)
    step_through(participant, version, times=3)
    client = as_role(version.study, "analyst")
    html = assert_strict_page(client.get("/console/loan-approval/exports/"))
    assert "data-export-form" in html and "data-report-form" in html

    with django_capture_on_commit_callbacks() as queued:
        response = client.post("/console/loan-approval/exports/start/", {"kind": "export", "fmt": "csv"},
                               headers={"HX-Request": "true"})
    assert len(queued) == 1  # the worker's task, sent once the job row is committed
    fragment = assert_strict_page(response, fragment=True)
    job = Job.objects.get()
    assert job.kind == "export" and job.options["format"] == "csv"
    assert f'hx-get="/console/loan-approval/exports/{job.pk}/"' in fragment and 'hx-trigger="every 1s"' in fragment
    assert '<progress max="100" value="0">' in fragment

    services.job_run(job_id=job.pk)  # what the worker does
    done = assert_strict_page(client.get(f"/console/loan-approval/exports/{job.pk}/"), fragment=True)
    assert 'data-job-state="done"' in done and "hx-trigger" not in done  # polling stops
    assert f'href="/console/loan-approval/exports/{job.pk}/download/"' in done
    download = client.get(f"/console/loan-approval/exports/{job.pk}/download/")
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment;")
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert "loan-approval/participants.csv" in names
    assert f'data-job="{job.pk}"' in client.get("/console/loan-approval/exports/").content.decode()


def test_the_report_job_starts_from_its_own_button(launch, as_role):
    version = launch(static_only)
    client = as_role(version.study, "owner")
    assert client.post("/console/loan-approval/exports/start/", {"kind": "report"}).status_code == 303
    assert Job.objects.get().kind == "report"


def test_exports_need_the_data_role_and_a_job_of_the_same_study(launch, as_role):
    version = launch(static_only)
    for role in ("viewer", "editor"):
        client = as_role(version.study, role)
        assert client.get("/console/loan-approval/exports/").status_code == 403
        assert client.post("/console/loan-approval/exports/start/", {"kind": "export", "fmt": "csv"}).status_code == 403
    assert not Job.objects.exists()
    client = as_role(version.study, "analyst")
    assert client.get("/console/loan-approval/exports/999999/").status_code == 404
    assert client.get("/console/loan-approval/exports/999999/download/").status_code == 404
