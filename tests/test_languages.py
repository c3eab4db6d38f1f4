"""Languages: how a page picks one, what is stored with the reader, mail in their language."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select

from newsletter import subscriptions, tokens
from newsletter.extensions import db
from newsletter.models import PendingSignup, Subscriber
from tests.conftest import STAFF, csrf_token, link_in, path_of

GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
HTML_LANG = re.compile(r'<html lang="([^"]+)">')


def html_lang(response) -> str:
    match = HTML_LANG.search(response.get_data(as_text=True))
    assert match, "no <html lang>"
    return match.group(1)


def sign_up(client, email: str, headers=None, query: str = ""):
    token = csrf_token(client)
    return client.post(
        f"/subscribe{query}",
        data={"email": email, "consent": "yes", "csrf_token": token},
        headers=headers or {},
    )


def confirm(client, work, smtp, email: str, headers=None, query: str = "") -> str:
    """Sign up and confirm; return the confirmation mail's text."""
    assert sign_up(client, email, headers, query).status_code == 200
    work()
    mail = smtp.to(email)[-1]
    path = path_of(link_in(mail.text, "confirm"))
    assert client.post(path, data={"csrf_token": csrf_token(client, path)}).status_code == 200
    return mail


def subscriber(email: str) -> Subscriber:
    db.session.expire_all()
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def test_the_page_language_comes_from_lang_then_accept_language_then_the_fallback(client):
    assert html_lang(client.get("/subscribe")) == "en"  # the fallback
    assert html_lang(client.get("/subscribe", headers=GERMAN)) == "de"
    assert html_lang(client.get("/subscribe", headers={"Accept-Language": "fr, de;q=0.5"})) == "de"
    assert html_lang(client.get("/subscribe", headers={"Accept-Language": "fr"})) == "en"
    assert html_lang(client.get("/subscribe?lang=de")) == "de"
    assert html_lang(client.get("/subscribe?lang=en", headers=GERMAN)) == "en"
    assert html_lang(client.get("/subscribe?lang=xx", headers=GERMAN)) == "de"  # not offered
    german = client.get("/subscribe", headers=GERMAN)
    assert "Melden Sie sich für unseren Newsletter an" in german.get_data(as_text=True)
    assert german.headers["Content-Language"] == "de"
    assert "Accept-Language" in german.headers["Vary"]


def test_the_fallback_is_the_first_of_languages(app, client):
    app.config["LANGUAGES"] = ["de", "en"]
    assert html_lang(client.get("/privacy")) == "de"
    assert html_lang(client.get("/privacy", headers={"Accept-Language": "en"})) == "en"


PAGES = [
    "/",
    "/subscribe",
    "/privacy",
    "/manage",
    "/confirm/not-a-token",
    "/unsubscribe/not-a-token",
    "/manage/not-a-token",
    "/no-such-page",
    "/admin/login",
]


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("language,other", [("en", "de"), ("de", "en")])
def test_every_page_has_html_lang_and_links_to_the_other_language(client, path, language, other):
    response = client.get(f"{path}?lang={language}")
    assert response.status_code in (200, 400, 404)
    assert html_lang(response) == language
    page = response.get_data(as_text=True)
    link = f'href="{path}?lang={other}" hreflang="{other}" lang="{other}"'
    assert link in page, page[:1500]
    assert f'<link rel="alternate" hreflang="{other}" href="{path}?lang={other}">' in page


def test_no_cookie_is_needed_or_set_for_the_language(app, client):
    privacy = client.get("/privacy?lang=de")
    assert "Set-Cookie" not in privacy.headers  # choosing a language stores nothing
    assert html_lang(client.get("/privacy")) == "en"  # and the next page does not remember
    form = client.get("/subscribe?lang=de")
    serializer = app.session_interface.get_signing_serializer(app)
    for cookie in form.headers.getlist("Set-Cookie"):  # only the session, for the CSRF token
        assert cookie.startswith("session=")
        assert set(serializer.loads(cookie.split(";")[0].split("=", 1)[1])) == {"csrf_token"}


def test_our_links_and_forms_keep_a_language_chosen_in_the_url(client):
    page = client.get("/subscribe?lang=de").get_data(as_text=True)
    assert 'action="/subscribe?lang=de"' in page
    assert 'href="/privacy?lang=de"' in page and 'href="/manage?lang=de"' in page
    # Chosen by the browser's Accept-Language, the URLs stay plain (the sign-up form
    # names its language always: it is stored with the reader).
    page = client.get("/subscribe", headers=GERMAN).get_data(as_text=True)
    assert 'href="/privacy"' in page and 'action="/subscribe?lang=de"' in page


def test_sign_up_stores_the_page_language_and_mails_in_it(app, client, work, smtp):
    sign_up(client, "leser@example.com", headers=GERMAN)
    pending = db.session.scalar(select(PendingSignup))
    assert pending.language == "de" and pending.consent_text_id is not None
    work()
    [mail] = smtp.to("leser@example.com")
    assert mail.message["Subject"] == "Bitte bestätigen Sie Ihre Newsletter-Anmeldung"
    assert "Guten Tag," in mail.text and "48 Stunden gültig" in mail.text
    assert 'lang="de"' in mail.html and "Anmeldung bestätigen" in mail.html

    sign_up(client, "reader@example.com", query="?lang=en", headers=GERMAN)
    work()
    [mail] = smtp.to("reader@example.com")
    assert mail.message["Subject"] == "Please confirm your newsletter subscription"


def test_pages_behind_a_token_follow_the_stored_language(app, client, work, smtp):
    sign_up(client, "leser@example.com", headers=GERMAN)
    work()
    mail = smtp.to("leser@example.com")[-1]
    path = path_of(link_in(mail.text, "confirm"))
    page = client.get(path)  # no Accept-Language: the stored language decides
    assert html_lang(page) == "de" and "Ja, ich möchte den Newsletter erhalten" in page.text
    assert html_lang(client.get(f"{path}?lang=en")) == "en"  # the URL still wins
    confirmed = client.post(path, data={"csrf_token": csrf_token(client, path)})
    assert html_lang(confirmed) == "de" and "Sie sind angemeldet" in confirmed.text

    reader = subscriber("leser@example.com")
    assert reader.language == "de" and reader.consent_text.language == "de"
    manage = path_of(tokens.manage_url(reader))
    page = client.get(manage)
    assert html_lang(page) == "de" and "Ihr Abonnement" in page.text
    assert '<dd id="reader-language">Deutsch</dd>' in page.text
    assert "Version 1 (Deutsch)" in page.text
    export = json.loads(client.get(f"{manage}/export").get_data(as_text=True))
    assert export["language"] == "de"
    assert export["consent"]["language"] == "de" and export["consent"]["version"] == 1
    assert export["about"].startswith("Alle Daten, die der Newsletter über Sie gespeichert hat")
    unsubscribe = path_of(tokens.unsubscribe_url(reader))
    assert "Vom Newsletter abmelden" in client.get(unsubscribe).text
    done = client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert "Sie sind abgemeldet" in done.text  # the reader is gone, the answer is German


def test_the_manage_link_mail_and_the_address_change_mail_are_in_the_readers_language(
    app, client, work, smtp
):
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    client.post(
        "/manage", data={"email": "leser@example.com", "csrf_token": csrf_token(client, "/manage")}
    )  # an English page: the mail still goes out in the reader's language
    work()
    mail = smtp.to("leser@example.com")[-1]
    assert mail.message["Subject"] == "Ihr Newsletter-Abonnement"
    manage = path_of(link_in(mail.text, "manage"))
    client.post(
        f"{manage}/email",
        data={"email": "neu@example.com", "csrf_token": csrf_token(client, manage)},
    )
    work()
    [change] = smtp.to("neu@example.com")
    assert change.message["Subject"] == "Bitte bestätigen Sie Ihre neue Adresse"


def test_every_mail_footer_names_the_site_the_controller_and_the_legal_notice(
    app, client, work, smtp, staff
):
    from newsletter import campaigns

    app.config.update(
        SITE_NAME="IMAGE Newsletter",
        IMPRINT_URL="https://www.example.com/impressum",
        CONTROLLER_NAME="IMAGE Information Systems Europe GmbH",
        CONTROLLER_ADDRESS="Hafenstraße 1, 18055 Rostock",
        CONTROLLER_EMAIL="datenschutz@example.com",
    )
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    campaign = campaigns.create("Edition", "<p>Hello</p>")
    campaigns.send_test(campaign.id, STAFF)
    work()
    mails = [smtp.to("leser@example.com")[-1], smtp.to(STAFF)[-1]]
    for mail, legal_notice in zip(mails, ("Impressum", "Legal notice"), strict=True):
        for part in (mail.text, mail.html):
            assert "IMAGE Newsletter" in part
            assert "IMAGE Information Systems Europe GmbH" in part
            assert "Hafenstraße 1, 18055 Rostock" in part and "datenschutz@example.com" in part
            assert "https://www.example.com/impressum" in part and legal_notice in part
    page = client.get("/privacy?lang=de").text
    assert "Verantwortlicher im Sinne der Datenschutz-Grundverordnung" in page
    assert 'href="https://www.example.com/impressum">Impressum</a>' in page
    assert "IMAGE Newsletter" in page and "Hafenstraße 1, 18055 Rostock" in page


def test_form_errors_are_in_the_page_language(client):
    response = sign_up(client, "not an address", headers=GERMAN)
    assert response.status_code == 422
    assert "Das ist keine gültige E-Mail-Adresse" in response.text
    token = csrf_token(client)
    response = client.post(
        "/subscribe?lang=de", data={"email": "a@example.com", "csrf_token": token}
    )
    assert "Bitte setzen Sie das Häkchen" in response.text
    # English keeps email-validator's exact explanation.
    response = sign_up(client, "not an address")
    assert "An email address must have an @-sign." in response.text


def test_error_pages_are_in_the_page_language(client):
    missing = client.get("/no-such-page", headers=GERMAN)
    assert missing.status_code == 404 and html_lang(missing) == "de"
    assert "Seite nicht gefunden" in missing.text and "Zurück zur Startseite" in missing.text
    wrong_method = client.post("/privacy?lang=de")
    assert wrong_method.status_code == 405 and "Methode nicht erlaubt" in wrong_method.text
    assert "Page not found" in client.get("/no-such-page").text


def test_dates_and_numbers_are_formatted_for_the_language(app, client, work, smtp):
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    reader = subscriber("leser@example.com")
    page = client.get(path_of(tokens.manage_url(reader))).text
    assert reader.confirmed_at.strftime("%d.%m.%Y, %H:%M UTC") in page
    english = client.get(path_of(tokens.manage_url(reader)) + "?lang=en").text
    assert reader.confirmed_at.strftime("%Y-%m-%d %H:%M UTC") in english


def test_a_reader_language_no_longer_offered_falls_back(app, client, work, smtp):
    confirm(client, work, smtp, "leser@example.com", headers=GERMAN)
    app.config["LANGUAGES"] = ["en"]
    reader = subscriber("leser@example.com")
    assert html_lang(client.get(path_of(tokens.manage_url(reader)))) == "en"
    assert subscriptions.reader_language(tokens.Purpose.MANAGE, "forged") is None
