"""Bounces and complaints that come back after sending: tags, classification, actions."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select, text

from newsletter import bounces, create_app, verp
from newsletter.config import BOUNCE_LOCAL_PART_MAX
from newsletter.extensions import db
from newsletter.models import Campaign, PendingSignup, Subscriber, Tally
from tests.bounce_mail import (
    BOUNCE_ADDRESS,
    SAMPLES,
    add_edition,
    add_pending,
    add_reader,
    arf,
    at_once,
    dsn,
    return_path,
    rewritten,
)
from tests.conftest import SECRET


@pytest.fixture
def app_config():
    return {"BOUNCE_ADDRESS": BOUNCE_ADDRESS, "BOUNCE_SOFT_LIMIT": 3}


def _rows_mentioning(address: str) -> list[str]:
    """Every table whose rows mention ``address`` anywhere (as text)."""
    found = []
    with db.engine.connect() as connection:
        for table in db.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                if address in " ".join(str(value) for value in row):
                    found.append(table.name)
    return found


# --- tags --------------------------------------------------------------------------------


def test_a_tag_names_campaign_and_reader_and_survives_lower_and_upper_case(app):
    tag = verp.make_tag("edition", 12, 3456)
    assert len(tag) == verp.TAG_LENGTH and tag == tag.lower()
    expected = verp.Tag(verp.TagKind.EDITION, 12, 3456)
    assert verp.read_tag(tag) == expected
    assert verp.read_tag(tag.upper()) == expected
    assert verp.read_tag(verp.make_tag("confirm", None, 77)) == verp.Tag(
        verp.TagKind.CONFIRM, None, 77
    )


def test_a_tag_holds_no_address_and_the_whole_local_part_fits_in_64(app):
    tag = verp.make_tag("edition", 2**32 - 1, 2**32 - 1)
    assert len(tag) == verp.TAG_LENGTH
    address = verp.verp_address("b" * BOUNCE_LOCAL_PART_MAX + "@news.example.com", tag)
    assert len(address.split("@")[0]) == 64
    with pytest.raises(ValueError):
        verp.verp_address("b" * (BOUNCE_LOCAL_PART_MAX + 1) + "@news.example.com", tag)
    # base32 of 4 + 4 id bytes and a MAC: nothing in it but the ids.
    assert base64.b32decode(tag.upper())[1:9] == b"\xff" * 8


@pytest.mark.parametrize(
    "change",
    [
        lambda tag: tag[:-1] + ("a" if tag[-1] != "a" else "b"),  # MAC bit flipped
        lambda tag: tag[:3] + ("a" if tag[3] != "a" else "b") + tag[4:],  # another reader
        lambda tag: tag[:-2],  # truncated
        lambda tag: tag + "aa",
        lambda tag: "",
        lambda tag: "x" * 32,  # not base32
    ],
)
def test_a_tampered_tag_is_refused(app, change):
    assert verp.read_tag(change(verp.make_tag("edition", 5, 9))) is None


def test_a_tag_signed_with_another_key_is_refused_and_an_old_key_still_verifies(app, base_environ):
    other = create_app(environ={**base_environ, "SECRET_KEY": "another-secret-key-0123456789abc"})
    with other.app_context():
        foreign = verp.make_tag("edition", 5, 9)
    assert verp.read_tag(foreign) is None

    rotated = create_app(
        environ={
            **base_environ,
            "SECRET_KEY": "the-new-secret-key-0123456789abcd",
            "SECRET_KEY_FALLBACKS": SECRET,
        }
    )
    old = verp.make_tag("edition", 5, 9)
    with rotated.app_context():
        assert verp.read_tag(old) == verp.Tag(verp.TagKind.EDITION, 5, 9)
        assert verp.read_tag(foreign) is None
    for made in (other, rotated):
        with made.app_context():
            db.engine.dispose()
        made.extensions["redis"].close()


def test_the_tag_is_read_back_from_a_verp_address_in_any_case(app):
    tag = verp.make_tag("edition", 1, 2)
    address = verp.verp_address(BOUNCE_ADDRESS, tag)
    assert address == f"bounces+{tag}@news.example.com"
    assert verp.tag_in_address(f"<{address.upper()}>", BOUNCE_ADDRESS) == tag
    assert verp.tag_in_address(f"bounces+{tag}@other.example.com", BOUNCE_ADDRESS) is None
    assert verp.tag_in_address(f"news+{tag}@news.example.com", BOUNCE_ADDRESS) is None


# --- real-world samples (flufl.bounce's test data) ---------------------------------------

# file, the address it reports as failing, the class we expect
SAMPLE_CLASSES = [
    ("dsn_01.txt", [b"userx@example.com"], "temporary"),  # 5.0.0 (recipient reached disk quota)
    ("dsn_04.txt", [b"userx@example.ch"], "permanent"),
    ("dsn_12.txt", [b"userx@example.jp"], "permanent"),  # Action: failed (comment)
    ("dsn_18.txt", [b"email@replaced.net"], "permanent"),  # Action: error
    ("postfix_01.txt", [b"xxxxx@local.ie"], "permanent"),
    ("postfix_03.txt", [b"ttttt@ggggg.com"], "permanent"),
    ("exim_01.txt", [b"userx@its.example.nl"], "permanent"),
    ("qmail_01.txt", [b"userx@example.de"], "permanent"),
    ("yahoo_01.txt", [b"userx@example.com"], "permanent"),
    ("yahoo_11.txt", [b"bad_user@aol.com"], "permanent"),
    ("microsoft_01.txt", [b"userx@example.COM"], "permanent"),
    ("hotpop_01.txt", [b"userx@example.com"], "permanent"),
    ("simple_01.txt", [b"bbbsss@example.com"], "permanent"),
    ("simple_04.txt", [b"userx@example.com"], "permanent"),
    ("sendmail_01.txt", [b"zzzzz@shaft.coal.nl", b"zzzzz@nfg.nl"], "permanent"),
    ("aol_01.txt", [b"screenname@aol.com"], "permanent"),
    ("groupwise_01.txt", [b"userx@example.EDU"], "permanent"),
    ("smtp32_01.txt", [b"userx@example.ph"], "permanent"),
    ("dsn_05.txt", [b"userx@example.cz"], "temporary"),  # Action: delayed
    ("dsn_17.txt", [b"userx@example.fi"], "temporary"),
    ("dsn_02.txt", [b"zzzzz@example.uk"], "temporary"),  # failed, but 4.4.7: timed out
    ("simple_03.txt", [b"userx@example.za"], "temporary"),  # a warning, still trying
    ("simple_21.txt", [b"userx@example.com"], "temporary"),
    ("qmail_08.txt", [], "auto_reply"),
    ("dumbass_01.txt", [], "ignore"),
]
RECIPIENT_HEADERS = ["Delivered-To", "X-Original-To", "Envelope-To", "To"]


@pytest.mark.parametrize(
    ("name", "failing", "expected"), SAMPLE_CLASSES, ids=[s[0] for s in SAMPLE_CLASSES]
)
def test_real_world_bounces_are_sorted_and_find_their_reader(app, name, failing, expected):
    reader = f"reader-{name.split('.')[0].replace('_', '-')}@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    header = RECIPIENT_HEADERS[[s[0] for s in SAMPLE_CLASSES].index(name) % 4]
    message = rewritten(
        (SAMPLES / name).read_bytes(),
        header,
        return_path(campaign_id, subscriber_id),
        failing,
        reader,
    )

    verdict = bounces.classify(message)

    assert verdict.kind.value == expected
    assert verdict.tag == verp.Tag(verp.TagKind.EDITION, campaign_id, subscriber_id)


def test_a_permanent_bounce_erases_the_reader_and_counts_on_the_campaign(app, logs):
    reader = "gone@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    sample = (SAMPLES / "postfix_01.txt").read_bytes()
    message = rewritten(
        sample, "Delivered-To", return_path(campaign_id, subscriber_id), [b"xxxxx@local.ie"], reader
    )

    outcome = bounces.handle(message)

    assert outcome.act is bounces.Act.ERASE_BOUNCED
    assert db.session.get(Subscriber, subscriber_id) is None
    assert _rows_mentioning(reader) == []
    assert db.session.get(Campaign, campaign_id).bounced == 1
    assert db.session.scalar(select(Tally.count).where(Tally.kind == "erased_bounced")) == 1
    assert reader not in logs.text and "xxxxx@local.ie" not in logs.text

    again = bounces.handle(message)  # the same bounce twice: nothing more happens
    assert again.act is bounces.Act.NOTHING
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).bounced == 1


def test_a_forged_bounce_erases_nobody(app):
    """Valid DSNs whose tag was tampered with, is missing or names the reader's address."""
    reader = "victim@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    tag = verp.make_tag("edition", campaign_id, subscriber_id)
    forged_tag = tag[:-1] + ("a" if tag[-1] != "a" else "b")
    forgeries = [
        dsn(f"bounces+{forged_tag}@news.example.com", reader),
        dsn(BOUNCE_ADDRESS, reader),  # no tag at all
        dsn(f"bounces+{tag}@evil.example.org", reader),  # our tag, another domain
        dsn(reader, reader),
        arf("bounces@news.example.com", reader),  # a complaint naming only the address
    ]
    for message in forgeries:
        outcome = bounces.handle(message)
        assert outcome.act is bounces.Act.NOTHING, outcome
        assert "without a valid tag" in outcome.why
    assert db.session.get(Subscriber, subscriber_id) is not None
    assert db.session.get(Campaign, campaign_id).bounced == 0


def test_a_complaint_erases_the_reader_at_once_and_counts_as_one(app):
    reader = "annoyed@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    report = arf(return_path(campaign_id, subscriber_id), reader)

    assert bounces.classify(report).kind is bounces.VerdictKind.COMPLAINT
    outcome = bounces.handle(report)

    assert outcome.act is bounces.Act.ERASE_COMPLAINT
    assert db.session.get(Subscriber, subscriber_id) is None
    assert _rows_mentioning(reader) == []
    campaign = db.session.get(Campaign, campaign_id)
    assert (campaign.complaints, campaign.bounced) == (1, 0)
    assert db.session.scalar(select(Tally.count).where(Tally.kind == "erased_complaint")) == 1


def test_a_dmarc_failure_report_is_no_complaint(app):
    subscriber_id = add_reader("reader@example.net")
    campaign_id = add_edition()
    report = arf(return_path(campaign_id, subscriber_id), "reader@example.net", "auth-failure")
    assert bounces.handle(report).act is bounces.Act.NOTHING
    assert db.session.get(Subscriber, subscriber_id) is not None


def test_an_auto_reply_changes_nothing(app):
    subscriber_id = add_reader("away@example.net")
    campaign_id = add_edition()
    message = rewritten(
        (SAMPLES / "qmail_08.txt").read_bytes(),
        "To",
        return_path(campaign_id, subscriber_id),
        [],
        "",
    )
    outcome = bounces.handle(message)
    assert (outcome.act, outcome.why) == (bounces.Act.NOTHING, "auto-reply")
    subscriber = db.session.get(Subscriber, subscriber_id)
    assert subscriber is not None and subscriber.soft_bounces == 0


def test_soft_bounces_on_different_editions_in_a_row_erase_at_the_limit(app):
    reader = "full@example.net"
    subscriber_id = add_reader(reader)
    first, second, third = (add_edition(f"E{n}", started_days_ago=90 - 30 * n) for n in range(3))

    def soft(campaign_id, action="delayed"):
        return bounces.handle(dsn(return_path(campaign_id, subscriber_id), reader, "4.2.2", action))

    assert soft(first).act is bounces.Act.COUNT_SOFT_BOUNCE
    assert soft(first, "failed").act is bounces.Act.NOTHING  # the same edition counts once
    assert soft(second).why == "2 in a row"
    assert db.session.get(Subscriber, subscriber_id).soft_bounces == 2
    outcome = soft(third)

    assert outcome.act is bounces.Act.ERASE_BOUNCED
    assert db.session.get(Subscriber, subscriber_id) is None
    assert _rows_mentioning(reader) == []
    assert [db.session.get(Campaign, c).bounced for c in (first, second, third)] == [0, 0, 1]


def test_an_edition_that_came_back_clean_starts_the_count_again(app):
    reader = "sometimes@example.net"
    subscriber_id = add_reader(reader)
    editions = [add_edition(f"E{n}", started_days_ago=150 - 30 * n) for n in range(5)]

    def soft(campaign_id):
        return bounces.handle(
            dsn(return_path(campaign_id, subscriber_id), reader, "4.4.1", "delayed")
        )

    soft(editions[0])
    soft(editions[1])
    # editions[2] reached the reader: no notice came back.
    assert soft(editions[3]).why == "1 in a row"
    assert soft(editions[4]).why == "2 in a row"
    assert db.session.get(Subscriber, subscriber_id) is not None


# Permanent failures that are not the reader's fault count as soft bounces, as at send
# time (mail/smtp.classify: a full mailbox is FAILED, a policy block BLOCKED, our sender
# refused SENDER; none of them erases). Status, Diagnostic-Code as real MTAs write them.
NOT_THE_READERS_FAULT = [
    ("5.2.2", "smtp; 552 5.2.2 <{failed}>: Recipient address rejected: Mailbox full"),
    ("5.2.2", "smtp; 552-5.2.2 The email account that you tried to reach is over quota."),
    ("5.7.1", "smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked"),
    ("5.7.26", "smtp; 550-5.7.26 Unauthenticated email from example.com is not accepted"),
    ("5.7.606", "smtp; 550 5.7.606 Access denied, banned sending IP [192.0.2.7]"),
    ("5.1.8", "smtp; 553 5.1.8 <bounces@news.example.com>: Sender address rejected"),
    ("5.0.0", "smtp; 552 5.2.2 Mailbox full"),  # Exim: the remote's code only here
    ("5.0.0 (recipient reached disk quota)", "X-Unix; over quota"),
    ("552", "smtp; 552 Requested mail action aborted: exceeded storage allocation"),
]
READERS_FAULT = [
    ("5.1.1", "smtp; 550 5.1.1 <{failed}>: Recipient address rejected: User unknown"),
    ("5.1.10", "smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found"),
    ("5.0.0", "smtp; 550 5.1.1 <{failed}>: User unknown"),
    ("5.2.1", "smtp; 550 5.2.1 The email account that you tried to reach is disabled"),
    ("5.4.4", "smtp; 550 5.4.4 Unable to route: no mail hosts for domain"),
]


def _failed_notice(status: str, diagnostic: str) -> tuple[int, int, bytes]:
    """A reader, an edition, and a failed-delivery notice about it: (reader, edition, DSN)."""
    reader = "full.blocked.or.gone@example.net"
    subscriber_id, campaign_id = add_reader(reader), add_edition()
    notice = dsn(return_path(campaign_id, subscriber_id), reader, status, "failed", diagnostic)
    return subscriber_id, campaign_id, notice


@pytest.mark.parametrize(("status", "diagnostic"), NOT_THE_READERS_FAULT)
def test_a_full_mailbox_or_a_policy_block_is_a_soft_bounce_not_an_erasure(app, status, diagnostic):
    subscriber_id, campaign_id, notice = _failed_notice(status, diagnostic)

    assert bounces.classify(notice).kind is bounces.VerdictKind.TEMPORARY
    outcome = bounces.handle(notice)

    assert (outcome.act, outcome.why) == (bounces.Act.COUNT_SOFT_BOUNCE, "1 in a row")
    subscriber = db.session.get(Subscriber, subscriber_id)
    assert subscriber is not None and subscriber.soft_bounces == 1
    assert db.session.get(Campaign, campaign_id).bounced == 0
    assert db.session.scalar(select(Tally.count).where(Tally.kind == "erased_bounced")) is None


@pytest.mark.parametrize(("status", "diagnostic"), READERS_FAULT)
def test_an_address_that_is_gone_is_a_permanent_bounce(app, status, diagnostic):
    subscriber_id, campaign_id, notice = _failed_notice(status, diagnostic)
    assert bounces.classify(notice).kind is bounces.VerdictKind.PERMANENT
    assert bounces.handle(notice).act is bounces.Act.ERASE_BOUNCED
    assert db.session.get(Subscriber, subscriber_id) is None
    assert db.session.get(Campaign, campaign_id).bounced == 1


def test_a_mailbox_full_on_every_edition_erases_at_the_soft_limit(app):
    reader = "always.full@example.net"
    subscriber_id = add_reader(reader)
    editions = [add_edition(f"E{n}", started_days_ago=90 - 30 * n) for n in range(3)]
    diagnostic = "smtp; 552 5.2.2 <{failed}>: Mailbox full"
    acts = [
        bounces.handle(dsn(return_path(c, subscriber_id), reader, "5.2.2", "failed", diagnostic))
        for c in editions
    ]
    assert [a.act for a in acts] == [bounces.Act.COUNT_SOFT_BOUNCE] * 2 + [
        bounces.Act.ERASE_BOUNCED
    ]
    assert db.session.get(Subscriber, subscriber_id) is None
    assert [db.session.get(Campaign, c).bounced for c in editions] == [0, 0, 1]


def test_the_soft_bounce_count_is_shown_and_exported_as_data_we_hold(app, client):
    """Art. 15: the count is data about the reader; the manage page, export and notice say so."""
    from newsletter import data_export, tokens
    from tests.conftest import path_of

    reader = "sometimes.full@example.net"
    subscriber_id = add_reader(reader)
    subscriber = db.session.get(Subscriber, subscriber_id)
    manage = path_of(tokens.manage_url(subscriber))
    assert 'id="soft-bounces">0 (at 3 in a row' in client.get(manage).text
    campaign_id = add_edition()
    bounces.handle(dsn(return_path(campaign_id, subscriber_id), reader, "4.2.2", "delayed"))

    db.session.expire_all()
    subscriber = db.session.get(Subscriber, subscriber_id)
    exported = data_export.export_data(subscriber)["soft_bounces"]
    assert exported == {"in_a_row": 1, "last_edition_id": campaign_id}
    assert 'id="soft-bounces">1 (at 3 in a row we delete your address)' in client.get(manage).text
    german = client.get(f"{manage}?lang=de").text
    assert 'id="soft-bounces">1 (bei 3 in Folge löschen wir Ihre Adresse)' in german
    assert "your mail server did not take for now" in client.get("/privacy").text
    assert "nach 3 Ausgaben in Folge löschen wir sie" in client.get("/privacy?lang=de").text


def test_a_bounced_confirmation_mail_ends_the_pending_sign_up(app):
    pending_id = add_pending("typo@example.net")
    kept = add_pending("other@example.net")
    temporary = dsn(
        return_path(None, pending_id, "confirm"), "typo@example.net", "4.2.1", "delayed"
    )
    assert bounces.handle(temporary).act is bounces.Act.NOTHING
    assert db.session.get(PendingSignup, pending_id) is not None

    outcome = bounces.handle(dsn(return_path(None, pending_id, "confirm"), "typo@example.net"))

    assert outcome.act is bounces.Act.END_PENDING and outcome.pending_id == pending_id
    db.session.expire_all()
    assert db.session.get(PendingSignup, pending_id) is None
    assert db.session.get(PendingSignup, kept) is not None
    assert _rows_mentioning("typo@example.net") == []


def test_a_delivered_notice_changes_nothing(app):
    subscriber_id = add_reader("fine@example.net")
    campaign_id = add_edition()
    notice = dsn(return_path(campaign_id, subscriber_id), "fine@example.net", "2.0.0", "delivered")
    assert bounces.classify(notice).kind is bounces.VerdictKind.IGNORE
    assert bounces.handle(notice).act is bounces.Act.NOTHING


def test_decide_reads_and_changes_nothing(app):
    reader = "still@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    action = bounces.decide(dsn(return_path(campaign_id, subscriber_id), reader))
    assert action == bounces.Action(
        bounces.Act.ERASE_BOUNCED, subscriber_id=subscriber_id, campaign_id=campaign_id
    )
    assert db.session.get(Subscriber, subscriber_id) is not None
    assert bounces.apply(action).act is bounces.Act.ERASE_BOUNCED
    assert db.session.get(Subscriber, subscriber_id) is None


# --- flask bounces read ------------------------------------------------------------------


@pytest.fixture
def bounce_runner(app):
    return app.test_cli_runner()


def test_bounces_read_handles_a_message_on_stdin_and_exits_0(app, bounce_runner):
    reader = "cli@example.net"
    subscriber_id = add_reader(reader)
    campaign_id = add_edition()
    result = bounce_runner.invoke(
        args=["bounces", "read"], input=dsn(return_path(campaign_id, subscriber_id), reader)
    )
    assert result.exit_code == 0, result.output
    assert f"erase_bounced subscriber {subscriber_id}" in result.output
    assert reader not in result.output
    assert db.session.get(Subscriber, subscriber_id) is None

    ignored = bounce_runner.invoke(args=["bounces", "read"], input=b"Subject: hello\r\n\r\nhi\r\n")
    assert ignored.exit_code == 0 and "nothing" in ignored.output


def test_bounces_read_exits_75_when_the_database_is_away(base_environ):
    """A PostgreSQL URL on a loopback port nobody listens on: connection refused.

    No ``app`` fixture: the command would run in its app context, on the test database.
    """
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {**base_environ, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none"}
    away = create_app(test_config={"BOUNCE_ADDRESS": BOUNCE_ADDRESS}, environ=environ)
    try:
        with away.app_context():
            message = dsn(return_path(1, 1), "someone@example.net")
            result = away.test_cli_runner().invoke(args=["bounces", "read"], input=message)
    finally:
        away.extensions["redis"].close()
    assert result.exit_code == 75, result.output
    assert "cannot be reached" in result.output


def test_soft_bounce_columns_start_at_zero(app):
    subscriber_id = add_reader("new@example.net")
    with db.engine.connect() as connection:
        row = connection.execute(
            text("SELECT soft_bounces, last_soft_bounce_campaign_id FROM subscriber WHERE id = :i"),
            {"i": subscriber_id},
        ).one()
    assert tuple(row) == (0, None)


# --- configuration -----------------------------------------------------------------------


def test_bounce_settings_are_read_and_checked_at_start(base_environ, tmp_path):
    from newsletter.config import load, parse_imap_url

    config = load(
        {
            **base_environ,
            "BOUNCE_ADDRESS": "Bounces@News.Example.com",
            "BOUNCE_IMAP_URL": "imaps://bounces%40news.example.com:p%40ss@imap.example.com/Bounces",
            "BOUNCE_SOFT_LIMIT": "5",
        },
        str(tmp_path),
    )
    assert config["BOUNCE_ADDRESS"] == "bounces@news.example.com"
    assert config["BOUNCE_SOFT_LIMIT"] == 5
    assert parse_imap_url(config["BOUNCE_IMAP_URL"]) == (
        "imap.example.com",
        993,
        "bounces@news.example.com",
        "p@ss",
        "Bounces",
    )
    defaults = load(base_environ, str(tmp_path))
    assert (defaults["BOUNCE_ADDRESS"], defaults["BOUNCE_IMAP_URL"]) == (None, None)
    assert defaults["BOUNCE_SOFT_LIMIT"] == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"BOUNCE_ADDRESS": "bounces+x@news.example.com"}, "without '+'"),
        ({"BOUNCE_ADDRESS": "no-at-sign"}, "BOUNCE_ADDRESS must be one plain address"),
        ({"BOUNCE_ADDRESS": "b" * 32 + "@news.example.com"}, "at most 31 characters"),
        ({"BOUNCE_IMAP_URL": "imap://u:p@imap.example.com/INBOX"}, "imaps://"),
        ({"BOUNCE_IMAP_URL": "imaps://imap.example.com/INBOX"}, "imaps://user:password@"),
        ({"BOUNCE_IMAP_CA_FILE": "/nonexistent/ca.pem"}, "cannot be read"),
        ({"BOUNCE_SOFT_LIMIT": "0"}, "BOUNCE_SOFT_LIMIT must be at least 1"),
    ],
)
def test_a_bad_bounce_setting_stops_the_start_with_one_clear_line(
    base_environ, tmp_path, settings, message
):
    from newsletter.config import ConfigError, load

    with pytest.raises(ConfigError) as error:
        load({**base_environ, **settings}, str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_envelope_sender_is_none_without_bounce_address(app):
    app.config["BOUNCE_ADDRESS"] = None
    assert verp.envelope_sender("edition", 1, 2) is None
    # Without a bounce address no tag can be found either: nothing is ever erased.
    assert bounces.classify(dsn(return_path(1, 2), "someone@example.net")).tag is None


def test_the_same_bounce_handled_twice_at_once_counts_once(app):
    """Two workers (say the pipe and the IMAP poll) get one bounce at the same instant."""
    campaign_id = add_edition()
    rounds = 5
    for n in range(rounds):
        reader = f"twin{n}@example.net"
        message = dsn(return_path(campaign_id, add_reader(reader)), reader)
        outcomes = at_once(app, *[lambda m=message: bounces.handle(m).act] * 2)
        assert sorted(outcomes) == [bounces.Act.ERASE_BOUNCED, bounces.Act.NOTHING]
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).bounced == rounds
    assert db.session.scalar(select(Tally.count).where(Tally.kind == "erased_bounced")) == rounds
