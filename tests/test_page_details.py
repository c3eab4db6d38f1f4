"""Small things a visitor or marketer notices: the favicon, the time-zone list, line breaks."""

from __future__ import annotations

import re

from newsletter import editor
from newsletter.admin import times


def test_the_favicon_is_served_as_an_image_and_linked_from_every_page(client):
    with client.get("/favicon.ico") as response:  # a file response: close it
        assert response.status_code == 200
        assert response.mimetype.startswith("image/")
        assert response.get_data().lstrip().startswith(b"<svg")
    page = client.get("/").get_data(as_text=True)
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page


def test_the_time_zone_list_offers_only_real_places_in_order(app):
    zones = times.zone_choices()
    assert "Factory" not in zones and "localtime" not in zones
    assert {"Europe/Berlin", "UTC", "America/New_York"} <= set(zones)
    assert zones == sorted(zones)


def test_a_single_newline_in_markdown_is_a_line_break(app):
    html = editor.to_html("Viewer 4.2 is out.\nRead the notes.\n\nNew paragraph.", "markdown")
    assert "Viewer 4.2 is out.<br" in html and html.count("<p") == 2


def test_counts_of_one_read_in_the_singular_in_both_languages(admin):
    from newsletter import campaigns, consent
    from newsletter.extensions import db
    from newsletter.models import Campaign, CampaignStatus, Subscriber, utcnow

    db.session.add(
        Subscriber(
            email="one@example.com", requested_at=utcnow(), consent_text_id=consent.current().id
        )
    )
    sent = campaigns.create("One reader", "<p>x</p>")
    db.session.get(Campaign, sent.id).status, sent.recipients = CampaignStatus.SENT, 1
    db.session.commit()
    pages = {
        (path, lang): admin.get(f"{path}?lang={lang}").get_data(as_text=True)
        for path in ("/admin/", f"/admin/campaigns/{sent.id}")
        for lang in ("en", "de")
    }
    assert "confirmed address today" in pages["/admin/", "en"]
    assert "bestätigte Adresse heute" in pages["/admin/", "de"]
    campaign = f"/admin/campaigns/{sent.id}"
    assert 'of <span data-field="recipients">1</span> recipient\n' in pages[campaign, "en"]
    assert 'von <span data-field="recipients">1</span> Empfänger\n' in pages[campaign, "de"]
    assert 'id="unknown-note"' in pages[campaign, "en"]  # what "unknown" means


def test_an_edition_carries_its_first_words_as_hidden_preview_text(app):
    from newsletter.mail import builders

    body = editor.to_html(
        "# December\n\nOur **viewer 4.2** is out. [Read the notes](https://example.com/n).",
        "markdown",
    )
    from newsletter.mail.rendering import html_to_text

    template = builders.edition_template("December", body, html_to_text(body))
    hidden = re.search(r'<div style="display:none;[^"]*">([^<]*)</div>', template.html)
    assert hidden, "no preheader"
    assert hidden.group(1) == "Our viewer 4.2 is out. Read the notes."
    assert builders.preheader("word " * 100).endswith("…")
    assert len(builders.preheader("word " * 100)) <= builders.PREHEADER_SIZE
