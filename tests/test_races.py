"""Clicks that arrive at the same instant: real HTTP, real threads, both databases."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import PendingSignup, Subscriber
from tests.conftest import Browser, link_in

CLICKS = 8


def fire_at_once(count: int, action) -> list:
    """Call ``action()`` from ``count`` threads released by one barrier."""
    barrier = threading.Barrier(count)

    def one(_):
        barrier.wait()
        return action()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def link_path(smtp, address: str, purpose: str) -> str:
    return urlsplit(link_in(smtp.to(address)[-1].text, purpose)).path


def sign_up(browser: Browser, work, smtp, address: str) -> str:
    """Submit the sign-up form; return the path of the confirmation link mailed."""
    token = browser.form_token("/subscribe")
    status, _ = browser.request(
        "POST", "/subscribe", {"email": address, "consent": "yes", "csrf_token": token}
    )
    assert status == 200
    work()
    return link_path(smtp, address, "confirm")


def test_simultaneous_confirm_clicks_all_get_the_page_and_store_one_subscriber(
    live_server, work, smtp, logs, capfd
):
    address = "double.click.race@example.com"
    browser = Browser(live_server.url)
    confirm = sign_up(browser, work, smtp, address)
    token = browser.form_token(confirm)

    answers = fire_at_once(CLICKS, lambda: browser.request("POST", confirm, {"csrf_token": token}))

    assert [status for status, _ in answers] == [200] * CLICKS
    assert all("subscribed" in page for _, page in answers)
    db.session.remove()
    assert db.session.scalar(select(func.count(Subscriber.id))) == 1
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 0
    written = logs.text + "".join(capfd.readouterr())
    assert "double.click.race" not in written.lower()
    assert "Traceback" not in written


def test_simultaneous_address_change_confirms_move_the_subscriber_once(live_server, work, smtp):
    browser = Browser(live_server.url)
    confirm = sign_up(browser, work, smtp, "before.move@example.com")
    browser.request("POST", confirm, {"csrf_token": browser.form_token(confirm)})
    token = browser.form_token("/manage")
    browser.request("POST", "/manage", {"email": "before.move@example.com", "csrf_token": token})
    work()
    manage = link_path(smtp, "before.move@example.com", "manage")
    token = browser.form_token(manage)
    status, _ = browser.request(
        "POST", f"{manage}/email", {"email": "after.move@example.com", "csrf_token": token}
    )
    assert status == 200
    work()
    confirm = link_path(smtp, "after.move@example.com", "confirm")
    token = browser.form_token(confirm)

    answers = fire_at_once(CLICKS, lambda: browser.request("POST", confirm, {"csrf_token": token}))

    assert [status for status, _ in answers] == [200] * CLICKS
    db.session.remove()
    assert db.session.scalars(select(Subscriber.email)).all() == ["after.move@example.com"]
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 0
