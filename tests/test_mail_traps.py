"""Known traps of our mail and queue libraries, each pinned by a test."""

from __future__ import annotations

import socket
import time

import pytest
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from newsletter.extensions import get_redis
from newsletter.mail import builders, smtp
from newsletter.queue import get_queue
from tests.conftest import csrf_token


def signup(client, email):
    return client.post(
        "/subscribe", data={"email": email, "consent": "yes", "csrf_token": csrf_token(client)}
    )


def test_smtp_calls_time_out_on_a_server_that_never_answers(app):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP handshake, never sends a greeting
    app.config.update(SMTP_TIMEOUT=0.5)
    app.extensions["mail"].port = silent.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(smtp.MailNotSent) as not_sent:
        smtp.send(builders.confirmation_mail("a@example.com", "http://x/confirm/t"))
    assert time.monotonic() - started < 5
    assert not_sent.value.code is None  # not a refusal: the server never answered
    silent.close()


def test_a_refused_confirmation_waits_for_its_retry_without_the_address_in_redis(
    app, client, work, smtp
):
    smtp.handler.replies["refused.person@example.com"] = "451 4.3.0 try later"
    assert signup(client, "refused.person@example.com").status_code == 200
    work()
    queue = get_queue("mail")
    assert ScheduledJobRegistry(queue=queue).get_job_ids()  # RQ retries it later with backoff
    redis_conn = get_redis()
    for key in redis_conn.keys("*"):
        assert b"refused.person" not in key + (redis_conn.dump(key) or b"")


def test_a_confirmation_job_failed_by_a_relay_outage_is_enqueued_again_by_the_tick(
    app, client, work, smtp
):
    """An unreachable relay concerns every mail, not this sign-up: it is not given up."""
    from datetime import timedelta

    from sqlalchemy import select

    from newsletter.extensions import db
    from newsletter.models import PendingSignup
    from newsletter.tick import enqueue_tick

    mail = app.extensions["mail"]
    relay_port = mail.port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        mail.port = probe.getsockname()[1]  # closed again at once: connections are refused
    signup(client, "later@example.com")
    job = get_queue("mail").jobs[0]
    job.retries_left = 0  # no RQ retries left: the job lands among the failed jobs
    job.save()
    work()
    assert FailedJobRegistry(queue=get_queue("mail")).get_job_ids() == [job.id]
    mail.port = relay_port
    pending = db.session.scalar(select(PendingSignup))
    pending.requested_at -= timedelta(minutes=2)
    db.session.commit()
    enqueue_tick(7)
    work()
    work()
    assert [m.rcpt_tos for m in smtp.messages] == [["later@example.com"]]


def test_header_values_with_line_breaks_are_refused(app):
    with pytest.raises(builders.HeaderInjection):
        builders.MailTemplate("Hi\r\nBcc: evil@example.com", "t", "<p>h</p>")
    template = builders.edition_template("Subject", "<p>x</p>", "x")
    with pytest.raises(builders.HeaderInjection):
        template.render("a@example.com", {"unsubscribe_url": "http://x/u\r\nBcc: evil@example.com"})


def test_non_ascii_subject_is_encoded_and_body_is_quoted_printable(app, smtp):
    template = builders.MailTemplate("Grüße aus Rostock", "Zeile mit ß " * 40, "<p>ß</p>")
    smtp_mail = template.render("leser@example.com")
    raw = smtp_mail.data.decode("ascii")
    assert "Subject: =?utf-8?" in raw
    assert all(len(line) <= 998 for line in raw.split("\r\n"))
    from newsletter.mail.smtp import send

    send(smtp_mail)
    [received] = smtp.messages
    assert received.message["Subject"] == "Grüße aus Rostock"
    assert received.text.startswith("Zeile mit ß")


def test_job_descriptions_and_args_hold_ids_only(app, client):
    signup(client, "job.args@example.com")
    [job] = get_queue("mail").jobs
    assert job.description == "send_confirmation"
    assert job.args == (job.args[0],) and isinstance(job.args[0], int)
    assert job.result_ttl == 0 and job.failure_ttl <= 7 * 86400
