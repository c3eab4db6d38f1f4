"""VERP tags: the envelope sender ``bounces+<tag>@domain`` names the campaign and reader.

The tag holds ids and a MAC (tokens.short_mac, its own salt, keys rotating through
SECRET_KEY_FALLBACKS), never an address: 32 characters of lower-case base32, so it
survives MTAs that fold the case of local parts, and with the "+" it fits SMTP's 64.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import struct
from dataclasses import dataclass

from flask import current_app

from newsletter import tokens


class TagKind(enum.StrEnum):
    EDITION = "edition"  # a campaign sent to a subscriber
    CONFIRM = "confirm"  # a confirmation mail sent to a pending sign-up


@dataclass(frozen=True)
class Tag:
    kind: TagKind
    campaign_id: int | None  # None for CONFIRM
    target_id: int  # Subscriber.id (EDITION) or PendingSignup.id (CONFIRM)


_KIND_CODES = {TagKind.EDITION: 1, TagKind.CONFIRM: 2}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
_PAYLOAD = struct.Struct(">BII")  # kind, campaign id (0: none), subscriber or pending id
_MAC_SIZE = 11  # 88 bits; 9 + 11 bytes make 32 base32 characters without padding
TAG_LENGTH = 32
_TAG = re.compile(r"^[a-z2-7]{32}$")


def make_tag(kind: TagKind | str, campaign_id: int | None, target_id: int) -> str:
    """A 32-character tag of lower-case base32: it survives MTAs that fold case."""
    kind = TagKind(kind)
    if (kind is TagKind.EDITION) != (campaign_id is not None):
        raise ValueError("an edition tag names a campaign; a confirmation tag does not")
    try:
        payload = _PAYLOAD.pack(_KIND_CODES[kind], campaign_id or 0, target_id)
    except struct.error:
        raise ValueError("ids must be whole numbers between 1 and 2**32 - 1") from None
    mac = tokens.short_mac(tokens.Purpose.BOUNCE, payload, _MAC_SIZE)
    return base64.b32encode(payload + mac).decode("ascii").lower()


def read_tag(tag: str) -> Tag | None:
    """The Tag inside ``tag``, or None when it is not one we signed (in any letter case)."""
    tag = tag.strip().lower()
    if not _TAG.match(tag):
        return None
    try:
        raw = base64.b32decode(tag, casefold=True)
    except binascii.Error:
        return None
    payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not tokens.check_short_mac(tokens.Purpose.BOUNCE, payload, mac):
        return None
    code, campaign_id, target_id = _PAYLOAD.unpack(payload)
    kind = _KINDS.get(code)
    if kind is None or not target_id or (kind is TagKind.EDITION) != bool(campaign_id):
        return None  # pragma: no cover - only a key holder can sign such a payload
    return Tag(kind, campaign_id or None, target_id)


def verp_address(bounce_address: str, tag: str) -> str:
    """``bounces@news.example.com`` and a tag -> ``bounces+<tag>@news.example.com``."""
    local, _, domain = bounce_address.rpartition("@")
    address_local = f"{local}+{tag}"
    if len(address_local) > 64:
        raise ValueError("the VERP local part would be longer than SMTP's 64 characters")
    return f"{address_local}@{domain}"


def tag_in_address(address: str, bounce_address: str) -> str | None:
    """The tag of a VERP address built on ``bounce_address``, or None for any other address."""
    local, _, domain = bounce_address.lower().rpartition("@")
    match = re.fullmatch(
        rf"\s*<?\s*{re.escape(local)}\+([a-z2-7]+)@{re.escape(domain)}\.?\s*>?\s*",
        address.lower(),
    )
    return match.group(1) if match else None


def envelope_sender(kind: TagKind | str, campaign_id: int | None, target_id: int) -> str | None:
    """The VERP envelope sender for one message, or None when BOUNCE_ADDRESS is not set."""
    bounce_address = current_app.config.get("BOUNCE_ADDRESS")
    if not bounce_address:
        return None
    return verp_address(bounce_address, make_tag(kind, campaign_id, target_id))
