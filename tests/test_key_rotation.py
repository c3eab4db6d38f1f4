"""Rotating SECRET_KEY keeps sessions, forms and mailed links working."""

from __future__ import annotations

from importlib.metadata import version

from flask import g

from tests.conftest import csrf_token


def test_flask_supports_secret_key_fallbacks():
    major, minor, patch = (int(p) for p in version("flask").split(".")[:3])
    assert (major, minor, patch) >= (3, 1, 1)


def test_a_session_signed_with_the_old_key_still_posts_the_form(app, client):
    token = csrf_token(client)
    old = app.config["SECRET_KEY"]
    app.config.update(SECRET_KEY="rotated-secret-key-abcdefghijklmnop", SECRET_KEY_FALLBACKS=[old])
    response = client.post(
        "/subscribe", data={"email": "rot@example.com", "consent": "yes", "csrf_token": token}
    )
    # Flask-WTF signs its CSRF token with SECRET_KEY only, so the old form's token fails
    # with a clear page rather than an error; the session itself (the cookie) survives.
    assert response.status_code == 400
    assert "Please send the form again" in response.get_data(as_text=True)
    # The session cookie, signed with the old key, is still read through the fallback, so
    # the reloaded form works at once.
    with client.session_transaction() as session:
        assert "csrf_token" in session
    # Requests in tests share the fixture's app context, where Flask-WTF caches the
    # signed token in ``g``; a real request starts with an empty ``g``.
    g.pop("csrf_token", None)
    response = client.post(
        "/subscribe",
        data={"email": "rot@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 200


def test_a_compressed_token_from_itsdangerous_still_reads(app):
    """Our tokens skip zlib; one made by itsdangerous's own dumps (compressed) still reads."""
    from itsdangerous import URLSafeSerializer

    from newsletter import tokens

    key = "a" * 30  # repetitive enough for zlib to shorten it
    with app.app_context():
        theirs = URLSafeSerializer(app.config["SECRET_KEY"], salt="newsletter-unsubscribe")
        compressed = theirs.dumps(key)
        ours = tokens.make(tokens.Purpose.UNSUBSCRIBE, key)
        assert compressed.startswith(".") and not ours.startswith(".")
        assert tokens.read(tokens.Purpose.UNSUBSCRIBE, compressed) == key
        assert tokens.read(tokens.Purpose.UNSUBSCRIBE, ours) == key
        assert theirs.loads(ours) == key
