"""The consent wording per language, versioned by its hash (proof under GDPR Art. 7(1)).

A wording is stored once, the first time it is needed, and never changed: proofs point
at it. Versions count per language. Staff choose the current wording of a language on
``/admin/form`` (``adopt``); until they do, the built-in wording in that language is it.
"""

from __future__ import annotations

import hashlib

from flask_babel import gettext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from newsletter import i18n
from newsletter.extensions import db
from newsletter.models import ConsentText, FormText, Subscriber

MAX_LENGTH = 2000


class InvalidWording(ValueError):
    """The wording cannot be used; the message says why."""


def default_wording(language: str) -> str:
    with i18n.force_locale(language):
        return gettext(
            "I would like to receive the monthly newsletter by email: product releases, "
            "updates and known bugs, news from the user forum, and articles on medical "
            "imaging. I can withdraw this consent at any time through the link in every "
            "newsletter."
        )


def normalize(text: str) -> str:
    """One form of the words, whatever the browser sent: the hash is taken over it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def digest(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def current_wording(language: str) -> str:
    """The words the form shows in ``language`` now (stores nothing, for GET pages)."""
    form = db.session.get(FormText, language)
    if form is not None and form.consent_text is not None:
        return form.consent_text.text
    return normalize(default_wording(language))


def current(language: str | None = None) -> ConsentText:
    """The stored version of the wording shown now, created on first use."""
    language = i18n.supported(language) or i18n.fallback()
    form = db.session.get(FormText, language)
    if form is not None and form.consent_text is not None:
        return form.consent_text
    return _version_of(language, default_wording(language))


def shown(language: str | None, sha256: str | None) -> ConsentText:
    """The version a sign-up form showed: the one named by its hash, else the current one.

    A form names the hash of its wording, so a page opened before staff changed the
    wording, or a copy embedded on another site, proves the words the visitor read. A
    page shows a wording before it is stored: the built-in one counts as shown too.
    """
    language = i18n.supported(language) or i18n.fallback()
    if sha256:
        row = db.session.scalar(
            select(ConsentText).where(
                ConsentText.language == language, ConsentText.sha256 == sha256
            )
        )
        if row is not None:
            return row
        built_in = normalize(default_wording(language))
        if digest(built_in) == sha256:
            return _version_of(language, built_in)
    return current(language)


def check(text: str) -> str:
    """Return the wording as it would be stored, or raise InvalidWording."""
    words = normalize(text)
    if not words:
        raise InvalidWording(gettext("The consent wording must not be empty."))
    if len(words) > MAX_LENGTH:
        raise InvalidWording(
            gettext("The consent wording is too long (at most %(max)s characters).", max=MAX_LENGTH)
        )
    return words


def adopt(language: str, text: str) -> ConsentText:
    """Show ``text`` from now on: a new version, unless these words had one already."""
    row = _version_of(language, check(text))
    form = db.session.get(FormText, language)
    if form is None:
        form = FormText(language=language)
        db.session.add(form)
    form.consent_text_id = row.id
    db.session.commit()
    return row


def _version_of(language: str, text: str) -> ConsentText:
    """Return the stored version of these words in ``language``, storing the next one."""
    words = normalize(text)
    sha256 = digest(words)
    query = select(ConsentText).where(
        ConsentText.language == language, ConsentText.sha256 == sha256
    )
    for _ in range(3):
        row = db.session.scalar(query)
        if row is not None:
            return row
        latest = db.session.scalar(
            select(func.max(ConsentText.version)).where(ConsentText.language == language)
        )
        row = ConsentText(language=language, version=(latest or 0) + 1, text=words, sha256=sha256)
        db.session.add(row)
        try:
            db.session.commit()
            return row
        except IntegrityError:
            # Another process stored these words, or took the version number, first.
            db.session.rollback()
    raise RuntimeError("could not store the consent wording")  # pragma: no cover


def versions(language: str) -> list[tuple[ConsentText, int]]:
    """Every version of ``language``, newest first, with how many subscribers hold it."""
    holders = (
        select(Subscriber.consent_text_id, func.count(Subscriber.id).label("n"))
        .group_by(Subscriber.consent_text_id)
        .subquery()
    )
    rows = db.session.execute(
        select(ConsentText, func.coalesce(holders.c.n, 0))
        .outerjoin(holders, holders.c.consent_text_id == ConsentText.id)
        .where(ConsentText.language == language)
        .order_by(ConsentText.version.desc())
    ).all()
    return [(row, count) for row, count in rows]
