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


# --- subscriber: data-subject requests (GDPR Art. 15, 17, 20) ---------------------------


@subscriber_cli.command("export")
@click.argument("address")
def subscriber_export(address: str) -> None:
    """Print everything held about ADDRESS as JSON (access and portability requests)."""
    import json

    from newsletter import subscriptions

    subscriber = subscriptions.find_by_address(address)
    if subscriber is None:
        raise click.ClickException("No subscriber with that address.")
    data = subscriptions.export_data(subscriber)
    subscriptions.record_export()
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@subscriber_cli.command("delete")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def subscriber_delete(address: str, yes: bool) -> None:
    """Erase ADDRESS: the subscriber, their proof of consent and any pending sign-up."""
    from newsletter import subscriptions

    if not yes:
        click.confirm("Delete this address and all data held about it?", abort=True)
    if not subscriptions.erase_address(address, "staff"):
        raise click.ClickException("No subscriber or pending sign-up with that address.")
    click.echo("Deleted.")


@subscriber_cli.command("stats")
def subscriber_stats() -> None:
    """Print counts (subscribers, sign-ups, erasures and exports per month); no addresses."""
    from sqlalchemy import func, select

    from newsletter import stats
    from newsletter.extensions import db
    from newsletter.models import PendingSignup, Subscriber

    subscribers = db.session.scalar(select(func.count()).select_from(Subscriber))
    pending = db.session.scalar(select(func.count()).select_from(PendingSignup))
    click.echo(f"subscribers: {subscribers}")
    click.echo(f"unconfirmed sign-ups and address changes: {pending}")
    for month, kinds in stats.monthly().items():
        for kind, count in sorted(kinds.items()):
            click.echo(f"{month}  {kind:<28} {count}")
