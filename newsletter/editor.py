"""The edition as staff write it (Markdown or HTML) turned into mail-ready HTML and text.

The typography is inlined as for every edition (``mail.rendering.body_html``). When
sent, the body goes into the shared responsive edition layout
(templates/mail/edition.html), as in the preview here. The campaign service cleans the
result to the mail allow-list (``sanitizer``) after the inlining, so the inlined
``style`` attributes are kept and scripts never get stored. Each language of the edition
is written on its own tab: ``language`` None is the main version.
"""

from __future__ import annotations

from newsletter import campaigns, editions, sanitizer
from newsletter.extensions import db
from newsletter.mail import builders, rendering
from newsletter.models import Campaign, Version

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


def save(
    campaign_id: int | None,
    subject: str,
    source: str,
    source_format: str,
    language: str | None = None,
) -> Campaign:
    """Create (``campaign_id=None``) or update a campaign from what staff wrote.

    ``language`` names a translation's tab (None: the main version). The text part is
    derived from the HTML by the campaign service; the source is kept so that the editor
    opens the Markdown again, not the HTML made from it.
    """
    source = source.replace("\r\n", "\n")
    try:
        html = to_html(source, source_format)
    except campaigns.Invalid as exc:
        if not subject.strip():  # name every missing field at once, not one per try
            exc.errors = {"subject": "Give the edition a subject.", **exc.errors}
        raise
    if language is not None and campaign_id is not None:  # a translation of a saved draft
        version = {
            "subject": subject,
            "html": html,
            "source": source,
            "source_format": source_format,
        }
        return campaigns.update(campaign_id, translations={language: version})
    if campaign_id is None:
        campaign = campaigns.create(subject, html, None)
    else:
        campaign = campaigns.update(campaign_id, subject=subject, html=html, text=None)
    campaign.source = source
    campaign.source_format = source_format
    db.session.commit()
    return campaign


def remove_translation(campaign_id: int, language: str) -> Campaign:
    """Remove the version in ``language``: its readers get the main version again."""
    return campaigns.update(campaign_id, translations={language: None})


def source_of(campaign: Campaign, language: str | None = None) -> tuple[str, str, str]:
    """Return what a tab shows: subject, the kept source (or the HTML of an API-made
    version) and its format; an empty Markdown tab for a language not written yet."""
    version: Version | None = campaign
    if language is not None:
        version = editions.translations_of(campaign).get(language)
    if version is None:
        return "", "", "markdown"
    if version.source is not None and version.source_format in FORMATS:
        return version.subject, version.source, version.source_format
    return version.subject, version.html, "html"


def preview_document(campaign: Campaign, language: str | None = None) -> str:
    """Return the HTML document a reader of ``language`` gets, with a dead unsubscribe link.

    The body is cleaned again here, for editions stored before cleaning existed.
    """
    version = campaign.version(language)
    html = sanitizer.clean(version.html)
    template = builders.edition_template(version.subject, html, version.text, language)
    return template.html.replace(builders.UNSUBSCRIBE_PLACEHOLDER, "#unsubscribe")
