"""The gettext catalogues: complete, current with the code, compiled when missing or stale."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from babel.support import Translations

from newsletter import config, i18n

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None}


def messages_in_the_code() -> set[str]:
    """Every message the code and templates ask to translate (as ``make translations``)."""
    with open(ROOT / "babel.cfg") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=KEYWORDS
    ):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def catalogues() -> list[Path]:
    return sorted(i18n.TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"))


def test_there_is_a_german_catalogue():
    assert [p.parent.parent.name for p in catalogues()] == ["de"]
    assert i18n.available() == ["de", "en"]


@pytest.mark.parametrize("po_path", catalogues(), ids=lambda p: p.parent.parent.name)
def test_every_message_is_translated_and_none_is_fuzzy(po_path):
    with open(po_path, "rb") as source:
        catalogue = read_po(source)
    wanted = messages_in_the_code()
    assert len(wanted) > 250  # the extraction really found the templates and the code
    entries = {m.id[0] if isinstance(m.id, tuple) else m.id: m for m in catalogue if m.id}
    missing = sorted(wanted - entries.keys())
    assert not missing, f"not in {po_path.name} (run make translations): {missing[:10]}"
    untranslated = [
        key
        for key, entry in entries.items()
        if not (all(entry.string) if isinstance(entry.string, tuple) else entry.string)
    ]
    assert not untranslated, f"untranslated: {untranslated[:10]}"
    fuzzy = [key for key, entry in entries.items() if entry.fuzzy]
    assert not fuzzy, f"fuzzy: {fuzzy[:10]}"
    obsolete = sorted(entries.keys() - wanted)
    assert not obsolete, f"no longer in the code (run make translations): {obsolete[:10]}"
    broken = [(m.id, errors) for m, errors in catalogue.check()]
    assert not broken, f"placeholders differ: {broken[:5]}"


def test_missing_and_stale_compiled_catalogues_are_built_at_start(tmp_path):
    folder = tmp_path / "translations"
    shutil.copytree(i18n.TRANSLATIONS, folder, ignore=shutil.ignore_patterns("*.mo", "*.pot"))
    po_path = folder / "de" / "LC_MESSAGES" / "messages.po"
    mo_path = po_path.with_suffix(".mo")

    assert i18n.compile_catalogues(folder) == [mo_path]
    german = Translations.load(str(folder), ["de"])
    heading = german.gettext("Subscribe to our newsletter")
    assert heading == "Melden Sie sich für unseren Newsletter an"
    assert i18n.compile_catalogues(folder) == []  # current: nothing to do

    later = mo_path.stat().st_mtime + 10
    os.utime(po_path, (later, later))  # the catalogue was edited after it was compiled
    assert i18n.compile_catalogues(folder) == [mo_path]
    assert not list(folder.glob("**/*.tmp"))


def test_languages_must_have_a_catalogue_and_the_first_is_the_fallback():
    environ = {"NEWSLETTER_ENV": "testing"}
    assert config.load(environ)["LANGUAGES"] == ["en", "de"]
    assert config.load({**environ, "LANGUAGES": "de, en"})["LANGUAGES"] == ["de", "en"]
    with pytest.raises(config.ConfigError, match="no catalogue for 'fr'"):
        config.load({**environ, "LANGUAGES": "en,fr"})
    with pytest.raises(config.ConfigError, match="LANGUAGES"):
        config.load({**environ, "LANGUAGES": " , "})


def test_imprint_url_must_be_a_web_address():
    environ = {"NEWSLETTER_ENV": "testing"}
    assert config.load(environ)["IMPRINT_URL"] is None
    url = "https://www.example.com/impressum"
    assert config.load({**environ, "IMPRINT_URL": url})["IMPRINT_URL"] == url
    with pytest.raises(config.ConfigError, match="IMPRINT_URL"):
        config.load({**environ, "IMPRINT_URL": "javascript:alert(1)"})
