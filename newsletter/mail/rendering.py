"""Turning an edition's HTML into the plain-text part every mail must carry."""

from __future__ import annotations

import html2text

TEXT_WIDTH = 72


def html_to_text(html: str) -> str:
    """Return a readable plain-text version of ``html`` (links kept, images dropped).

    Links stay whole on one line (``wrap_links=False``): a link broken across lines
    cannot be clicked in most mail clients.
    """
    converter = html2text.HTML2Text()
    converter.body_width = TEXT_WIDTH
    converter.wrap_links = False
    converter.ignore_images = True
    converter.unicode_snob = True  # keep "ä" and "–" instead of ASCII look-alikes
    converter.protect_links = False
    converter.ignore_mailto_links = False
    text = converter.handle(html)
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip() + "\n"
