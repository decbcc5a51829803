"""The audit trail: one row per change, hash-chained; `audit_verify` finds an edited or a deleted row (in the
middle or at the end), and the application can neither UPDATE nor DELETE a row on PostgreSQL."""
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from conftest import hex_pid, static_only
from participants import services as participant_services
from participants.models import Participant
from studies.audit import audit_check, audit_record, audit_verify
from studies.models import AuditEvent, AuditHead
from studies.services import membership_remove, membership_set, study_file_upload, study_launch, study_state_set

pytestmark = pytest.mark.django_db

TRIGGER = "studies_auditevent_append_only"


def folder_zip(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


@pytest.fixture
def people():
    make = get_user_model().objects.create_user
    return make(username="alice"), make(username="bob")


def test_replaying_the_researcher_flows_writes_exactly_one_row_per_change(study_folder, people):
    alice, bob = people
    content = folder_zip(study_folder(static_only))
    version, created = study_file_upload(user=alice, filename="study.zip", content=content)
    slug = version.study.slug
    assert created and study_file_upload(user=alice, filename="study.zip", content=content)[1] is False
    study_launch(slug=slug, actor=alice)
    study_launch(slug=slug, actor=alice)  # already live: no change
    study_state_set(slug=slug, state="paused", actor=alice)
    study_state_set(slug=slug, state="live", actor=alice)
    membership_set(actor=alice, study=version.study, username="bob", role="viewer")
    membership_set(actor=alice, study=version.study, username="bob", role="viewer")  # no change
    membership_set(actor=alice, study=version.study, username="bob", role="editor")
    membership_remove(actor=alice, study=version.study, username="bob")
    for n in range(2):
        participant = participant_services.participant_enter(slug=slug, pid=hex_pid(f"audit-flow-{n:016d}"))
        participant_services.participant_consent(participant_id=participant.pk, accept=True)
    first, second = Participant.objects.order_by("id")
    participant_services.participant_withdraw(participant_id=first.pk)
    participant_services.participant_withdraw(participant_id=first.pk)  # already withdrawn: no change
    participant_services.participant_erase(actor=alice, study=version.study, pseudonym=second.pseudonym)
    study_state_set(slug=slug, state="closed", actor=alice)

    rows = list(AuditEvent.objects.values_list("actor", "action", "object_type", "object_id"))
    assert rows == [
        ("alice", "study_load", "study_version", "1"),
        ("alice", "study_launch", "study_version", "1"),
        ("alice", "study_pause", "study_version", "1"),
        ("alice", "study_resume", "study_version", "1"),
        ("alice", "member_add", "membership", "bob"),
        ("alice", "member_change", "membership", "bob"),
        ("alice", "member_remove", "membership", "bob"),
        ("system", "participant_withdraw", "participant", first.pseudonym),
        ("alice", "participant_erase", "participant", ""),
        ("alice", "study_close", "study_version", "1"),
    ]
    load, launch, pause = AuditEvent.objects.order_by("id")[:3]
    assert load.before is None and load.after["sha256"] == version.sha256 and load.after["owner"] == "alice"
    assert launch.before["state"] == "draft" and launch.after["state"] == "live" and launch.after["keys_frozen"] > 0
    assert pause.before["state"] == "live" and pause.after["state"] == "paused"
    assert audit_verify() == []


def test_the_shell_is_audited_as_system(study_folder, capsys):
    folder = study_folder(static_only)
    call_command("study_load", str(folder))
    call_command("study_launch", "loan-approval")
    call_command("study_state", "loan-approval", "pause")
    assert list(AuditEvent.objects.values_list("actor", "actor_id", "action")) == [
        ("system", None, "study_load"), ("system", None, "study_launch"), ("system", None, "study_pause"),
    ]
    call_command("audit_verify")
    assert capsys.readouterr().out.splitlines()[-1].startswith("3 rows, chain intact")


def _rows(n: int) -> list[AuditEvent]:
    return [audit_record(actor=None, action=f"action_{i}", study_slug="s", object_type="thing", object_id=i,
                         before={"n": i}, after={"n": i + 1}) for i in range(n)]


def _tamper(sql: str, params=()) -> None:
    """Change the audit table as someone with the database's owner rights could: trigger off, change, trigger on."""
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE studies_auditevent DISABLE TRIGGER {TRIGGER}")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute(f"ALTER TABLE studies_auditevent ENABLE TRIGGER {TRIGGER}")


def _verify_command() -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("audit_verify", stdout=out)
    except SystemExit as stop:
        return stop.code, out.getvalue()
    return 0, out.getvalue()


def test_an_intact_chain_verifies_and_the_command_says_so():
    _rows(5)
    assert _verify_command() == (0, f"5 rows, chain intact (last hash {AuditHead.objects.get().last_hash})\n")


def test_an_edited_row_is_found():
    rows = _rows(5)
    _tamper("UPDATE studies_auditevent SET after = %s WHERE id = %s", ['{"n": 99}', rows[2].id])
    code, out = _verify_command()
    assert code == 1
    assert out.splitlines() == [f"row {rows[2].id}: its content was edited (action_2 by system)"]


def test_a_deleted_row_in_the_middle_is_found():
    rows = _rows(5)
    _tamper("DELETE FROM studies_auditevent WHERE id = %s", [rows[2].id])
    code, out = _verify_command()
    assert code == 1
    assert f"row {rows[3].id}: the row before it (after row {rows[1].id}) was deleted or edited" in out
    assert "the head counts 5 rows but 4 are left: 1 row(s) were deleted" in out


def test_deleted_rows_at_the_end_are_found_by_the_head():
    rows = _rows(5)
    _tamper("DELETE FROM studies_auditevent WHERE id >= %s", [rows[3].id])
    problems = audit_verify()
    assert problems == [
        "the head counts 5 rows but 3 are left: 2 row(s) were deleted",
        f"the chain does not end at the head's last row (row {rows[4].id}): rows were deleted from the end, "
        "or the last row was edited",
    ]
    assert audit_check().rows == 3


def test_the_application_can_neither_update_nor_delete_a_row():
    row = _rows(2)[0]
    attempts = [
        lambda: AuditEvent.objects.filter(pk=row.pk).update(action="nothing happened"),
        lambda: AuditEvent.objects.filter(pk=row.pk).delete(),
        lambda: row.delete(),
        lambda: connection.cursor().execute("UPDATE studies_auditevent SET actor = 'mallory' WHERE id = %s", [row.pk]),
        lambda: connection.cursor().execute("DELETE FROM studies_auditevent"),
        lambda: AuditHead.objects.all().delete(),
        lambda: AuditHead.objects.update(count=0),
    ]
    for attempt in attempts:
        with pytest.raises(DatabaseError, match="audit"), transaction.atomic():
            attempt()
    assert AuditEvent.objects.count() == 2 and audit_verify() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_extend_one_chain():
    def write(n: int) -> None:
        try:
            with transaction.atomic():
                audit_record(actor=None, action="concurrent", object_id=n)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(write, range(64)))
    check = audit_check()
    assert check.rows == 64 and check.problems == []
