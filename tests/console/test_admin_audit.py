"""The admin cannot change roles unaudited: deleting an account is audited role by role and refused for a
study's only owner (from the admin and from the shell), studies cannot be deleted there, and changes of
an account's privileges are audited; `audit_verify` stays intact and counts every row."""
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import ProtectedError

from pages_support import client_for, researcher
from studies.audit import audit_check, audit_verify
from studies.models import AuditEvent, AuditHead, Membership, Study

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def study():
    return Study.objects.create(slug="loan-approval", title="Loans")


@pytest.fixture
def admin_client():
    return client_for(researcher("root", is_staff=True, is_superuser=True))


def rows() -> list[tuple]:
    return [(e.actor, e.action, e.study_slug, e.object_id, e.before) for e in AuditEvent.objects.order_by("id")]


def assert_chain_counts_every_row():
    check = audit_check()
    assert check.problems == [] and check.rows == AuditHead.objects.get().count == AuditEvent.objects.count()


def test_deleting_the_only_owner_from_the_admin_is_refused_and_changes_nothing(study, admin_client):
    olga = researcher("olga", study, Membership.Role.OWNER)
    page = admin_client.get(f"/admin/auth/user/{olga.pk}/delete/")
    assert "the last owner of the study &#x27;loan-approval&#x27;" in page.content.decode()
    refused = admin_client.post(f"/admin/auth/user/{olga.pk}/delete/", {"post": "yes"})
    assert refused.status_code == 200 and "last owner" in refused.content.decode()
    bulk = admin_client.post("/admin/auth/user/", {"action": "delete_selected", "_selected_action": [olga.pk],
                                                   "post": "yes"})
    assert bulk.status_code == 200 and "last owner" in bulk.content.decode()
    assert User.objects.filter(pk=olga.pk).exists()
    assert Membership.objects.filter(study=study, user=olga, role="owner").exists()
    assert rows() == [] and audit_verify() == []


def test_deleting_a_co_owner_from_the_admin_is_audited_and_the_chain_shows_it(study, admin_client):
    researcher("olga", study, Membership.Role.OWNER)
    otto = researcher("otto", study, Membership.Role.OWNER)
    other = Study.objects.create(slug="other", title="Other")
    Membership.objects.create(study=other, user=otto, role=Membership.Role.VIEWER)
    response = admin_client.post(f"/admin/auth/user/{otto.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=otto.pk).exists()
    assert rows() == [
        ("root", "member_remove", "loan-approval", "otto", {"role": "owner"}),
        ("root", "member_remove", "other", "otto", {"role": "viewer"}),
        ("root", "account_delete", "", "otto", {"is_active": True, "is_staff": False, "is_superuser": False,
                                               "roles": {"loan-approval": "owner", "other": "viewer"}}),
    ]
    assert_chain_counts_every_row()


def test_the_shell_cannot_delete_the_last_owner_either_and_its_deletions_are_audited(study):
    olga = researcher("olga", study, Membership.Role.OWNER)
    # (each attempt in its own savepoint: the refusal rolls back the deletion's transaction, as in a shell)
    with pytest.raises(ProtectedError, match="last owner"), transaction.atomic():
        olga.delete()
    with pytest.raises(ProtectedError, match="last owner"), transaction.atomic():
        Membership.objects.filter(study=study).delete()
    otto = researcher("otto", study, Membership.Role.OWNER)
    with pytest.raises(ProtectedError, match="last owner"), transaction.atomic():  # two owners at once leave none
        User.objects.filter(pk__in=[olga.pk, otto.pk]).delete()
    assert Membership.objects.filter(study=study, role="owner").count() == 2
    otto.delete()  # a co-owner may go; the role it took is audited as the system's doing
    assert rows() == [("system", "member_remove", "loan-approval", "otto", {"role": "owner"})]
    assert_chain_counts_every_row()
    study.delete()  # the study itself (and its members with it) is not held back
    assert not Membership.objects.exists()


def test_the_admin_deletes_no_study_and_shows_members_read_only(study, admin_client):
    researcher("olga", study, Membership.Role.OWNER)
    assert admin_client.get(f"/admin/studies/study/{study.pk}/delete/").status_code == 403
    page = admin_client.get(f"/admin/studies/study/{study.pk}/change/").content.decode()
    assert "olga" in page and 'name="memberships-0-role"' not in page


def test_privilege_changes_in_the_admin_are_audited(admin_client):
    ada = researcher("ada")
    response = admin_client.post(f"/admin/auth/user/{ada.pk}/change/", {
        "username": "ada", "first_name": "", "last_name": "", "email": "", "is_active": "on", "is_staff": "on",
        "is_superuser": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
        "last_login_0": "", "last_login_1": "",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    assert rows() == [("root", "account_change", "", "ada", {"is_staff": False, "is_superuser": False})]
    assert AuditEvent.objects.get().after == {"is_staff": True, "is_superuser": True}
    assert_chain_counts_every_row()
