"""The local outbox page of ``make run``: mail caught by the development SMTP server.

Only registered in development with DEV_OUTBOX_DIR set, so a newcomer can click the
confirmation link without a real mailbox; production and tests answer 404.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import flask_babel
from flask import Blueprint, Flask, Response, abort, current_app, g, render_template

bp = Blueprint("dev", __name__, url_prefix="/dev")

# Maildir keys are "<time>.<unique>.<host>"; anything else is not a key we listed.
_KEY = re.compile(r"^[A-Za-z0-9._,:=\\-]{1,200}$")
_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_DELIVERED = re.compile(r"^(\d+)\.M(\d+)P")


@dataclass
class CaughtMail:
    key: str
    to: str
    sender: str
    subject: str
    date: datetime
    text: str = ""
    links: list[str] = field(default_factory=list)
    html: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw: str = ""

    @property
    def delivered(self) -> tuple[int, int]:
        """Seconds and microseconds of delivery, from the Maildir key: the order they came in."""
        match = _DELIVERED.match(self.key)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    @property
    def segments(self) -> list[tuple[str, bool]]:
        """The text part split into (piece, is_link) so the template can link URLs."""
        pieces: list[tuple[str, bool]] = []
        position = 0
        for match in _URL.finditer(self.text):
            pieces.append((self.text[position : match.start()], False))
            pieces.append((match.group(0), True))
            position = match.end()
        pieces.append((self.text[position:], False))
        return pieces


def _outbox() -> mailbox.Maildir | None:
    folder = Path(current_app.config["DEV_OUTBOX_DIR"])
    if not (folder / "cur").is_dir():
        return None  # nothing caught yet: the SMTP server creates the Maildir
    return mailbox.Maildir(folder, factory=None, create=False)


def _parse(key: str, raw: bytes, with_body: bool) -> CaughtMail:
    message: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)
    try:
        date = parsedate_to_datetime(message["Date"])
    except (TypeError, ValueError):
        date = datetime.fromtimestamp(float(key.split(".")[0]), tz=UTC)
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    caught = CaughtMail(
        key=key,
        # aiosmtpd's Mailbox handler records the envelope recipients in X-RcptTo.
        to=str(message["X-RcptTo"] or message["To"] or ""),
        sender=str(message["From"] or ""),
        subject=str(message["Subject"] or "(no subject)"),
        date=date,
    )
    if with_body:
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        caught.text = text.get_content() if text is not None else ""
        caught.html = html.get_content() if html is not None else ""
        caught.headers = [(name, str(value)) for name, value in message.items()]
        caught.raw = raw.decode("utf-8", errors="replace")
        found = _URL.findall(caught.text) + (_URL.findall(html.get_content()) if html else [])
        caught.links = list(dict.fromkeys(link.rstrip(".,;") for link in found))
    return caught


@bp.before_request
def in_english() -> None:
    """The outbox is a developer's tool in English only: its pages say so (``lang="en"``)."""
    flask_babel.refresh()
    g.page_language = "en"


@bp.get("/outbox")
def outbox():
    box = _outbox()
    mails = [] if box is None else [_parse(key, box.get_bytes(key), False) for key in box.keys()]
    mails.sort(key=lambda mail: (mail.delivered, mail.date), reverse=True)
    return render_template(
        "dev/outbox.html", mails=mails, folder=current_app.config["DEV_OUTBOX_DIR"]
    )


def _caught(key: str) -> CaughtMail:
    box = _outbox()
    if box is None or not _KEY.match(key):
        abort(404)
    try:
        raw = box.get_bytes(key)
    except KeyError:
        abort(404)
    return _parse(key, raw, True)


@bp.get("/outbox/<key>")
def caught_mail(key: str):
    return render_template("dev/mail.html", mail=_caught(key))


@bp.get("/outbox/<key>/html")
def caught_html(key: str):
    """The HTML part alone, for the sandboxed frame on the mail's page: no scripts, no
    requests anywhere (mails carry no images), framed only by our own page."""
    response = Response(_caught(key).html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'; sandbox"
    )
    return response


def init_app(app: Flask) -> None:
    if app.config.get("NEWSLETTER_ENV") == "development" and app.config.get("DEV_OUTBOX_DIR"):
        app.register_blueprint(bp)
