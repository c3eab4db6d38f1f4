"""Email addresses: validation, normalisation, the form we send to, and keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re

from email_validator import EmailNotValidError, EmailUndeliverableError, validate_email
from flask import current_app
from flask_babel import gettext

from newsletter import i18n


class InvalidAddress(ValueError):
    """The address cannot be used; the message says why, in words for the visitor."""


def normalize(raw: str, *, check_deliverability: bool | None = None) -> str:
    """Return the address as we store it, or raise InvalidAddress.

    The domain is lowercased by email-validator; we lowercase the local part too, since
    no mailbox provider we send to treats ``Alice`` and ``alice`` as two people and one
    person must not hold two subscriptions.
    """
    if any(c in raw for c in "\r\n\0"):
        raise InvalidAddress(gettext("An email address cannot contain line breaks."))
    candidate = raw.strip()
    if not candidate:
        raise InvalidAddress(gettext("Please enter your email address."))
    if check_deliverability is None:
        check_deliverability = current_app.config["EMAIL_CHECK_DELIVERABILITY"]
    try:
        result = validate_email(
            candidate,
            check_deliverability=check_deliverability,
            allow_smtputf8=False,  # Flask-Mail/smtplib cannot send to non-ASCII local parts
            strict=True,  # also enforce the 64-character limit of the local part
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(_reason(exc)) from None
    return result.normalized.lower()


def _reason(error: EmailNotValidError) -> str:
    """email-validator explains in English: English pages keep its exact words."""
    if i18n.current() == i18n.SOURCE_LANGUAGE:
        return str(error)
    if isinstance(error, EmailUndeliverableError):
        return gettext("The domain of this address does not receive email. Please check it.")
    return gettext("This is not a valid email address. Please check how it is written.")


def smtp_form(email: str) -> str:
    """Return the ASCII form we hand to SMTP: the domain in IDNA 2008, as email-validator does.

    Flask-Mail would otherwise encode non-ASCII domains with Python's IDNA 2003 codec, which
    maps ``straße.de`` to ``strasse.de``: a different domain, owned by someone else.
    """
    result = validate_email(email, check_deliverability=False, allow_smtputf8=False)
    return result.ascii_email or result.normalized


# What ``normalize`` stores for an ASCII address: a lowercase dot-atom at a lowercase
# domain name. email-validator returns such an address unchanged as its SMTP form.
_STORED_ASCII = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+\Z"
)


def stored_smtp_form(email: str) -> str:
    """``smtp_form`` of an address ``normalize`` stored, e.g. a subscriber's.

    ``normalize`` validated it already, and an ASCII one is its own SMTP form: checking
    it again costs about 0.1 ms, for each reader of each edition. Anything else (an
    internationalised domain) goes through ``smtp_form``.
    """
    if _STORED_ASCII.match(email):
        return email
    return smtp_form(email)


# Gmail ignores dots in the local part and delivers googlemail.com to the same inbox.
GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}


def mailbox_key(email: str) -> str:
    """A keyed hash of the inbox an address reaches, for rate limits only.

    ``+tag`` variants share it, and so do Gmail's dotted and ``googlemail.com`` spellings
    of one account; the address we store and send to stays as the visitor typed it.
    """
    local, _, domain = email.lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    message = f"{local}@{domain}".encode()
    digest = hmac.new(current_app.config["SECRET_KEY"].encode(), message, hashlib.sha256)
    return digest.hexdigest()[:32]


def ip_prefix(address: str | None) -> str | None:
    """Truncate an IP to its network: /24 for IPv4, /48 for IPv6."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
