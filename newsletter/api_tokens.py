"""Bearer tokens for the JSON API: made on the command line, stored as SHA-256, revocable.

A token is 256 random bits, so a plain SHA-256 is enough to store it: there is nothing
to brute-force, unlike a password.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError

from newsletter.extensions import db
from newsletter.models import ApiToken, utcnow

log = logging.getLogger(__name__)

PREFIX = "nl_"
NAME_MAX = 100
# Write last_used_at at most this often: one write per request would serialise API
# calls on SQLite for a timestamp nobody needs to the second.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    """The token cannot be made or revoked; the message says why."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise TokenError("Give the token a name, e.g. the person or system that uses it.")
    if len(name) > NAME_MAX or not name.isprintable():
        raise TokenError(f"A token name is one line of at most {NAME_MAX} characters.")
    return name


def create(name: str) -> tuple[ApiToken, str]:
    """Store a new token under ``name``; return the row and the token (shown only now)."""
    name = _check_name(name)
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(token))
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise TokenError(f"A token named {name!r} exists already; choose another name.") from None
    log.info("API token %s created", row.id)
    return row, token


def list_all() -> list[ApiToken]:
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke(name: str) -> ApiToken:
    """Revoke the token named ``name``; requests with it are refused from now on."""
    row = db.session.scalar(select(ApiToken).where(ApiToken.name == name.strip()))
    if row is None:
        raise TokenError(f"There is no token named {name!r}.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()
        log.info("API token %s revoked", row.id)
    return row


def authenticate(token: str) -> ApiToken | None:
    """Return the live token row for ``token``, or None if it is unknown or revoked."""
    if not token.startswith(PREFIX):
        return None
    digest = hash_token(token)
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    # Looked up by its hash, so the comparison's timing tells nothing about the token.
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        db.session.execute(
            sql_update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now)
        )
        db.session.commit()
        db.session.refresh(row)
    return row
