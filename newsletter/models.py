"""Database models: the database carries the invariants (unique, foreign keys, enums)."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_token_key() -> str:
    return secrets.token_urlsafe(12)


class UTCDateTime(TypeDecorator):
    """Store aware UTC datetimes; SQLite hands naive ones back, so mark them UTC again."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use an aware UTC datetime")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


# Rows from before languages were English; new rows always name their language.
LANGUAGE_OF_OLD_ROWS = "en"


def _language_column():
    return mapped_column(String(8), server_default=LANGUAGE_OF_OLD_ROWS)


class ConsentText(db.Model):
    """One wording of the consent text in one language, stored once, never changed.

    Versions count per language (de 1, 2, ...; en 1, ...); a wording is identified by
    its hash, so the same words are the same version.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    language: Mapped[str] = _language_column()
    version: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("language", "version", name="uq_consent_language_version"),
        UniqueConstraint("language", "sha256", name="uq_consent_language_sha256"),
    )


class FormText(db.Model):
    """The operator's words on the sign-up page in one language (``/admin/form``).

    ``intro`` None shows the built-in introduction; ``consent_text`` None the built-in
    consent wording (itself a stored version once it was shown).
    """

    language: Mapped[str] = mapped_column(String(8), primary_key=True)
    intro: Mapped[str | None] = mapped_column(Text)
    consent_text_id: Mapped[int | None] = mapped_column(ForeignKey("consent_text.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    consent_text: Mapped[ConsentText | None] = relationship(lazy="joined")


class Look(db.Model):
    """The logo and accent colour of pages and mails: one row, set on ``/admin/form``."""

    id: Mapped[int] = mapped_column(primary_key=True)
    logo: Mapped[bytes | None] = mapped_column(LargeBinary)
    logo_type: Mapped[str | None] = mapped_column(String(32))
    logo_sha256: Mapped[str | None] = mapped_column(String(64))
    accent: Mapped[str | None] = mapped_column(String(7))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PendingPurpose(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    CHANGE_EMAIL = "change_email"


class PendingSignup(db.Model):
    """An unconfirmed sign-up or address change: no subscriber, purged when it expires."""

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_token_key)
    email: Mapped[str] = mapped_column(String(254), index=True)
    purpose: Mapped[PendingPurpose] = mapped_column(
        Enum(
            PendingPurpose,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=PendingPurpose.SUBSCRIBE,
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    consent_text_id: Mapped[int | None] = mapped_column(ForeignKey("consent_text.id"))
    # The language of the page the form was sent from: the mail goes out in it.
    language: Mapped[str] = _language_column()
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    mail_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("email", "purpose", name="uq_pending_email_purpose"),)


class Subscriber(db.Model):
    """A confirmed subscriber: the address and the proof of consent, nothing else."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # Random, per subscription: the unsubscribe and manage tokens name it, so the tokens
    # of an erased subscription never touch a later subscription of the same address.
    token_key: Mapped[str] = mapped_column(String(32), unique=True, default=new_token_key)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    consent_text_id: Mapped[int] = mapped_column(ForeignKey("consent_text.id"))
    # Needed to write to the reader: pages behind their links and their mail use it.
    language: Mapped[str] = _language_column()
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    email_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Soft bounces (4.x.x) on different editions in a row, and the edition of the last one.
    soft_bounces: Mapped[int] = mapped_column(default=0)
    last_soft_bounce_campaign_id: Mapped[int | None]

    consent_text: Mapped[ConsentText] = relationship(lazy="joined")

    __table_args__ = {"sqlite_autoincrement": True}


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


def _enum(cls, length=16):
    return Enum(
        cls,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda e: [m.value for m in e],
    )


class Version:
    """The words of one version of an edition: the campaign's main one, or a translation.

    ``source`` is what the editor opens again (Markdown), ``html`` what is sent.
    """

    subject: Mapped[str] = mapped_column(String(200))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    text_is_derived: Mapped[bool] = mapped_column(default=True)
    source: Mapped[str | None] = mapped_column(Text)
    source_format: Mapped[str] = mapped_column(String(16), default="html")


class Campaign(Version, db.Model):
    """One edition of the newsletter (its main version) and, once sent, its totals."""

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[CampaignStatus] = mapped_column(
        _enum(CampaignStatus), default=CampaignStatus.DRAFT, index=True
    )
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    status_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recipients: Mapped[int] = mapped_column(default=0)
    sent: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)
    bounced: Mapped[int] = mapped_column(default=0)  # permanent bounces that came back later
    complaints: Mapped[int] = mapped_column(default=0)  # spam reports (ARF)

    translations: Mapped[list[CampaignTranslation]] = relationship(
        cascade="all, delete-orphan",
        order_by="CampaignTranslation.language",
        passive_deletes=True,
    )

    def version(self, language: str | None) -> Version:
        """The version a reader of ``language`` gets: its translation, else the main one."""
        for translation in self.translations:
            if translation.language == language:
                return translation
        return self


class CampaignTranslation(Version, db.Model):
    """The version of an edition in one more language (the main one is the fallback's).

    Only the edition's words: who reads which language is the subscriber's row.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    language: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("campaign_id", "language", name="uq_campaign_translation_language"),
    )


class BatchStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class SendBatch(db.Model):
    """A range of subscriber ids of one campaign, with a checkpoint and a lease.

    ``cursor`` is the last subscriber id whose message the SMTP server accepted (or
    refused for good); it moves only after that answer, so a killed worker's successor
    resumes right after it. ``lease_until`` is renewed while a worker holds the batch;
    the tick re-enqueues batches whose lease ran out.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    first_id: Mapped[int]
    last_id: Mapped[int]
    cursor: Mapped[int]
    status: Mapped[BatchStatus] = mapped_column(
        _enum(BatchStatus), default=BatchStatus.QUEUED, index=True
    )
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    sent: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)

    __table_args__ = (CheckConstraint("first_id <= last_id", name="ck_batch_range"),)


class DeferredDelivery(db.Model):
    """A recipient whose server answered 4xx: retried later, gone with its subscriber."""

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    attempts: Mapped[int] = mapped_column(default=1)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("campaign_id", "subscriber_id", name="uq_deferred_recipient"),
    )


class ApiToken(db.Model):
    """A bearer token for the JSON API; only its SHA-256 is stored."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AdminUser(db.Model):
    """A staff account for the admin pages; the password is stored as an Argon2 hash.

    ``session_key`` is part of every session's fingerprint (see ``auth``): a new random
    value, set on logout, password change and lock-out, ends every earlier session.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    session_key: Mapped[str] = mapped_column(String(32), default=new_token_key)


class Tally(db.Model):
    """Counts per month and kind (confirmations, erasures by route, exports); no addresses."""

    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
