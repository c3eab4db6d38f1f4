"""Signed, opaque tokens: one salt per purpose, keys rotating through SECRET_KEY_FALLBACKS.

A token carries only a random key of a pending sign-up or subscriber, never an address:
tokens end up in access logs, browser history and link scanners.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac

from flask import current_app
from itsdangerous import (
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode
from itsdangerous.signer import Signer

from newsletter import db_clock


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"
    BOUNCE = "bounce"  # VERP tags in the envelope sender (short_mac, not make/read/url)


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


class _DatabaseTimeSigner(TimestampSigner):
    """Timestamps from the database's clock: a worker whose clock runs ahead signs the
    confirmation link, a web host checks its age; by their own clocks the link would be
    refused as made in the future (or expire early on a host whose clock is behind)."""

    def get_timestamp(self) -> int:
        return int(db_clock.read().timestamp())


class _Uncompressed:
    """Payloads as plain base64 JSON: itsdangerous tries zlib on every token first.

    A token carries a random key of 16 characters, which zlib does not shorten, and
    trying costs about 0.15 ms a token (zlib sets up its state each time): a quarter of
    a newsletter's per-reader work. Reading is unchanged, so a compressed token (the
    ``.`` prefix) made before, by itsdangerous's own ``dumps``, reads as ever.
    """

    def dump_payload(self, obj) -> bytes:
        return base64_encode(self.serializer.dumps(obj, **self.serializer_kwargs))


class _KeySerializer(_Uncompressed, URLSafeSerializer):
    pass


class _TimedKeySerializer(_Uncompressed, URLSafeTimedSerializer):
    pass


def _serializer(purpose: Purpose) -> URLSafeSerializer:
    return _serializer_for(purpose, tuple(_keys()))


@functools.lru_cache(maxsize=32)
def _serializer_for(purpose: Purpose, keys: tuple[str, ...]) -> URLSafeSerializer:
    # One per purpose and keys, not one per token: a send makes one token per reader.
    salt = f"newsletter-{purpose.value}"
    if purpose in _MAX_AGE_SETTING:
        return _TimedKeySerializer(list(keys), salt=salt, signer=_DatabaseTimeSigner)
    return _KeySerializer(list(keys), salt=salt)


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


def _signer(purpose: Purpose) -> Signer:
    return Signer(_keys(), salt=f"newsletter-{purpose.value}", digest_method=hashlib.sha256)


def short_mac(purpose: Purpose, payload: bytes, size: int) -> bytes:
    """The first ``size`` bytes of the payload's HMAC-SHA256 under the newest key.

    For values that must be short and case-insensitive (a VERP tag in an address's local
    part), where an itsdangerous token's base64 does not fit.
    """
    signer = _signer(purpose)
    return signer.algorithm.get_signature(signer.derive_key(), payload)[:size]


def check_short_mac(purpose: Purpose, payload: bytes, mac: bytes) -> bool:
    """Whether ``mac`` is short_mac(payload) under any key, the fallbacks included."""
    signer = _signer(purpose)
    if not mac:
        return False
    return any(
        hmac.compare_digest(
            signer.algorithm.get_signature(signer.derive_key(key), payload)[: len(mac)], mac
        )
        for key in signer.secret_keys
    )


def unsubscribe_url(subscriber) -> str:
    """The personal unsubscribe link every newsletter carries.

    It names the subscription's random ``token_key``, not the address, and does not
    expire: it works until the subscriber is gone and never for a later subscription.
    """
    return url(Purpose.UNSUBSCRIBE, subscriber.token_key)


def manage_url(subscriber) -> str:
    """The personal, expiring link to a subscriber's manage page (MANAGE_MAX_AGE)."""
    return url(Purpose.MANAGE, subscriber.token_key)
