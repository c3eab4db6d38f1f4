"""An edition in two languages, written in Debian's headless chromium: the main version,
then the German tab, each previewed, a German test copy, and the send, after which the
German reader has the German version and the English reader the English one.

With UPDATE_SCREENSHOTS=1 the German tab is saved as docs/screenshots/editor-de-tab.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from newsletter import auth, consent
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, Subscriber, utcnow
from tests.test_admin_browser import write_new_edition
from tests.test_browser_languages import shoot

pytestmark = pytest.mark.browser

STAFF = "redaktion@example.com"
PASSWORD = "monatliche Ausgabe 2026"
MAIN = "# What's new in December\n\nThe **viewer 4.2** is out."
GERMAN_EDITION = "# Neu im Dezember\n\nDer **Betrachter 4.2** ist da. Viel Freude damit!"


def add_reader(email: str, language: str) -> None:
    """A confirmed reader of ``language``, with the consent wording of that language."""
    wording = consent.current(language)
    db.session.add(
        Subscriber(
            email=email, requested_at=utcnow(), consent_text_id=wording.id, language=language
        )
    )
    db.session.commit()


def editions_to(smtp, address: str) -> list:
    return [m for m in smtp.to(address) if m.message["List-Id"]]


def test_staff_write_a_german_tab_preview_it_and_each_reader_gets_their_language(
    page,
    live_server,
    work,
    smtp,
    shots,
):
    add_reader("leser@example.com", "de")
    add_reader("reader@example.com", "en")
    auth.create_admin(STAFF, PASSWORD)

    page.goto("/admin/login")
    page.get_by_label("Email address").fill(STAFF)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    campaign_id = write_new_edition(page, "December news", MAIN)

    # The tabs are plain links; the German one is not written yet.
    tabs = page.get_by_role("navigation", name="Language versions")
    expect(tabs.get_by_role("link", name=re.compile("English"))).to_have_attribute(
        "aria-current", "page"
    )
    german_tab = tabs.get_by_role("link", name=re.compile("Deutsch"))
    expect(german_tab).to_contain_text("not written yet")
    german_tab.click()
    page.wait_for_url(re.compile(r".*\?version=de#versions$"))
    expect(page.locator("#version-note")).to_contain_text("There is no version in Deutsch yet")
    expect(page.get_by_label("Subject")).to_have_value("")
    # Until then the German preview is the main version, with the footer in German.
    frame = page.frame_locator(".preview.desktop iframe")
    expect(frame.locator("h1")).to_have_text("What's new in December")
    expect(frame.locator("body")).to_contain_text("Sie erhalten diesen Newsletter")

    page.get_by_label("Subject").fill("Neues im Dezember")
    page.get_by_label("Written in").select_option("markdown")
    page.get_by_label("Edition").fill(GERMAN_EDITION)
    page.get_by_role("button", name="Save changes").click()
    page.wait_for_url(re.compile(r".*\?version=de#preview$"))
    expect(page.locator(".flash")).to_contain_text("Changes saved")
    expect(german_tab).to_have_attribute("aria-current", "page")
    expect(german_tab).not_to_contain_text("not written yet")
    for index in range(2):  # desktop and phone width
        frame = page.frame_locator(".preview iframe").nth(index)
        expect(frame.locator("h1")).to_have_text("Neu im Dezember")
        expect(frame.get_by_role("link", name="Abmelden")).to_have_count(1)
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1280, "height": height})
    page.wait_for_timeout(300)
    shoot(page, shots, "editor-de-tab")
    page.set_viewport_size({"width": 1280, "height": 900})

    # The main tab still previews the English version.
    tabs.get_by_role("link", name=re.compile("English")).click()
    expect(page.frame_locator(".preview.desktop iframe").locator("h1")).to_have_text(
        "What's new in December"
    )

    # A test copy of the German version.
    german_tab.click()
    page.get_by_role("button", name="Send a test to me").click()
    expect(page.locator(".flash")).to_contain_text(f"A test copy is on its way to {STAFF}")
    [test_copy] = smtp.to(STAFF)
    assert test_copy.message["Subject"] == "[Test] Neues im Dezember"
    assert "Betrachter 4.2" in test_copy.text

    # Send it now; the burst worker sends the whole edition.
    page.get_by_label("Now").check()
    page.get_by_role("button", name="Schedule").click()
    expect(page.locator(".flash")).to_contain_text("Sending starts within seconds")
    work()
    db.session.remove()
    campaign = db.session.get(Campaign, campaign_id)
    assert campaign.status == CampaignStatus.SENT and campaign.sent == 2

    [german] = editions_to(smtp, "leser@example.com")
    assert german.message["Subject"] == "Neues im Dezember"
    assert "Betrachter 4.2" in german.html and "Betrachter 4.2" in german.text
    assert "viewer 4.2" not in german.html and "Sie erhalten diesen Newsletter" in german.text
    [english] = editions_to(smtp, "reader@example.com")
    assert english.message["Subject"] == "December news"
    assert "viewer 4.2" in english.html and "Betrachter" not in english.html
    assert "You receive this newsletter" in english.text
    page.reload()
    expect(page.locator("[data-field=status]")).to_have_text("sent")
