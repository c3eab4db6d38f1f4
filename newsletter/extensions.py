"""Unbound extension objects; their state lives in ``app.extensions``."""

from __future__ import annotations

import hashlib
import hmac

import redis
from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_mail import Mail
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase

from newsletter import embedded_redis


class Base(DeclarativeBase):
    pass


def client_ip_key() -> str:
    """Key rate limits on a keyed hash of the client IP: Redis holds no raw IPs."""
    ip = request.remote_addr or "unknown"
    digest = hmac.new(current_app.config["SECRET_KEY"].encode(), ip.encode(), hashlib.sha256)
    return "ip:" + digest.hexdigest()[:24]


db = SQLAlchemy(model_class=Base)
mail = Mail()
csrf = CSRFProtect()
limiter = Limiter(client_ip_key, default_limits=[], headers_enabled=True, key_prefix="nl")


def init_migrations(app: Flask, directory: str) -> None:
    """``flask db``: Flask-Migrate and Alembic (about 11 MB) only where the CLI may run."""
    from flask_migrate import Migrate

    Migrate(app, db, directory=directory)


def init_redis(app: Flask, url: str, embedded_folder: str | None = None) -> None:
    app.extensions["redis"] = redis.Redis.from_url(url, health_check_interval=30)
    if embedded_folder:
        app.extensions["embedded_redis"] = embedded_folder
        # Web requests may hit the rate limiter, which talks to Redis on its own.
        app.before_request(_start_embedded_redis)


def _start_embedded_redis() -> None:
    get_redis()


def get_redis() -> redis.Redis:
    """Return the Redis client; the embedded server is started the first time it is needed."""
    folder = current_app.extensions.get("embedded_redis")
    if folder and not current_app.extensions.get("embedded_redis_started"):
        embedded_redis.ensure_running(folder)
        current_app.extensions["embedded_redis_started"] = True
    return current_app.extensions["redis"]


def limiter_storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def add_error_renderer(app: Flask, path_prefix: str, render) -> None:
    """Let a front end answer HTTP errors under ``path_prefix`` in its own format.

    The app-wide error handler (web.security) asks these first; front ends do not import
    one another, so the API registers its problem format here.
    """
    app.extensions.setdefault("error_renderers", []).append((path_prefix, render))


def error_renderers() -> list:
    return current_app.extensions.get("error_renderers", [])
