"""``/admin/form``: the sign-up page's words per language, consent versions, embed snippet, look."""

from __future__ import annotations

import json
import re
import struct
import zlib

from sqlalchemy import select

from newsletter import consent, look, tokens
from newsletter.extensions import db
from newsletter.models import ConsentText, FormText, PendingSignup, Subscriber
from tests.conftest import csrf_token, link_in, path_of

GERMAN = {"Accept-Language": "de"}
NEW_WORDING = (
    "Ja, ich möchte den Newsletter der Beispiel GmbH per E-Mail erhalten. Meine Einwilligung "
    "kann ich jederzeit über den Abmeldelink widerrufen."
)


def save_texts(admin, language: str, intro: str, wording: str, action: str = "save"):
    token = csrf_token(admin, "/admin/form")
    return admin.post(
        f"/admin/form/{language}",
        data={"csrf_token": token, "intro": intro, "consent": wording, "action": action},
    )


def join(client, work, smtp, email: str, headers=None) -> Subscriber:
    token = csrf_token(client, "/subscribe")
    form = client.get("/subscribe", headers=headers or {}).text
    shown = re.search(r'name="consent_sha256" value="([0-9a-f]{64})"', form).group(1)
    client.post(
        "/subscribe",
        data={"email": email, "consent": "yes", "csrf_token": token, "consent_sha256": shown},
        headers=headers or {},
    )
    work()
    path = path_of(link_in(smtp.to(email)[-1].text, "confirm"))
    client.post(path, data={"csrf_token": csrf_token(client, path)})
    return reader(email)


def reader(email: str) -> Subscriber:
    db.session.remove()  # jobs end the session: read afresh
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def export_of(client, reader: Subscriber) -> dict:
    path = path_of(tokens.manage_url(reader))
    return json.loads(client.get(f"{path}/export").get_data(as_text=True))


def test_a_changed_wording_becomes_the_next_version_and_earlier_proofs_keep_theirs(
    app, client, admin, work, smtp
):
    first = join(client, work, smtp, "erste@example.com", GERMAN)
    assert (first.consent_text.language, first.consent_text.version) == ("de", 1)
    old_text = first.consent_text.text

    response = save_texts(admin, "de", "", NEW_WORDING)
    assert response.status_code == 302
    page = admin.get(response.headers["Location"]).text
    assert "version 2" in page

    second = join(client, work, smtp, "zweite@example.com", GERMAN)
    assert (second.consent_text.version, second.consent_text.text) == (2, NEW_WORDING)
    first = reader("erste@example.com")
    assert (first.consent_text.version, first.consent_text.text) == (1, old_text)
    assert export_of(client, first)["consent"]["version"] == 1
    assert export_of(client, first)["consent"]["text"] == old_text
    assert export_of(client, second)["consent"] == {
        "language": "de",
        "version": 2,
        "text": NEW_WORDING,
        "sha256": consent.digest(NEW_WORDING),
    }
    # The stored version 1 was not rewritten: same words, same hash.
    v1 = db.session.scalar(
        select(ConsentText).where(ConsentText.language == "de", ConsentText.version == 1)
    )
    assert v1.text == old_text and v1.sha256 == consent.digest(old_text)


def test_versions_count_per_language_and_the_page_lists_them_with_subscriber_counts(
    app, client, admin, work, smtp
):
    join(client, work, smtp, "a@example.com", GERMAN)
    join(client, work, smtp, "b@example.com", GERMAN)
    join(client, work, smtp, "c@example.com")  # English
    save_texts(admin, "de", "", NEW_WORDING)
    join(client, work, smtp, "d@example.com", GERMAN)

    versions = {
        (row.language, row.version) for row in db.session.scalars(select(ConsentText)).all()
    }
    assert versions == {("de", 1), ("de", 2), ("en", 1)}
    page = admin.get("/admin/form").text
    start = page.index('id="versions-de"')
    german = page[start : page.index("</table>", start)]
    assert '<td class="num" data-version="2">1</td>' in german
    assert '<td class="num" data-version="1">2</td>' in german
    english = page[page.index('id="versions-en"') :]
    assert '<td class="num" data-version="1">1</td>' in english
    assert "a@example.com" not in page  # counts only


def test_the_same_words_again_are_the_same_version(app, admin):
    save_texts(admin, "de", "", NEW_WORDING)
    save_texts(admin, "de", "", "Eine andere Fassung.")
    response = save_texts(admin, "de", "", NEW_WORDING + "\r\n")  # back to the first words
    assert response.status_code == 302
    assert consent.current("de").version == 1
    assert [v.version for v, _ in consent.versions("de")] == [2, 1]


def test_a_form_opened_before_the_change_proves_the_words_it_showed(app, client, admin, work, smtp):
    token = csrf_token(client, "/subscribe")
    form = client.get("/subscribe?lang=de").text
    shown = re.search(r'name="consent_sha256" value="([0-9a-f]{64})"', form).group(1)
    save_texts(admin, "de", "", NEW_WORDING)  # staff change the wording meanwhile
    client.post(
        "/subscribe?lang=de",
        data={
            "email": "alt@example.com",
            "consent": "yes",
            "csrf_token": token,
            "consent_sha256": shown,
        },
    )
    pending = db.session.scalar(select(PendingSignup))
    shown_text = db.session.get(ConsentText, pending.consent_text_id).text
    assert shown_text == consent.normalize(consent.default_wording("de"))
    # A made-up hash proves nothing: the current wording is recorded.
    client.post(
        "/subscribe?lang=de",
        data={
            "email": "neu@example.com",
            "consent": "yes",
            "csrf_token": token,
            "consent_sha256": "0" * 64,
        },
    )
    db.session.expire_all()
    pending = db.session.scalar(
        select(PendingSignup).where(PendingSignup.email == "neu@example.com")
    )
    assert db.session.get(ConsentText, pending.consent_text_id).text == NEW_WORDING


def test_the_sign_up_page_shows_the_saved_introduction_and_wording_per_language(client, admin):
    save_texts(admin, "de", "Neuigkeiten aus Rostock, einmal im Monat.", NEW_WORDING)
    german = client.get("/subscribe?lang=de").text
    assert "Neuigkeiten aus Rostock, einmal im Monat." in german and NEW_WORDING in german
    english = client.get("/subscribe").text
    assert "Neuigkeiten" not in english and consent.default_wording("en") in english
    assert NEW_WORDING in client.get("/privacy?lang=de").text


def test_preview_shows_the_unsaved_texts_in_their_language_and_stores_nothing(admin):
    response = save_texts(admin, "de", "Vorschau-Einleitung", NEW_WORDING, action="preview")
    assert response.status_code == 200
    page = response.text
    preview = page[page.index('class="form-preview" lang="de"') :]
    assert "Vorschau-Einleitung" in preview and NEW_WORDING in preview
    assert "Melden Sie sich für unseren Newsletter an" in preview  # German, on an English page
    assert db.session.scalar(select(FormText)) is None
    assert db.session.scalar(select(ConsentText)) is None


def test_an_empty_wording_is_refused(admin):
    response = save_texts(admin, "de", "", "  \r\n ")
    assert response.status_code == 422 and "must not be empty" in response.text
    assert db.session.scalar(select(ConsentText)) is None
    token = csrf_token(admin, "/admin/form")
    assert admin.post("/admin/form/fr", data={"csrf_token": token}).status_code == 404


def test_the_embed_snippet_per_language_carries_the_current_wording(app, admin):
    save_texts(admin, "de", "", NEW_WORDING)
    page = admin.get("/admin/form").text
    german = page[page.index('id="snippet-de"') :]
    german = german[: german.index("</pre>")]
    assert f'action="{app.config["PUBLIC_URL"]}/subscribe?lang=de"' in german.replace("&#34;", '"')
    assert NEW_WORDING in german and consent.digest(NEW_WORDING) in german
    assert "E-Mail-Adresse" in german and "csrf_token" not in german
    english = page[page.index('id="snippet-en"') :]
    assert consent.default_wording("en") in english[: english.index("</pre>")]


def test_the_readme_points_to_the_admin_page_for_the_snippet():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    assert "/admin/form" in readme
    assert '<form method="post" action="https://news.example.com/subscribe">' not in readme


def png(width: int = 120, height: int = 40) -> bytes:
    """A small, real PNG."""

    def chunk(kind, data):
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    rows = b"".join(b"\x00" + b"\x1d\x4e\xd8" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def save_look(admin, **fields):
    import io

    data = {"csrf_token": csrf_token(admin, "/admin/form"), **fields}
    if "logo" in data:
        data["logo"] = (io.BytesIO(data["logo"]), "logo.png")
    return admin.post("/admin/form/look", data=data, content_type="multipart/form-data")


def test_pages_look_right_without_a_logo(client):
    page = client.get("/subscribe").text
    assert '<img class="logo"' not in page and "theme.css" not in page
    assert client.get("/look/logo").status_code == 404


def test_a_logo_and_an_accent_colour_are_served_by_us(app, client, admin, work, smtp):
    logo = png()
    response = save_look(admin, logo=logo, accent="#0b6e4f")
    assert response.status_code == 302, response.text
    page = client.get("/subscribe?lang=de").text
    src = re.search(r'<img class="logo" src="(/look/logo\?v=[0-9a-f]+)" alt="">', page).group(1)
    served = client.get(src)
    assert served.status_code == 200 and served.data == logo
    assert served.mimetype == "image/png" and "immutable" in served.headers["Cache-Control"]
    css_url = re.search(r'href="(/look/theme\.css\?v=[0-9a-f]+)"', page).group(1)
    css = client.get(css_url)
    assert css.mimetype == "text/css" and "--accent:#0b6e4f" in css.text
    assert "--accent-dark:#084d37" in css.text
    # Mails: the colour, and no image (a remote image would tell us who opened it).
    token = csrf_token(client)
    client.post(
        "/subscribe", data={"email": "a@example.com", "consent": "yes", "csrf_token": token}
    )
    work()
    mail = smtp.to("a@example.com")[-1].html
    assert "#0b6e4f" in mail and "<img" not in mail

    save_look(admin, remove_logo="yes")
    assert '<img class="logo"' not in client.get("/subscribe").text
    assert client.get(src).status_code == 404


def test_unsafe_logos_and_unreadable_colours_are_refused(admin):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    response = save_look(admin, logo=svg)
    assert response.status_code == 422 and "PNG, JPEG, GIF or WebP" in response.text
    response = save_look(admin, accent="#ffff00")
    assert response.status_code == 422 and "too light" in response.text
    response = save_look(admin, accent="red")
    assert response.status_code == 422 and "#rrggbb" in response.text
    assert look.brand() == look.default_brand()
