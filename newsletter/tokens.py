"""Signed, opaque tokens: one salt per purpose, keys rotating through SECRET_KEY_FALLBACKS.

A token carries only a random key of a pending sign-up or subscriber, never an address:
tokens end up in access logs, browser history and link scanners.
"""

from __future__ import annotations

import enum

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"


# Purposes whose links expire, and the config key that says after how long.
_MAX_AGE_SETTING = {Purpose.CONFIRM: "CONFIRM_MAX_AGE", Purpose.MANAGE: "MANAGE_MAX_AGE"}


class InvalidToken(Exception):
    """The token was not made by us for this purpose (tampered, truncated, other salt)."""


class ExpiredToken(Exception):
    """The token is ours but older than its purpose allows."""


def _keys() -> list[str]:
    # itsdangerous signs with the last key and verifies with all: oldest first, newest last.
    config = current_app.config
    return [*(config.get("SECRET_KEY_FALLBACKS") or []), config["SECRET_KEY"]]


def _serializer(purpose: Purpose) -> URLSafeSerializer:
    salt = f"newsletter-{purpose.value}"
    if purpose in _MAX_AGE_SETTING:
        return URLSafeTimedSerializer(_keys(), salt=salt)
    return URLSafeSerializer(_keys(), salt=salt)


def make(purpose: Purpose, key: str) -> str:
    return _serializer(purpose).dumps(key)


def read(purpose: Purpose, token: str) -> str:
    """Return the key inside ``token`` or raise InvalidToken / ExpiredToken."""
    serializer = _serializer(purpose)
    try:
        if isinstance(serializer, URLSafeTimedSerializer):
            value = serializer.loads(token, max_age=current_app.config[_MAX_AGE_SETTING[purpose]])
        else:
            value = serializer.loads(token)
    except SignatureExpired:  # a subclass of BadSignature, so it is caught first
        raise ExpiredToken from None
    except BadSignature:
        raise InvalidToken from None
    if not isinstance(value, str):
        raise InvalidToken
    return value


def url(purpose: Purpose, key: str) -> str:
    """Build the public link for ``key``; from PUBLIC_URL only, never the request's Host."""
    return f"{current_app.config['PUBLIC_URL']}/{purpose.value}/{make(purpose, key)}"


def unsubscribe_url(subscriber) -> str:
    """The personal unsubscribe link every newsletter carries.

    It names the subscription's random ``token_key``, not the address, and does not
    expire: it works until the subscriber is gone and never for a later subscription.
    """
    return url(Purpose.UNSUBSCRIBE, subscriber.token_key)


def manage_url(subscriber) -> str:
    """The personal, expiring link to a subscriber's manage page (MANAGE_MAX_AGE)."""
    return url(Purpose.MANAGE, subscriber.token_key)
