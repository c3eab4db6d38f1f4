"""Rate limits on readers' forms that mail a link, shared by sign-up and manage pages.

Counters are keyed by IP or by a keyed hash of the form's mailbox, never by the address.
"""

from __future__ import annotations

import limits
from flask import current_app, request

from newsletter import addresses
from newsletter.extensions import limiter


def signup_address_key() -> str:
    """Rate-limit key for the form's target inbox: a keyed hash (``addresses.mailbox_key``)."""
    raw = request.form.get("email", "")
    try:
        email = addresses.normalize(raw, check_deliverability=False)
    except addresses.InvalidAddress:
        email = raw.strip().lower()[:254]
    return "addr:" + addresses.mailbox_key(email)


# Sign-ups and address changes both mail a confirmation link to the address in the form:
# they share one per-IP and one per-mailbox counter.
CONFIRMATION_SCOPE = "confirmation-mail"

confirmation_limit_per_ip = limiter.shared_limit(
    lambda: current_app.config["SIGNUP_LIMIT_PER_IP"], scope=CONFIRMATION_SCOPE
)


def mailbox_limit_spent(setting: str, scope: str) -> bool:
    """Count this request against the limit on the form's mailbox; say if it is spent.

    A spent limit must not change the answer: a 429 would tell anybody that somebody
    asked for this address lately. So the view shows its usual page and sends nothing.
    """
    key = signup_address_key()
    return not all(
        limiter.limiter.hit(item, key, scope)
        for item in limits.parse_many(current_app.config[setting])
    )


RATE_LIMIT_SETTINGS = (
    "SIGNUP_LIMIT_PER_IP",
    "SIGNUP_LIMIT_PER_ADDRESS",
    "MANAGE_LIMIT_PER_IP",
    "MANAGE_LIMIT_PER_ADDRESS",
)


def longest_counter_window() -> int:
    """Seconds the longest-lived rate-limit counter on a reader's address or IP can live."""
    config = current_app.config
    windows = [
        item.get_expiry()
        for setting in RATE_LIMIT_SETTINGS
        if config.get(setting)
        for item in limits.parse_many(config[setting])
    ]
    return max(windows, default=0)
