"""RFC 3464 delivery status notifications: each recipient's action and status, sorted.

What a failed delivery's status code means for the reader (RFC 3463): the address is gone
(permanent), or it may work again or is not the reader's fault (temporary). No app, no
database: ``bounces`` acts on the answer.
"""

from __future__ import annotations

import email
import email.message
import re
from typing import cast

PERMANENT, TEMPORARY, IGNORE = "permanent", "temporary", "ignore"


def statuses(message: email.message.Message) -> list[tuple[str, str]]:
    """(action, status) of every recipient in an RFC 3464 message/delivery-status part.

    The status is the Status field, followed by the Diagnostic-Code when Status says no
    more than "5.0.0": some MTAs (Exim, Sun's) put the remote's specific code or words there.
    """
    found = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, str):  # not split into header blocks: parse it ourselves
            payload = [email.message_from_string(b) for b in re.split(r"\r?\n\r?\n", payload)]
        for block in cast(list[email.message.Message], payload):
            action = _ACTION.match(_text(block.get("Action")))
            if action:
                status = _text(block.get("Status"))
                if _UNSPECIFIC.match(status):
                    status += " " + _text(block.get("Diagnostic-Code"))
                found.append((action.group(1).lower(), status))
    return found


# Action values seen in the wild besides RFC 3464's (failed, delayed, delivered, relayed,
# expanded), and the status class: 5.x.x, or a bare SMTP code like "553 too big".
_ACTION = re.compile(r"^\s*([A-Za-z]+)")
_FAILED = {"failed", "failure", "error"}
_FINE = {"delivered", "relayed", "expanded"}
_STATUS = re.compile(r"^\s*([245])(\.\d{1,3}\.\d{1,3}|\d\d)(?!\d)")
_UNSPECIFIC = re.compile(r"^\s*[45]\.0\.0(?!\d)")
# Permanent failures that are not the reader's fault, sorted as at send time
# (mail/smtp.classify): 5.2.2 mailbox full (RFC 3463: "a persistent transient failure";
# the bare 552 too, RFC 5321 4.5.3.1.10), 5.7.x a policy or reputation block of our mail,
# 5.1.7/5.1.8 our own sender address refused. They count as temporary: BOUNCE_SOFT_LIMIT
# of them on editions in a row erase the reader, one alone never does.
_NOT_THE_READERS_FAULT = re.compile(r"^\s*(5\.2\.2|5\.7\.\d{1,3}|5\.1\.[78]|552)(?!\d)")
# After an unspecific 5.0.0: the same codes in the Diagnostic-Code, or a full mailbox in words.
_NOT_THE_READERS_FAULT_IN_TEXT = re.compile(
    r"(?<![\d.])(5\.2\.2|5\.7\.\d{1,3}|5\.1\.[78]|552)(?![\d.])"
    r"|\b(quota|mailbox (is )?full|insufficient (system )?storage|exceeded storage)\b",
    re.IGNORECASE,
)


def _not_the_readers_fault(status: str) -> bool:
    """Whether a permanent failure's status says the reader's address is not to blame."""
    if _UNSPECIFIC.match(status):
        return _NOT_THE_READERS_FAULT_IN_TEXT.search(status) is not None
    return _NOT_THE_READERS_FAULT.match(status) is not None


def worst(statuses: list[tuple[str, str]]) -> str | None:
    """ "permanent" if a recipient failed with 5.x.x, "temporary" if with 4.x.x or delayed.

    A 5.x.x that is not the reader's fault (mailbox full, a policy block, our sender
    refused) is temporary. "ignore" when every recipient was delivered; None when the part
    says nothing we know.
    """
    kinds = set()
    for action, status in statuses:
        match = _STATUS.match(status)
        code = match.group(1) if match else ""
        if action in _FAILED:
            temporary = code == "4" or _not_the_readers_fault(status)
            kinds.add(TEMPORARY if temporary else PERMANENT)
        elif action == "delayed":
            kinds.add(TEMPORARY)
        elif action in _FINE:
            kinds.add(IGNORE)
    for kind in (PERMANENT, TEMPORARY, IGNORE):
        if kind in kinds:
            return kind
    return None


def _text(value) -> str:
    return "" if value is None else str(value)
