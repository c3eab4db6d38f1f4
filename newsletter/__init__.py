"""Newsletter double-opt-in service."""

from __future__ import annotations

import logging
import sqlite3
import sys
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

ROOT = Path(__file__).resolve().parent.parent


def create_app(
    test_config: dict | None = None, environ: dict | None = None, *, front_ends: bool = True
) -> Flask:
    """Create the app from the environment (or ``environ``), then apply ``test_config``.

    ``front_ends=False`` is the app a worker runs jobs with: without the staff pages, the
    API, the command line and the migrations (pydantic, Alembic and the rest are about
    30 MB that every work horse would inherit); the public pages stay, since mail links
    and the pages' shared set-up (language, branding) come with them.
    """
    # Imported here, not at the top: any ``import newsletter.x`` runs this module first,
    # and only the factory needs every part of the app (the blueprints import services).
    from newsletter import config as config_module
    from newsletter import embedded_redis, i18n, logs
    from newsletter.extensions import (
        csrf,
        db,
        init_migrations,
        init_redis,
        limiter,
        limiter_storage_uri,
        mail,
    )

    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    if environ is None:
        environ = config_module.process_environ()
    instance = environ.get("NEWSLETTER_INSTANCE") or app.instance_path
    app.instance_path = str(Path(instance).resolve())
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    try:
        app.config.update(config_module.load(environ, app.instance_path))
        i18n.compile_catalogues()  # built on install; a fresh clone builds them here
    except (config_module.ConfigError, i18n.CatalogueError) as exc:
        if test_config is not None and test_config.get("RAISE_CONFIG_ERRORS"):
            raise
        print(f"newsletter: configuration error: {exc}", file=sys.stderr)
        # 3 is gunicorn's "worker failed to boot": its master stops instead of retrying.
        raise SystemExit(3) from None
    if test_config:
        app.config.update(test_config)
    if app.config["USING_MAKE_RUN_SETTINGS"]:
        print(
            f"newsletter: using the development settings of the `make run` on {app.instance_path}",
            file=sys.stderr,
        )

    redis_url = app.config["REDIS_URL"]
    embedded = not redis_url
    if embedded:
        # Started on first use (get_redis), so `db upgrade` and friends leave none running.
        redis_url = f"unix://{embedded_redis.socket_path(app.instance_path)}"
        app.config["REDIS_URL"] = redis_url
    app.config.setdefault("RATELIMIT_STORAGE_URI", limiter_storage_uri(redis_url))
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_timeout": 5})

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logs.install()  # before anything can log: addresses and link tokens never reach a log

    if app.config["PROXY_COUNT"]:
        # Behind a TLS proxy: take the client IP (rate limits) and scheme from its headers.
        count = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]

    db.init_app(app)
    i18n.init_app(app)
    if front_ends:
        init_migrations(app, str(ROOT / "migrations"))
    mail.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    init_redis(app, redis_url, embedded_folder=app.instance_path if embedded else None)

    from newsletter.web import branding, dev, manage, public, security
    from newsletter.web import i18n as web_i18n

    web_i18n.init_app(app)  # first: every page, error pages too, knows its language
    security.init_app(app)
    branding.init_app(app)
    public.init_app(app)
    manage.init_app(app)
    dev.init_app(app)  # only in development, with a local outbox
    if front_ends:
        from newsletter import admin, api, bounces_cli, cli

        api.init_app(app)
        admin.init_app(app)
        cli.init_app(app)
        bounces_cli.init_app(app)
    return app


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """Per-connection SQLite settings: WAL, enforced foreign keys, physical erasure."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()
