"""Render study text (Markdown) to sanitised HTML: no raw HTML, no script URLs, images from the study folder."""
from collections.abc import Callable
from posixpath import dirname, join, normpath

import nh3
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "a", "img",
    "h1", "h2", "h3", "h4", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"}, "td": {"align"}}


def render_markdown(text: str, *, asset_url: Callable[[str], str] | None = None, source: str = "") -> str:
    """Return safe HTML for `text`; relative image paths become `asset_url(path)`, others are dropped.

    `source` is the study-folder path of the Markdown file: image paths are relative to its folder.
    """

    def rewrite(element: str, attribute: str, value: str) -> str | None:
        if element == "img" and attribute == "src":
            if "://" in value or value.startswith(("/", "data:")) or asset_url is None:
                return None
            path = normpath(join(dirname(source), value))
            return None if path.startswith("..") else asset_url(path)
        return value

    html = _md.render(text or "")
    return nh3.clean(
        html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        attribute_filter=rewrite, link_rel="noopener noreferrer nofollow",
    )


def reading_minutes(text: str) -> int:
    """Estimate reading time at 200 words (or 400 CJK characters) a minute."""
    words = len((text or "").split())
    cjk = sum(1 for ch in text or "" if "\u4e00" <= ch <= "\u9fff")
    return max(1, round(words / 200 + cjk / 400))
