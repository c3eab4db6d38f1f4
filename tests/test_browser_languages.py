"""Both languages in Debian's headless chromium: a German reader's whole journey, the
switch to English, and staff changing the German consent wording on ``/admin/form``.

Screenshots of the German pages and mails go to docs/screenshots/de-*.png (run with
UPDATE_SCREENSHOTS=1), as the admin browser test does for its pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from newsletter import auth
from newsletter.extensions import db
from newsletter.models import ConsentText, Subscriber
from tests.conftest import link_in

pytestmark = pytest.mark.browser

STAFF = "redaktion@example.com"
PASSWORD = "monatliche Ausgabe 2026"
NEW_WORDING = (
    "Ja, ich möchte den monatlichen Newsletter per E-Mail erhalten. Meine Einwilligung kann "
    "ich jederzeit über den Abmeldelink in jeder Ausgabe widerrufen."
)


@pytest.fixture
def app_config():
    return {
        "SITE_NAME": "IMAGE Newsletter",
        "IMPRINT_URL": "https://www.example.com/impressum",
        "CONTROLLER_NAME": "IMAGE Information Systems Europe GmbH",
        "CONTROLLER_ADDRESS": "Hafenstraße 1, 18055 Rostock",
        "CONTROLLER_EMAIL": "datenschutz@example.com",
    }


def shoot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{name}.png looks empty"


@pytest.fixture
def german_page(browser, live_server):
    """A tab of a browser set to German: it sends ``Accept-Language: de-DE``."""
    context = browser.new_context(
        base_url=live_server.url, locale="de-DE", viewport={"width": 1100, "height": 900}
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    page.problems = problems
    yield page
    context.close()


def mail_view(page, html: str, folder: Path, name: str) -> None:
    """Show a mail's HTML part as a mail client would (not under our pages' CSP)."""
    page.goto("about:blank")
    page.set_content(html)
    shoot(page, folder, name)


def sign_up_in_german(page, work, smtp, email: str) -> None:
    """Fill in the German form, then open the confirmation link and press its button."""
    page.goto("/")
    page.get_by_label("E-Mail-Adresse").fill(email)
    page.locator("#consent").check()
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_role("heading", name="Bitte sehen Sie in Ihr Postfach")).to_be_visible()
    work()
    page.goto(link_in(smtp.to(email)[-1].text, "confirm"))
    page.get_by_role("button", name="Ja, ich möchte den Newsletter erhalten").click()
    expect(page.get_by_role("heading", name="Sie sind angemeldet")).to_be_visible()


def test_a_german_reader_signs_up_confirms_and_manages_in_german(
    german_page, live_server, work, smtp, shots
):
    page = german_page
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", "de")
    heading = page.get_by_role("heading", name="Melden Sie sich für unseren Newsletter an")
    expect(heading).to_be_visible()
    expect(page.get_by_role("link", name="English")).to_have_attribute("href", "/?lang=en")
    expect(page.get_by_role("link", name="Impressum")).to_have_attribute(
        "href", "https://www.example.com/impressum"
    )
    shoot(page, shots, "de-subscribe")

    page.get_by_label("E-Mail-Adresse").fill("leserin@example.com")
    page.locator("#consent").check()
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_role("heading", name="Bitte sehen Sie in Ihr Postfach")).to_be_visible()

    work()
    [mail] = smtp.to("leserin@example.com")
    assert mail.message["Subject"] == "Bitte bestätigen Sie Ihre Newsletter-Anmeldung"
    assert "Impressum: https://www.example.com/impressum" in mail.text
    assert "IMAGE Information Systems Europe GmbH" in mail.html
    link = link_in(mail.text, "confirm")

    page.goto(link)
    expect(page.locator("html")).to_have_attribute("lang", "de")
    shoot(page, shots, "de-confirm")
    page.get_by_role("button", name="Ja, ich möchte den Newsletter erhalten").click()
    expect(page.get_by_role("heading", name="Sie sind angemeldet")).to_be_visible()
    reader = db.session.scalar(select(Subscriber).filter_by(email="leserin@example.com"))
    assert reader.language == "de" and reader.consent_text.language == "de"

    mail_view(page, mail.html, shots, "de-confirmation-mail")

    page.goto("/manage")
    page.get_by_label("E-Mail-Adresse").fill("leserin@example.com")
    page.get_by_role("button", name="Link per E-Mail senden").click()
    work()
    manage_mail = smtp.to("leserin@example.com")[-1]
    assert manage_mail.message["Subject"] == "Ihr Newsletter-Abonnement"
    mail_view(page, manage_mail.html, shots, "de-manage-mail")

    page.goto(link_in(manage_mail.text, "manage"))
    expect(page.get_by_role("heading", name="Ihr Abonnement")).to_be_visible()
    expect(page.locator("#reader-language")).to_have_text("Deutsch")
    shoot(page, shots, "de-manage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Meine Daten herunterladen (JSON)").click()
    data = json.loads(Path(download.value.path()).read_text())
    assert data["language"] == "de" and data["consent"]["language"] == "de"
    assert data["about"].startswith("Alle Daten")

    page.goto("/privacy")
    expect(page.get_by_role("heading", name="Datenschutzhinweise zum Newsletter")).to_be_visible()
    shoot(page, shots, "de-privacy")
    assert page.problems == [], page.problems


def test_a_visitor_switches_to_english_and_is_written_to_in_english(
    german_page, live_server, work, smtp
):
    page = german_page
    page.goto("/subscribe")
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.get_by_label("Email address").fill("reader@example.com")
    page.locator("#consent").check()
    page.get_by_role("button", name="Subscribe").click()
    # The German browser still gets the English answer: the form carried the choice.
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    work()
    [mail] = smtp.to("reader@example.com")
    assert mail.message["Subject"] == "Please confirm your newsletter subscription"
    page.goto(link_in(mail.text, "confirm"))
    expect(page.locator("html")).to_have_attribute("lang", "en")  # the stored language
    page.get_by_role("button", name="Yes, subscribe me").click()
    reader = db.session.scalar(select(Subscriber).filter_by(email="reader@example.com"))
    assert reader.language == "en" and reader.consent_text.language == "en"


def test_staff_change_the_german_wording_and_earlier_readers_keep_their_version(
    german_page, live_server, work, smtp, shots
):
    page = german_page
    sign_up_in_german(page, work, smtp, "frueh@example.com")

    auth.create_admin(STAFF, PASSWORD)
    page.goto("/admin/login")
    page.get_by_label("E-Mail-Adresse").fill(STAFF)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.get_by_role("link", name="Anmeldeformular").click()
    expect(page.get_by_role("heading", name="Das Anmeldeformular")).to_be_visible()
    wording = page.locator("#consent-de")
    wording.fill(NEW_WORDING)
    page.locator("#lang-de").get_by_role("button", name="Vorschau").click()
    expect(page.locator(".form-preview")).to_contain_text(NEW_WORDING)
    assert db.session.scalar(select(ConsentText).where(ConsentText.version == 2)) is None
    page.locator("#lang-de").get_by_role("button", name="Speichern").click()
    expect(page.locator(".flash")).to_contain_text("jetzt Version 2")
    versions = page.locator("#versions-de")
    expect(versions.locator('[data-version="1"]')).to_have_text("1")
    expect(versions.locator('[data-version="2"]')).to_have_text("0")
    expect(page.locator("#snippet-de")).to_contain_text(NEW_WORDING)
    page.locator("#lang-de").scroll_into_view_if_needed()
    shoot(page, shots, "de-admin-form")

    page.goto("/")
    expect(page.locator("label[for=consent]")).to_have_text(NEW_WORDING)
    sign_up_in_german(page, work, smtp, "spaet@example.com")

    db.session.remove()
    early, late = (
        db.session.scalar(select(Subscriber).filter_by(email=email))
        for email in ("frueh@example.com", "spaet@example.com")
    )
    assert (early.consent_text.version, late.consent_text.version) == (1, 2)
    assert late.consent_text.text == NEW_WORDING and early.consent_text.text != NEW_WORDING
    page.goto("/admin/form")
    expect(page.locator("#versions-de").locator('[data-version="2"]')).to_have_text("1")
    assert page.problems == [], page.problems


def test_the_header_looks_right_with_a_logo_and_an_accent_colour(german_page, shots):
    from newsletter import look
    from tests.test_signup_form import png

    look.save(accent="#0b6e4f", logo_data=png(600, 150))  # a large logo is scaled down
    page = german_page
    page.goto("/")
    logo = page.locator("header img.logo")
    expect(logo).to_be_visible()
    box = logo.bounding_box()
    assert box["height"] <= 40 and box["width"] <= 160
    name = page.locator("header .brand span").bounding_box()
    assert abs((box["y"] + box["height"] / 2) - (name["y"] + name["height"] / 2)) < 4  # aligned
    button = page.get_by_role("button", name="Anmelden")
    assert button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(11, 110, 79)"
    shoot(page, shots, "de-subscribe-logo")
    assert page.problems == [], page.problems
