"""The edition as staff write it (Markdown or HTML) turned into mail-ready HTML and text.

The typography is inlined as for every edition (``mail.rendering.body_html``). When
sent, the body goes into the shared responsive edition layout
(templates/mail/edition.html), as in the preview here. The campaign service cleans the
result to the mail allow-list (``sanitizer``) after the inlining, so the inlined
``style`` attributes are kept and scripts never get stored. Each language of the edition
is written on its own tab: ``language`` None is the main version.
"""

from __future__ import annotations

from newsletter import campaigns, sanitizer
from newsletter.extensions import db
from newsletter.mail import builders, rendering
from newsletter.models import Campaign

FORMATS = rendering.FORMATS


def to_html(source: str, source_format: str) -> str:
    """Return the body HTML of ``source`` with the typography inlined.

    Raises campaigns.Invalid (field ``source``) for input that cannot become an edition.
    """
    if source_format not in FORMATS:
        raise campaigns.Invalid({"source_format": "Choose Markdown or HTML."})
    if not source.strip():
        raise campaigns.Invalid({"source": "Write the edition first."})
    try:
        return rendering.body_html(source, source_format)
    except ValueError as exc:
        raise campaigns.Invalid({"source": str(exc)}) from None


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
