"""Commands for deliverability: ``flask bounces read|poll`` and ``flask dkim record``."""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from newsletter import bounces
from newsletter.mail import dkim

# sysexits.h: the MTA keeps the message and tries the pipe again later.
EX_TEMPFAIL = 75


def init_app(app: Flask) -> None:
    app.cli.add_command(bounces_cli)
    app.cli.add_command(dkim_cli)


@click.group("bounces", help="Bounces and complaints that come back after sending.")
def bounces_cli() -> None:
    pass


@click.group("dkim", help="DKIM signing of outgoing mail.")
def dkim_cli() -> None:
    pass


def _database_away(exc: Exception) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@bounces_cli.command("read")
def bounces_read() -> None:
    """Handle one message on standard input (an MTA's pipe transport or alias).

    Exits 0 for anything handled or ignored, so the MTA never bounces a bounce, and 75
    (EX_TEMPFAIL) when the database cannot be reached, so the MTA tries again.
    """
    message = sys.stdin.buffer.read()
    try:
        outcome = bounces.handle(message)
    except DBAPIError as exc:
        if not _database_away(exc):
            raise
        click.echo(
            f"bounces read: the database cannot be reached ({type(exc.orig).__name__}); "
            "the message stays with the mail server for another try",
            err=True,
        )
        sys.exit(EX_TEMPFAIL)
    click.echo(outcome.summary())


@bounces_cli.command("poll")
def bounces_poll() -> None:
    """Handle and delete the messages in the BOUNCE_IMAP_URL mailbox, once."""
    if not current_app.config.get("BOUNCE_IMAP_URL"):
        raise click.ClickException("BOUNCE_IMAP_URL is not set.")
    outcomes = bounces.poll_imap()
    for outcome in outcomes:
        click.echo(outcome.summary())
    click.echo(f"{len(outcomes)} message(s) handled.")


@dkim_cli.command("record")
def dkim_record() -> None:
    """Print the DNS TXT record that publishes the DKIM public key."""
    if not dkim.enabled():
        raise click.ClickException(
            "DKIM is not set up: set DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE."
        )
    click.echo(dkim.dns_record())
