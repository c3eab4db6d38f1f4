"""What a send run does with each SMTP outcome: one table for batch runs and retries alike.

A reader is done once an outcome counts them: sent, failed or unknown (maybe delivered,
so never sent again). A reader who is not done is tried again: after a backoff (a 4xx),
or at once when a person resumed the campaign (a 5.7.x block), until
SEND_RETRY_ATTEMPTS tries are spent; then they count as failed. An outcome a person
must look at pauses the campaign with a reason that says what to check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flask import current_app

from newsletter import db_clock
from newsletter.mail.smtp import Outcome


class Retry(enum.Enum):
    BACKOFF = "backoff"  # SEND_RETRY_DELAY, doubling with every try
    AT_ONCE = "at once"  # due at once: tried as soon as the campaign sends again


@dataclass(frozen=True)
class Rule:
    count: str | None = None  # the total that counts the reader as done: sent, failed, unknown
    retry: Retry | None = None  # not done yet: try the reader again
    erase: bool = False  # the address does not exist: erase the subscriber
    pause: str | None = None  # pause the campaign with this reason; {reply} is the server's


RULES: dict[Outcome, Rule] = {
    Outcome.SENT: Rule(count="sent"),
    Outcome.UNKNOWN: Rule(count="unknown"),
    Outcome.FAILED: Rule(count="failed"),
    Outcome.NO_MAILBOX: Rule(count="failed", erase=True),
    Outcome.DEFERRED: Rule(retry=Retry.BACKOFF),
    # The reader waits among the retries, so that a resume does not meet them first and
    # stop again; a block counts as a try.
    Outcome.BLOCKED: Rule(
        retry=Retry.AT_ONCE,
        pause=(
            "The mail server refused by policy ({reply}). Check the sending setup and "
            "reputation, then resume."
        ),
    ),
    # Our own address was refused: nothing is wrong with the reader, who is neither
    # counted nor moved, and is sent to first when the campaign is resumed.
    Outcome.SENDER: Rule(
        pause=(
            "The mail server refused our sender address ({reply}). Check the sender address "
            "(MAIL_DEFAULT_SENDER) and its domain's DNS, then resume."
        ),
    ),
}

GIVEN_UP = Rule(count="failed")  # a reader whose tries are spent

SETUP_REASON = (
    "Could not secure or log in to the connection to the mail server ({error}). Check "
    "MAIL_USE_TLS, MAIL_USE_SSL, MAIL_USERNAME and MAIL_PASSWORD, then resume."
)


def for_retry(outcome: Outcome, attempts: int) -> Rule:
    """The rule for a retried reader after ``attempts`` tries: spent tries end as failed."""
    rule = RULES[outcome]
    if rule.retry is not None and attempts >= current_app.config["SEND_RETRY_ATTEMPTS"]:
        return GIVEN_UP
    return rule


def next_attempt(rule: Rule, attempts: int):
    """When a reader who is not done is due again, before try number ``attempts + 1``.

    An SQL expression: the database's clock, for the row that stores the due time.
    """
    if rule.retry is Retry.AT_ONCE:
        return db_clock.now()
    base = current_app.config["SEND_RETRY_DELAY"]
    return db_clock.now(base * 2 ** (attempts - 1))
