"""Readers, editions and bounce messages for the bounce tests (rows made with the models)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from email.utils import formatdate
from pathlib import Path

from newsletter import consent, verp
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, PendingSignup, Subscriber, utcnow

BOUNCE_ADDRESS = "bounces@news.example.com"
SAMPLES = Path(__file__).resolve().parent / "data" / "bounces"
ROOT = Path(__file__).resolve().parent.parent


def add_reader(email: str) -> int:
    consent_id = consent.current().id
    subscriber = Subscriber(email=email, requested_at=utcnow(), consent_text_id=consent_id)
    db.session.add(subscriber)
    db.session.commit()
    return subscriber.id


def add_edition(subject: str = "News", started_days_ago: float = 0) -> int:
    started = utcnow() - timedelta(days=started_days_ago)
    campaign = Campaign(
        subject=subject,
        html="<p>hi</p>",
        text="hi",
        status=CampaignStatus.SENT,
        started_at=started,
        finished_at=started,
    )
    db.session.add(campaign)
    db.session.commit()
    return campaign.id


def add_pending(email: str) -> int:
    pending = PendingSignup(email=email, consent_text_id=consent.current().id)
    db.session.add(pending)
    db.session.commit()
    return pending.id


def return_path(campaign_id: int | None, target_id: int, kind: str = "edition") -> str:
    return verp.verp_address(BOUNCE_ADDRESS, verp.make_tag(kind, campaign_id, target_id))


def dsn(
    to: str,
    failed: str,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{failed}>: Recipient address rejected: User unknown",
) -> bytes:
    """An RFC 3464 delivery status notification, as an MTA sends it to the envelope sender."""
    text = f"""\
Return-Path: <>
Delivered-To: {to}
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to}
Date: {formatdate()}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"
Message-Id: <20261205100000.1@mx.example.net>

--B0UND
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to {failed}.

--B0UND
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: {formatdate()}

Final-Recipient: rfc822; {failed}
Original-Recipient: rfc822;{failed}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic.format(failed=failed)}

--B0UND
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Example News <news@example.com>
To: {failed}
Subject: News

--B0UND--
"""
    return text.replace("\n", "\r\n").encode()


def arf(return_path: str, reader: str, feedback_type: str = "abuse", report_to: str = "") -> bytes:
    """An RFC 5965 feedback report shaped like the example in its section 3 (B.2).

    ``report_to`` is where the provider sends it (its feedback loop's registered address);
    the original inside carries our VERP Return-Path, added at final delivery.
    """
    text = f"""\
From: <abusedesk@mailbox.example.org>
Date: {formatdate()}
Subject: FW: Earn money
To: <{report_to or "fbl@example.com"}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <{reader}>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.org
Source-IP: 192.0.2.1
Authentication-Results: mail.example.org; spf=pass smtp.mail=news.example.com
Reported-Domain: news.example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

Return-Path: <{return_path}>
Received: from mailserver.example.net (mailserver.example.net
        [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;
        Thu, 08 Mar 2005 14:00:00 -0400
From: Example News <news@example.com>
To: <{reader}>
Subject: News
List-Id: Example News <news.example.com>
MIME-Version: 1.0
Content-Type: text/plain
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.com>
Date: Thu, 02 Sep 2004 12:34:56 -0400

Hello.

--part1_13d.2e68ed54_boundary--
"""
    return text.replace("\n", "\r\n").encode()


_RECIPIENT = re.compile(
    rb"^(to|cc|delivered-to|x-original-to|envelope-to|x-envelope-to):.*(\r?\n[ \t].*)*\r?\n",
    re.IGNORECASE | re.MULTILINE,
)


def rewritten(sample: bytes, header: str, verp_address: str, failing: list[bytes], reader: str):
    """A real-world bounce addressed to ``verp_address`` and about ``reader``.

    The recipient headers of the bounce itself are replaced by one ``header`` naming our
    VERP address (as the receiving MTA records it), and the failing addresses the sample
    reports are replaced by the test reader's address.
    """
    split = re.search(rb"\r?\n\r?\n", sample)
    assert split, "no header block"
    head, body = sample[: split.start()] + b"\n", sample[split.start() :]
    head = _RECIPIENT.sub(b"", head)
    head = f"{header}: {verp_address}\n".encode() + head
    message = head.rstrip(b"\r\n") + body
    for address in failing:
        message = re.sub(re.escape(address), reader.encode(), message, flags=re.IGNORECASE)
    return message


def at_once(app, *calls):
    """Run each call in its own thread and app context, all released at the same instant.

    Returns their results in order of the calls; an exception in any is raised here.
    """
    import threading

    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index, call):
        with app.app_context():
            try:
                start.wait(timeout=10)
                results[index] = call()
            except BaseException as exc:  # noqa: BLE001 - raised again below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def bounces_read(message: bytes, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """``flask --app newsletter bounces read`` in a real process, as an MTA's pipe runs it.

    ``environ`` is the service's (DATABASE_URL, SECRET_KEY, BOUNCE_ADDRESS, ...).
    """
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "newsletter", "bounces", "read"],
        input=message,
        env={**os.environ, **environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        capture_output=True,
        timeout=120,
    )
