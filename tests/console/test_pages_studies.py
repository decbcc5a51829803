"""The study list and the study page: uploads with line-numbered errors, versions and diffs, launch and the
other state changes, members, and the launch checklist."""
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conftest import static_only
from pages_support import as_role, assert_strict_page, client_for, line_of, researcher, study_zip  # noqa: F401
from participants.models import Participant
from studies.models import AuditEvent, Membership, Study, StudyVersion

pytestmark = pytest.mark.django_db


def _upload(client, url, name, content):
    return client.post(url, {"file": SimpleUploadedFile(name, content)})


def test_the_study_list_shows_each_study_with_the_role_and_state(launch, as_role):
    version = launch(static_only)
    client = as_role(version.study, "analyst")
    html = assert_strict_page(client.get("/console/"))
    row = re.search(r'<tr data-study="loan-approval">.*?</tr>', html, re.S).group(0)
    assert "analyst" in row and "live" in row and "v1" in row
    assert "Upload a study file" in html


def test_an_upload_with_an_error_lists_it_with_its_file_and_line_and_stores_nothing(study_folder):
    folder = study_folder(lambda data: data["arms"][0].__setitem__("weight", "heavy"))
    text = (folder / "study.yaml").read_text()
    line = line_of(text, "weight: heavy")
    client = client_for(researcher("ada"))
    response = _upload(client, "/console/upload/", "loan.zip", study_zip(folder))
    assert response.status_code == 400
    html = assert_strict_page(response)
    errors = re.search(r"<section class=\"spec-errors\".*?</section>", html, re.S).group(0)
    assert f"study.yaml, line {line}</span>" in errors, errors
    assert "arms[0].weight" in errors or "arms.0.weight" in errors or "weight" in errors
    assert not Study.objects.exists()


def test_a_valid_upload_creates_the_study_with_the_uploader_as_owner(study_folder):
    user = researcher("ada")
    client = client_for(user)
    response = _upload(client, "/console/upload/", "loan.zip", study_zip(study_folder()))
    assert response.status_code == 303 and response.headers["Location"] == "/console/loan-approval/"
    study = Study.objects.get(slug="loan-approval")
    assert Membership.objects.get(study=study, user=user).role == "owner"
    html = assert_strict_page(client.get(response.headers["Location"]))
    assert "Stored loan-approval v1 as a draft." in html
    assert 'data-launch="1"' in html  # the owner may launch the draft


def test_the_viewer_sees_the_study_but_no_control_that_changes_it(launch, as_role):
    version = launch(static_only)
    html = assert_strict_page(as_role(version.study, "viewer").get("/console/loan-approval/"))
    assert "data-checklist" in html and "PROLIFIC_PID" in html
    for control in ('name="action"', "data-run-bots", "data-pilot-link", "Upload new version", "data-add-member",
                    'href="/console/loan-approval/participants/"'):
        assert control not in html, control


def test_the_checklist_gives_the_prolific_link_the_codes_and_a_pilot_link_that_works(launch, as_role):
    version = launch(static_only)
    html = assert_strict_page(as_role(version.study, "editor").get("/console/loan-approval/"))
    link = re.search(r'value="([^"]+)" id="participant-link"', html).group(1)
    assert link == ("http://testserver/s/loan-approval/?PROLIFIC_PID={{%PROLIFIC_PID%}}"
                    "&amp;STUDY_ID={{%STUDY_ID%}}&amp;SESSION_ID={{%SESSION_ID%}}")
    assert "C7Q2LM1X" in html and "NC4K8Z2P" in html
    assert "https://app.prolific.com/submissions/complete?cc=C7Q2LM1X" in html
    pilot = re.search(r'value="([^"]+)" id="pilot-link"', html).group(1).replace("&amp;", "&")
    participant = Client()
    parts = urlsplit(pilot)
    assert participant.get(parts.path, parse_qs(parts.query)).status_code == 302
    assert Participant.objects.get().is_pilot


def test_an_editor_launches_pauses_resumes_and_closes_from_the_study_page(study_folder, as_role):
    from studies.services import study_version_create
    from studies.spec import study_file_read

    version, _ = study_version_create(study_file=study_file_read(study_folder(static_only)))
    client = as_role(version.study, "editor")
    assert 'data-launch="1"' in assert_strict_page(client.get("/console/loan-approval/"))

    def act(**data):
        response = client.post("/console/loan-approval/state/", data)
        assert response.status_code == 303
        return StudyVersion.objects.get(pk=version.pk).state

    assert act(action="launch", number=1) == "live"
    html = assert_strict_page(client.get("/console/loan-approval/"))
    assert "loan-approval v1 is live." in html and 'value="pause"' in html
    assert act(action="pause") == "paused"
    assert 'value="resume"' in client.get("/console/loan-approval/").content.decode()
    assert act(action="resume") == "live"
    assert act(action="close") == "closed"
    html = client.get("/console/loan-approval/").content.decode()
    assert "loan-approval v1 is closed." in html
    assert act(action="pause") == "closed"  # nothing to pause: an error message, no change
    assert "has no version that can become paused" in client.get("/console/loan-approval/").content.decode()
    actions = list(AuditEvent.objects.filter(study_slug="loan-approval", actor=client.user.username)
                   .order_by("id").values_list("action", flat=True))
    assert actions == ["study_launch", "study_pause", "study_resume", "study_close"]


def test_roles_without_edit_cannot_change_the_state_whatever_they_post(launch, as_role):
    version = launch(static_only)
    for role in ("viewer", "analyst"):
        response = as_role(version.study, role).post("/console/loan-approval/state/", {"action": "pause"})
        assert response.status_code == 403
    assert StudyVersion.objects.get(pk=version.pk).state == "live"
    outsider = client_for(researcher("outsider"))
    assert outsider.post("/console/loan-approval/state/", {"action": "pause"}).status_code == 404


def test_a_new_version_uploaded_on_the_study_page_and_its_diff(launch, study_folder, as_role):
    version = launch(static_only)
    client = as_role(version.study, "editor")
    changed = study_folder(lambda data: (static_only(data), data["recruitment"].__setitem__("completion_code", "NEWCODE1")),
                           name="v2")
    response = _upload(client, "/console/loan-approval/upload/", "study.zip", study_zip(changed))
    assert response.status_code == 303
    html = assert_strict_page(client.get("/console/loan-approval/"))
    assert 'data-version="2"' in html and "Stored loan-approval v2 as a draft." in html
    v2 = StudyVersion.objects.get(study=version.study, number=2)
    assert f"<code>{v2.sha256[:12]}</code>" in html and f"data-sha256>{v2.sha256}<" in html

    fragment = client.get("/console/loan-approval/diff/?a=1&b=2", headers={"HX-Request": "true"})
    diff = assert_strict_page(fragment, fragment=True)
    assert "<html" not in diff
    assert re.search(r'<span class="del">-\s*completion_code: C7Q2LM1X</span>', diff), diff
    assert re.search(r'<span class="add">\+\s*completion_code: NEWCODE1</span>', diff), diff
    assert_strict_page(client.get("/console/loan-approval/diff/?a=1&b=2"))  # without htmx: a whole page
    assert client.get("/console/loan-approval/diff/?a=1&b=9").status_code == 400


def test_a_bad_new_version_shows_its_errors_on_the_study_page(launch, study_folder, as_role):
    version = launch(static_only)
    client = as_role(version.study, "owner")
    folder = study_folder(lambda data: data["recruitment"].__setitem__("completion_code", ""), name="bad")
    response = _upload(client, "/console/loan-approval/upload/", "study.zip", study_zip(folder))
    assert response.status_code == 400
    html = assert_strict_page(response)
    line = line_of((folder / "study.yaml").read_text(), "completion_code:")
    assert f"study.yaml, line {line}</span>" in html
    assert StudyVersion.objects.filter(study=version.study).count() == 1


def test_the_owner_adds_changes_and_removes_members(launch, as_role):
    version = launch(static_only)
    owner = as_role(version.study, "owner")
    researcher("bea")
    html = assert_strict_page(owner.get("/console/loan-approval/"))
    assert "data-add-member" in html

    assert owner.post("/console/loan-approval/members/", {"username": "bea", "role": "analyst"}).status_code == 303
    assert Membership.objects.get(study=version.study, user__username="bea").role == "analyst"
    owner.post("/console/loan-approval/members/", {"username": "bea", "role": "editor"})
    assert Membership.objects.get(study=version.study, user__username="bea").role == "editor"
    html = owner.get("/console/loan-approval/").content.decode()
    assert "bea is now editor." in html and 'data-member="bea"' in html

    owner.post("/console/loan-approval/members/", {"username": "nobody", "role": "viewer"})
    assert "no researcher named" in owner.get("/console/loan-approval/").content.decode()
    owner.post("/console/loan-approval/members/remove/", {"username": owner.user.username})
    assert "last owner" in owner.get("/console/loan-approval/").content.decode()

    assert owner.post("/console/loan-approval/members/remove/", {"username": "bea"}).status_code == 303
    assert not Membership.objects.filter(study=version.study, user__username="bea").exists()
    assert AuditEvent.objects.filter(action__startswith="member_").count() == 3


def test_only_the_owner_changes_members(launch, as_role):
    version = launch(static_only)
    researcher("bea")
    editor = as_role(version.study, "editor")
    assert "data-add-member" not in editor.get("/console/loan-approval/").content.decode()
    assert editor.post("/console/loan-approval/members/", {"username": "bea", "role": "owner"}).status_code == 403
    assert not Membership.objects.filter(user__username="bea").exists()
