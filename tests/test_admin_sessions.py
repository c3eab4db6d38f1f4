"""Admin sessions end server-side, and the ``admin`` commands that end them or manage accounts.

Flask keeps the session in a signed cookie; a copy of it (``saved_session``) is what a
thief, a shared computer or a backup of the browser profile would hold.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter import auth
from newsletter.extensions import db
from newsletter.models import AdminUser, utcnow
from tests.conftest import PASSWORD, STAFF, csrf_token, log_in

LOGIN_PAGE = "/admin/login?next=/admin/"
NEW_PASSWORD = "a brand new passphrase"
OTHER = "other@example.com"


class OwnContextClient(FlaskClient):
    """A test client whose every request has an app context (``g``, db session) of its own.

    As in production. Without it, requests of several clients in one test share the test's
    ``g``, where Flask-WTF caches the CSRF token made from one client's session.
    """

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def client(app):
    app.test_client_class = OwnContextClient
    return app.test_client()


def saved_session(app, client):
    """A new client that holds a copy of ``client``'s session cookie."""
    name = app.config["SESSION_COOKIE_NAME"]
    copy = app.test_client()
    copy.set_cookie(name, client.get_cookie(name).value)
    assert copy.get("/admin/").status_code == 200, "the copy should work while the session does"
    return copy


def assert_sent_to_login(client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response.location == LOGIN_PAGE


def log_out(client):
    return client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})


def admin_cli(runner, *args, input=None):
    return runner.invoke(args=["admin", *args], input=input)


def account(email: str = STAFF) -> AdminUser | None:
    db.session.expire_all()
    return db.session.scalar(select(AdminUser).where(AdminUser.email == email))


# --- sessions end server-side ----------------------------------------------------------


def test_a_session_cookie_saved_before_logout_is_refused_after_it(app, admin):
    saved = saved_session(app, admin)
    response = log_out(admin)
    assert response.status_code == 302 and response.location == "/admin/login"
    assert_sent_to_login(admin)
    assert_sent_to_login(saved)
    # A new login works, and the saved cookie stays refused.
    assert log_in(admin).status_code == 302
    assert admin.get("/admin/").status_code == 200
    assert_sent_to_login(saved)


def test_logout_ends_the_other_sessions_of_the_same_account(app, client, staff):
    other = app.test_client()
    assert log_in(client).status_code == 302
    assert log_in(other).status_code == 302
    assert other.get("/admin/").status_code == 200
    log_out(client)
    assert_sent_to_login(other)


def test_admin_password_ends_the_sessions_saved_before(app, admin, runner):
    saved = saved_session(app, admin)
    result = admin_cli(runner, "password", STAFF, "--password-stdin", input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "Every session of this account has ended" in result.output
    assert_sent_to_login(saved)
    assert_sent_to_login(admin)
    assert log_in(admin).status_code == 401
    assert log_in(admin, password=NEW_PASSWORD).status_code == 302


def test_the_lock_out_ends_the_sessions_saved_before(app, admin):
    saved = saved_session(app, admin)
    attacker = app.test_client()
    for _ in range(app.config["ADMIN_MAX_FAILED_LOGINS"]):
        assert log_in(attacker, password="a guess").status_code == 401
    assert auth.is_locked(account())
    assert_sent_to_login(saved)
    assert_sent_to_login(admin)


def test_admin_delete_ends_the_sessions_saved_before(app, admin, runner):
    saved = saved_session(app, admin)
    result = admin_cli(runner, "delete", STAFF, input="n\n")
    assert result.exit_code != 0 and "Aborted" in result.output
    assert saved.get("/admin/").status_code == 200

    result = admin_cli(runner, "delete", STAFF, "--yes")
    assert result.exit_code == 0, result.output
    assert account() is None
    assert_sent_to_login(saved)
    # A new account for the same address (on SQLite it may even get the same id) does not
    # bring the old session back.
    result = admin_cli(runner, "create", STAFF, "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert_sent_to_login(saved)
    assert_sent_to_login(admin)


# --- admin commands --------------------------------------------------------------------


def test_admin_list_shows_each_account_with_last_login_and_lock(app, runner, client, staff):
    auth.create_admin(OTHER, PASSWORD)
    assert log_in(client).status_code == 302
    for _ in range(app.config["ADMIN_MAX_FAILED_LOGINS"]):
        log_in(app.test_client(), email=OTHER, password="a guess")

    result = admin_cli(runner, "list")
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == ["email", "created", "last", "login", "locked"]
    assert [line.split()[0] for line in lines] == [OTHER, STAFF]
    other_line, staff_line = lines
    assert "never" in other_line and "until" in other_line
    assert "never" not in staff_line and staff_line.endswith(" no")
    today = utcnow().strftime("%Y-%m-%d")
    assert staff_line.count(today) == 2  # created and last login


def test_admin_list_without_accounts_says_how_to_make_one(runner):
    result = admin_cli(runner, "list")
    assert result.exit_code == 0
    assert "admin create EMAIL" in result.output


def test_admin_password_asks_twice_and_refuses_short_passwords(runner, staff):
    before = account().password_hash
    result = admin_cli(runner, "password", STAFF, input="short\nshort\n")
    assert result.exit_code == 1 and "at least 12 characters" in result.output
    result = admin_cli(runner, "password", STAFF, input=f"{NEW_PASSWORD}\nsomething else\n" * 3)
    assert result.exit_code != 0
    assert account().password_hash == before
    result = admin_cli(runner, "password", STAFF, input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert auth.authenticate(STAFF, PASSWORD) is None
    assert auth.authenticate(STAFF, NEW_PASSWORD) is not None


def test_admin_unlock_clears_the_lock_and_the_failure_count(app, client, runner, staff):
    limit = app.config["ADMIN_MAX_FAILED_LOGINS"]
    for _ in range(limit):
        log_in(client, password="a guess")
    assert log_in(client).status_code == 401  # locked

    result = admin_cli(runner, "unlock", STAFF)
    assert result.exit_code == 0, result.output
    user = account()
    assert user.locked_until is None and user.failed_logins == 0
    assert log_in(client).status_code == 302
    log_out(client)

    # Failures counted before an unlock are forgotten: one more does not lock.
    for _ in range(limit - 1):
        log_in(client, password="a guess")
    assert account().failed_logins == limit - 1
    assert admin_cli(runner, "unlock", "Staff@Example.com").exit_code == 0
    assert account().failed_logins == 0
    log_in(client, password="a guess")
    assert not auth.is_locked(account())
    assert log_in(client).status_code == 302


@pytest.mark.parametrize(
    "args",
    [
        ["password", OTHER],
        ["password", OTHER, "--password-stdin"],
        ["unlock", OTHER],
        ["delete", OTHER],
        ["delete", "not an address", "--yes"],
    ],
)
def test_admin_commands_refuse_unknown_accounts_clearly(runner, staff, args):
    result = admin_cli(runner, *args, input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert result.exit_code == 1
    assert "Error: There is no admin account with that address." in result.output
    assert "Password" not in result.output and "Delete" not in result.output  # asked nothing
    assert account() is not None and auth.authenticate(STAFF, PASSWORD) is not None


def test_admin_commands_keep_addresses_out_of_logs(app, runner, staff, caplog):
    caplog.set_level(logging.DEBUG)
    user = account()
    user_id = user.id
    user.locked_until = utcnow() + timedelta(minutes=5)
    db.session.commit()
    for args, stdin in (
        (["list"], None),
        (["password", STAFF, "--password-stdin"], NEW_PASSWORD + "\n"),
        (["unlock", STAFF], None),
        (["delete", STAFF, "--yes"], None),
    ):
        result = admin_cli(runner, *args, input=stdin)
        assert result.exit_code == 0, (args, result.output)
    assert account() is None
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"admin {user_id}" in message for message in messages), messages
    assert not [message for message in messages if "@" in message]
