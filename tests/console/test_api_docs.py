"""The API's schema and its docs page: a valid OpenAPI 3 document, and Swagger UI that works under the site's CSP."""
from pathlib import Path

import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from api_support import Api, make_user, no_throttles, session_client, token_for  # noqa: F401 - fixtures
from conftest import ARTIFACTS, static_only

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CSP_MARKERS = ("Content Security Policy", "Refused to")


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_3_and_documents_every_error(no_throttles):  # noqa: F811
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)  # raises on an invalid OpenAPI 3.0 document
    scheme = schema["components"]["securitySchemes"]["tokenAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "429"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method == "post" and operation.get("requestBody"):
                assert "400" in codes, (method, path)
    upload = schema["paths"]["/api/studies/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]


@pytest.mark.django_db
def test_the_docs_page_loads_only_its_own_files(no_throttles):  # noqa: F811
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    assert 'src="/static/vendor/swagger-ui/swagger-ui-bundle.js"' in html and 'src="/static/js/api-docs.js"' in html
    assert "cdn" not in html.lower() and "https://" not in html
    assert 'data-schema-url="/api/schema/"' in html


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI has it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_and_tries_a_call_under_the_strict_csp(live_server, launch, browser, monkeypatch,
                                                                  no_throttles):  # noqa: F811
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    version = launch(static_only)
    owner = make_user("olga", version.study, "owner")
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if any(k in m.text for k in CSP_MARKERS) else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    # Log in through the session the console pages use: "Try it out" then runs with it.
    client = session_client(owner)
    page.context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value,
                               "url": live_server.url}])
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/studies/" in " ".join(paths) and len(paths) >= 25
    # Try GET /api/studies/ from the page.
    block = page.locator("#operations-studies-studies_list")
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    block.get_by_role("button", name="Execute").click()
    cell = block.locator(".live-responses-table tbody .response-col_status").first
    cell.wait_for(timeout=10_000)
    status = cell.inner_text().strip()
    assert status == "200", status
    assert version.study.slug in block.locator(".live-responses-table").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)
    assert not problems, problems
