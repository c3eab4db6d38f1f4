"""Which language a page speaks, as DESIGN.md orders it, without any cookie.

1. ``?lang=xx`` in the URL; 2. on pages behind a reader's token (confirm, unsubscribe,
manage) the language stored with the sign-up or subscriber; 3. ``Accept-Language``;
4. the fallback (the first of LANGUAGES). The choice is made before the view runs, so
a page that erases the reader (unsubscribe) still answers in their language.
"""

from __future__ import annotations

from urllib.parse import urlencode

import flask_babel
from flask import Flask, Response, g, has_request_context, request

from newsletter import i18n, subscriptions, tokens

# Pages behind a reader's token, and what kind of token it is.
TOKEN_PAGES = {
    "public.confirm_page": tokens.Purpose.CONFIRM,
    "public.confirm": tokens.Purpose.CONFIRM,
    "manage.unsubscribe_page": tokens.Purpose.UNSUBSCRIBE,
    "manage.unsubscribe": tokens.Purpose.UNSUBSCRIBE,
    "manage.manage": tokens.Purpose.MANAGE,
    "manage.export": tokens.Purpose.MANAGE,
    "manage.change_email": tokens.Purpose.MANAGE,
    "manage.delete": tokens.Purpose.MANAGE,
}
# Where the choice came from; our links and forms carry ``lang`` on when the URL chose.
FROM_URL, FROM_READER, FROM_BROWSER = "url", "reader", "browser"


def _choose() -> tuple[str, str]:
    asked = i18n.supported(request.args.get("lang"))
    if asked:
        return asked, FROM_URL
    purpose = TOKEN_PAGES.get(request.endpoint or "")
    token = (request.view_args or {}).get("token")
    if purpose is not None and token:
        stored = i18n.supported(subscriptions.reader_language(purpose, token))
        if stored:
            return stored, FROM_READER
    best = request.accept_languages.best_match(_accept_forms())
    return (i18n.supported(best) or i18n.fallback()), FROM_BROWSER


def _accept_forms() -> list[str]:
    """The offered languages as browsers write them (``pt_BR`` is ``pt-BR``)."""
    return [language.replace("_", "-") for language in i18n.languages()]


def choose_language() -> None:
    # Flask-Babel keeps its choice on ``g``, which outlives a request when a test holds
    # the app context: start every request afresh.
    flask_babel.refresh()
    g.page_language, g.language_source = _choose()


def forget_language(_exc: BaseException | None = None) -> None:
    flask_babel.refresh()
    g.pop("page_language", None)
    g.pop("language_source", None)


def select_locale() -> str | None:
    """Flask-Babel's locale selector; outside a request the fallback (``None``)."""
    if not has_request_context():
        return None
    return g.get("page_language")


def lang_args() -> dict[str, str]:
    """``lang`` for our own links and forms, when the visitor chose it in the URL.

    Not for a reader's stored language: a page behind a token must read the same
    whether or not the subscriber still exists (the token pages find it again anyway).
    """
    if g.get("language_source") == FROM_URL:
        return {"lang": g.page_language}
    return {}


def language_links() -> list[tuple[str, str, str]]:
    """(code, name, URL) of this page in each other offered language.

    The answer to a POST is no page one can open again: it links the start page of its
    area. (It must also not quote the token: an unsubscribe answers alike for any token.)
    """
    if request.method in ("GET", "HEAD"):
        path = request.path
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "lang"]
    else:
        path, args = ("/admin/" if request.blueprint == "admin" else "/"), []
    current = i18n.current()
    base = request.script_root + path
    return [
        (code, i18n.display_name(code), f"{base}?{urlencode([*args, ('lang', code)])}")
        for code in i18n.languages()
        if code != current
    ]


def content_language(response: Response) -> Response:
    """Say the page's language; keep a language chosen in the URL across our redirects."""
    language = g.get("page_language")
    location = response.headers.get("Location", "")
    if (
        response.status_code in (301, 302, 303, 307, 308)
        and location.startswith("/")
        and not location.startswith("//")
        and g.get("language_source") == FROM_URL
        and "lang=" not in location
    ):
        path, hash_mark, fragment = location.partition("#")
        joiner = "&" if "?" in path else "?"
        response.headers["Location"] = f"{path}{joiner}lang={language}{hash_mark}{fragment}"
    if language:
        response.headers.setdefault("Content-Language", language.replace("_", "-"))
        if g.get("language_source") == FROM_BROWSER:
            response.vary.add("Accept-Language")
    return response


def init_app(app: Flask) -> None:
    flask_babel.get_babel(app).locale_selector = select_locale
    app.before_request(choose_language)
    app.after_request(content_language)
    app.teardown_request(forget_language)
    app.add_template_global(lang_args)
    app.add_template_global(language_links)
