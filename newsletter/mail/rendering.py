"""An edition's body for mail: Markdown or HTML with its typography inlined, and the
plain-text part every mail must carry.

Mail clients drop ``<style>`` blocks and ignore classes, so the typography of the body
is inlined into ``style`` attributes (css-inline). The admin editor and the API's
``markdown`` field both go through ``body_html``; the campaign service then cleans the
result to the mail allow-list (``sanitizer``), which keeps the inlined styles.
"""

from __future__ import annotations

import css_inline
import html2text
import markdown

TEXT_WIDTH = 72
FORMATS = {"markdown": "Markdown", "html": "HTML"}

# Safe for every mail client we know of: system fonts, no web fonts, fluid images.
BODY_CSS = """
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 16px; color: #111827; }
h2 { font-size: 20px; line-height: 1.3; margin: 28px 0 12px; color: #111827; }
h3 { font-size: 17px; line-height: 1.3; margin: 24px 0 8px; color: #111827; }
p, ul, ol { margin: 0 0 16px; }
li { margin: 0 0 6px; }
a { color: #1d4ed8; text-decoration: underline; }
img { max-width: 100%; height: auto; border: 0; }
blockquote { margin: 0 0 16px; padding: 4px 16px; border-left: 4px solid #d1d5db; color: #4b5563; }
code { font-family: Menlo, Consolas, monospace; font-size: 14px; background: #f3f4f6; }
pre { background: #f3f4f6; padding: 12px; overflow-x: auto; font-size: 14px; }
table { border-collapse: collapse; margin: 0 0 16px; }
th, td { border: 1px solid #d1d5db; padding: 6px 10px; text-align: left; }
hr { border: none; border-top: 1px solid #e5e7eb; margin: 24px 0; }
"""

_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


def body_html(source: str, source_format: str) -> str:
    """Return the body HTML of ``source`` (Markdown or HTML) with the typography inlined.

    Raises ValueError, in words for staff, for HTML that cannot be prepared for mail.
    """
    if source_format == "markdown":
        # nl2br: a single newline is a line break, as people expect from a mail.
        body = markdown.markdown(
            source, extensions=["extra", "sane_lists", "nl2br"], output_format="html"
        )
    else:
        body = source
    try:
        return _inliner.inline_fragment(body, BODY_CSS)
    except css_inline.InlineError as exc:
        raise ValueError(f"The HTML cannot be prepared for mail: {exc}") from None


def html_to_text(html: str) -> str:
    """Return a readable plain-text version of ``html`` (links kept, images dropped).

    Links stay whole on one line (``wrap_links=False``): a link broken across lines
    cannot be clicked in most mail clients.
    """
    converter = html2text.HTML2Text()
    converter.body_width = TEXT_WIDTH
    converter.wrap_links = False
    converter.ignore_images = True
    converter.unicode_snob = True  # keep "ä" and "–" instead of ASCII look-alikes
    converter.protect_links = False
    converter.ignore_mailto_links = False
    text = converter.handle(html)
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip() + "\n"
