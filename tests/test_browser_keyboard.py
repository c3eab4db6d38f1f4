"""Keyboard only, in Debian's headless chromium: Tab, Enter and Space, no mouse.

A visitor signs up, confirms and unsubscribes; a marketer logs in, writes and schedules
an edition; each control they use shows a visible focus outline when the keyboard
reaches it.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from newsletter import auth, campaigns, tokens
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, PendingSignup, Subscriber
from tests.conftest import link_in, path_of

pytestmark = pytest.mark.browser

STAFF = "tastatur@example.com"
PASSWORD = "only the keyboard 2026"


def tab_to(page, selector: str, limit: int = 40) -> None:
    """Press Tab until ``selector`` has the focus; fail if it never does."""
    target = page.locator(selector)
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            outline = target.evaluate("element => getComputedStyle(element).outlineStyle")
            assert outline not in ("none", ""), f"{selector} has no visible focus outline"
            return
    raise AssertionError(f"Tab never reached {selector}")


def sign_up_with_keys(page, address: str) -> None:
    """A visitor types the address, ticks consent with Space and submits with Enter."""
    page.goto("/?lang=en")
    tab_to(page, "#email")
    page.keyboard.type(address)
    tab_to(page, "#consent")
    page.keyboard.press("Space")
    expect(page.locator("#consent")).to_be_checked()
    tab_to(page, "form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()


def log_in_with_keys(page) -> None:
    """Staff log in with Tab, typing and Enter; the dashboard shows."""
    page.goto("/admin/login?lang=en")
    tab_to(page, "#email")
    page.keyboard.type(STAFF)
    tab_to(page, "#password")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#subscriber-count")).to_be_visible()


@pytest.fixture
def keyboard_page(page):
    page.set_viewport_size({"width": 1100, "height": 900})
    return page


def test_a_visitor_signs_up_with_the_keyboard_only(keyboard_page, live_server):
    page = keyboard_page
    sign_up_with_keys(page, "tasten@example.com")
    assert db.session.scalar(select(PendingSignup.email)) == "tasten@example.com"


def test_an_error_is_announced_and_tied_to_its_field(keyboard_page, live_server):
    page = keyboard_page
    page.goto("/?lang=en")
    tab_to(page, "form button[type=submit]")
    page.keyboard.press("Enter")
    email = page.locator("#email")
    expect(email).to_have_attribute("aria-invalid", "true")
    described = email.get_attribute("aria-describedby")
    expect(page.locator(f"#{described}")).to_contain_text("email address")
    expect(page.locator("#form-errors")).to_have_attribute("role", "alert")


def test_a_marketer_logs_in_and_schedules_with_the_keyboard_only(keyboard_page, live_server):
    auth.create_admin(STAFF, PASSWORD)
    draft = campaigns.create("Keyboard edition", "<p>Hello</p>")
    page = keyboard_page
    log_in_with_keys(page)

    page.goto(f"/admin/campaigns/{draft.id}?lang=en")
    # Tab reaches the checked radio button of the group: the next monthly slot.
    tab_to(page, "#when-slot")
    expect(page.locator("#when-slot")).to_be_checked()
    tab_to(page, "form[action*='/schedule'] button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator(".flash")).to_contain_text("Scheduled for")
    db.session.expire_all()
    scheduled = db.session.get(Campaign, draft.id)
    assert scheduled.status == CampaignStatus.SCHEDULED
    assert scheduled.send_at == campaigns.next_slot()


def test_a_reader_confirms_and_unsubscribes_with_the_keyboard_only(
    keyboard_page, live_server, work, smtp
):
    page = keyboard_page
    sign_up_with_keys(page, "tasten@example.com")
    work()
    page.goto(path_of(link_in(smtp.to("tasten@example.com")[-1].text, "confirm")))
    tab_to(page, "main form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator("main h1")).to_contain_text("subscribed")
    db.session.expire_all()
    reader = db.session.scalar(select(Subscriber).where(Subscriber.email == "tasten@example.com"))
    assert reader is not None and reader.confirmed_at is not None

    page.goto(path_of(tokens.unsubscribe_url(reader)))
    tab_to(page, "main form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator("main h1")).to_be_visible()
    db.session.expire_all()
    assert db.session.scalar(select(Subscriber.id)) is None


def test_a_marketer_writes_an_edition_with_the_keyboard_only(keyboard_page, live_server):
    auth.create_admin(STAFF, PASSWORD)
    page = keyboard_page
    log_in_with_keys(page)

    page.goto("/admin/campaigns/new?lang=en")
    tab_to(page, "#subject")
    page.keyboard.type("Written with keys")
    tab_to(page, "#source")
    page.keyboard.type("# Hello\n\nOnly the keyboard wrote this.")
    tab_to(page, "main form button.primary[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator(".flash")).to_be_visible()
    db.session.expire_all()
    draft = db.session.scalar(select(Campaign).where(Campaign.subject == "Written with keys"))
    assert draft is not None and draft.status == CampaignStatus.DRAFT
    assert "Only the keyboard wrote this." in draft.html
