"""What a batch run and a retry run share: the edition, the SMTP connections, a database
connection of their own, the rate limit, the status look and the pause.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NoReturn

from flask import current_app
from sqlalchemy import select

from newsletter import campaign_status, db_clock, erasure, tokens, verp
from newsletter.extensions import db
from newsletter.mail import builders, connections, smtp
from newsletter.mail.smtp import Outcome
from newsletter.models import Campaign, CampaignStatus, Subscriber
from newsletter.sending import pacing, policy
from newsletter.sending.tables import campaign_table

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # subscribers read per query inside a batch
STATUS_CHECK_SECONDS = 1.0  # how often a running batch looks whether it was paused or cancelled


class Stop(Exception):
    """The run must stop now (paused, cancelled, lost its lease, setup failed)."""


def lease_until():
    """A lease taken or renewed now runs out after SEND_LEASE, by the database's clock.

    An SQL expression, for the UPDATE that takes or renews the lease.
    """
    return db_clock.now(current_app.config["SEND_LEASE"])


def erase_undeliverable(subscriber_id: int) -> None:
    """A 5.1.1/5.1.10 answer about the recipient: the address does not exist; let it go."""
    subscriber = db.session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        erasure.erase(subscriber, "undeliverable")


class Run:
    """The base of a batch run and a retry run over one campaign's edition.

    The per-message statements go through one Core connection instead of the ORM session:
    that costs about a quarter as much per message. Each of them is a single statement,
    so the connection autocommits (no BEGIN/COMMIT round trips); the rare outcomes that
    write two rows use a transaction of their own. On PostgreSQL its commits do not wait
    for the disk (``synchronous_commit off``): a database crash could then lose the last
    fraction of a second of checkpoints, which resends those messages and loses nobody; a
    worker crash loses nothing, since the server has the commit.
    """

    def __init__(self, campaign_id: int, connection_count: int = 1) -> None:
        self.campaign_id = campaign_id
        campaign = db.session.get(Campaign, campaign_id)
        # Each language's copy is rendered once, when its first reader comes up.
        self.main = (campaign.subject, campaign.html, campaign.text)
        self.versions = {t.language: (t.subject, t.html, t.text) for t in campaign.translations}
        self.templates: dict[str | None, builders.MailTemplate] = {}
        db.session.rollback()
        self.db = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.postgresql = self.db.dialect.name == "postgresql"
        if self.postgresql:
            self.db.exec_driver_sql("SET synchronous_commit TO off")
        self.rate = current_app.config["SEND_RATE"]
        self.lease = current_app.config["SEND_LEASE"]
        self.next_check = 0.0
        self.smtp = connections.Connections(connection_count)
        self._prepared: list = []  # what ``begin`` handed out, rendered or failed already

    def dispose(self) -> None:
        """Close the SMTP connection and hand the database connection back, as it was."""
        self.close()
        try:
            if self.postgresql:
                self.db.exec_driver_sql("RESET synchronous_commit")
        finally:
            self.db.close()

    # -- the connection

    def open(self) -> None:
        """Connect; a refused login or failed TLS pauses the campaign (retrying won't help)."""
        try:
            self.smtp.open()
        except smtp.SetupFailed as exc:
            self._setup_failed(exc)

    def close(self) -> None:
        self.smtp.close()

    def template_for(self, language: str | None) -> builders.MailTemplate:
        """The edition for readers of ``language``: its version, else the main one."""
        template = self.templates.get(language)
        if template is None:
            version = self.versions.get(language or "", self.main)
            template = builders.edition_template(*version, language)
            self.templates[language] = template
        return template

    def render(self, subscriber) -> builders.OutgoingMail | tuple[Outcome, str]:
        """The reader's copy; an address SMTP cannot carry fails (its outcome instead).

        Such an address (say a non-ASCII local part, without SMTPUTF8) fails the same way
        on every try: counted as failed, it no longer stops the batch again and again.
        """
        template = self.template_for(subscriber.language)
        try:
            mail = template.render(
                subscriber.email,
                {"unsubscribe_url": tokens.unsubscribe_url(subscriber)},
                stored=True,
            )
            # With BOUNCE_ADDRESS, a later bounce names this edition and this reader (VERP).
            sender = verp.envelope_sender(verp.TagKind.EDITION, self.campaign_id, subscriber.id)
            if sender:
                mail = dataclasses.replace(mail, sender=sender)
        except ValueError:
            log.warning("subscriber %s: not sendable over SMTP; counted failed", subscriber.id)
            return Outcome.FAILED, "address cannot be sent to"
        return mail

    def render_and_deliver(self, subscribers: list) -> list[tuple[Outcome, str] | Exception]:
        """Render each reader's copy and deliver them at once, one per SMTP connection."""
        self.begin([self.render(subscriber) for subscriber in subscribers])
        return self.collect()

    def begin(self, prepared: list) -> None:
        """Start delivering the rendered copies (``render``'s results) and return at once."""
        self._prepared = prepared
        self.smtp.start([item for item in prepared if isinstance(item, builders.OutgoingMail)])

    def collect(self) -> list[tuple[Outcome, str] | Exception]:
        """The outcomes of what ``begin`` started, in order, once the server answered all.

        An exception (Unreachable, SetupFailed) stands in place of a result, so that the
        caller still records what the other connections did.
        """
        delivered = iter(self.smtp.wait())
        prepared, self._prepared = self._prepared, []
        return [
            next(delivered) if isinstance(item, builders.OutgoingMail) else item
            for item in prepared
        ]

    def raise_for(self, error: Exception) -> NoReturn:
        """A connection could not carry its message: pause for SetupFailed, else raise."""
        if isinstance(error, smtp.SetupFailed):
            self._setup_failed(error)
        raise error

    def _setup_failed(self, exc: smtp.SetupFailed) -> NoReturn:
        self._pause(policy.SETUP_REASON.format(error=exc), "SMTP setup failed")
        self.stopped()
        raise Stop("SMTP setup failed") from None

    # -- pacing and status

    def wait_for_rate(self) -> None:
        """Hold SEND_RATE messages per second across all workers."""
        pacing.wait_for_rate(self.rate, self.check)

    def check(self) -> None:
        """At least once a second: stop when the campaign is no longer sending."""
        if time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + STATUS_CHECK_SECONDS
        status = self.db.scalar(
            select(campaign_table.c.status).where(campaign_table.c.id == self.campaign_id)
        )
        self.db.rollback()
        if status != CampaignStatus.SENDING:
            self.stopped()
            raise Stop(f"campaign {status}")
        self.renew()

    def stopped(self) -> None:
        """Give back what this run holds so that others can take it."""

    def renew(self) -> None:
        """Extend this run's lease."""

    def pause(self, rule: policy.Rule, outcome: Outcome, reply: str) -> None:
        """An outcome a person must look at (see ``policy``): pause the campaign."""
        assert rule.pause is not None
        self._pause(rule.pause.format(reply=reply), outcome.value)

    def _pause(self, reason: str, label: str) -> None:
        campaign_status.change(
            self.campaign_id,
            (CampaignStatus.SENDING,),
            to=CampaignStatus.PAUSED,
            status_reason=reason[:500],
            connection=self.db,
        )
        self.db.commit()
        log.warning("campaign %s paused: %s", self.campaign_id, label)
