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

import dkim as dkimpy
import pytest
from sqlalchemy import func, select

from newsletter import bounces, config
from newsletter.extensions import db
from newsletter.mail import dkim
from newsletter.models import PendingSignup
from tests.bounce_mail import dsn
from tests.conftest import SECRET, post_signup

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
