"""Pages: a strict CSP with no inline script, sanitised study Markdown, both languages, phone-ready markup."""
import re
from pathlib import Path

import polib
import pytest
from django.conf import settings

from participants.markdown import render_markdown

pytestmark = pytest.mark.django_db

PID = "1234567890abcdef12345678"
PO = Path(settings.BASE_DIR, "locale", "zh_Hans", "LC_MESSAGES", "django.po")


def _walk_pages(client, version, step_through):
    pages = [client.get(f"/s/{version.study.slug}/", follow=True)]
    for _ in range(1 + 5 + 1):
        step_through(client, version)
        pages.append(client.get(f"/s/{version.study.slug}/", follow=True))
    return pages


def test_every_page_has_a_csp_without_inline_script_and_no_inline_script(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    for response in _walk_pages(client, live_study, step_through):
        csp = response["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'self'" in csp
        html = response.content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
        assert not re.search(r"\son[a-z]+=", html), "inline event handler"
        assert not re.search(r"\sstyle=", html), "inline style"
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
        assert "//cdn" not in html and "https://" not in html.split("</head>")[0]


def test_study_markdown_is_sanitised():
    html = render_markdown(
        "<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>\n\n"
        "![ok](figures/a.svg) ![far](https://evil.example/a.png) ![up](../../etc/passwd)",
        asset_url=lambda path: f"/asset/{path}",
    )
    assert "<script" not in html and 'href="javascript' not in html
    assert not re.search(r"<[^>]*\sonerror=", html)  # escaped text is harmless; an attribute is not
    assert 'src="/asset/figures/a.svg"' in html
    assert "evil.example" not in html and "passwd" not in html


def test_static_material_renders_with_its_figure_served_from_the_study(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=1 + 5)
    page = client.get(f"/s/{live_study.study.slug}/explanation/").content.decode()
    src = re.search(r'<img src="([^"]+)"', page).group(1)
    image = client.get(src)
    assert image.status_code == 200 and image["Content-Type"] == "image/svg+xml"
    assert "default-src 'none'" in image["Content-Security-Policy"]
    assert client.get(f"/s/{live_study.study.slug}/asset/study.yaml").status_code == 404
    assert client.get(f"/s/{live_study.study.slug}/asset/data/loans.csv").status_code == 404


def test_pages_speak_chinese_when_asked(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID, lang="zh-hans")
    consent = client.get(f"/s/{live_study.study.slug}/consent/").content.decode()
    assert "我同意参加" in consent and "参与研究知情同意书" in consent and 'lang="zh-hans"' in consent
    step_through(client, live_study)
    item = client.get(f"/s/{live_study.study.slug}/pre-test/").content.decode()
    assert "下一步" in item
    english = client.get(f"/s/{live_study.study.slug}/pre-test/?lang=en").content.decode()
    assert "Next" in english and "下一步" not in english


def test_every_participant_string_is_translated_and_compiled():
    po = polib.pofile(str(PO))
    untranslated = [e.msgid for e in po if not e.translated() and not e.obsolete]
    assert untranslated == []
    mo = polib.mofile(str(PO.with_suffix(".mo")))
    assert {e.msgid: e.msgstr for e in po if not e.msgid_plural} == {
        e.msgid: e.msgstr for e in mo if not e.msgid_plural and e.msgid
    }


def test_templates_hold_no_untranslated_text():
    """Every visible text node in the participant templates goes through {% translate %}."""
    folder = Path(settings.BASE_DIR, "participants", "templates", "participants")
    for path in folder.glob("*.html"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"{%\s*blocktranslate.*?endblocktranslate\s*%}", " ", text, flags=re.S)
        text = re.sub(r"{%\s*block (page|title)\s*%}.*?{%\s*endblock\s*%}", " ", text, flags=re.S)
        text = re.sub(r"{%.*?%}|{{.*?}}|<[^>]+>", " ", text, flags=re.S)
        words = [w for w in re.findall(r"[A-Za-z]{3,}", text)]
        assert words == [], f"{path.name}: {words}"
