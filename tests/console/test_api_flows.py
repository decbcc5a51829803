"""A script's whole session with the API, as docs/api.md tells it: token, upload, launch, data, export, revoke."""
import io
import time
import zipfile
from pathlib import Path

import pytest

from api_support import Api, make_user, no_throttles, session_client  # noqa: F401 - fixtures
from conftest import static_only
from studies.models import AuditEvent, Membership

SLUG = "api-flow"


def folder_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def upload_of(folder: Path) -> io.BytesIO:
    upload = io.BytesIO(folder_zip(folder))
    upload.name = "study.zip"
    return upload


def line_of(text: str, needle: str, after: str) -> int:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1


def wait_done(api: Api, url: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = api.get(url)
        assert status == 200, job
        assert 0 <= job["progress"] <= 100
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"the job at {url} did not finish: {job}")


def test_a_script_runs_a_study_through_the_api_with_a_token(study_folder, enter, step_through, celery_worker_factory,
                                                            no_throttles):  # noqa: F811
    ada = make_user("ada")
    # A token is made from the logged-in console session, once; its key is never shown again.
    status, created = Api(client=session_client(ada)).post("/api/tokens/", {"name": "my script", "scope": "write"})
    assert status == 201 and created["key"].startswith("tb_") and created["scope"] == "write"
    api = Api(created["key"])
    status, tokens = api.get("/api/tokens/")
    assert status == 200 and [t["prefix"] for t in tokens] == [created["prefix"]] and "key" not in tokens[0]

    # Upload with a mistake: 400 and the same line-numbered error as `manage.py study_validate`.
    def broken(data):
        static_only(data)
        data["slug"] = SLUG
        data["arms"][0]["weight"] = 0

    folder = study_folder(broken, name="broken")
    text = (folder / "study.yaml").read_text(encoding="utf-8")
    status, body = api.post("/api/studies/", {"file": upload_of(folder)}, format="multipart")
    assert status == 400, body
    assert body["code"] == "invalid_study_file"
    errors = [e for e in body["errors"] if e["path"] == "arms[0].weight"]
    assert errors and errors[0]["line"] == line_of(text, "weight:", after="arms:") and errors[0]["file"] == "study.yaml"

    # Fixed: a new study, and the uploader its owner.
    def fixed(data):
        static_only(data)
        data["slug"] = SLUG

    status, body = api.post("/api/studies/", {"file": upload_of(study_folder(fixed, name="fixed"))}, format="multipart")
    assert status == 201, body
    assert body["study"] == SLUG and body["created"] and body["version"]["state"] == "draft"
    assert Membership.objects.get(study__slug=SLUG, user=ada).role == "owner"
    status, studies = api.get("/api/studies/")
    assert [(s["slug"], s["role"], s["state"]) for s in studies] == [(SLUG, "owner", "draft")]

    status, version = api.post(f"/api/studies/{SLUG}/launch/")
    assert status == 200 and version["state"] == "live", version
    status, again = api.post(f"/api/studies/{SLUG}/launch/", {"number": 1})
    assert status == 200 and again["state"] == "live"  # launching the live version changes nothing

    # Two participants arrive; one goes on past consent.
    from studies.models import StudyVersion

    live = StudyVersion.objects.get(study__slug=SLUG, state="live")
    first, _ = enter(live, pid="PIDAPIFLOW00000000000001")
    enter(live, pid="PIDAPIFLOW00000000000002")
    step_through(first, live, times=2)
    status, page = api.get(f"/api/studies/{SLUG}/participants/")
    assert status == 200 and len(page["results"]) == 2 and page["next"] is None
    assert {p["step"] for p in page["results"]} == {"consent", "pre_test"}
    assert all(p["pseudonym"].startswith("p_") and p["is_pilot"] is False for p in page["results"])
    status, filtered = api.get(f"/api/studies/{SLUG}/participants/", {"step": "pre_test"})
    assert [p["step"] for p in filtered["results"]] == ["pre_test"]
    status, small = api.get(f"/api/studies/{SLUG}/participants/", {"page_size": 1})
    assert len(small["results"]) == 1 and small["next"]
    status, rest = api.get(small["next"].replace("http://testserver", ""))
    assert status == 200 and len(rest["results"]) == 1
    assert rest["results"][0]["pseudonym"] != small["results"][0]["pseudonym"]

    pseudonym = filtered["results"][0]["pseudonym"]
    status, transcript = api.get(f"/api/studies/{SLUG}/participants/{pseudonym}/transcript/")
    assert status == 200 and transcript["participant"]["pseudonym"] == pseudonym
    status, _ = api.get(f"/api/studies/{SLUG}/participants/p_0000000000000000/transcript/")
    assert status == 404

    status, arms = api.get(f"/api/studies/{SLUG}/arms/")
    assert status == 200 and sum(a["allocated"] for a in arms) in (0, 1, 2)

    # The export runs in a real worker; poll its progress, then download the zip.
    celery_worker_factory(concurrency=2)
    status, job = api.post(f"/api/studies/{SLUG}/exports/", {"format": "csv"})
    assert status == 202 and job["state"] == "queued" and job["download_url"] is None
    status, early = api.get(f"/api/studies/{SLUG}/exports/{job['id']}/download/")
    assert status in (200, 409)  # 409 until it is done (the worker may be quick)
    job = wait_done(api, f"/api/studies/{SLUG}/exports/{job['id']}/")
    assert job["state"] == "done" and job["progress"] == 100, job
    response = api.client.get(job["download_url"], **api.headers)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    assert {f"{SLUG}/participants.csv", f"{SLUG}/codebook.json", f"{SLUG}/manifest.json"} <= names
    rows = archive.read(f"{SLUG}/participants.csv").decode().strip().splitlines()
    assert len(rows) == 3  # the header and both participants

    status, report = api.post(f"/api/studies/{SLUG}/report/", {"include_simulated": True})
    assert status == 202
    report = wait_done(api, f"/api/studies/{SLUG}/report/{report['id']}/")
    assert report["state"] == "done", report["error"]
    response = api.client.get(report["download_url"], **api.headers)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert b"<html" in response.content.lower()

    # Revoked, the key answers 401 at once.
    status, _ = api.delete(f"/api/tokens/{created['id']}/")
    assert status == 204
    status, body = api.get("/api/studies/")
    assert status == 401 and body["code"] == "authentication_failed"

    actions = list(AuditEvent.objects.filter(actor="ada").values_list("action", flat=True))
    assert actions.count("export") == 2 and "api_token_create" in actions and "api_token_revoke" in actions


@pytest.mark.django_db
def test_a_read_token_reads_but_cannot_change_anything(live_study, no_throttles):  # noqa: F811
    from api_support import token_for

    owner = make_user("olga", live_study.study, "owner")
    api = Api(token_for(owner, scope="read"))
    slug = live_study.study.slug
    assert api.get(f"/api/studies/{slug}/")[0] == 200
    status, body = api.post(f"/api/studies/{slug}/pause/")
    assert status == 403 and "read-only" in body["detail"]
    assert api.post(f"/api/studies/{slug}/exports/", {"format": "csv"})[0] == 403
    assert api.get(f"/api/studies/{slug}/")[1]["current_version"]["state"] == "live"
