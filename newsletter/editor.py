"""The edition as staff write it (Markdown or HTML) turned into mail-ready HTML and text.

Mail clients drop ``<style>`` blocks and ignore classes, so the typography of the body
is inlined into ``style`` attributes (css-inline). When sent, the body goes into the
shared responsive edition layout (templates/mail/edition.html), as in the preview here.
The campaign service cleans the result to the mail allow-list (``sanitizer``) after the
inlining, so the inlined ``style`` attributes are kept and scripts never get stored.
"""

from __future__ import annotations

import css_inline
import markdown

from newsletter import campaigns, sanitizer
from newsletter.extensions import db
from newsletter.mail import builders
from newsletter.models import Campaign

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


def to_html(source: str, source_format: str) -> str:
    """Return the body HTML of ``source`` with the typography inlined.

    Raises campaigns.Invalid (field ``source``) for input that cannot become an edition.
    """
    if source_format not in FORMATS:
        raise campaigns.Invalid({"source_format": "Choose Markdown or HTML."})
    if not source.strip():
        raise campaigns.Invalid({"source": "Write the edition first."})
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
        raise campaigns.Invalid(
            {"source": f"The HTML cannot be prepared for mail: {exc}"}
        ) from None


def save(campaign_id: int | None, subject: str, source: str, source_format: str) -> Campaign:
    """Create (``campaign_id=None``) or update a campaign from what staff wrote.

    The text part is derived from the HTML by the campaign service; the source is kept
    so that the editor opens the Markdown again, not the HTML made from it.
    """
    source = source.replace("\r\n", "\n")
    try:
        html = to_html(source, source_format)
    except campaigns.Invalid as exc:
        if not subject.strip():  # name every missing field at once, not one per try
            exc.errors = {"subject": "Give the edition a subject.", **exc.errors}
        raise
    if campaign_id is None:
        campaign = campaigns.create(subject, html, None)
    else:
        campaign = campaigns.update(campaign_id, subject=subject, html=html, text=None)
    campaign.source = source
    campaign.source_format = source_format
    db.session.commit()
    return campaign


def source_of(campaign: Campaign) -> tuple[str, str]:
    """Return what the editor shows: the kept source, or the HTML of an API-made campaign."""
    if campaign.source is not None and campaign.source_format in FORMATS:
        return campaign.source, campaign.source_format
    return campaign.html, "html"


def preview_document(campaign: Campaign) -> str:
    """Return the HTML document a reader gets, with a dead unsubscribe link.

    The body is cleaned again here, for editions stored before cleaning existed.
    """
    html = sanitizer.clean(campaign.html)
    template = builders.edition_template(campaign.subject, html, campaign.text)
    return template.html.replace(builders.UNSUBSCRIBE_PLACEHOLDER, "#unsubscribe")
