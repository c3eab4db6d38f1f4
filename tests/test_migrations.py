"""``flask --app newsletter db upgrade`` from the command line, as an operator runs it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def flask(*args, instance: Path, **env) -> subprocess.CompletedProcess:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "NEWSLETTER_ENV": "development",
        "NEWSLETTER_INSTANCE": str(instance),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "newsletter", *args],
        cwd=str(ROOT),
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_db_upgrade_twice_on_sqlite_records_its_version(tmp_path):
    instance = Path("/tmp") / f"nl-mig-{os.getpid()}"
    for _ in range(2):
        result = flask("db", "upgrade", instance=instance)
        assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(instance / "newsletter.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (_head(),)
        ]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    # Migrating needs no Redis, so none was started (and none is left running).
    assert not (instance / "redis.sock").exists()
    assert "Traceback" not in result.stderr


def _head() -> str:
    """The newest revision in migrations/ (one head: a branch would fail here)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


@pytest.fixture
def empty_database(request, database_url, tmp_path):
    """A database of its own: a new SQLite file, or a new schema in the PostgreSQL one."""
    if request.config.getoption("--db") == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = "migration_test"
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in database_url else "?"
    yield f"{database_url}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def _add_account(connection, email: str, password_hash: str = "x") -> None:
    """Insert an account as revision 0001 knows it (no session_key)."""
    import sqlalchemy as sa

    from newsletter.models import UTCDateTime, utcnow

    admin_user = sa.table(
        "admin_user",
        sa.column("email"),
        sa.column("password_hash"),
        sa.column("created_at", UTCDateTime()),
        sa.column("failed_logins"),
    )
    connection.execute(
        admin_user.insert().values(
            email=email, password_hash=password_hash, created_at=utcnow(), failed_logins=0
        )
    )


def test_0002_gives_existing_admin_accounts_their_own_session_key(base_environ, empty_database):
    import sqlalchemy as sa
    from flask_migrate import downgrade, upgrade

    from newsletter import auth, create_app
    from newsletter.extensions import db

    directory = str(ROOT / "migrations")
    app = create_app(environ={**base_environ, "DATABASE_URL": empty_database})
    with app.app_context():
        upgrade(directory=directory, revision="0001")
        password_hash = auth._hasher.hash("a long old password")
        with db.engine.begin() as connection:
            _add_account(connection, "a@example.com", password_hash)
            _add_account(connection, "b@example.com", password_hash)

        upgrade(directory=directory)
        with db.engine.connect() as connection:
            keys = list(connection.execute(sa.text("SELECT session_key FROM admin_user")).scalars())
            assert len(keys) == 2 and len(set(keys)) == 2 and all(len(k) >= 16 for k in keys)
            with pytest.raises(sa.exc.IntegrityError):  # NOT NULL from now on
                _add_account(connection, "c@example.com")
            connection.rollback()
        assert auth.authenticate("a@example.com", "a long old password") is not None
        db.session.remove()

        downgrade(directory=directory, revision="0001")
        assert "session_key" not in _columns(db.engine, "admin_user")
        upgrade(directory=directory)
        assert "session_key" in _columns(db.engine, "admin_user")
        db.engine.dispose()


def _columns(engine, table: str) -> set[str]:
    import sqlalchemy as sa

    return {column["name"] for column in sa.inspect(engine).get_columns(table)}


def test_the_migrations_build_the_schema_the_models_describe(base_environ, empty_database):
    from alembic import command
    from flask import current_app
    from flask_migrate import upgrade

    from newsletter import create_app
    from newsletter.extensions import db

    directory = str(ROOT / "migrations")
    app = create_app(environ={**base_environ, "DATABASE_URL": empty_database})
    with app.app_context():
        upgrade(directory=directory)
        # Raises AutogenerateDiffsDetected when a model changed without a migration.
        command.check(current_app.extensions["migrate"].migrate.get_config(directory))
        db.engine.dispose()


def test_0003_gives_existing_rows_zero_counts_and_keeps_subscriber_ids_unique_forever(
    base_environ, empty_database
):
    import sqlalchemy as sa
    from flask_migrate import downgrade, upgrade

    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.models import UTCDateTime, utcnow

    directory = str(ROOT / "migrations")
    app = create_app(environ={**base_environ, "DATABASE_URL": empty_database})
    with app.app_context():
        upgrade(directory=directory, revision="0002")
        now = utcnow()
        with db.engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO consent_text (version, text, sha256, created_at) "
                        "VALUES (1, 'ok', :h, :t)").bindparams(
                    sa.bindparam("t", type_=UTCDateTime())
                ),
                {"h": "0" * 64, "t": now},
            )  # fmt: skip
            consent_id = connection.execute(sa.text("SELECT id FROM consent_text")).scalar()
            connection.execute(
                sa.text("INSERT INTO subscriber (email, token_key, requested_at, confirmed_at, "
                        "consent_text_id) VALUES ('a@example.com', 'k', :t, :t, :c)").bindparams(
                    sa.bindparam("t", type_=UTCDateTime())
                ),
                {"t": now, "c": consent_id},
            )  # fmt: skip

        upgrade(directory=directory)
        with db.engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT soft_bounces, last_soft_bounce_campaign_id FROM subscriber")
            ).one()
            assert tuple(row) == (0, None)
            if db.engine.dialect.name == "sqlite":  # a VERP tag's reader id is never reused
                sql = connection.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE name = 'subscriber'")
                ).scalar()
                assert "AUTOINCREMENT" in sql
        assert {"bounced", "complaints"} <= _columns(db.engine, "campaign")

        downgrade(directory=directory, revision="0002")
        assert "soft_bounces" not in _columns(db.engine, "subscriber")
        if db.engine.dialect.name == "sqlite":
            with db.engine.connect() as connection:
                sql = connection.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE name = 'subscriber'")
                ).scalar()
            assert "AUTOINCREMENT" in sql
        upgrade(directory=directory)
        assert "bounced" in _columns(db.engine, "campaign")
        db.engine.dispose()


def test_0004_gives_existing_rows_english_and_counts_consent_versions_per_language(
    base_environ, empty_database
):
    import sqlalchemy as sa
    from flask_migrate import downgrade, upgrade

    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.models import utcnow

    directory = str(ROOT / "migrations")
    app = create_app(environ={**base_environ, "DATABASE_URL": empty_database})
    with app.app_context():
        upgrade(directory=directory, revision="0003")
        now = utcnow()
        with db.engine.begin() as connection:  # rows as revision 0003 knows them
            connection.execute(
                sa.text(
                    "INSERT INTO consent_text (version, text, sha256, created_at) "
                    "VALUES (1, 'I agree.', :sha, :now)"
                ),
                {"sha": "a" * 64, "now": now.replace(tzinfo=None)},
            )
            consent_id = connection.execute(sa.text("SELECT id FROM consent_text")).scalar()
            connection.execute(
                sa.text(
                    "INSERT INTO subscriber (email, token_key, requested_at, confirmed_at, "
                    "consent_text_id) VALUES ('old@example.com', 'k1', :now, :now, :consent)"
                ),
                {"now": now.replace(tzinfo=None), "consent": consent_id},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO pending_signup (public_id, email, purpose, consent_text_id, "
                    "requested_at) VALUES ('p1', 'new@example.com', 'subscribe', :consent, :now)"
                ),
                {"now": now.replace(tzinfo=None), "consent": consent_id},
            )

        upgrade(directory=directory)
        with db.engine.begin() as connection:
            for table in ("subscriber", "pending_signup", "consent_text"):
                languages = connection.execute(sa.text(f"SELECT language FROM {table}"))
                assert list(languages.scalars()) == ["en"], table
            # Versions count per language now: German starts at 1 beside English 1 ...
            connection.execute(
                sa.text(
                    "INSERT INTO consent_text (language, version, text, sha256, created_at) "
                    "VALUES ('de', 1, 'Ich willige ein.', :sha, :now)"
                ),
                {"sha": "a" * 64, "now": now.replace(tzinfo=None)},
            )
        with db.engine.connect() as connection:
            # ... and one language cannot have a version number twice.
            with pytest.raises(sa.exc.IntegrityError):
                connection.execute(
                    sa.text(
                        "INSERT INTO consent_text (language, version, text, sha256, created_at) "
                        "VALUES ('de', 1, 'Anders.', :sha, :now)"
                    ),
                    {"sha": "b" * 64, "now": now.replace(tzinfo=None)},
                )
            connection.rollback()
        with db.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM consent_text WHERE language = 'de'"))

        downgrade(directory=directory, revision="0003")
        assert "language" not in _columns(db.engine, "subscriber")
        upgrade(directory=directory)
        assert {"form_text", "look"} <= set(sa.inspect(db.engine).get_table_names())
        db.engine.dispose()


def test_0005_adds_translations_that_go_with_their_campaign(base_environ, empty_database):
    import sqlalchemy as sa
    from flask_migrate import downgrade, upgrade

    from newsletter import create_app
    from newsletter.extensions import db
    from newsletter.models import UTCDateTime, utcnow

    directory = str(ROOT / "migrations")
    app = create_app(environ={**base_environ, "DATABASE_URL": empty_database})
    stamp = sa.bindparam("t", type_=UTCDateTime())
    with app.app_context():
        upgrade(directory=directory, revision="0004")
        with db.engine.begin() as connection:  # a campaign as revision 0004 knows it
            connection.execute(
                sa.text(
                    "INSERT INTO campaign (subject, html, text, text_is_derived, source_format, "
                    "status, created_at, updated_at, recipients, sent, failed, unknown, "
                    "bounced, complaints) VALUES ('News', '<p>Hi</p>', 'Hi', true, 'html', "
                    "'draft', :t, :t, 0, 0, 0, 0, 0, 0)"
                ).bindparams(stamp),
                {"t": utcnow()},
            )
            campaign_id = connection.execute(sa.text("SELECT id FROM campaign")).scalar()

        upgrade(directory=directory)
        db.engine.dispose()  # env.py turns SQLite's foreign keys off on its connection
        insert = sa.text(
            "INSERT INTO campaign_translation (campaign_id, language, subject, html, text, "
            "text_is_derived, source_format, created_at, updated_at) VALUES "
            "(:c, 'de', 'Neues', '<p>Hallo</p>', 'Hallo', true, 'html', :t, :t)"
        ).bindparams(stamp)
        with db.engine.begin() as connection:
            assert (
                connection.execute(sa.text("SELECT count(*) FROM campaign_translation")).scalar()
                == 0
            )
            connection.execute(insert, {"c": campaign_id, "t": utcnow()})
        with db.engine.connect() as connection:  # one version per language and campaign
            with pytest.raises(sa.exc.IntegrityError):
                connection.execute(insert, {"c": campaign_id, "t": utcnow()})
            connection.rollback()
        with db.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM campaign"))
            left = connection.execute(sa.text("SELECT count(*) FROM campaign_translation"))
            assert left.scalar() == 0  # ON DELETE CASCADE

        downgrade(directory=directory, revision="0004")
        assert "campaign_translation" not in sa.inspect(db.engine).get_table_names()
        upgrade(directory=directory)
        assert "campaign_translation" in sa.inspect(db.engine).get_table_names()
        db.engine.dispose()
