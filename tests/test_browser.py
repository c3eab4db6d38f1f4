"""The sign-up journey in a real browser: Debian's chromium through Playwright."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import PendingSignup, Subscriber
from tests.conftest import link_in

pytestmark = pytest.mark.browser


def test_visitor_signs_up_and_confirms_in_a_browser(page, live_server, work, smtp):
    page.goto("/")
    page.get_by_label("Email address").fill("browser.reader@example.com")
    page.locator("#consent").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    work()
    [mail] = smtp.to("browser.reader@example.com")
    link = link_in(mail.text, "confirm")
    assert link.startswith(f"{live_server.url}/confirm/")

    page.goto(link)
    button = page.get_by_role("button", name="Yes, subscribe me")
    expect(button).to_be_visible()
    # Opening the link changed nothing.
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0

    button.click()
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    subscriber = db.session.scalar(select(Subscriber).filter_by(email="browser.reader@example.com"))
    assert subscriber is not None and subscriber.confirmed_at is not None
    assert db.session.scalar(select(func.count()).select_from(PendingSignup)) == 0


def test_form_without_consent_shows_the_message_in_the_browser(page, live_server, work, smtp):
    page.goto("/subscribe")
    page.get_by_label("Email address").fill("no.consent@example.com")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#form-errors")).to_be_visible()
    expect(page.get_by_label("Email address")).to_have_value("no.consent@example.com")
    work()
    assert smtp.to("no.consent@example.com") == []
