"""The consent wording shown on the form, versioned by its hash (proof under GDPR Art. 7(1))."""

from __future__ import annotations

import hashlib

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from newsletter.extensions import db
from newsletter.models import ConsentText

DEFAULT_CONSENT_TEXT = (
    "I would like to receive the monthly newsletter by email: product releases, updates "
    "and known bugs, news from the user forum, and articles on medical imaging. "
    "I can withdraw this consent at any time through the link in every newsletter."
)


def wording() -> str:
    return current_app.config.get("CONSENT_TEXT") or DEFAULT_CONSENT_TEXT


def current() -> ConsentText:
    """Return the stored row for the wording shown now, creating its version on first use."""
    text = wording()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    row = db.session.scalar(select(ConsentText).where(ConsentText.sha256 == digest))
    if row is not None:
        return row
    version = (db.session.scalar(select(func.max(ConsentText.version))) or 0) + 1
    row = ConsentText(version=version, text=text, sha256=digest)
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:
        # Another process stored the same wording (or took the version) first.
        db.session.rollback()
        row = db.session.scalar(select(ConsentText).where(ConsentText.sha256 == digest))
        if row is None:
            raise
    return row
