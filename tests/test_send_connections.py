"""Several SMTP connections per worker (SMTP_CONNECTIONS): side by side, nobody twice.

In process against aiosmtpd (no PIPELINING: the step-by-step path) and against a
throwaway Postfix smtpd, which offers PIPELINING and refuses an unknown user inside a
pipelined group. The SIGKILL bound with a real worker process is in test_send_faults.py.
"""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import CampaignStatus, DeferredDelivery, SendBatch, Subscriber
from newsletter.tick import tick
from tests.postfix import throwaway_postfix
from tests.test_sending import (
    add_campaign,
    add_subscribers,
    address,
    campaign_row,
    copies_per_recipient,
    count,
)

CONNECTIONS = 4


@pytest.fixture
def app_config():
    return {"BATCH_SIZE": 10, "TICK_INTERVAL": 1, "SEND_LEASE": 5, "SMTP_CONNECTIONS": CONNECTIONS}


def test_four_connections_send_side_by_side_and_every_reader_gets_one_copy(app, work, smtp):
    ids = add_subscribers(30)
    smtp.handler.delay = 0.1  # each DATA takes a while, so the connections overlap
    campaign_id = add_campaign()

    tick()
    work()

    assert smtp.handler.peak_in_data == CONNECTIONS
    copies = copies_per_recipient(smtp)
    assert set(copies) == {address(i) for i in ids} and set(copies.values()) == {1}
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 30, 0)
    assert count(SendBatch) == 0 and count(DeferredDelivery) == 0


def test_one_connection_sends_one_message_at_a_time(app, work, smtp):
    app.config["SMTP_CONNECTIONS"] = 1
    add_subscribers(6)
    smtp.handler.delay = 0.05
    campaign_id = add_campaign()
    tick()
    work()
    assert smtp.handler.peak_in_data == 1
    assert campaign_row(campaign_id).sent == 6


def test_a_reader_refused_mid_group_while_later_ones_went_waits_among_the_retries(app, work, smtp):
    """Our sender refused for one reader (5.1.8 at RCPT) while the rest of the group went:
    the cursor cannot keep the hole, so that reader waits among the retries (no try
    counted) and gets their copy once the campaign is resumed; nobody gets two."""
    from newsletter import campaigns

    ids = add_subscribers(8)
    smtp.handler.rcpt_replies[address(ids[1])] = "550 5.1.8 bad sender"
    campaign_id = add_campaign()

    tick()
    work()

    assert campaign_row(campaign_id).status == CampaignStatus.PAUSED
    [row] = db.session.scalars(select(DeferredDelivery)).all()
    assert (row.subscriber_id, row.attempts) == (ids[1], 0)
    # The first group: reader 1's neighbours went out at the same time.
    assert sorted(copies_per_recipient(smtp)) == sorted(address(ids[i]) for i in (0, 2, 3))

    smtp.handler.rcpt_replies.clear()
    assert campaigns.resume(campaign_id)
    work()
    tick()  # the retry is due at once
    work()
    copies = copies_per_recipient(smtp)
    assert set(copies) == {address(i) for i in ids} and set(copies.values()) == {1}
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


POSTFIX = """\
# Readers live at example.com on this host; reader5 does not exist (550 5.1.1 at RCPT).
mydestination = example.com
mynetworks = 192.0.2.1/32
local_recipient_maps = inline:{{{known}}}
local_transport = discard:
smtpd_delay_reject = no
# Disconnect a client that pipelines where RFC 2920 does not allow it.
smtpd_forbid_unauth_pipelining = yes
"""


def wait_for_log(postfix, pattern: str, times: int) -> str:
    """Postfix's log once ``pattern`` occurs ``times`` times (it writes a moment later)."""
    deadline = time.monotonic() + 20
    while True:
        log = postfix.maillog()
        if len(re.findall(pattern, log)) >= times or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def send_through(app, work, port: int) -> int:
    """Send a new campaign over the relay on ``port`` with burst workers; its id."""
    mail_state = app.extensions["mail"]
    saved = mail_state.port
    mail_state.port = port
    try:
        campaign_id = add_campaign()
        tick()
        work()
    finally:
        mail_state.port = saved
    return campaign_id


def test_a_refused_rcpt_inside_a_pipelined_group_affects_only_that_reader(app, work):
    ids = add_subscribers(8)
    known = ", ".join(f"reader{i}@example.com=ok" for i in range(8) if i != 5)
    with throwaway_postfix(POSTFIX.format(known=known)) as postfix:
        campaign_id = send_through(app, work, postfix.port)
        log = wait_for_log(postfix, r"status=sent", 7)
        log = wait_for_log(postfix, r"disconnect from .* ehlo=1", CONNECTIONS)

    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 7, 1)
    assert db.session.get(Subscriber, ids[5]) is None  # 5.1.1: the address does not exist
    assert count(Subscriber) == 7
    assert len(re.findall(r"status=sent", log)) == 7, log[-3000:]
    # Four sessions (the port probe's says no EHLO), each with mail, rcpt and data.
    sessions = re.findall(r"disconnect from .* ehlo=1 (.*)", log)
    assert len(sessions) == CONNECTIONS and all("data=" in s for s in sessions), sessions
    assert "improper command pipelining" not in log
    assert re.search(r"NOQUEUE: reject: RCPT from .*550 5\.1\.1", log)


def test_a_relay_that_takes_fewer_connections_gets_the_send_on_those_it_took(app, work, logs):
    """Postfix allows two connections per client here; the other two are refused at the
    greeting (421). The batch goes on over two, and says so without naming anybody."""
    ids = add_subscribers(8)
    known = ", ".join(f"reader{i}@example.com=ok" for i in range(8))
    limit = "smtpd_client_connection_count_limit = 2\n"
    with throwaway_postfix(POSTFIX.format(known=known) + limit) as postfix:
        campaign_id = send_through(app, work, postfix.port)
        log = wait_for_log(postfix, r"status=sent", 8)

    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 8, 0)
    assert count(Subscriber) == len(ids)
    assert len(re.findall(r"status=sent", log)) == 8
    assert re.search(r"warning: Connection concurrency limit exceeded: 3 from", log), log
    assert "2 of 4 SMTP connections could not be opened" in logs.text
    assert "@" not in "".join(r.getMessage() for r in logs.records if "SMTP" in r.getMessage())
