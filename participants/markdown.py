"""Render study text (Markdown) to sanitised HTML: no raw HTML, no script URLs, images from the study folder."""
from collections.abc import Callable
from posixpath import dirname, join, normpath

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")

_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "a", "img",
    "h1", "h2", "h3", "h4", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"}, "td": {"align"}}
_LINK_REL = "noopener noreferrer nofollow"


def render_markdown(text: str, *, asset_url: Callable[[str], str] | None = None, source: str = "",
                    links: bool = True) -> str:
    """Return safe HTML for `text`; relative image paths become `asset_url(path)`, others are dropped.

    `source` is the study-folder path of the Markdown file: image paths are relative to its folder.
    With `links=False` nothing is clickable: a Markdown link `[text](address)` becomes the plain text
    "text (address)", an autolink `<address>` its address; bare addresses are never made links.
    Links that stay get `rel="noopener noreferrer nofollow"`.
    """

    def rewrite(element: str, attribute: str, value: str) -> str | None:
        if element == "img" and attribute == "src":
            if "://" in value or value.startswith(("/", "data:")) or asset_url is None:
                return None
            path = normpath(join(dirname(source), value))
            return None if path.startswith("..") else asset_url(path)
        return value

    tokens = _md.parse(text or "")
    if not links:
        _unlink(tokens)
    html = _md.renderer.render(tokens, _md.options, {})
    if not links:  # whatever got past the tokens (nothing should), no <a> survives the sanitiser
        return nh3.clean(
            html, tags=_TAGS - {"a"}, attributes={k: v for k, v in _ATTRIBUTES.items() if k != "a"},
            url_schemes={"http", "https", "mailto"}, attribute_filter=rewrite,
        )
    return nh3.clean(
        html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        attribute_filter=rewrite, link_rel=_LINK_REL,
    )


def _unlink(tokens: list[Token]) -> None:
    """Turn every link of parsed Markdown into plain text: its text, then its address in parentheses."""
    for token in tokens:
        if token.type != "inline" or not token.children:
            continue
        children, hrefs = [], []
        for child in token.children:
            if child.type == "link_open":
                hrefs.append(("" if child.markup in ("autolink", "linkify") else str(child.attrGet("href") or "")))
            elif child.type == "link_close":
                href = hrefs.pop() if hrefs else ""
                if href:
                    children.append(Token("text", "", 0, content=f" ({href})"))
            else:
                children.append(child)
        token.children = children


def reading_minutes(text: str) -> int:
    """Estimate reading time at 200 words (or 400 CJK characters) a minute."""
    words = len((text or "").split())
    cjk = sum(1 for ch in text or "" if "\u4e00" <= ch <= "\u9fff")
    return max(1, round(words / 200 + cjk / 400))
