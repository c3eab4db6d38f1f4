"""The HTML an edition may carry: an allow-list for mail, enforced with nh3 (ammonia).

Staff write the HTML, but a pasted snippet or a stolen API token must not put scripts,
event handlers, ``javascript:`` links, frames, forms or refreshes into readers' inboxes
or into our own preview. What a newsletter needs stays: text formatting, headings,
lists, tables, links, images and inline ``style`` attributes (the editor inlines its
typography into them; mail clients drop ``<style>`` blocks anyway).
"""

from __future__ import annotations

import nh3

TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "div", "dl", "dt", "em", "figcaption", "figure", "font",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark",
    "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
# Removed with everything inside them, not just unwrapped: their content is no text.
DROPPED_WITH_CONTENT = {
    "script", "style", "iframe", "frame", "frameset", "noframes", "object", "embed",
    "noscript", "template", "textarea", "select", "title",
}  # fmt: skip
_CELL = {"colspan", "rowspan", "width", "height", "valign", "bgcolor"}
ATTRIBUTES = {
    # ``id`` keeps footnote links (``href="#fn:1"``) working; ``align`` is old mail HTML.
    "*": {"style", "title", "dir", "lang", "align", "id"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor", "role"},
    "tr": {"valign", "bgcolor"},
    "td": _CELL,
    "th": _CELL | {"scope"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "font": {"color", "face", "size"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
}
LINK_SCHEMES = {"http", "https", "mailto"}
IMAGE_SCHEMES = ("http://", "https://")


def _relative_url(url: str) -> str | None:
    """A mail has no base URL: only links within the edition (``#fn:1``) stay."""
    return url if url.startswith("#") else None


def _attribute(tag: str, name: str, value: str) -> str | None:
    if tag == "img" and name == "src" and not value.strip().lower().startswith(IMAGE_SCHEMES):
        return None  # mailto: passes the link check; data: is blocked by most mail clients
    return value


_cleaner = nh3.Cleaner(
    tags=TAGS,
    clean_content_tags=DROPPED_WITH_CONTENT,
    attributes=ATTRIBUTES,
    attribute_filter=_attribute,
    url_schemes=LINK_SCHEMES,
    url_relative=_relative_url,
    link_rel=None,  # mail clients set their own; ours would only change staff's markup
    strip_comments=True,
)


def clean(html: str) -> str:
    """Return ``html`` with everything outside the allow-list removed."""
    return _cleaner.clean(html)
