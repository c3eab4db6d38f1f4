"""Staff login and logout (accounts, lock-out and sessions live in ``auth``)."""

from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext

from newsletter import auth
from newsletter.extensions import limiter


def login_form():
    if g.admin is not None:
        return redirect(url_for("admin.dashboard"))
    return render_template("admin/login.html", next=auth.safe_next(request.args.get("next")))


@limiter.limit(lambda: current_app.config["ADMIN_LOGIN_LIMIT_PER_IP"])
def login():
    email = request.form.get("email", "")[:254]
    user = auth.authenticate(email, request.form.get("password", ""))
    target = auth.safe_next(request.form.get("next"))
    if user is None:
        attempts = current_app.config["ADMIN_MAX_FAILED_LOGINS"]
        minutes = current_app.config["ADMIN_LOCKOUT"] // 60
        error = gettext(
            "Wrong email address or password. After %(attempts)s failed attempts in a row "
            "the account is locked for %(minutes)s minutes.",
            attempts=attempts,
            minutes=minutes,
        )
        return render_template("admin/login.html", error=error, email=email, next=target), 401
    auth.login(user)
    return redirect(target or url_for("admin.dashboard"))


def logout():
    auth.logout()
    flash(gettext("You are logged out."), "notice")
    return redirect(url_for("admin.login_form"))
