"""Building mail. One function per kind of mail; nothing here sends.

We write the MIME ourselves instead of going through ``email.message``: the newsletter is
rendered once per campaign and only the personal parts (To, Message-ID, the unsubscribe
link) are spliced in per recipient, and our headers go on the wire exactly as written.
Python's email package would fold a long ``List-Unsubscribe`` into RFC 2047 encoded-words,
which Gmail then ignores (RFC 2369/8058 want the URL in plain angle brackets).
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from urllib.parse import urlsplit

from flask import current_app, render_template
from flask_babel import gettext

from newsletter import i18n
from newsletter.addresses import smtp_form, stored_smtp_form

CRLF = "\r\n"
PREHEADER_SIZE = 110  # characters: about what mail clients show after the subject
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
UNSUBSCRIBE_PLACEHOLDER = "{{unsubscribe_url}}"
EDITION_TEMPLATES = ("mail/edition.html", "mail/edition.txt")  # the frame of every edition


class HeaderInjection(ValueError):
    """A header value contained a line break."""


def check_header_value(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise HeaderInjection(f"the {name} header must not contain line breaks")
    return value


@dataclass(frozen=True)
class OutgoingMail:
    """What the sending path needs: envelope sender, one recipient, the message bytes."""

    sender: str
    recipient: str
    data: bytes


def _encode_header_text(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep=CRLF)


def _sender() -> tuple[str, str]:
    """Return (From header, envelope address) from MAIL_DEFAULT_SENDER."""
    configured = current_app.config["MAIL_DEFAULT_SENDER"]
    if isinstance(configured, tuple | list):
        name, address = configured
    else:
        name, address = parseaddr(configured)
    address = smtp_form(address)
    return formataddr((name, address), charset="utf-8"), address


def _qp(text: str) -> str:
    """Quoted-printable with CRLF lines, as RFC 2045 wants for text parts."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return binascii.b2a_qp(normalized.encode("utf-8"), istext=True).decode("ascii")


class _EncodedPart:
    """A text part encoded once; per recipient only the lines with a placeholder are encoded.

    Quoted-printable wraps every line on its own, so encoding the lines apart yields the
    same bytes as encoding the whole text, and a 20 KB edition is not re-encoded for each
    of 100,000 readers.
    """

    def __init__(self, text: str) -> None:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.pieces: list[tuple[bool, str]] = []  # (already encoded?, text)
        plain: list[str] = []
        for number, line in enumerate(lines):
            ending = "" if number == len(lines) - 1 else "\n"
            if "{{" in line:
                if plain:
                    self.pieces.append((True, self._encode("".join(plain))))
                    plain = []
                self.pieces.append((False, line + ending))
            else:
                plain.append(line + ending)
        if plain:
            self.pieces.append((True, self._encode("".join(plain))))

    @staticmethod
    def _encode(chunk: str) -> str:
        # Encode with a line end so that soft breaks are CRLF as in the whole text.
        if chunk.endswith("\n"):
            return _qp(chunk)
        return _qp(chunk + "\n")[:-2]

    def render(self, fill) -> str:
        return "".join(text if done else self._encode(fill(text)) for done, text in self.pieces)


class MailTemplate:
    """A multipart/alternative mail rendered once and personalised per recipient."""

    def __init__(
        self, subject: str, text: str, html: str, headers: dict[str, str] | None = None
    ) -> None:
        check_header_value("Subject", subject)
        self.from_header, self.envelope_from = _sender()
        self.msgid_domain = urlsplit(current_app.config["PUBLIC_URL"]).hostname or "localhost"
        self.text = text
        self.html = html
        self.encoded_text = _EncodedPart(text)
        self.encoded_html = _EncodedPart(html)
        self.headers = {name: check_header_value(name, v) for name, v in (headers or {}).items()}
        self.boundary = f"==nl-{secrets.token_hex(12)}=="
        self.subject_header = _encode_header_text(subject)
        self._message_ids: list[str] = []

    def _message_id(self) -> str:
        # Random bytes for 256 Message-IDs at a time: each getrandom call lets the other
        # threads (the SMTP connections) take the interpreter lock, and waits to get it back.
        if not self._message_ids:
            pool = secrets.token_hex(16 * 256)
            self._message_ids = [pool[i : i + 32] for i in range(0, len(pool), 32)]
        return f"<{self._message_ids.pop()}@{self.msgid_domain}>"

    def render(
        self, to: str, values: dict[str, str] | None = None, *, stored: bool = False
    ) -> OutgoingMail:
        """Return the message for ``to`` with each ``{{name}}`` placeholder filled in.

        ``stored``: ``to`` is an address as ``addresses.normalize`` stored it (a reader's).
        """
        values = values or {}
        for value in values.values():
            check_header_value("placeholder", value)
        recipient = stored_smtp_form(to) if stored else smtp_form(to)

        def fill(template: str) -> str:
            for name, value in values.items():
                template = template.replace("{{" + name + "}}", value)
            return template

        lines = [
            f"From: {self.from_header}",
            f"To: {recipient}",
            f"Subject: {self.subject_header}",
            f"Date: {formatdate(time.time(), usegmt=True)}",
            f"Message-ID: {self._message_id()}",
            "MIME-Version: 1.0",
            *(f"{name}: {fill(value)}" for name, value in self.headers.items()),
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"',
            "",
            f"--{self.boundary}",
            'Content-Type: text/plain; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            self.encoded_text.render(fill),
            f"--{self.boundary}",
            'Content-Type: text/html; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            self.encoded_html.render(fill),
            f"--{self.boundary}--",
            "",
        ]
        return OutgoingMail(self.envelope_from, recipient, CRLF.join(lines).encode("ascii"))


def _from_templates(name: str, subject: str, to: str, **context) -> OutgoingMail:
    text = render_template(f"mail/{name}.txt", **context)
    html = render_template(f"mail/{name}.html", subject=subject, **context)
    return MailTemplate(subject, text, html).render(to)


def confirmation_mail(to: str, confirm_url: str, language: str | None = None) -> OutgoingMail:
    with i18n.force_locale(language):
        subject = gettext("Please confirm your newsletter subscription")
        return _from_templates("confirm", subject, to, confirm_url=confirm_url)


def manage_mail(to: str, manage_url: str, language: str | None = None) -> OutgoingMail:
    with i18n.force_locale(language):
        subject = gettext("Your newsletter subscription")
        return _from_templates("manage", subject, to, manage_url=manage_url)


def change_address_mail(to: str, confirm_url: str, language: str | None = None) -> OutgoingMail:
    with i18n.force_locale(language):
        subject = gettext("Please confirm your new address")
        return _from_templates("change_address", subject, to, confirm_url=confirm_url)


def newsletter_headers(unsubscribe_url: str = UNSUBSCRIBE_PLACEHOLDER) -> dict[str, str]:
    """The list headers every newsletter carries (RFC 2369, RFC 8058, RFC 2919)."""
    return {
        "List-Id": current_app.config["LIST_ID"],
        "List-Unsubscribe": f"<{unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def test_subject(subject: str, language: str | None = None) -> str:
    """The subject of a test copy: marked, so that nobody takes it for the edition."""
    with i18n.force_locale(language):
        return gettext("[Test] %(subject)s", subject=subject)


def preheader(text: str, size: int = PREHEADER_SIZE) -> str:
    """The preview line a mail client shows after the subject: the edition's first words.

    Headings are skipped (the subject says the same) and Markdown links lose their URL.
    """
    lines = (line.strip() for line in text.splitlines())
    words = " ".join(line for line in lines if line and not line.startswith("#"))
    words = " ".join(_LINK.sub(r"\1", words).replace("**", "").split())
    return words if len(words) <= size else words[: size - 1].rsplit(" ", 1)[0] + "…"


def edition_template(
    subject: str, html: str, text: str, language: str | None = None
) -> MailTemplate:
    """The newsletter every edition goes through, rendered once per campaign (and language).

    ``render(to, {"unsubscribe_url": url})`` adds the reader's personal unsubscribe link
    to both parts and to the List-Unsubscribe header. The frame (footer, legal notice)
    is in ``language``, the fallback by default: the main version's language.
    """
    context = {
        "subject": subject,
        "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER,
        "preheader": preheader(text),
    }
    with i18n.force_locale(language):
        html_name, text_name = EDITION_TEMPLATES
        html_document = render_template(html_name, body=html, **context)
        text_document = render_template(text_name, body=text, **context)
    return MailTemplate(subject, text_document, html_document, newsletter_headers())
