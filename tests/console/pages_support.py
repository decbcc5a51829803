"""Helpers for the researcher-page tests: named researchers with a role, logged-in clients, the page rules."""
import io
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from studies.models import Membership

PASSWORD = "a-long-test-password-42"


def researcher(username: str, study=None, role: str | None = None, *, password: str | None = None, **extra):
    """Create a user (a researcher account) and give them `role` on `study`.

    Without `password` the account has none (hashing one costs ~0.3 s; tests log in with force_login).
    """
    user = get_user_model().objects.create_user(username, password=password, **extra)
    if study is not None and role:
        Membership.objects.create(study=study, user=user, role=role)
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def as_role(db):
    """Return a function: a logged-in client of a new researcher with `role` on `study`."""
    made = []

    def make(study, role: str) -> Client:
        user = researcher(f"{role}-{len(made)}", study, role)
        made.append(user)
        client = client_for(user)
        client.user = user
        return client

    return make


class _Inline(HTMLParser):
    """Find what a strict CSP would block: inline scripts, style elements and attributes, event handlers."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script":
            if "src" not in names:
                self.problems.append("a <script> without src")
            self._in_script = True
        if tag == "style":
            self.problems.append("a <style> element")
        if "style" in names:
            self.problems.append(f"a style= attribute on <{tag}>")
        for name in names:
            if name.startswith("on") or name.startswith("hx-on"):
                self.problems.append(f"an inline handler {name}= on <{tag}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("a <script> with inline content")


def assert_strict_page(response, *, fragment: bool = False) -> str:
    """Assert the CSP header is there and the HTML holds nothing it would block; return the HTML."""
    csp = response.headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
    html = response.content.decode()
    parser = _Inline()
    parser.feed(html)
    assert not parser.problems, parser.problems
    if not fragment:
        assert '<meta name="htmx-config" content=\'{"includeIndicatorStyles":false,"allowEval":false}\'>' in html
    return html


def study_zip(folder: Path) -> bytes:
    """The study folder as an uploaded .zip (what a researcher makes with their file manager)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def line_of(text: str, needle: str, after: str = "") -> int:
    """The 1-based number of the first line holding `needle` (after the first line holding `after`)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1
