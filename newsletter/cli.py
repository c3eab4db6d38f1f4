"""Command-line tasks: ``flask --app newsletter <group> <command>``."""

from __future__ import annotations

import click
from flask import Flask


def init_app(app: Flask) -> None:
    for group in (subscriber_cli, admin_cli, token_cli, campaign_cli):
        app.cli.add_command(group)


@click.group("subscriber", help="Data-subject requests that arrive by post or email.")
def subscriber_cli() -> None:
    pass


@click.group("admin", help="Staff accounts for the admin pages.")
def admin_cli() -> None:
    pass


@click.group("token", help="Bearer tokens for the JSON API.")
def token_cli() -> None:
    pass


@click.group("campaign", help="Write, test, schedule and watch editions.")
def campaign_cli() -> None:
    pass
