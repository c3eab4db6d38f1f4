"""Editions in several languages and Markdown as an API input (issue 10, phase 2).

A campaign has its main version (the fallback language) and translations; the API takes
both as html or markdown, the test copy comes in the language asked for, and a send gives
each reader the version of their stored language, else the main one.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter import api_tokens, campaigns, editor
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, CampaignTranslation
from tests.conftest import STAFF, csrf_token
from tests.test_admin import create_from_markdown
from tests.test_campaigns_api import Api, assert_problem, pointers, set_status
from tests.test_languages import GERMAN, confirm

MARKDOWN = "# Neuigkeiten\n\nDer neue **Betrachter** ist da. [Notizen](https://example.com/de)\n"
GERMAN_VERSION = {"subject": "Neues im November", "markdown": MARKDOWN}
ENGLISH_HTML = "<h1>News</h1><p>The new <b>viewer</b> is out.</p>"
GERMAN_FRAME = "Sie erhalten diesen Newsletter"
ENGLISH_FRAME = "You receive this newsletter"


@pytest.fixture
def api(client):
    _, token = api_tokens.create("tests")
    return Api(client, token)


def create(api, **fields) -> dict:
    """Create a campaign; a field given as None is left out."""
    body = {"subject": "November news", "html": ENGLISH_HTML, **fields}
    body = {name: value for name, value in body.items() if value is not None}
    response = api("POST", "/campaigns", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# --- the API ------------------------------------------------------------------------


def test_create_with_a_markdown_translation_round_trips(api):
    created = create(api, translations={"de": GERMAN_VERSION})
    fetched = api("GET", f"/campaigns/{created['id']}").get_json()
    assert fetched["translations"] == created["translations"]
    german = fetched["translations"]["de"]
    assert german["subject"] == "Neues im November"
    # Made as the admin editor makes it (typography inlined), then cleaned.
    assert german["html"] == editor.to_html(MARKDOWN, "markdown")
    assert "<strong" in german["html"] and 'style="' in german["html"]
    assert "Neuigkeiten" in german["text"] and "https://example.com/de" in german["text"]
    assert german["text_is_derived"] is True
    assert fetched["subject"] == "November news" and fetched["html"] == ENGLISH_HTML
    listed = api("GET", "/campaigns").get_json()
    assert "translations" not in listed[0]  # the list carries no content


def test_the_main_version_may_be_markdown_and_the_editor_opens_it_again(api):
    created = create(api, html=None, markdown="Hello **you**", text="Own text")
    assert "<strong" in created["html"] and created["text"] == "Own text"
    assert created["translations"] == {}
    campaign = db.session.get(Campaign, created["id"])
    assert editor.source_of(campaign) == ("November news", "Hello **you**", "markdown")


def test_markdown_is_cleaned_like_html(api):
    created = create(
        api,
        translations={
            "de": {"subject": "S", "markdown": "Hallo <script>alert(1)</script>[x](javascript:f())"}
        },
    )
    html = created["translations"]["de"]["html"]
    assert "Hallo" in html and "<script" not in html and "javascript:" not in html


@pytest.mark.parametrize(
    "translations, pointer, words",
    [
        ({"fr": GERMAN_VERSION}, "#/translations/fr", "not a language of this newsletter"),
        ({"en": GERMAN_VERSION}, "#/translations/en", "main version"),
        ({"de": {"subject": "S"}}, "#/translations/de/html", "body"),
        ({"de": {"subject": " ", "html": "<p>x</p>"}}, "#/translations/de/subject", "subject"),
        (
            {"de": {"subject": "S", "html": "<p>x</p>", "markdown": "x"}},
            "#/translations/de/markdown",
            "not both",
        ),
        ({"de": {"subject": "S", "html": "<script>x</script>"}}, "#/translations/de/html", "left"),
    ],
)
def test_translations_that_cannot_be_used_are_422_problems(api, translations, pointer, words):
    response = api(
        "POST",
        "/campaigns",
        json={"subject": "S", "html": "<p>x</p>", "translations": translations},
    )
    body = assert_problem(response, 422)
    assert pointers(body) == {pointer}
    assert words in body["detail"], body  # one invalid field: its message is the detail
    assert db.session.scalar(select(func.count(Campaign.id))) == 0


def test_the_unknown_language_detail_names_the_languages_offered(api):
    response = api(
        "POST",
        "/campaigns",
        json={"subject": "S", "html": "<p>x</p>", "translations": {"fr": GERMAN_VERSION}},
    )
    detail = assert_problem(response, 422)["detail"]
    assert "'fr'" in detail and "en, de" in detail and "may be in: de" in detail


def test_patch_replaces_adds_and_removes_translations_while_editable(api):
    created = create(api)
    path = f"/campaigns/{created['id']}"
    edited = api("PATCH", path, json={"translations": {"de": GERMAN_VERSION}}).get_json()
    assert edited["translations"]["de"]["subject"] == "Neues im November"
    edited = api(
        "PATCH", path, json={"translations": {"de": {"subject": "Zweiter", "html": "<p>Z</p>"}}}
    ).get_json()
    assert edited["translations"]["de"]["html"] == "<p>Z</p>"
    assert edited["translations"]["de"]["subject"] == "Zweiter"
    assert edited["subject"] == "November news", "the main version stays"
    edited = api("PATCH", path, json={"subject": "Main again"}).get_json()
    assert edited["translations"]["de"]["subject"] == "Zweiter", "not named, so kept"
    edited = api("PATCH", path, json={"translations": {"de": None}}).get_json()
    assert edited["translations"] == {}
    assert db.session.scalar(select(func.count(CampaignTranslation.id))) == 0
    body = assert_problem(api("PATCH", path, json={"translations": {"xx": None}}), 422)
    assert pointers(body) == {"#/translations/xx"}


def test_patch_of_translations_is_refused_once_sending_began(api):
    created = create(api, translations={"de": GERMAN_VERSION})
    set_status(created["id"], CampaignStatus.SENDING)
    change = {"translations": {"de": {"subject": "Zu spät", "html": "<p>x</p>"}}}
    body = assert_problem(api("PATCH", f"/campaigns/{created['id']}", json=change), 409)
    assert body["campaign_status"] == "sending"
    db.session.expire_all()
    [german] = db.session.get(Campaign, created["id"]).translations
    assert german.subject == "Neues im November"


def test_patch_markdown_of_the_main_version(api):
    created = create(api)
    edited = api("PATCH", f"/campaigns/{created['id']}", json={"markdown": "*Neu*"}).get_json()
    assert "<em" in edited["html"] and edited["text"].strip() == "_Neu_"
    both = {"markdown": "x", "html": "<p>x</p>"}
    assert_problem(api("PATCH", f"/campaigns/{created['id']}", json=both), 422)


def test_deleting_a_campaign_row_takes_its_translations(app, api):
    created = create(api, translations={"de": GERMAN_VERSION})
    db.session.delete(db.session.get(Campaign, created["id"]))
    db.session.commit()
    assert db.session.scalar(select(func.count(CampaignTranslation.id))) == 0


# --- test copies --------------------------------------------------------------------


def test_test_copy_in_a_language_is_that_version_marked_as_a_test(api, smtp, staff):
    created = create(api, translations={"de": GERMAN_VERSION})
    path = f"/campaigns/{created['id']}/test"
    assert api("POST", path, json={"to": STAFF, "language": "de"}).status_code == 200
    assert api("POST", path, json={"to": STAFF, "language": "en"}).status_code == 200
    assert api("POST", path, json={"to": STAFF}).status_code == 200
    german, english, main = smtp.to(STAFF)
    assert german.message["Subject"] == "[Test] Neues im November"
    assert "Betrachter" in german.html and "Betrachter" in german.text
    assert GERMAN_FRAME in german.text and 'lang="de"' in german.html
    for mail in (english, main):
        assert mail.message["Subject"] == "[Test] November news"
        assert "viewer" in mail.html and ENGLISH_FRAME in mail.text


def test_test_copy_in_a_language_without_translation_is_the_main_version(api, smtp, staff):
    created = create(api)
    path = f"/campaigns/{created['id']}/test"
    assert api("POST", path, json={"to": STAFF, "language": "de"}).status_code == 200
    [mail] = smtp.to(STAFF)
    assert mail.message["Subject"] == "[Test] November news" and "viewer" in mail.html


def test_test_copy_in_a_language_not_offered_is_refused(api, smtp, staff):
    created = create(api)
    for language in ("fr", "", 7):
        response = api(
            "POST", f"/campaigns/{created['id']}/test", json={"to": STAFF, "language": language}
        )
        assert pointers(assert_problem(response, 422)) == {"#/language"}
    assert smtp.messages == []


# --- sending ------------------------------------------------------------------------


def test_each_reader_gets_the_version_of_their_language_in_one_send(app, client, api, work, smtp):
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    confirm(client, work, smtp, "reader@example.com", query="?lang=en")
    confirm(client, work, smtp, "lectrice@example.com", query="?lang=en")
    created = create(api, translations={"de": GERMAN_VERSION})
    campaigns.schedule(created["id"], "now")
    work()

    db.session.expire_all()
    campaign = db.session.get(Campaign, created["id"])
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.recipients, campaign.sent) == (3, 3)  # totals are per campaign
    [german] = [m for m in smtp.to("leser@example.com") if m.message["List-Id"]]
    assert german.message["Subject"] == "Neues im November"
    assert "Betrachter" in german.html and "Betrachter" in german.text
    assert GERMAN_FRAME in german.text and "viewer" not in german.html
    for address in ("reader@example.com", "lectrice@example.com"):
        [english] = [m for m in smtp.to(address) if m.message["List-Id"]]
        assert english.message["Subject"] == "November news"
        assert "viewer" in english.html and "Betrachter" not in english.html
        assert ENGLISH_FRAME in english.text
    # Each copy is personal: its own unsubscribe link, in both parts and the header.
    links = {m.message["List-Unsubscribe"] for m in smtp.messages if m.message["List-Id"]}
    assert len(links) == 3


def test_a_reader_of_a_language_without_translation_gets_the_main_version(
    app, client, api, work, smtp
):
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    created = create(api)
    campaigns.schedule(created["id"], "now")
    work()
    [mail] = [m for m in smtp.to("leser@example.com") if m.message["List-Id"]]
    assert mail.message["Subject"] == "November news" and "viewer" in mail.html
    assert GERMAN_FRAME in mail.text, "the frame (footer, unsubscribe) is in their language"


def test_a_run_renders_each_language_once_and_reuses_it_for_every_reader(app, api):
    from newsletter.sending.run import Run

    created = create(api, translations={"de": GERMAN_VERSION})
    run = Run(created["id"])
    try:
        german = run.template_for("de")
        assert run.template_for("de") is german, "rendered once, not per reader"
        assert "Neues im November" in german.subject_header or "Neues" in german.html
        english = run.template_for("en")
        assert english is not german and "viewer" in english.html
        # A language no longer offered (or never translated) gets the main version.
        assert "viewer" in run.template_for("fr").html
        assert set(run.templates) == {"de", "en", "fr"}
    finally:
        run.dispose()


# --- the admin editor ---------------------------------------------------------------


def _post(admin, path: str, **data):
    token = csrf_token(admin, f"/admin/campaigns/{data.pop('page_id')}")
    return admin.post(path, data={"csrf_token": token, **data})


def _save_german(admin, campaign_id: int, subject: str, source: str):
    """Save the German tab as staff do: the form with its hidden ``version``."""
    return _post(
        admin,
        f"/admin/campaigns/{campaign_id}",
        page_id=campaign_id,
        version="de",
        subject=subject,
        source=source,
        source_format="markdown",
    )


def test_the_editor_has_a_tab_per_language_that_works_without_javascript(admin, smtp):
    campaign_id = create_from_markdown(admin, subject="December edition")
    page = admin.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert f'href="/admin/campaigns/{campaign_id}?version=de#versions"' in page
    assert "not written yet" in page

    tab = admin.get(f"/admin/campaigns/{campaign_id}?version=de").get_data(as_text=True)
    assert '<input type="hidden" name="version" value="de">' in tab
    assert "There is no version in Deutsch yet" in tab
    assert 'value="December edition"' not in tab, "an empty tab, not the main version"

    response = _save_german(
        admin, campaign_id, "Dezember-Ausgabe", "# Neu\n\nDer **Betrachter** ist da."
    )
    assert response.status_code == 302
    assert response.location.endswith(f"/admin/campaigns/{campaign_id}?version=de#preview")
    campaign = campaigns.get(campaign_id)
    [german] = campaign.translations
    assert german.subject == "Dezember-Ausgabe" and "<strong" in german.html
    assert german.source_format == "markdown" and german.source.startswith("# Neu")
    assert campaign.subject == "December edition", "the main version is untouched"

    tab = admin.get(f"/admin/campaigns/{campaign_id}?version=de").get_data(as_text=True)
    assert "Der **Betrachter** ist da." in tab, "the tab opens the Markdown again"
    assert f"/admin/campaigns/{campaign_id}/preview?version=de" in tab
    preview = admin.get(f"/admin/campaigns/{campaign_id}/preview?version=de")
    assert "Betrachter" in preview.text and GERMAN_FRAME in preview.text
    assert 'lang="de"' in preview.text
    main_preview = admin.get(f"/admin/campaigns/{campaign_id}/preview").text
    assert "Betrachter" not in main_preview and ENGLISH_FRAME in main_preview

    response = _post(
        admin, f"/admin/campaigns/{campaign_id}/test", page_id=campaign_id, version="de"
    )
    assert response.location.endswith(f"/admin/campaigns/{campaign_id}?version=de")
    [mail] = smtp.to(STAFF)
    assert mail.message["Subject"] == "[Test] Dezember-Ausgabe" and "Betrachter" in mail.html


def test_a_translation_tab_shows_its_errors_and_keeps_what_was_written(admin):
    campaign_id = create_from_markdown(admin)
    response = _save_german(admin, campaign_id, "", "Nur Text")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="subject-error"' in page and "Nur Text" in page
    assert '<input type="hidden" name="version" value="de">' in page
    assert campaigns.get(campaign_id).translations == []


def test_a_translation_can_be_removed_in_the_editor(admin):
    campaign_id = create_from_markdown(admin)
    campaigns.update(campaign_id, translations={"de": GERMAN_VERSION})
    tab = admin.get(f"/admin/campaigns/{campaign_id}?version=de").get_data(as_text=True)
    assert "Remove the version in Deutsch" in tab
    response = _post(
        admin, f"/admin/campaigns/{campaign_id}/remove-version", page_id=campaign_id, version="de"
    )
    assert response.status_code == 302
    db.session.expire_all()
    assert campaigns.get(campaign_id).translations == []


def test_the_german_admin_area_names_the_tabs_in_german(admin):
    campaign_id = create_from_markdown(admin)
    page = admin.get(f"/admin/campaigns/{campaign_id}?lang=de").get_data(as_text=True)
    assert "Hauptversion" in page and "noch nicht geschrieben" in page


def test_a_retried_reader_gets_the_version_of_their_language_too(app, client, api, work, smtp):
    from newsletter.tick import tick
    from tests.test_sending import make_due

    app.config["SEND_RETRY_DELAY"] = 60
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    smtp.handler.replies["leser@example.com"] = "451 4.3.0 mailbox busy, try later"
    created = create(api, translations={"de": GERMAN_VERSION})
    campaigns.schedule(created["id"], "now")
    work()
    assert [m for m in smtp.to("leser@example.com") if m.message["List-Id"]] == []

    del smtp.handler.replies["leser@example.com"]
    make_due(created["id"])
    tick()  # the periodic tick enqueues the due retry
    work()
    [mail] = [m for m in smtp.to("leser@example.com") if m.message["List-Id"]]
    assert mail.message["Subject"] == "Neues im November" and GERMAN_FRAME in mail.text
