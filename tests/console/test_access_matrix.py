"""Who can reach what: every researcher page and API operation × every kind of user, 0 leaks.

The pages come from the URL resolver (console.page_urls and console.api_urls), the API operations
from the generated OpenAPI schema, and the expected status from the `needs` each view declares
(console.access), so a new endpoint is covered without editing this test; one without `needs` fails it.
"""
import os
import re

import pytest
from django.conf import settings
from django.urls import resolve

from api_support import (  # noqa: F401 - fixtures
    Fill, api_operations, no_throttles, researcher_routes, session_client, view_needs, world,
)
from console.access import ACCOUNT, PUBLIC
from console.models import ApiToken
from studies.selectors import NEEDS

pytestmark = pytest.mark.django_db

USERS = ("anonymous", "outsider", "viewer", "analyst", "editor", "owner")
ROLES = {"viewer", "analyst", "editor", "owner"}


# --- what exists -------------------------------------------------------------------------------


def test_every_researcher_url_declares_what_it_needs():
    routes = researcher_routes()
    assert len(routes) > 20
    missing = [route for _, route, pattern in routes if view_needs(pattern.callback) not in (*NEEDS, ACCOUNT, PUBLIC)]
    assert not missing, f"these views declare no (valid) `needs` (console.access): {missing}"
    slugless = [route for _, route, p in routes if view_needs(p.callback) in NEEDS and "<slug:slug>" not in route]
    assert not slugless, f"study-scoped views without a <slug:slug> in their URL: {slugless}"


# The researcher's everyday tasks (issue 16): each page or operation and what it must declare. The matrix
# below covers them like every other route; this table makes sure they exist and say the right thing.
EVERYDAY = {
    "console/account/tokens/": ACCOUNT,               # list and create API tokens (the key shown once)
    "console/account/tokens/revoke/": ACCOUNT,        # revoke one of one's own tokens
    "console/<slug:slug>/participants/find/": "data",  # find a participant by Prolific ID (POST)
}


def test_the_everyday_pages_are_in_the_matrix_with_the_needs_they_must_declare():
    declared = {route: view_needs(pattern.callback) for ns, route, pattern in researcher_routes() if ns == "console"}
    assert {route: declared.get(route) for route in EVERYDAY} == EVERYDAY


def test_every_api_view_is_in_the_schema():
    documented = {re.sub(r"\{[^}]+\}", "{}", path) for path, _ in api_operations()}
    routes = {re.sub(r"<[^>]+>", "{}", "/" + route) for ns, route, p in researcher_routes()
              if ns == "api" and view_needs(p.callback) != PUBLIC}
    assert routes <= documented, f"API routes missing from the schema: {sorted(routes - documented)}"


# --- the expected answer -----------------------------------------------------------------------


def verdict(needs: str, who: str, role: str | None, status: int, location: str, is_api: bool) -> str | None:
    """Return None if the status is what `needs` allows this user, else what is wrong."""
    if status >= 500:
        return f"server error {status}"
    if needs not in (*NEEDS, ACCOUNT, PUBLIC):
        return f"the view declares no `needs` ({needs!r})"
    if needs == PUBLIC:
        return None if status not in (401, 403, 404) else f"a public view answered {status}"
    if who == "anonymous":
        if is_api:
            return None if status in (401, 403) else f"anonymous got {status}, not 401/403"
        login = status in (301, 302) and location.startswith(settings.LOGIN_URL)
        return None if login else f"anonymous got {status} {location!r}, not a redirect to the login page"
    if needs == ACCOUNT:
        allowed = True
    elif role is None:
        return None if status == 404 else f"a member of another study only got {status}, not 404"
    else:
        allowed = role in NEEDS[needs]
        if not allowed:
            return None if status == 403 else f"role {role} (needs {needs}) got {status}, not 403"
    assert allowed
    return None if status not in (401, 403, 404) else f"role {role} (needs {needs}) was refused with {status}"


def test_access_matrix_over_every_page_and_api_operation(world, enter, no_throttles, capsys):  # noqa: F811
    fill = Fill(world, enter)
    cases = []
    for ns, route, pattern in researcher_routes():
        if ns == "console":
            for method in ("get", "post"):
                cases.append(("page", "/" + route, method, view_needs(pattern.callback)))
        elif view_needs(pattern.callback) == PUBLIC:  # the schema and the docs page
            cases.append(("page", "/" + route, "get", PUBLIC))
    for path, method in api_operations():
        cases.append(("api", path, method, None))

    # Reads first and closing the study last, so the writes in between meet a live study.
    cases.sort(key=lambda case: (case[2] != "get", "close" in case[1]))
    rows, leaks, skipped = 0, [], 0
    for kind, route, method, needs in cases:
        outcomes = []
        for who in USERS:
            user = None if who == "anonymous" else world.users[who]
            role = who if who in ROLES else None
            url = fill.url(route, method, user)
            if kind == "api":
                needs = view_needs(resolve(url).func)
            client = session_client(user, raise_request_exception=False)  # a 500 is a row, not a crash
            if method == "get":
                response = client.get(url)
            elif kind == "api":
                response = getattr(client, method)(url, "{}", content_type="application/json")
            else:
                response = getattr(client, method)(url, {})
            outcomes.append((who, role, response.status_code, response.headers.get("Location", "")))
            if os.environ.get("MATRIX_DUMP"):
                print(kind, method.upper(), url, who, response.status_code)
        if kind == "page" and outcomes[-1][2] == 405:
            skipped += 1  # the owner gets 405: the page does not take this method at all
            continue
        for who, role, status, location in outcomes:
            rows += 1
            problem = verdict(needs, who, role, status, location, kind == "api")
            if problem:
                leaks.append(f"{method.upper()} {route} as {who}: {problem}")
    with capsys.disabled():
        print(f"\naccess matrix: {rows} requests ({len(cases) - skipped} page/API operations × {len(USERS)} users, "
              f"{skipped} page methods not taken), {len(leaks)} leaks")
    assert not leaks, "\n".join(leaks)
    assert ApiToken.objects.exists()

