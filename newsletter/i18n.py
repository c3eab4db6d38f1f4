"""Languages: the Babel extension, the offered languages, rendering under a locale, formats.

Messages are written in English (``SOURCE_LANGUAGE``) and translated by the gettext
catalogues in ``newsletter/translations/<lang>/LC_MESSAGES/messages.po``. The compiled
``.mo`` files are build output: ``make`` compiles them on install, and ``init_app``
compiles any that are missing or older than their catalogue, so a fresh clone works.
Which language a web page uses is the front end's business (``web/i18n.py``); mail and
jobs say it explicitly with ``force_locale``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import flask_babel
from babel import Locale, dates, numbers
from babel.messages import mofile, pofile
from flask import Flask, current_app

TRANSLATIONS = Path(__file__).resolve().parent / "translations"
DOMAIN = "messages"
# The language the messages are written in: it needs no catalogue.
SOURCE_LANGUAGE = "en"

babel = flask_babel.Babel()


class CatalogueError(Exception):
    """A compiled catalogue is missing or stale and cannot be built here."""


def available() -> list[str]:
    """The languages there is a catalogue for, and the source language."""
    found = {SOURCE_LANGUAGE}
    if TRANSLATIONS.is_dir():
        found.update(p.parent.parent.name for p in TRANSLATIONS.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
    return sorted(found)


def languages() -> list[str]:
    """The languages offered (LANGUAGES), the fallback first."""
    return current_app.config["LANGUAGES"]


def fallback() -> str:
    return languages()[0]


def supported(language: str | None) -> str | None:
    """Return ``language`` if it is offered (``de-DE`` counts as ``de``), else None."""
    if not language:
        return None
    offered = languages()
    code = language.strip().replace("-", "_")
    for candidate in (code, code.split("_")[0].lower()):
        if candidate in offered:
            return candidate
    return None


def current() -> str:
    """The language being rendered now (a request's choice, or a forced one)."""
    locale = flask_babel.get_locale()
    return str(locale) if locale is not None else fallback()


@contextlib.contextmanager
def force_locale(language: str | None) -> Iterator[str]:
    """Render under ``language`` (the fallback if it is not offered); yield the one used."""
    chosen = supported(language) or fallback()
    with flask_babel.force_locale(chosen):
        yield chosen


def display_name(language: str) -> str:
    """The language's name in itself: ``Deutsch``, ``English``."""
    name = Locale.parse(language).get_display_name(language) or language
    return name[:1].upper() + name[1:]


# --- formats -------------------------------------------------------------------------

# Patterns per language; English keeps what readers and staff have seen so far, other
# languages without an entry get Babel's pattern for their locale.
DATETIME_PATTERNS = {
    "numeric": {"en": "yyyy-MM-dd HH:mm", "de": "dd.MM.yyyy, HH:mm"},
    "weekday": {"en": "EEE dd MMM yyyy, HH:mm", "de": "EEE, dd.MM.yyyy, HH:mm"},
}


def format_datetime(moment: datetime, zone: str | ZoneInfo = "UTC", style="numeric") -> str:
    """A date and time in ``zone`` for the current language, with the zone named.

    ``numeric`` for readers' data (``2026-12-01 10:00 UTC``), ``weekday`` for planning
    (``Tue 01 Dec 2026, 10:00 Europe/Berlin``).
    """
    tz = ZoneInfo(zone) if isinstance(zone, str) else zone
    language = current()
    pattern = DATETIME_PATTERNS[style].get(language, "medium")
    text = dates.format_datetime(moment.astimezone(tz), pattern, tzinfo=tz, locale=language)
    return f"{text} {tz.key}"


def format_date(moment: datetime) -> str:
    return dates.format_date(moment, "medium", locale=current())


def format_number(number: int | float) -> str:
    return numbers.format_decimal(number, locale=current())


def duration(seconds: int | float) -> str:
    """A configured duration in words: ``3600`` -> ``1 hour``, ``172800`` -> ``48 hours``."""
    seconds = int(seconds)
    if seconds >= 3600 and seconds % 3600 == 0:
        count = seconds // 3600
        return flask_babel.ngettext("%(num)s hour", "%(num)s hours", count)
    if seconds >= 60 and seconds % 60 == 0:
        count = seconds // 60
        return flask_babel.ngettext("%(num)s minute", "%(num)s minutes", count)
    return flask_babel.ngettext("%(num)s second", "%(num)s seconds", seconds)


# --- catalogues ----------------------------------------------------------------------


def compile_catalogues(folder: Path = TRANSLATIONS) -> list[Path]:
    """Compile every ``.po`` whose ``.mo`` is missing or older; return the ones written.

    Each file is written under a temporary name and renamed, so processes starting at
    the same moment never read half a catalogue.
    """
    written = []
    for po_path in sorted(folder.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with open(po_path, "rb") as source:
            catalogue = pofile.read_po(source, locale=po_path.parent.parent.name)
        try:
            handle, temporary = tempfile.mkstemp(dir=po_path.parent, suffix=".mo.tmp")
        except OSError as exc:
            raise CatalogueError(
                f"{mo_path} is missing or stale and cannot be written here ({exc.strerror}); "
                "compile the catalogues when installing: pybabel compile -d newsletter/translations"
            ) from None
        with os.fdopen(handle, "wb") as target:
            mofile.write_mo(target, catalogue, use_fuzzy=False)
        os.replace(temporary, mo_path)
        written.append(mo_path)
    return written


def init_app(app: Flask) -> None:
    """Set Babel up; the factory has compiled the catalogues (``compile_catalogues``)."""
    app.config["BABEL_DEFAULT_LOCALE"] = app.config["LANGUAGES"][0]
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    app.config["BABEL_DOMAIN"] = DOMAIN
    # No locale selector here: outside a request (jobs, CLI) the fallback applies unless
    # the code forces one; the web front end installs its selector on top.
    babel.init_app(app)
    # One line per message in the catalogue, however the template wraps it.
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.add_template_global(current, "current_language")
    app.add_template_global(display_name, "language_name")
    app.add_template_filter(format_datetime, "datetime")
    app.add_template_filter(format_number, "number")
    app.add_template_filter(duration)
