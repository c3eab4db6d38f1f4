"""Bounces and DKIM, end to end: what the service really sends, and what a bounce does.

The service runs with BOUNCE_ADDRESS and a DKIM key. Mail goes through the real sign-up
and sending paths to the in-process SMTP server; each captured message must carry its
VERP envelope sender and a DKIM signature that dkimpy verifies against the published
record; a delivery status notification sent back to that envelope address ends what the
mail was about.
"""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta

import dkim as dkimpy
import pytest
from sqlalchemy import func, select

from newsletter import bounces, campaigns, config
from newsletter.extensions import db
from newsletter.mail import dkim
from newsletter.models import DeferredDelivery, PendingSignup, Subscriber, utcnow
from newsletter.tick import tick
from tests.bounce_mail import arf, dsn
from tests.conftest import SECRET, STAFF, csrf_token, link_in, path_of, post_signup

BOUNCE_ADDRESS = "bounces@news.example.com"


@pytest.fixture(scope="module")
def dkim_settings(tmp_path_factory) -> dict:
    key = tmp_path_factory.mktemp("dkim") / "ed25519.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    loaded = config.load(
        {
            "SECRET_KEY": SECRET,
            "DKIM_DOMAIN": "news.example.com",
            "DKIM_SELECTOR": "nl",
            "DKIM_PRIVATE_KEY_FILE": str(key),
        }
    )
    return {name: value for name, value in loaded.items() if name.startswith("DKIM_")}


@pytest.fixture
def app_config(dkim_settings):
    return {**dkim_settings, "BOUNCE_ADDRESS": BOUNCE_ADDRESS}


def verifies(message: bytes) -> bool:
    name, rest = dkim.dns_record().split(" IN TXT ", 1)
    value = "".join(re.findall(r'"([^"]*)"', rest)).encode()

    def dnsfunc(query, timeout=5):
        return value if query.decode().rstrip(".") == name.rstrip(".") else None

    return dkimpy.verify(message, dnsfunc=dnsfunc)


# DESIGN "Mail": h= covers these, those present in the message.
EVERY_MAIL = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
LIST_HEADERS = ["list-id", "list-unsubscribe", "list-unsubscribe-post"]
GERMAN = {"Accept-Language": "de-DE,de;q=0.9"}


def signed_headers(message: bytes) -> list[str]:
    """The h= of the message's one DKIM-Signature."""
    signatures = re.findall(rb"^DKIM-Signature:(.*?)\r\n(?=\S)", message, re.S | re.M)
    assert len(signatures) == 1, "not exactly one DKIM-Signature"
    tags = re.sub(rb"\s+", b"", signatures[0]).decode()
    return dict(tag.split("=", 1) for tag in tags.split(";") if tag)["h"].split(":")


def test_the_confirmation_mail_is_signed_and_its_bounce_ends_the_sign_up(client, work, smtp):
    post_signup(client, "gone.soon@example.net")
    work()
    [mail] = smtp.to("gone.soon@example.net")
    assert mail.mail_from.startswith("bounces+") and mail.mail_from.endswith("@news.example.com")
    assert "gone.soon" not in mail.mail_from
    assert verifies(mail.data)
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 1

    action = bounces.handle(dsn(mail.mail_from, "gone.soon@example.net"))

    assert action.act is bounces.Act.END_PENDING
    db.session.remove()
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 0


def test_every_edition_copy_is_signed_and_bounces_and_complaints_erase_and_count(
    client, work, smtp, subscribed
):
    readers = ["kept.reader@example.net", "dead.box@example.net", "said.spam@example.net"]
    for reader in readers:
        subscribed(reader)
    campaign_id = campaigns.create("Our December news", "<p>Hello, readers</p>").id
    campaigns.schedule(campaign_id, "now")
    work()
    work()
    copies = {reader: smtp.to(reader)[-1] for reader in readers}
    for reader, mail in copies.items():
        assert "List-Unsubscribe" in mail.message
        assert verifies(mail.data), reader
        assert mail.mail_from.startswith("bounces+") and reader.split("@")[0] not in mail.mail_from
        assert mail.mail_from != smtp.to(reader)[0].mail_from  # not the confirmation's tag
    assert len({mail.mail_from for mail in copies.values()}) == 3

    dead = copies["dead.box@example.net"].mail_from
    assert bounces.handle(dsn(dead, "dead.box@example.net")).act is bounces.Act.ERASE_BOUNCED
    spam = copies["said.spam@example.net"].mail_from
    assert bounces.handle(arf(spam, "said.spam@example.net")).act is bounces.Act.ERASE_COMPLAINT
    forged = dead.replace("bounces+", "bounces+x", 1)
    assert bounces.handle(dsn(forged, "kept.reader@example.net")).act is bounces.Act.NOTHING

    db.session.remove()
    assert db.session.scalars(select(Subscriber.email)).all() == ["kept.reader@example.net"]
    totals = campaigns.totals(campaigns.get(campaign_id))
    assert (totals["sent"], totals["bounced"], totals["complaints"]) == (3, 1, 1)


def test_every_kind_of_mail_is_signed_over_the_contract_headers_and_verifies(
    app, client, work, smtp, staff
):
    """Confirmation, manage link, address change, an edition (first try and retried after
    a 4xx) and the test copy, each as the service really sends it, in German and English."""
    reader, busy, moved = "leserin@example.net", "busy.reader@example.net", "umgezogen@example.net"
    mails = {}
    for address, headers in ((reader, GERMAN), (busy, {})):
        data = {"email": address, "consent": "yes", "csrf_token": csrf_token(client)}
        assert client.post("/subscribe", data=data, headers=headers).status_code == 200
        work()
        mails[f"confirmation to {address}"] = smtp.to(address)[-1]
        path = path_of(link_in(smtp.to(address)[-1].text, "confirm"))
        assert client.post(path, data={"csrf_token": csrf_token(client, path)}).status_code == 200
    assert mails[f"confirmation to {reader}"].message["Subject"].startswith("Bitte")

    client.post("/manage", data={"email": reader, "csrf_token": csrf_token(client, "/manage")})
    work()
    mails["manage link"] = smtp.to(reader)[-1]
    manage = path_of(link_in(mails["manage link"].text, "manage"))
    client.post(f"{manage}/email", data={"email": moved, "csrf_token": csrf_token(client, manage)})
    work()
    [mails["address change"]] = smtp.to(moved)

    smtp.handler.replies[busy] = "451 4.3.0 mailbox busy, try later"
    campaign_id = campaigns.create("Neuigkeiten für Sie – Dezember", "<p>Grüße</p>").id
    campaigns.schedule(campaign_id, "now")
    work()
    work()
    mails["edition"] = smtp.to(reader)[-1]
    assert smtp.to(busy)[-1] is mails[f"confirmation to {busy}"]  # deferred, not sent yet
    del smtp.handler.replies[busy]
    for row in db.session.scalars(select(DeferredDelivery)):
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    tick()
    work()
    mails["edition, retried after a 4xx"] = smtp.to(busy)[-1]
    campaigns.send_test(campaign_id, STAFF)
    [mails["test copy"]] = smtp.to(STAFF)

    assert mails["edition"].message["Subject"] == "Neuigkeiten für Sie – Dezember"
    assert (
        mails["edition, retried after a 4xx"].message["Subject"] == "Neuigkeiten für Sie – Dezember"
    )
    for kind, mail in mails.items():
        assert verifies(mail.data), kind
        with_list = kind.startswith("edition") or kind == "test copy"
        assert signed_headers(mail.data) == EVERY_MAIL + (LIST_HEADERS if with_list else []), kind
        # A signature over a changed header fails: the checks above can fail.
        tampered = mail.data.replace(
            b"\r\nDate: ", b"\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nX-Old-Date: ", 1
        )
        assert not verifies(tampered), kind
