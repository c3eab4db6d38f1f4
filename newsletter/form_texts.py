"""The operator's words on the sign-up form, per language: its introduction and consent wording.

Staff edit them on ``/admin/form``; until they do, the built-in texts in that language
are shown. The consent wording is versioned (``consent``); the introduction is not
proof of anything and is simply replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import gettext

from newsletter import consent, i18n
from newsletter.extensions import db
from newsletter.models import FormText

MAX_INTRO_LENGTH = 2000


class Invalid(ValueError):
    """The texts cannot be saved; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class SignupTexts:
    """What the sign-up form in one language shows."""

    language: str
    intro: str
    consent: str
    consent_sha256: str


def default_intro(language: str) -> str:
    with i18n.force_locale(language):
        return gettext(
            "About once a month: product releases, updates and known bugs, news from the user "
            "forum, and medical imaging in general. We keep only your address and the proof "
            "of your consent, and delete both the moment you unsubscribe."
        )


def intro(language: str) -> str:
    form = db.session.get(FormText, language)
    if form is not None and form.intro:
        return form.intro
    return default_intro(language)


def for_language(language: str) -> SignupTexts:
    """The texts of the form in ``language``; stores nothing (GET pages use it)."""
    wording = consent.current_wording(language)
    return SignupTexts(language, intro(language), wording, consent.digest(wording))


def preview(language: str, intro_text: str, consent_text: str) -> SignupTexts:
    """Unsaved texts as the form would show them (empty means the built-in text)."""
    shown_intro = intro_text.strip() or default_intro(language)
    wording = consent.normalize(consent_text) or consent.current_wording(language)
    return SignupTexts(language, shown_intro, wording, consent.digest(wording))


def save(language: str, intro_text: str, consent_text: str) -> tuple[bool, int]:
    """Store both texts of ``language``; return (a new consent wording?, its version).

    An empty introduction means the built-in one. A changed consent wording becomes
    the next version; earlier versions stay as they are, proofs point at them.
    """
    errors = {}
    intro_text = intro_text.replace("\r\n", "\n").strip()
    if len(intro_text) > MAX_INTRO_LENGTH:
        errors["intro"] = gettext(
            "The introduction is too long (at most %(max)s characters).", max=MAX_INTRO_LENGTH
        )
    try:
        consent.check(consent_text)
    except consent.InvalidWording as exc:
        errors["consent"] = str(exc)
    if errors:
        raise Invalid(errors)
    changed = consent.digest(consent_text) != consent.digest(consent.current_wording(language))
    row = consent.adopt(language, consent_text)
    form = db.session.get(FormText, language)
    form.intro = intro_text or None
    db.session.commit()
    return changed, row.version
