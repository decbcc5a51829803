"""Cross-site request forgery: sessions need the CSRF token on every unsafe method; tokens need none;
a page of another site can change nothing, whichever way the request authenticates."""
import re

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from api_support import Api, Fill, no_throttles, researcher_routes, token_for, world  # noqa: F401 - fixtures


pytestmark = pytest.mark.django_db

UNSAFE = ("post", "put", "patch", "delete")
CSRF_FAILED = ("CSRF Failed", "CSRF verification failed")


def csrf_client(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def unsafe_operations(fill, user):
    """(method, url) of every unsafe API operation (from the schema) and every console page (as POST)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    ops = [(method, fill.url(path, method, user)) for path, methods in schema["paths"].items()
           for method in methods if method in UNSAFE]
    ops += [("post", fill.url("/" + route, "post", user)) for ns, route, _ in researcher_routes() if ns == "console"]
    return ops


def test_every_unsafe_session_request_needs_the_csrf_token_and_passes_with_it(world, enter, no_throttles):  # noqa: F811
    owner = world.users["owner"]
    fill = Fill(world, enter)
    operations = unsafe_operations(fill, owner)
    assert len(operations) > 25
    accepted = []
    for method, url in operations:
        client = csrf_client(owner)
        response = getattr(client, method)(url, "{}", content_type="application/json") if url.startswith("/api/") \
            else client.post(url, {})
        if response.status_code != 403 or not any(m in response.content.decode() for m in CSRF_FAILED):
            accepted.append(f"{method.upper()} {url}: {response.status_code}")
    assert not accepted, "unsafe requests accepted without a CSRF token:\n" + "\n".join(accepted)

    # The same API requests with the token are not refused: the 403s above came from CSRF, not the role.
    client = csrf_client(owner)
    client.get("/console/")  # sets the csrftoken cookie, as any console page does
    token = client.cookies["csrftoken"].value
    for method, url in unsafe_operations(fill, owner):
        if url.startswith("/api/") and not re.search(r"/(close)/", url):
            response = getattr(client, method)(url, "{}", content_type="application/json", HTTP_X_CSRFTOKEN=token)
            assert response.status_code not in (401, 403), f"{method.upper()} {url}: {response.status_code}"
    response = client.post("/api/tokens/", {"name": "from the page", "scope": "read"},
                           content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201


def test_a_token_needs_no_csrf_token_and_cannot_make_tokens(world, no_throttles):  # noqa: F811
    api = Api(token_for(world.users["owner"]), client=Client(enforce_csrf_checks=True))
    slug = world.study.slug
    assert api.post(f"/api/studies/{slug}/exports/", {"format": "jsonl"})[0] == 202
    assert api.post(f"/api/studies/{slug}/pause/")[0] == 200
    assert api.post(f"/api/studies/{slug}/resume/")[0] == 200
    status, body = api.post("/api/tokens/", {"name": "another", "scope": "write"})
    assert status == 403 and "session" in body["detail"]


FOREIGN = ["https://evil.example", "http://testserver.evil.example", "null", "https://testserver", "http://testserver:81"]


def test_a_foreign_origin_can_change_nothing_whichever_way_the_request_authenticates(world, settings,
                                                                                       no_throttles):  # noqa: F811
    slug = world.study.slug
    api = Api(token_for(world.users["owner"]))
    for origin in FOREIGN:
        status, body = api.post(f"/api/studies/{slug}/pause/", HTTP_ORIGIN=origin)
        assert status == 403 and "another site" in body["detail"], origin
        assert api.get(f"/api/studies/{slug}/", HTTP_ORIGIN=origin)[0] == 200  # reads are not refused

    client = csrf_client(world.users["owner"])
    client.get("/console/")
    token = client.cookies["csrftoken"].value
    for origin in FOREIGN:
        response = client.post(f"/api/studies/{slug}/pause/", content_type="application/json",
                               HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN=origin)
        assert response.status_code == 403, origin

    # The site itself, a trusted origin, and no Origin at all (a script) may.
    settings.CSRF_TRUSTED_ORIGINS = ["https://console.lab.example"]
    assert api.post(f"/api/studies/{slug}/pause/", HTTP_ORIGIN="http://testserver")[0] == 200
    assert api.post(f"/api/studies/{slug}/resume/", HTTP_ORIGIN="https://console.lab.example")[0] == 200
    assert api.post(f"/api/studies/{slug}/pause/")[0] == 200
    response = client.post(f"/api/studies/{slug}/resume/", content_type="application/json",
                           HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="http://testserver")
    assert response.status_code == 200
