"""The company's logo and accent colour, set on ``/admin/form`` and served by us.

Stored in the database, so every web machine serves the same. Nothing is ever loaded
from a third party: pages link ``/look/logo`` and ``/look/theme.css`` on our own origin;
mails carry no images at all (a remote image is a read receipt), only the colour.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from flask_babel import gettext
from sqlalchemy import select
from sqlalchemy.orm import defer

from newsletter.extensions import db
from newsletter.models import Look

DEFAULT_ACCENT = "#1d4ed8"
# Within the app's request limit (MAX_CONTENT_LENGTH, 64 KiB): ample for a header logo.
MAX_LOGO_BYTES = 48 * 1024
# What a logo may be, told by its first bytes, never by the name or type the browser sent.
LOGO_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
# White text on the accent colour (buttons) must stay readable: WCAG AA for normal text.
MIN_CONTRAST = 4.5


class InvalidLook(ValueError):
    """The logo or colour cannot be used; the message says why."""


@dataclass(frozen=True)
class Brand:
    """What templates need: the colours, and the logo's URL version if there is a logo."""

    accent: str
    accent_dark: str
    logo_version: str | None
    custom_accent: bool


def _row(with_logo: bool = False) -> Look | None:
    query = select(Look).order_by(Look.id).limit(1)
    if not with_logo:
        query = query.options(defer(Look.logo))
    return db.session.scalar(query)


def default_brand() -> Brand:
    return Brand(DEFAULT_ACCENT, darker(DEFAULT_ACCENT), None, False)


def brand() -> Brand:
    row = _row()
    accent = (row.accent if row is not None else None) or DEFAULT_ACCENT
    logo_version = row.logo_sha256[:16] if row is not None and row.logo_sha256 else None
    return Brand(accent, darker(accent), logo_version, accent != DEFAULT_ACCENT)


def logo() -> tuple[bytes, str, str] | None:
    """The logo's bytes, media type and hash, or None."""
    row = _row(with_logo=True)
    if row is None or not row.logo:
        return None
    return row.logo, row.logo_type or "application/octet-stream", row.logo_sha256 or ""


def _channels(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def darker(colour: str, share: float = 0.3) -> str:
    """The colour mixed with ``share`` black: hover and pressed states."""
    return "#" + "".join(f"{round(c * (1 - share)):02x}" for c in _channels(colour))


def _luminance(colour: str) -> float:
    def linear(channel: int) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _channels(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_with_white(colour: str) -> float:
    return 1.05 / (_luminance(colour) + 0.05)


def _check_accent(value: str) -> str:
    value = value.strip()
    if not _HEX.match(value):
        raise InvalidLook(gettext("Give the colour as #rrggbb, for example #1d4ed8."))
    if contrast_with_white(value) < MIN_CONTRAST:
        raise InvalidLook(
            gettext(
                "This colour is too light: white text on it would be hard to read. "
                "Choose a darker one."
            )
        )
    return value.lower()


def _logo_type(data: bytes) -> str:
    if len(data) > MAX_LOGO_BYTES:
        raise InvalidLook(
            gettext("The logo is too large (at most %(kib)s KiB).", kib=MAX_LOGO_BYTES // 1024)
        )
    for magic, media_type in LOGO_TYPES:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidLook(gettext("The logo must be a PNG, JPEG, GIF or WebP image."))


def save(accent: str | None = None, logo_data: bytes | None = None, remove_logo=False) -> None:
    """Change the accent colour and/or the logo; raise InvalidLook and change nothing."""
    checked_accent = _check_accent(accent) if accent else None
    logo_type = _logo_type(logo_data) if logo_data else None
    row = _row(with_logo=True)
    if row is None:
        row = Look(id=1)
        db.session.add(row)
    if checked_accent:
        row.accent = None if checked_accent == DEFAULT_ACCENT else checked_accent
    if remove_logo:
        row.logo = row.logo_type = row.logo_sha256 = None
    if logo_data:
        row.logo, row.logo_type = logo_data, logo_type
        row.logo_sha256 = hashlib.sha256(logo_data).hexdigest()
    db.session.commit()
