"""Every page in Debian's headless chromium, in German and English, at desktop and phone
width: axe-core finds no WCAG 2.1 A/AA violation, nothing scrolls sideways on a 390 px
phone, and no page loads anything from another origin.

axe-core comes with the ``axe-playwright-python`` dev dependency (MPL-2.0, bundled in the
wheel), so the audit runs offline from a fresh clone. Playwright evaluates it in the page
through the DevTools protocol, which our Content-Security-Policy does not restrict.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect
from sqlalchemy import select

from newsletter import auth, tokens
from newsletter.extensions import db
from newsletter.models import Subscriber
from tests.conftest import outbox_config

pytestmark = pytest.mark.browser

TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WIDTHS = {"desktop": 1280, "phone": 390}
PHONE = WIDTHS["phone"]
STAFF = "redaktion@example.com"
PASSWORD = "barrierefrei 2026 monatlich"
AXE = Axe()
# Pages pictured in docs/screenshots/ (README), at both widths in both languages.
SHOTS = {
    "subscribe": "subscribe",
    "manage": "manage",
    "mail: confirmation": "confirmation-mail",
    "admin dashboard": "admin-dashboard",
    "admin campaign sent": "admin-progress",
}
# How far the first heading stays below the header bar (null on pages without either).
HEADING_GAP = """(() => {
  const bar = document.querySelector("header.site"), heading = document.querySelector("main h1");
  if (!bar || !heading) return null;
  return Math.round(heading.getBoundingClientRect().top - bar.getBoundingClientRect().bottom);
})()"""


@pytest.fixture
def app_config(outbox):
    """The settings of ``make run``: /dev/outbox is one of the audited pages."""
    return {**outbox_config(outbox), "IMPRINT_URL": "https://www.example.com/impressum"}


def mails_in(folder) -> list[email.message.EmailMessage]:
    """The caught mail, oldest first (Maildir keys begin "<seconds>.M<microseconds>P")."""
    box = mailbox.Maildir(folder, factory=None, create=False)
    order = sorted(box.keys(), key=lambda key: [int(n) for n in re.findall(r"\d+", key)[:2]])
    return [
        email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in order
    ]


class Audit:
    """Runs axe and the sideways-scroll check on the page in its current state."""

    def __init__(self, page, origin: str, language: str, shots: Path) -> None:
        self.page, self.origin, self.language, self.shots = page, origin, language, shots
        self.problems: list[str] = []
        self.audited: list[str] = []
        page.on("request", self._request)

    def _request(self, request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in {"data", "about", "blob"}:
            return
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.problems.append(f"{self.language}: a request to another origin: {request.url}")

    def check(self, name: str, page_language: str | None = None) -> None:
        page = self.page
        page.wait_for_load_state("load")
        expect(page.locator("html")).to_have_attribute("lang", page_language or self.language)
        for width_name, width in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": 900})
            results = AXE.run(page, options={"runOnly": {"type": "tag", "values": TAGS}})
            where = f"{name} [{self.language}, {width_name}]"
            for violation in results.response["violations"]:
                targets = [node["target"] for node in violation["nodes"]][:4]
                self.problems.append(f"{where}: {violation['id']} ({violation['help']}) {targets}")
            if name in SHOTS:
                shot = self.shots / f"{self.language}-{SHOTS[name]}-{width_name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000, f"{shot.name} looks empty"
            scroll = page.evaluate("document.documentElement.scrollWidth")
            gap = page.evaluate(HEADING_GAP)
            if gap is not None and gap < 16:
                self.problems.append(f"{where}: the heading sits {gap} px below the header bar")
            if width == PHONE and scroll > PHONE:
                self.problems.append(f"{where}: {scroll} px wide, scrolls sideways")
        self.audited.append(name)

    def check_mail(self, name: str, message, language: str | None = None) -> None:
        """A mail's HTML part as a mail client shows it (not under our pages' CSP)."""
        html = message.get_body(preferencelist=("html",)).get_content()
        self.page.goto("about:blank")
        self.page.set_content(html)
        self.check(f"mail: {name}", page_language=language)


def open_newest_mail(page, language: str) -> None:
    page.goto(f"/dev/outbox?lang={language}")
    page.locator("#outbox tbody a").first.click()


def walk_public_pages(audit: Audit, work, outbox, language: str) -> None:
    page, lang = audit.page, f"?lang={language}"
    address = f"leser-{language}@example.com"

    page.goto(f"/{lang}")
    audit.check("subscribe")
    page.locator("button[type=submit].primary").click()
    expect(page.locator("#form-errors")).to_be_visible()
    audit.check("subscribe with errors")
    page.locator("#email").fill(address)
    page.locator("#consent").check()
    page.locator("button[type=submit].primary").click()
    expect(page.locator("#form-errors")).to_have_count(0)
    audit.check("check your inbox")

    work()
    page.goto(f"/dev/outbox{lang}")
    audit.check("dev outbox", page_language="en")
    page.locator("#outbox tbody a").first.click()
    audit.check("dev outbox: one mail", page_language="en")
    audit.check_mail("confirmation", mails_in(outbox)[-1])
    open_newest_mail(page, language)
    page.locator("#links a[href*='/confirm/']").first.click()
    audit.check("confirm")
    page.locator("button[type=submit].primary").click()
    audit.check("confirmed")

    page.goto(f"/confirm/not-a-token{lang}")
    audit.check("confirm error")
    page.goto(f"/unsubscribe/not-a-token{lang}")
    audit.check("unsubscribe error")
    page.goto(f"/manage/not-a-token{lang}")
    audit.check("manage error")
    page.goto(f"/privacy{lang}")
    audit.check("privacy")
    page.goto(f"/no-such-page{lang}")
    audit.check("404")
    page.goto(f"/manage/not-a-token/delete{lang}")
    audit.check("405")
    page.goto(f"/{lang}")
    page.evaluate("document.querySelector('[name=csrf_token]').remove()")
    page.locator("#email").fill(address)
    page.locator("#consent").check()
    page.locator("button[type=submit].primary").click()
    audit.check("form expired (CSRF)")

    page.goto(f"/manage{lang}")
    audit.check("manage request")
    page.locator("#email").fill("not an address")
    page.locator("button[type=submit].primary").click()
    audit.check("manage request with errors")
    page.locator("#email").fill(address)
    page.locator("button[type=submit].primary").click()
    audit.check("manage link sent")
    work()
    audit.check_mail("manage link", mails_in(outbox)[-1])
    open_newest_mail(page, language)
    page.locator("#links a[href*='/manage/']").first.click()
    manage_url = page.url
    audit.check("manage")
    page.locator("#email").fill("no address")
    page.locator("form[action*='/email'] button").click()
    audit.check("manage with errors")
    page.locator("#email").fill(f"neu-{language}@example.com")
    page.locator("form[action*='/email'] button").click()
    audit.check("address change mailed")
    work()
    audit.check_mail("address change", mails_in(outbox)[-1])

    reader = db.session.scalar(select(Subscriber).filter_by(email=address))
    page.goto(tokens.unsubscribe_url(reader).replace(audit.origin, ""))
    audit.check("unsubscribe")
    page.locator("button.danger").click()
    audit.check("unsubscribed")
    # The reader is gone, and with them the stored language: the URL names it.
    page.goto(urlsplit(manage_url).path + lang)
    audit.check("manage: no data held")


def walk_admin_pages(audit: Audit, work, outbox, language: str) -> None:
    page, lang = audit.page, f"?lang={language}"
    page.goto(f"/admin/login{lang}")
    audit.check("admin login")
    page.locator("#email").fill(STAFF)
    page.locator("#password").fill("wrong password")
    page.locator("button[type=submit].primary").click()
    audit.check("admin login failed")
    page.locator("#email").fill(STAFF)
    page.locator("#password").fill(PASSWORD)
    page.locator("button[type=submit].primary").click()
    expect(page.locator("#subscriber-count")).to_be_visible()
    audit.check("admin dashboard")
    page.locator(".admin-nav a[href*='/campaigns']").first.click()
    audit.check("admin campaigns")
    page.goto(f"/admin/campaigns/new{lang}")
    audit.check("admin new edition")
    page.locator("form.editor button[type=submit]").click()
    audit.check("admin new edition with errors")
    page.locator("#subject").fill(f"Barrierefrei {language}")
    page.locator("#source").fill("# Neu\n\nEine Zeile\nund noch eine.\n\n- Punkt\n- Punkt")
    page.locator("form.editor button[type=submit]").click()
    expect(page.locator("#progress")).to_be_visible()
    campaign_url = page.url
    audit.check("admin campaign editor")
    page.locator("form[action*='/test'] button").click()
    audit.check("admin test sent")
    work()
    page.locator("#when-at").check()
    page.locator("#send_at").fill("")
    page.locator("form[action*='/schedule'] button.primary").click()
    audit.check("admin schedule with errors")
    page.locator("#when-now").check()
    page.locator("form[action*='/schedule'] button.primary").click()
    work()
    page.goto(campaign_url)
    expect(page.locator("[data-field=percent]")).to_have_text("100")
    expect(page.locator(".totals")).to_have_attribute("aria-live", "polite")  # announced
    audit.check("admin campaign sent")
    # The test copy is the edition's main version, in the fallback language.
    audit.check_mail("edition (test copy)", mails_in(outbox)[-1], language="en")
    page.goto(f"/admin/form{lang}")
    audit.check("admin sign-up form")
    page.locator(".admin-nav a[href*='/data-requests'], .admin-nav a[href*='subscribers']").click()
    audit.check("admin data requests")
    page.locator("#email").fill("nobody@example.com")
    page.locator("button[type=submit].primary").click()
    audit.check("admin data request: nothing found")


@pytest.mark.parametrize("language", ["en", "de"])
def test_every_page_passes_axe_fits_a_phone_and_loads_only_our_origin(
    browser, live_server, work, outbox, shots, language
):
    folder, _ = outbox
    auth.create_admin(STAFF, PASSWORD)
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    audit = Audit(page, live_server.url, language, shots)
    try:
        walk_public_pages(audit, work, folder, language)
        walk_admin_pages(audit, work, folder, language)
    finally:
        context.close()
    assert len(audit.audited) >= 35, audit.audited
    assert audit.problems == [], "\n".join(audit.problems)
