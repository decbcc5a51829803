"""Uploading a study (a .zip of its folder, or study.yaml alone): the same validation and hash as the shell,
the uploader owns a new study, an archive cannot reach outside itself, versions can be compared."""
import io
import stat
import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied

from conftest import EXAMPLE
from studies.models import AuditEvent, Membership
from studies.selectors import study_version_diff, study_versions
from studies.services import study_file_upload
from studies.spec import StudyFileInvalid, study_file_read
from studies.upload import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.django_db


def zip_of(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def example_files(prefix: str = "loan-approval/") -> dict[str, bytes]:
    return {prefix + p.relative_to(EXAMPLE).as_posix(): p.read_bytes() for p in sorted(EXAMPLE.rglob("*")) if p.is_file()}


@pytest.fixture
def alice():
    return get_user_model().objects.create_user(username="alice")


def test_a_zip_of_the_folder_gives_the_same_version_as_the_shell_and_its_uploader_owns_it(alice):
    files = {**example_files(), "loan-approval/.DS_Store": b"junk", "__MACOSX/loan-approval/._study.yaml": b"junk"}
    version, created = study_file_upload(user=alice, filename="loan-approval.zip", content=zip_of(files))
    assert created and version.number == 1 and version.state == "draft"
    assert version.sha256 == study_file_read(EXAMPLE).sha256
    assert Membership.objects.get(study=version.study).user == alice
    assert Membership.objects.get(study=version.study).role == "owner"
    event = AuditEvent.objects.get()
    assert (event.actor, event.action, event.after["study_created"]) == ("alice", "study_load", True)


def test_errors_come_back_with_their_lines_as_from_the_command(alice):
    text = (EXAMPLE / "study.yaml").read_text(encoding="utf-8").replace("block_size: 4", "block_size: 0", 1)
    text = text.replace("completion_code: C7Q2LM1X", "completion_code: not a code", 1)
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_upload(user=alice, filename="study.yaml", content=text.encode())
    shown = str(caught.value)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "completion_code: not a code" in t)
    assert f"recruitment.completion_code: must be 1-64 letters, digits, '_' or '-' (study.yaml, line {line})" in shown
    assert "file not found: data/loans.csv" in shown  # study.yaml alone, for a new study: no files


def test_unsafe_archives_are_refused_with_one_error_per_entry(alice):
    files = {**example_files(""), "../evil.txt": b"x", "/etc/passwd": b"x", "C:/windows.txt": b"x"}
    content = zip_of(files, symlinks={"material/link.md": "/etc/shadow"})
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_upload(user=alice, filename="study.zip", content=content)
    errors = {(e.file, e.message) for e in caught.value.errors}
    assert errors == {
        ("../evil.txt", "its path leaves the study folder (absolute, '..' or a drive letter)"),
        ("/etc/passwd", "its path leaves the study folder (absolute, '..' or a drive letter)"),
        ("C:/windows.txt", "its path leaves the study folder (absolute, '..' or a drive letter)"),
        ("material/link.md", "is a symbolic link; put the file itself in the zip"),
    }
    assert not AuditEvent.objects.exists()


def test_size_caps_hold_for_the_upload_and_for_what_it_unpacks_to(alice):
    with pytest.raises(StudyFileInvalid, match="the limit is 20.0 MB"):
        study_file_upload(user=alice, filename="big.zip", content=b"0" * (MAX_UPLOAD_BYTES + 1))
    bomb = zip_of({**example_files(""), "data/zeros.bin": b"\0" * (MAX_UPLOAD_BYTES + 1)})
    assert len(bomb) < 100_000
    with pytest.raises(StudyFileInvalid, match=r"the files unpack to 20\.\d MB; the limit is 20\.0 MB"):
        study_file_upload(user=alice, filename="bomb.zip", content=bomb)
    with pytest.raises(StudyFileInvalid, match="upload a .zip of the study folder, or its study.yaml"):
        study_file_upload(user=alice, filename="notes.txt", content=b"hello")


def test_an_existing_slug_needs_edit_and_a_yaml_alone_keeps_the_latest_files(alice):
    version, _ = study_file_upload(user=alice, filename="s.zip", content=zip_of(example_files()))
    viewer, stranger = (get_user_model().objects.create_user(username=n) for n in ("vera", "sam"))
    Membership.objects.create(study=version.study, user=viewer, role="viewer")
    text = (EXAMPLE / "study.yaml").read_text(encoding="utf-8").replace(
        "How does the loan model decide?", "How does the loan model decide, again?", 1)
    with pytest.raises(PermissionDenied):
        study_file_upload(user=viewer, filename="study.yaml", content=text.encode())
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_upload(user=stranger, filename="study.yaml", content=text.encode())
    slug_line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith("slug:"))
    assert str(caught.value) == (f"slug: 'loan-approval' belongs to a study you have no role on; choose another slug "
                                 f"(study.yaml, line {slug_line})")
    second, created = study_file_upload(user=alice, filename="study.yaml", content=text.encode())
    assert created and second.number == 2 and second.assets.count() == version.assets.count()
    assert [v.number for v in study_versions(study=version.study)] == [2, 1]


def test_the_diff_of_two_versions_shows_spec_and_asset_changes(alice):
    first, _ = study_file_upload(user=alice, filename="s.zip", content=zip_of(example_files()))
    files = example_files()
    files["loan-approval/study.yaml"] = files["loan-approval/study.yaml"].replace(
        b"completion_code: C7Q2LM1X", b"completion_code: NEWCODE1")
    files["loan-approval/material/figures/tree.svg"] += b"<!-- changed -->"
    study_file_upload(user=alice, filename="s.zip", content=zip_of(files))
    diff = study_version_diff(study=first.study, a=1, b=2)
    assert diff.startswith("--- loan-approval v1\n+++ loan-approval v2\n")
    assert "-    completion_code: C7Q2LM1X\n" in diff and "+    completion_code: NEWCODE1\n" in diff
    changed = [line for line in diff.splitlines() if "material/figures/tree.svg" in line]
    assert len(changed) == 2 and changed[0].startswith("-") and changed[1].startswith("+")
    assert study_version_diff(study=first.study, a=2, b=2) == ""
