"""The versions of an edition: what staff write, checked, in the main language and others.

An edition has its main version (in the campaign row, in the fallback language, the
first of LANGUAGES) and optional translations, one ``CampaignTranslation`` row per other
language. A version is given as ``{"subject", "html" or "markdown", "text"?}``; Markdown
becomes HTML as in the admin editor (``mail.rendering.body_html``), and every HTML is
cleaned to the mail allow-list (``sanitizer``). The campaign service, and through it the
API, the admin pages and the CLI, checks with these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from newsletter import i18n, sanitizer
from newsletter.mail.rendering import body_html, html_to_text
from newsletter.models import Campaign, CampaignTranslation

SUBJECT_MAX = 200
NOT_UNICODE = "contains a lone surrogate (e.g. \\ud800), which is not a character"
# The fields a version is given with; "source" and "source_format" only by the editor.
VERSION_FIELDS = ("subject", "html", "markdown", "text")


class CampaignError(Exception):
    """Base of the errors a marketer can fix."""


@dataclass
class Invalid(CampaignError):
    """Input that cannot be used; ``errors`` maps each field to a message."""

    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{name}: {message}" for name, message in self.errors.items())


def _is_unicode(value: str) -> bool:
    """False for strings with lone surrogates (JSON allows ``"\\ud800"``; UTF-8 does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_subject(subject, errors: dict[str, str], name: str = "subject") -> str | None:
    if not isinstance(subject, str) or not subject.strip():
        errors[name] = "Give the edition a subject."
        return None
    subject = subject.strip()
    if not _is_unicode(subject):
        errors[name] = f"The subject {NOT_UNICODE}."
    elif any(c in subject for c in "\r\n\0"):
        errors[name] = "The subject must be one line."
    elif len(subject) > SUBJECT_MAX:
        errors[name] = f"The subject is {len(subject)} characters long; at most {SUBJECT_MAX}."
    return subject


def check_html(html, errors: dict[str, str], name: str = "html") -> str | None:
    """Return the HTML body cleaned to the mail allow-list (see ``sanitizer``)."""
    if not isinstance(html, str) or not html.strip():
        errors[name] = "The edition needs an HTML body."
        return None
    if not _is_unicode(html):
        errors[name] = f"The HTML body {NOT_UNICODE}."
        return None
    if "\0" in html:
        errors[name] = "The HTML body contains a NUL character."
        return None
    cleaned = sanitizer.clean(html)
    if not cleaned.strip():
        errors[name] = (
            "Nothing is left of the HTML body once scripts, frames and forms are removed."
        )
        return None
    return cleaned


def check_text(text, errors: dict[str, str], name: str = "text") -> str | None:
    """``None`` or an empty text means: derive the text part from the HTML."""
    if text is None:
        return None
    if not isinstance(text, str):
        errors[name] = "The text part must be a string (or null to derive it from the HTML)."
        return None
    if not _is_unicode(text):
        errors[name] = f"The text part {NOT_UNICODE}."
    elif "\0" in text:
        errors[name] = "The text part contains a NUL character."
    return text if text.strip() else None


def check_markdown(markdown, errors: dict[str, str], name: str = "markdown") -> str | None:
    """Return the cleaned HTML of ``markdown``, made as the admin editor makes it."""
    if not isinstance(markdown, str) or not markdown.strip():
        errors[name] = "The Markdown body is empty."
        return None
    if not _is_unicode(markdown) or "\0" in markdown:
        errors[name] = "The Markdown body contains a NUL character or a lone surrogate."
        return None
    try:
        html = body_html(markdown.replace("\r\n", "\n"), "markdown")
    except ValueError as exc:
        errors[name] = str(exc)
        return None
    return check_html(html, errors, name)


def check_body(version: Mapping[str, Any], errors: dict[str, str], prefix: str = "") -> dict:
    """Return the body columns (html, source, source_format) of ``html`` or ``markdown``."""
    markdown = version.get("markdown")
    if markdown is not None:
        if version.get("html") is not None:
            errors[prefix + "markdown"] = "Give the body as html or as markdown, not both."
        html = check_markdown(markdown, errors, prefix + "markdown")
        return {"html": html, "source": markdown.replace("\r\n", "\n"), "source_format": "markdown"}
    html = check_html(version.get("html"), errors, prefix + "html")
    return {
        "html": html,
        "source": version.get("source"),
        "source_format": version.get("source_format") or "html",
    }


def check_version(version: Mapping[str, Any], errors: dict[str, str], prefix: str = "") -> dict:
    """Return the columns of a whole version; ``errors`` names its fields after ``prefix``."""
    subject = check_subject(version.get("subject"), errors, prefix + "subject")
    body = check_body(version, errors, prefix)
    text = check_text(version.get("text"), errors, prefix + "text")
    return {"subject": subject, **body, **derived_text(body["html"], text)}


def derived_text(html: str | None, text: str | None) -> dict:
    """The text columns: the given text part, or one made from the HTML (and following it)."""
    if text is not None:
        return {"text": text, "text_is_derived": False}
    return {"text": html_to_text(html) if html else "", "text_is_derived": True}


def translation_languages() -> list[str]:
    """The languages an edition may have translations in: all offered but the fallback."""
    return i18n.languages()[1:]


def language_problem(language: Any) -> str | None:
    """Why ``language`` cannot have a translation, or None when it can."""
    if language in translation_languages():
        return None
    offered = ", ".join(translation_languages()) or "none (LANGUAGES names one language)"
    if language == i18n.fallback():
        return (
            f"{language} is the language of the main version (the first of LANGUAGES): "
            f"give it at the top level, not in translations. Translations may be in: {offered}."
        )
    return (
        f"{language!r} is not a language of this newsletter (LANGUAGES is "
        f"{', '.join(i18n.languages())}). Translations may be in: {offered}."
    )


def check_translations(
    translations: Any, errors: dict[str, str], *, removable: bool = False
) -> dict[str, dict | None]:
    """Return the checked versions per language; ``None`` (when ``removable``) removes one."""
    if not isinstance(translations, Mapping):
        errors["translations"] = "Give the translations as an object keyed by language."
        return {}
    checked: dict[str, dict | None] = {}
    for language, version in translations.items():
        problem = language_problem(language)
        if problem:
            errors[f"translations/{language}"] = problem
        elif version is None and removable:
            checked[language] = None
        elif not isinstance(version, Mapping):
            errors[f"translations/{language}"] = "Give the version as an object."
        else:
            checked[language] = check_version(version, errors, f"translations/{language}/")
    return checked


def apply_translations(campaign: Campaign, checked: Mapping[str, dict | None]) -> None:
    """Add, replace or remove (``None``) translations in the session; the caller commits."""
    existing = {row.language: row for row in campaign.translations}
    for language, values in checked.items():
        row = existing.get(language)
        if values is None:
            if row is not None:
                campaign.translations.remove(row)
        elif row is None:
            campaign.translations.append(CampaignTranslation(language=language, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)


def translations_of(campaign: Campaign) -> dict[str, CampaignTranslation]:
    return {row.language: row for row in campaign.translations}
