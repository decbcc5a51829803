"""Personal API tokens: shown once, stored as a hash, scoped, revocable, audited."""
import hashlib
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from api_support import Api, make_user, no_throttles, session_client, token_for  # noqa: F401 - fixtures
from console.models import ApiToken
from console.services import api_token_authenticate
from studies.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_a_token_is_shown_once_and_stored_only_as_its_hash(no_throttles):  # noqa: F811
    ada = make_user("ada")
    status, created = Api(client=session_client(ada)).post("/api/tokens/", {"name": "laptop", "scope": "read"})
    assert status == 201
    key = created["key"]
    assert key.startswith("tb_") and len(key) >= 43 + 3  # 32 random bytes, url-safe base64
    row = ApiToken.objects.get(pk=created["id"])
    assert row.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in {str(v) for v in ApiToken.objects.values_list(flat=False).get(pk=row.pk)}
    assert row.prefix == key[:11] and created["prefix"] == row.prefix
    status, listed = Api(key).get("/api/tokens/")
    assert status == 200 and len(listed) == 1 and "key" not in listed[0]
    assert {k: v for k, v in listed[0].items() if k != "last_used_at"} == {
        k: created[k] for k in ("id", "name", "prefix", "scope", "created_at")}


def test_a_token_acts_as_its_user_and_notes_when_it_was_used(live_study, no_throttles):  # noqa: F811
    ada = make_user("ada", live_study.study, "viewer")
    key = token_for(ada, scope="read")
    status, studies = Api(key).get("/api/studies/")
    assert status == 200 and [(s["slug"], s["role"]) for s in studies] == [(live_study.study.slug, "viewer")]
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    Api(key).get("/api/studies/")
    assert ApiToken.objects.get().last_used_at == first  # written at most once a minute
    ApiToken.objects.update(last_used_at=timezone.now() - timedelta(minutes=5))
    Api(key).get("/api/studies/")
    assert ApiToken.objects.get().last_used_at > first


def test_revoked_wrong_and_malformed_keys_answer_401(no_throttles):  # noqa: F811
    ada = make_user("ada")
    key = token_for(ada)
    token = ApiToken.objects.get()
    assert Api(key).delete(f"/api/tokens/{token.pk}/")[0] == 204
    for headers in ({"HTTP_AUTHORIZATION": f"Bearer {key}"}, {"HTTP_AUTHORIZATION": "Bearer tb_wrong"},
                    {"HTTP_AUTHORIZATION": "Bearer"}, {"HTTP_AUTHORIZATION": "Bearer a b"}, {}):
        response = Api().client.get("/api/studies/", **headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api_token_authenticate(key=key) is None


def test_a_deactivated_researchers_tokens_stop_working(no_throttles):  # noqa: F811
    ada = make_user("ada")
    key = token_for(ada)
    ada.is_active = False
    ada.save(update_fields=["is_active"])
    assert Api(key).get("/api/studies/")[0] == 401


def test_nobody_can_revoke_someone_elses_token(no_throttles):  # noqa: F811
    ada, bob = make_user("ada"), make_user("bob")
    token_for(ada)
    ada_token = ApiToken.objects.get(user=ada)
    assert Api(token_for(bob)).delete(f"/api/tokens/{ada_token.pk}/")[0] == 404
    assert ApiToken.objects.get(pk=ada_token.pk).revoked_at is None
    assert Api(token_for(bob)).delete(f"/api/tokens/{2**63 + 1}/")[0] == 404


def test_creating_and_revoking_a_token_is_audited_without_the_key(no_throttles):  # noqa: F811
    ada = make_user("ada")
    key = token_for(ada, scope="write")
    token = ApiToken.objects.get()
    Api(key).delete(f"/api/tokens/{token.pk}/")
    rows = list(AuditEvent.objects.filter(object_type="api_token").order_by("id"))
    assert [(r.action, r.actor, r.object_id) for r in rows] == [
        ("api_token_create", "ada", str(token.pk)), ("api_token_revoke", "ada", str(token.pk)),
    ]
    assert rows[0].after == {"name": "write token", "scope": "write", "prefix": token.prefix}
    assert all(key not in str(r.before) + str(r.after) for r in rows)


def test_invalid_token_requests_are_400_with_the_fields(no_throttles):  # noqa: F811
    status, body = Api(client=session_client(make_user("ada"))).post("/api/tokens/", {"name": "", "scope": "admin"})
    assert status == 400 and body["code"] == "invalid" and set(body["fields"]) == {"name", "scope"}


# --- a password change revokes the account's tokens (console.accounts) ---------------------------

NEW_PASSWORD = "another-long-password-77"


@pytest.fixture
def cheap_hasher(settings):
    """Hashing with the real hasher takes seconds on a busy machine; what is tested here does not depend on it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_a_password_change_on_the_console_page_revokes_the_tokens_and_says_so(cheap_hasher, no_throttles):  # noqa: F811
    ada = make_user("ada")
    keys = [token_for(ada), token_for(ada, scope="read")]
    other = token_for(make_user("bob"))
    client = session_client(ada)
    before = client.get("/console/password/").content.decode()
    assert "revokes your 2 API tokens" in before
    done = client.post("/console/password/", {"old_password": "a-long-test-password-42",
                                              "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
                       follow=True)
    assert done.redirect_chain[-1][0] == "/console/password/done/"
    assert "Your 2 API tokens were revoked." in done.content.decode()
    for key in keys:
        assert Api(key).get("/api/studies/")[0] == 401
    assert Api(other).get("/api/studies/")[0] == 200  # someone else's token is untouched
    row = AuditEvent.objects.get(action="password_change")
    assert (row.actor, row.object_id, row.after) == ("ada", "ada", {"api_tokens_revoked": 2})
    assert client.get("/console/password/").content.decode().count("no active API tokens") == 1


def test_a_password_change_in_the_admin_revokes_the_tokens_and_says_so(cheap_hasher, no_throttles):  # noqa: F811
    from pages_support import client_for, researcher

    ada = make_user("ada")
    key = token_for(ada)
    admin = client_for(researcher("root", is_staff=True, is_superuser=True))
    url = f"/admin/auth/user/{ada.pk}/password/"
    assert "revokes the <strong>1</strong> active API token of ada" in admin.get(url).content.decode()
    done = admin.post(url, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
                      follow=True)
    assert "1 API token of ada was revoked." in done.content.decode()
    assert Api(key).get("/api/studies/")[0] == 401
    row = AuditEvent.objects.get(action="password_change")
    assert (row.actor, row.object_id, row.after) == ("root", "ada", {"api_tokens_revoked": 1})


def test_the_changepassword_command_revokes_the_tokens_too(cheap_hasher, no_throttles, monkeypatch):  # noqa: F811
    from django.contrib.auth.management.commands import changepassword
    from django.core.management import call_command

    ada = make_user("ada")
    key = token_for(ada)
    assert Api(key).get("/api/studies/")[0] == 200
    monkeypatch.setattr(changepassword.Command, "_get_pass", lambda self, prompt="": NEW_PASSWORD)
    call_command("changepassword", "ada", stdout=io.StringIO())
    assert Api(key).get("/api/studies/")[0] == 401
    row = AuditEvent.objects.get(action="password_change")
    assert (row.actor, row.after) == ("system", {"api_tokens_revoked": 1})


def test_a_superusers_own_password_change_in_the_admin_revokes_their_tokens(cheap_hasher, no_throttles):  # noqa: F811
    from pages_support import client_for

    root = make_user("root")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])
    key = token_for(root)
    done = client_for(root).post("/admin/password_change/", {
        "old_password": "a-long-test-password-42", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
    }, follow=True)
    assert "Your 1 API token was revoked." in done.content.decode()
    assert Api(key).get("/api/studies/")[0] == 401
    assert AuditEvent.objects.get(action="password_change").actor == "root"
