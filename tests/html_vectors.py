"""Edition HTML for the sanitising tests: what must go, what must stay, and the checks."""

from __future__ import annotations

import re

# Each line is one way to run code, leave the mail, or phish from inside it.
UNSAFE = "\n".join(
    [
        '<script>alert("xss-script")</script>',
        '<img src="https://img.example/onerror.png" onerror="alert(\'xss-onerror\')">',
        "<p onclick=\"alert('xss-onclick')\" onmouseover=\"alert('xss-over')\">Click</p>",
        "<a href=\"javascript:alert('xss-link')\">Link</a>",
        "<a href=\" JaVaScRiPt:alert('xss-link-2')\">Link 2</a>",
        '<iframe src="https://evil.example/frame">framed</iframe>',
        '<form action="https://evil.example/form"><input name="pw"><button>Go</button></form>',
        '<meta http-equiv="refresh" content="0;url=https://evil.example/refresh">',
        "<svg onload=\"alert('xss-svg')\"></svg>",
        '<object data="https://evil.example/object"></object>',
        '<base href="https://evil.example/base">',
        '<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=" alt="inline">',
    ]
)

BENIGN = (
    "<h2>Release 5.0</h2>"
    '<p style="color: #333333">The new <strong>viewer</strong> and <em>more</em>.<br>'
    'Read <a href="https://example.com/notes">the notes</a> or '
    '<a href="mailto:news@example.com">write to us</a>.</p>'
    "<ul><li>Faster start</li></ul><blockquote>A quote</blockquote>"
    '<table><tbody><tr><td style="padding: 4px">Cell</td></tr></tbody></table><hr>'
    '<img src="https://img.example/chart.png" alt="Chart">'
)

GONE = [
    "<script",
    "xss-",
    "javascript:",
    "<iframe",
    "<form",
    "<input",
    "<button",
    "http-equiv",
    "evil.example",
    "<svg",
    "<object",
    "<base",
    "data:image",
]
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)


def assert_clean(html: str) -> None:
    """None of the UNSAFE vectors is left in ``html``."""
    lowered = html.lower()
    left = [marker for marker in GONE if marker in lowered]
    assert not left, f"{left} left in {html!r}"
    assert not EVENT_HANDLER.search(html), html


def assert_benign_kept(html: str) -> None:
    """BENIGN formatting survives (the editor may add inline styles in between)."""
    for pattern in [
        r"<h2[^>]*>Release 5\.0</h2>",
        r"<strong[^>]*>viewer</strong>",
        r"<em[^>]*>more</em>",
        r"<br>",
        r'<a href="https://example\.com/notes"[^>]*>the notes</a>',
        r'<a href="mailto:news@example\.com"[^>]*>write to us</a>',
        r"<li[^>]*>Faster start</li>",
        r"<blockquote[^>]*>A quote</blockquote>",
        r'<td style="[^"]*padding: 4px[^"]*">Cell</td>',
        r"<hr[^>]*>",
        r'<img src="https://img\.example/chart\.png" alt="Chart"',
        r'<p style="[^"]*color: #333333',
    ]:
        assert re.search(pattern, html), f"{pattern} missing from {html!r}"
