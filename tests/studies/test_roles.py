"""Roles: the one gatekeeper answers 404 to no role, 403 to a role too weak, the study otherwise; members are
managed by owners only, and a study always keeps an owner."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.http import Http404

from studies.models import AuditEvent, Membership, Study
from studies.selectors import NEEDS, role_allows, studies_for_researcher, study_get_for_researcher
from studies.services import MembershipError, membership_remove, membership_set

pytestmark = pytest.mark.django_db

ROLES = list(Membership.Role.values)
# What each kind of access needs, as docs/roles.md tells researchers (written out, not read from NEEDS).
EXPECTED = {
    "monitor": {"owner", "editor", "analyst", "viewer"},
    "data": {"owner", "analyst"},
    "edit": {"owner", "editor"},
    "members": {"owner"},
}


@pytest.fixture
def team():
    """A study with one member per role, and a researcher who is a member of another study only."""
    study = Study.objects.create(slug="roles-study", title="Roles")
    other = Study.objects.create(slug="other-study", title="Other")
    users = {role: get_user_model().objects.create_user(username=role) for role in ROLES}
    for role, user in users.items():
        Membership.objects.create(study=study, user=user, role=role)
    users["outsider"] = get_user_model().objects.create_user(username="outsider")
    Membership.objects.create(study=other, user=users["outsider"], role=Membership.Role.OWNER)
    return study, users


def test_the_table_of_needs_is_the_documented_one():
    assert {need: set(roles) for need, roles in NEEDS.items()} == EXPECTED


@pytest.mark.parametrize("needs", sorted(EXPECTED))
@pytest.mark.parametrize("who", ROLES + ["outsider", "anonymous"])
def test_gatekeeper_answers_404_403_or_the_study(team, who, needs):
    study, users = team
    user = AnonymousUser() if who == "anonymous" else users[who]
    if who in ("outsider", "anonymous"):
        with pytest.raises(Http404):
            study_get_for_researcher(user=user, slug=study.slug, needs=needs)
    elif who in EXPECTED[needs]:
        got = study_get_for_researcher(user=user, slug=study.slug, needs=needs)
        assert got == study and got.role == who
        assert role_allows(role=who, needs=needs)
    else:
        with pytest.raises(PermissionDenied):
            study_get_for_researcher(user=user, slug=study.slug, needs=needs)
        assert not role_allows(role=who, needs=needs)


def test_a_study_that_does_not_exist_is_a_404_like_one_without_a_role(team):
    _, users = team
    with pytest.raises(Http404):
        study_get_for_researcher(user=users["owner"], slug="no-such-study", needs="monitor")


def test_studies_for_researcher_lists_only_the_users_studies_with_the_role(team):
    study, users = team
    assert [(s.slug, s.role) for s in studies_for_researcher(user=users["analyst"])] == [(study.slug, "analyst")]
    assert [s.slug for s in studies_for_researcher(user=users["outsider"])] == ["other-study"]


def test_owners_add_change_and_remove_members_and_others_cannot(team):
    study, users = team
    newcomer = get_user_model().objects.create_user(username="newcomer")
    membership_set(actor=users["owner"], study=study, username="newcomer", role="viewer")
    membership_set(actor=users["owner"], study=study, username="newcomer", role="analyst")
    membership_set(actor=users["owner"], study=study, username="newcomer", role="analyst")  # no change, no row
    assert Membership.objects.get(study=study, user=newcomer).role == "analyst"
    for role in ("editor", "analyst", "viewer"):
        with pytest.raises(PermissionDenied):
            membership_set(actor=users[role], study=study, username="newcomer", role="owner")
        with pytest.raises(PermissionDenied):
            membership_remove(actor=users[role], study=study, username="newcomer")
    with pytest.raises(Http404):
        membership_set(actor=users["outsider"], study=study, username="outsider", role="owner")
    membership_remove(actor=users["owner"], study=study, username="newcomer")
    assert not Membership.objects.filter(study=study, user=newcomer).exists()
    assert list(AuditEvent.objects.values_list("action", "object_id", "before", "after")) == [
        ("member_add", "newcomer", None, {"role": "viewer"}),
        ("member_change", "newcomer", {"role": "viewer"}, {"role": "analyst"}),
        ("member_remove", "newcomer", {"role": "analyst"}, None),
    ]


def test_the_last_owner_can_be_neither_removed_nor_demoted(team):
    study, users = team
    with pytest.raises(MembershipError, match="last owner"):
        membership_remove(actor=users["owner"], study=study, username="owner")
    with pytest.raises(MembershipError, match="last owner"):
        membership_set(actor=users["owner"], study=study, username="owner", role="viewer")
    membership_set(actor=users["owner"], study=study, username="editor", role="owner")
    membership_remove(actor=users["editor"], study=study, username="owner")  # two owners: one may go
    assert list(Membership.objects.filter(study=study, role="owner").values_list("user__username", flat=True)) == ["editor"]


def test_unknown_people_and_roles_are_refused_with_a_message(team):
    study, users = team
    with pytest.raises(MembershipError, match="no researcher named 'nobody'"):
        membership_set(actor=users["owner"], study=study, username="nobody", role="viewer")
    with pytest.raises(MembershipError, match="unknown role"):
        membership_set(actor=users["owner"], study=study, username="viewer", role="admin")
    with pytest.raises(MembershipError, match="not a member"):
        membership_remove(actor=users["owner"], study=study, username="outsider")


def test_researcher_create_makes_a_plain_researcher_unless_asked_and_can_give_a_role(team, capsys, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, not what is tested
    study, _ = team
    call_command("researcher_create", "--username", "ada", "--password", "pw-ada-123")
    ada = get_user_model().objects.get(username="ada")
    assert ada.is_staff and not ada.is_superuser and ada.check_password("pw-ada-123")
    call_command("researcher_create", "--username", "root", "--password", "pw", "--superuser")
    assert get_user_model().objects.get(username="root").is_superuser
    call_command("researcher_create", "--username", "ada", "--password", "pw2", "--study", study.slug, "--role", "editor")
    assert Membership.objects.get(study=study, user=ada).role == "editor"
    event = AuditEvent.objects.get(action="member_add", object_id="ada")
    assert event.actor == "system" and event.actor_id is None and event.after == {"role": "editor"}
    assert "researcher ada: password reset; editor of roles-study" in capsys.readouterr().out
