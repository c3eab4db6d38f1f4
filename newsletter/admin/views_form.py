"""The sign-up form's words per language (with a preview), its consent versions, the
embed snippet, and the logo and accent colour."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext
from markupsafe import Markup

from newsletter import consent, form_texts, i18n, look


def _language_or_404(language: str) -> str:
    if language not in i18n.languages():
        abort(404)
    return language


def _rendered_in(language: str, template: str, **context) -> Markup:
    """A piece of the public form as it reads in ``language`` (not the admin page's)."""
    with i18n.force_locale(language):
        return Markup(render_template(template, **context))


def _section(language: str, texts=None, errors=None, preview=None) -> dict:
    texts = texts or form_texts.for_language(language)
    current = form_texts.for_language(language)
    return {
        "language": language,
        "texts": texts,
        "errors": errors or {},
        "preview": (
            _rendered_in(language, "admin/_form_preview.html", texts=preview, errors={}, email="")
            if preview is not None
            else None
        ),
        "versions": consent.versions(language),
        "current_sha256": current.consent_sha256,
        # Shown as code to copy, so as text (escaped), not as markup.
        "snippet": str(
            _rendered_in(
                language,
                "public/embed_snippet.html",
                texts=current,
                action=f"{current_app.config['PUBLIC_URL']}/subscribe?lang={language}",
            )
        ).strip(),
    }


def _page(sections: dict[str, dict] | None = None, look_error: str | None = None, status=200):
    sections = sections or {}
    return render_template(
        "admin/form.html",
        sections=[sections.get(lang) or _section(lang) for lang in i18n.languages()],
        brand=look.brand(),
        look_error=look_error,
        max_logo_kib=look.MAX_LOGO_BYTES // 1024,
        default_accent=look.DEFAULT_ACCENT,
    ), status


def signup_form():
    return _page()


def save_texts(language: str):
    language = _language_or_404(language)
    intro = request.form.get("intro", "")
    wording = request.form.get("consent", "")
    submitted = form_texts.SignupTexts(language, intro, wording, "")
    if request.form.get("action") == "preview":
        shown = form_texts.preview(language, intro, wording)
        return _page({language: _section(language, submitted, preview=shown)})
    try:
        new_version, version = form_texts.save(language, intro, wording)
    except form_texts.Invalid as exc:
        return _page({language: _section(language, submitted, errors=exc.errors)}, status=422)
    name = i18n.display_name(language)
    if new_version:
        message = gettext(
            "Saved. The consent wording in %(language)s is now version %(version)s; "
            "earlier sign-ups keep the version they agreed to.",
            language=name,
            version=version,
        )
    else:
        message = gettext("Saved the texts in %(language)s.", language=name)
    flash(message, "notice")
    return redirect(url_for("admin.signup_form") + f"#lang-{language}")


def save_look():
    upload = request.files.get("logo")
    data = upload.read() if upload is not None and upload.filename else None
    try:
        look.save(
            accent=request.form.get("accent") or None,
            logo_data=data,
            remove_logo=bool(request.form.get("remove_logo")),
        )
    except look.InvalidLook as exc:
        return _page(look_error=str(exc), status=422)
    flash(gettext("The logo and colour are saved."), "notice")
    return redirect(url_for("admin.signup_form") + "#look")
