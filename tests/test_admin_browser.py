"""A marketer's month in Debian's headless Chromium, against a live server and real workers.

Log in, write the edition in Markdown, preview it at desktop and phone widths, send a
test to yourself, send it now and watch the progress bar reach 100 % while a real
``python worker.py`` sends to a few dozen subscribers; then serve a data-subject
request. Screenshots of the main pages go to docs/screenshots/ (run with UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from newsletter import auth, consent
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, Subscriber, Tally, utcnow

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
STAFF = "marketing@example.com"
PASSWORD = "monthly edition 2026"
READERS = 30

EDITION = """# What's new in December

Our **viewer 4.2** is out: faster start-up, DICOM SR support and a new measuring tool.
[Read the release notes](https://example.com/release-4-2).

## From the user forum

- How to hang protocols for mammography
- Exporting measurements to your RIS

> Thank you for reading. Questions? Just reply to this mail.
"""


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop the worker we started (warm shutdown first)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def worker(live_server, base_environ, tmp_path):
    """One real forking worker (``python worker.py``), ticking every second."""
    env = {
        **os.environ,
        **base_environ,
        "PYTHONPATH": str(ROOT),
        "PUBLIC_URL": live_server.url,
        "TICK_INTERVAL": "1s",
        "BATCH_SIZE": "10",
        "SEND_RATE": "5",  # slow enough (about 6 s) to see the bar move
    }
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")],
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    _stop(process, timeout=30)
    log.close()


@pytest.fixture
def watched_page(page):
    """conftest's page, a little taller, collecting console errors and failed requests."""
    page.set_viewport_size({"width": 1280, "height": 900})
    problems: list[str] = []
    # Console errors include CSP violations (an inline script or style would show here).
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.problems = problems
    return page


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: docs/screenshots/ with UPDATE_SCREENSHOTS=1, else a temp dir.

    Taken on every run either way; only a deliberate run changes the committed pictures.
    """
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, f"{name}.png looks empty"


def add_history() -> None:
    """Six months of address-free counts that add up to the 30 readers."""
    confirmed, erased = [3, 5, 4, 8, 6, 7], [0, 1, 0, 1, 1, 0]
    now = utcnow()
    for back in range(6):
        year, month = now.year, now.month - back
        if month < 1:
            year, month = year - 1, month + 12
        key = f"{year:04d}-{month:02d}"
        db.session.add(Tally(month=key, kind="confirmed", count=confirmed[5 - back]))
        if erased[5 - back]:
            db.session.add(Tally(month=key, kind="erased_unsubscribe", count=erased[5 - back]))
    db.session.commit()


def add_readers(count: int) -> list[str]:
    consent_id = consent.current().id
    emails = [f"reader{n:02d}@example.com" for n in range(count)]
    db.session.add_all(
        Subscriber(email=e, requested_at=utcnow(), consent_text_id=consent_id) for e in emails
    )
    db.session.commit()
    return emails


def write_new_edition(page, subject: str, markdown: str) -> int:
    """Write a new edition in Markdown and save the draft; return its campaign id."""
    page.get_by_role("link", name="Write a new edition").first.click()
    page.get_by_label("Subject").fill(subject)
    page.get_by_label("Written in").select_option("markdown")
    page.get_by_label("Edition").fill(markdown)
    page.get_by_role("button", name="Save draft and preview").click()
    page.wait_for_url(re.compile(r".*/admin/campaigns/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def test_marketer_writes_previews_tests_sends_and_watches_an_edition(
    app, live_server, worker, watched_page, smtp, shots
):
    page = watched_page
    live_url = live_server.url
    auth.create_admin(STAFF, PASSWORD)
    readers = add_readers(READERS)
    add_history()

    # Every admin page needs a login; the browser lands on the login form.
    page.goto(live_url + "/admin/")
    assert page.url.startswith(live_url + "/admin/login")
    page.get_by_label("Email address").fill(STAFF)
    page.get_by_label("Password").fill(PASSWORD)
    shoot(page, shots, "login")
    page.get_by_role("button", name="Log in").click()

    # Dashboard: the subscriber count and the next monthly slot.
    page.wait_for_url(live_url + "/admin/")
    assert page.locator("#subscriber-count").inner_text() == str(READERS)
    assert "No edition is scheduled for it yet" in page.locator("#slot-state").inner_text()
    this_month = page.locator("#history tbody tr").first.locator("td").all_inner_texts()
    assert this_month[1:] == ["7", "0", "+7"]
    shoot(page, shots, "dashboard")

    # Write the edition in Markdown.
    campaign_id = write_new_edition(page, "December news: viewer 4.2", EDITION)
    assert "Draft saved" in page.locator(".flash").inner_text()

    # The preview, as a reader sees it, at two widths.
    frames = page.locator(".preview iframe")
    assert frames.count() == 2
    desktop, phone = frames.nth(0).bounding_box(), frames.nth(1).bounding_box()
    assert desktop["width"] > 600 and 360 < phone["width"] < 400
    for index in range(2):
        frame = page.frame_locator(".preview iframe").nth(index)
        assert frame.locator("h1").inner_text() == "What's new in December"
        assert frame.get_by_role("link", name="Unsubscribe").count() == 1
    phone_frame = [f for f in page.frames if f.url.endswith("/preview")][1]
    # Responsive: at phone width the mail needs no sideways scrolling.
    assert phone_frame.evaluate("document.documentElement.scrollWidth") <= phone["width"]
    # A tall window instead of a full-page capture: that one resizes the viewport while
    # shooting, and the framed previews are caught half laid out.
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1280, "height": height})
    page.wait_for_timeout(300)
    shoot(page, shots, "editor")
    page.set_viewport_size({"width": 1280, "height": 900})

    # A test copy to the staff member's own address.
    page.get_by_role("button", name="Send a test to me").click()
    assert f"A test copy is on its way to {STAFF}" in page.locator(".flash").inner_text()
    test_copies = smtp.to(STAFF)
    assert len(test_copies) == 1
    assert test_copies[0].message["Subject"] == "[Test] December news: viewer 4.2"
    assert "viewer 4.2" in test_copies[0].text

    # Send it now, and watch the bar fill while the worker sends.
    page.get_by_label("Now").check()
    page.get_by_role("button", name="Schedule").click()
    bar = page.locator("#send-progress")
    seen: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        value = int(bar.evaluate("b => b.value"))
        if not seen or seen[-1] != value:
            seen.append(value)
        if value == 100 and page.locator("[data-field=status]").inner_text() == "sent":
            break
        time.sleep(0.2)
    assert seen[-1] == 100, f"progress stuck at {seen}; worker log in the tmp dir"
    assert any(0 < v < 100 for v in seen), f"the bar jumped without showing progress: {seen}"
    assert seen == sorted(seen)
    totals = page.locator(".totals").inner_text()
    assert (
        f"{READERS} sent" in totals
        and "0 failed" in totals
        and f"of {READERS} recipients" in totals
    )
    # Once sending began, the page offers no editing, test or schedule forms; once sent,
    # no cancel button either.
    assert page.locator("#source").is_hidden()
    assert page.get_by_role("button", name="Schedule").is_hidden()
    assert page.get_by_role("button", name="Cancel this campaign").is_hidden()
    assert page.get_by_text("Sending starts within seconds").is_hidden()  # it has started
    assert page.locator("#preview").inner_text() == "Preview"  # no lone "2." left
    shoot(page, shots, "progress")

    # Every reader got exactly one copy, with their own unsubscribe link.
    for email in readers:
        copies = smtp.to(email)
        assert len(copies) == 1, email
        assert "/unsubscribe/" in copies[0].message["List-Unsubscribe"]
    campaign = db.session.get(Campaign, campaign_id)
    db.session.refresh(campaign)
    assert campaign.status == CampaignStatus.SENT and campaign.sent == READERS

    # The dashboard lists it with its totals.
    page.get_by_role("link", name="Dashboard").click()
    row = page.locator("table.data tr", has_text="December news: viewer 4.2")
    # Recipients, sent, failed, bounced, complaints.
    assert row.locator("td.num").all_inner_texts() == [str(READERS), str(READERS), "0", "0", "0"]

    # A data-subject request by email: look up one exact address, export, delete.
    page.get_by_role("link", name="Data requests").click()
    page.get_by_label("Exact email address").fill(readers[7])
    page.get_by_role("button", name="Look up").click()
    assert readers[7] in page.locator("#result").inner_text()
    assert readers[8] not in page.content()
    shoot(page, shots, "data-request")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export as JSON").click()
    exported = json.loads(Path(download_info.value.path()).read_text())
    assert exported["email"] == readers[7]
    page.get_by_label(re.compile("The request comes from the owner")).check()
    page.get_by_role("button", name="Delete now").click()
    assert "deleted" in page.locator(".flash").inner_text()
    db.session.expire_all()
    assert db.session.query(Subscriber).filter_by(email=readers[7]).count() == 0

    # Log out with the button (a POST); the admin pages are closed again.
    page.get_by_role("button", name=re.compile("Log out")).click()
    page.goto(live_url + "/admin/campaigns")
    assert page.url.startswith(live_url + "/admin/login")
    assert page.problems == [], page.problems


def test_campaign_page_works_without_javascript(app, live_server, browser):
    """Without scripts the page still shows the totals of when it loaded and a refresh link."""
    auth.create_admin(STAFF, PASSWORD)
    campaign = Campaign(
        subject="Sending edition",
        html="<p>x</p>",
        text="x",
        status=CampaignStatus.SENDING,
        recipients=40,
        sent=10,
        send_at=utcnow(),
    )
    db.session.add(campaign)
    db.session.commit()
    live_url = live_server.url
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_url + "/admin/login")
    # Keyboard only: the address field has focus, Tab leads to the password, Enter sends.
    # Wait for the autofocus to land first: keys typed before it are lost on a busy machine.
    email_field = page.locator("#email")
    for _ in range(50):
        if email_field.evaluate("element => element === document.activeElement"):
            break
        page.wait_for_timeout(100)
    page.keyboard.type(STAFF)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(live_url + "/admin/")
    page.goto(f"{live_url}/admin/campaigns/{campaign.id}")
    assert page.locator("#send-progress").get_attribute("value") == "25"
    assert "10 sent" in page.locator(".totals").inner_text()
    refresh = page.get_by_role("link", name="Refresh")
    assert refresh.is_visible()
    refresh.click()
    assert page.url.endswith(f"/admin/campaigns/{campaign.id}")
    context.close()
