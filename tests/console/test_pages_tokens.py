"""API tokens on a console page: create one (its key shown on that answer only), see the list, revoke one;
the same services and audit rows as the API's /api/tokens/, and the key works as a bearer token."""
import re

import pytest

from api_support import Api, no_throttles  # noqa: F401 - fixture
from console.models import ApiToken
from console.services import api_token_create
from pages_support import assert_strict_page, client_for, researcher
from studies.models import AuditEvent

pytestmark = pytest.mark.django_db

URL = "/console/account/tokens/"


def _key(html: str) -> str:
    return re.search(r'value="(tb_[^"]+)" id="token-key"', html).group(1)


def test_the_account_menu_links_to_the_token_page_and_it_lists_only_my_active_tokens(live_study):
    ada, bob = researcher("ada"), researcher("bob")
    mine = api_token_create(user=ada, name="nightly export", scope="read")[0]
    gone = api_token_create(user=ada, name="old script", scope="write")[0]
    ApiToken.objects.filter(pk=gone.pk).update(revoked_at=mine.created_at)
    api_token_create(user=bob, name="bob's token", scope="write")
    client = client_for(ada)
    assert f'href="{URL}"' in client.get("/console/").content.decode()
    response = client.get(URL)
    html = assert_strict_page(response)
    assert re.findall(r'<tr data-token="(\d+)">', html) == [str(mine.pk)]
    assert "nightly export" in html and f"<code>{mine.prefix}…</code>" in html
    assert "old script" not in html and "bob&#x27;s token" not in html
    assert not re.search(r"tb_[\w-]{20,}", html)  # no key, only prefixes
    assert "no-store" in response.headers["Cache-Control"]


def test_creating_a_token_shows_its_key_once_audited_like_the_api_and_the_key_works(live_study, no_throttles):  # noqa: F811
    ada = researcher("ada")
    client = client_for(ada)
    response = client.post(URL, {"name": "nightly export", "scope": "read"})
    assert response.status_code == 201 and "no-store" in response.headers["Cache-Control"]
    html = assert_strict_page(response)
    key = _key(html)
    token = ApiToken.objects.get(user=ada)
    assert (token.name, token.scope, key.startswith(token.prefix)) == ("nightly export", "read", True)
    assert key not in token.key_sha256 and "it is shown this once" in html
    event = AuditEvent.objects.get(action="api_token_create")
    assert (event.actor, event.object_id, event.after) == (
        "ada", str(token.pk), {"name": "nightly export", "scope": "read", "prefix": token.prefix})
    assert key not in str(event.after)
    # the key is not on the page again, and it works as the API's bearer token
    assert key not in client.get(URL).content.decode()
    assert Api(key).get("/api/studies/")[0] == 200
    assert Api(key).post("/api/tokens/", {"name": "x", "scope": "write"})[0] == 403  # read scope, and a token


def test_a_token_form_with_mistakes_is_shown_again_and_creates_nothing(live_study):
    client = client_for(researcher("ada"))
    for data in ({"name": "", "scope": "read"}, {"name": "x", "scope": "admin"}, {"name": "x" * 101, "scope": "read"}):
        response = client.post(URL, data)
        assert response.status_code == 400 and 'class="errors"' in response.content.decode()
    assert not ApiToken.objects.exists() and not AuditEvent.objects.filter(action="api_token_create").exists()


def test_revoking_a_token_makes_it_answer_401_and_is_audited(live_study, no_throttles):  # noqa: F811
    ada = researcher("ada")
    token, key = api_token_create(user=ada, name="script", scope="write")
    assert Api(key).get("/api/studies/")[0] == 200
    client = client_for(ada)
    response = client.post(f"{URL}revoke/", {"token": token.pk})
    assert response.status_code == 303 and response.headers["Location"] == URL
    assert Api(key).get("/api/studies/")[0] == 401
    event = AuditEvent.objects.get(action="api_token_revoke")
    assert (event.actor, event.object_id, event.after) == ("ada", str(token.pk), {"revoked": True})
    page = client.get(URL).content.decode()
    assert "Revoked the token “script”" in page and f'data-token="{token.pk}"' not in page


def test_nobody_revokes_someone_elses_token_or_one_that_does_not_exist(live_study, no_throttles):  # noqa: F811
    ada, bob = researcher("ada"), researcher("bob")
    token, key = api_token_create(user=bob, name="bob's", scope="write")
    client = client_for(ada)
    for value in (token.pk, 0, 2**63 + 5, "x", ""):
        response = client.post(f"{URL}revoke/", {"token": value}, follow=True)
        assert "No such active token of yours." in response.content.decode()
    assert Api(key).get("/api/studies/")[0] == 200
    assert not AuditEvent.objects.filter(action="api_token_revoke").exists()


def test_anonymous_visitors_are_sent_to_log_in(live_study):
    from django.test import Client

    for method in ("get", "post"):
        response = getattr(Client(), method)(URL)
        assert response.status_code == 302 and response.headers["Location"].startswith("/console/login/")
    assert Client().post(f"{URL}revoke/", {"token": 1}).status_code == 302
