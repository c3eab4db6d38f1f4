"""Staff accounts for the admin pages: Argon2 passwords, lock-out, session login.

Flask's sessions live in a signed cookie, so a copy of the cookie would outlive a logout.
Each session therefore carries a fingerprint of the account's ``session_key`` (and its
password hash); logout, a password change and a lock-out rotate the key in one UPDATE,
which ends every earlier session of the account, wherever its cookie is kept.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from datetime import timedelta
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app, g, session
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from newsletter import addresses
from newsletter.extensions import db
from newsletter.models import AdminUser, new_token_key, utcnow

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()


# Verified against when the address is unknown, so that a wrong address costs as much
# time as a wrong password and the answer time does not tell which accounts exist.
# Made on first use, not at import: hashing costs 64 MiB of memory (Argon2id's default),
# which every worker process would otherwise pay without ever checking a password.
@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("not-a-password-of-anyone")


class AccountError(ValueError):
    """The account cannot be made or changed; the message says why."""


def _hash_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must be at least {MIN_PASSWORD_LENGTH} characters long.")
    return _hasher.hash(password)


def create_admin(email: str, password: str) -> AdminUser:
    """Store a new staff account with an Argon2id hash of ``password``."""
    try:
        email = addresses.normalize(email, check_deliverability=False)
    except addresses.InvalidAddress as exc:
        raise AccountError(str(exc)) from None
    user = AdminUser(email=email, password_hash=_hash_new_password(password))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AccountError("An account with this address exists already.") from None
    return user


def _find(email: str) -> AdminUser | None:
    try:
        email = addresses.normalize(email, check_deliverability=False)
    except addresses.InvalidAddress:
        return None
    return db.session.scalar(select(AdminUser).where(AdminUser.email == email))


def get_admin(email: str) -> AdminUser:
    """Return the account for ``email``, or raise AccountError when there is none."""
    user = _find(email)
    if user is None:
        raise AccountError("There is no admin account with that address.")
    return user


def list_admins() -> list[AdminUser]:
    return list(db.session.scalars(select(AdminUser).order_by(AdminUser.email)))


def is_locked(user: AdminUser) -> bool:
    return user.locked_until is not None and user.locked_until > utcnow()


def set_password(email: str, password: str) -> AdminUser:
    """Give the account a new password; every session it had ends."""
    password_hash = _hash_new_password(password)
    user = _change(email, password_hash=password_hash, session_key=new_token_key())
    log.info("admin %s: password changed, sessions ended", user.id)
    return user


def unlock(email: str) -> AdminUser:
    """Lift a lock-out and forget the failed logins counted so far."""
    user = _change(email, failed_logins=0, locked_until=None)
    log.info("admin %s: unlocked", user.id)
    return user


def delete_admin(email: str) -> None:
    """Delete the account; its sessions end because it no longer exists."""
    user_id = get_admin(email).id
    db.session.execute(delete(AdminUser).where(AdminUser.id == user_id))
    db.session.commit()
    log.info("admin %s: deleted", user_id)


def _change(email: str, **values) -> AdminUser:
    user = get_admin(email)
    _update(user.id, **values)
    return user


def end_sessions(user_id: int) -> None:
    """End every session of the account, in this browser and all others."""
    _update(user_id, session_key=new_token_key())


def _update(user_id: int, **values) -> None:
    """Apply ``values`` to the account in one UPDATE, so parallel requests cannot undo it."""
    db.session.execute(update(AdminUser).where(AdminUser.id == user_id).values(**values))
    db.session.commit()


def authenticate(email: str, password: str) -> AdminUser | None:
    """Return the account if the password is right and the account is not locked.

    Every failure counts; after ADMIN_MAX_FAILED_LOGINS in a row the account is locked
    for ADMIN_LOCKOUT seconds, during which even the right password is refused.
    """
    user = _find(email)
    if user is None:
        _verify(_dummy_hash(), password)
        return None
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        _verify(_dummy_hash(), password)
        return None
    if not _verify(user.password_hash, password):
        _record_failure(user.id)
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    db.session.commit()
    return user


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _record_failure(user_id: int) -> None:
    """Count a failed login in one UPDATE (parallel attempts all count) and lock if due.

    The lock also ends the account's sessions: someone is guessing its password, and a
    session the owner left open may be what they are after.
    """
    config = current_app.config
    db.session.execute(
        update(AdminUser)
        .where(AdminUser.id == user_id)
        .values(failed_logins=AdminUser.failed_logins + 1)
    )
    db.session.execute(
        update(AdminUser)
        .where(
            AdminUser.id == user_id, AdminUser.failed_logins >= config["ADMIN_MAX_FAILED_LOGINS"]
        )
        .values(
            failed_logins=0,
            locked_until=utcnow() + timedelta(seconds=config["ADMIN_LOCKOUT"]),
            session_key=new_token_key(),
        )
    )
    db.session.commit()


def _session_key(user: AdminUser) -> str:
    """A fingerprint of the session key and password hash: a change of either ends sessions."""
    secret = current_app.config["SECRET_KEY"].encode()
    message = f"{user.session_key}:{user.password_hash}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def login(user: AdminUser) -> None:
    """Start a fresh session for ``user``; whatever the session held before is dropped."""
    _clear_session()  # against session fixation: nothing from before the login survives
    session["admin_id"] = user.id
    session["admin_key"] = _session_key(user)
    session["admin_since"] = int(utcnow().timestamp())


def logout() -> None:
    """End this session and every other session of the same account."""
    user = current_admin()
    if user is not None:
        end_sessions(user.id)
    _clear_session()


def _clear_session() -> None:
    session.clear()
    # The CSRF secret went with the session; Flask-WTF caches the token made from it in g.
    g.pop("csrf_token", None)


def current_admin() -> AdminUser | None:
    """Return the logged-in staff member for this request, or None."""
    user = None
    admin_id = session.get("admin_id")
    since = session.get("admin_since", 0)
    max_age = current_app.config["ADMIN_SESSION_MAX_AGE"]
    if admin_id is not None and utcnow().timestamp() - since < max_age:
        candidate = db.session.get(AdminUser, admin_id)
        if candidate is not None and hmac.compare_digest(
            session.get("admin_key", ""), _session_key(candidate)
        ):
            user = candidate
    return user


def safe_next(target: str | None) -> str | None:
    """Accept only a path inside the admin area as the place to go after login."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/admin/") or "\\" in target:
        return None
    return target
