"""Command-line tasks: ``flask --app newsletter <group> <command>``."""

from __future__ import annotations

import json
import sys
import time

import click
from flask import Flask, current_app

from newsletter import api_tokens, auth, campaigns, data_export, slots, stats, subscriptions
from newsletter.extensions import db
from newsletter.models import CampaignStatus


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


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


# --- subscriber: data-subject requests (GDPR Art. 15, 17, 20) ---------------------------


@subscriber_cli.command("export")
@click.argument("address")
def subscriber_export(address: str) -> None:
    """Print everything held about ADDRESS as JSON (access and portability requests)."""
    subscriber = subscriptions.find_by_address(address)
    if subscriber is None:
        raise click.ClickException("No subscriber with that address.")
    data = data_export.export_data(subscriber)
    data_export.record_export()
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@subscriber_cli.command("delete")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def subscriber_delete(address: str, yes: bool) -> None:
    """Erase ADDRESS: the subscriber, their proof of consent and any pending sign-up."""
    if not yes:
        click.confirm("Delete this address and all data held about it?", abort=True)
    if not subscriptions.erase_address(address, "staff"):
        raise click.ClickException("No subscriber or pending sign-up with that address.")
    click.echo("Deleted.")


@subscriber_cli.command("stats")
def subscriber_stats() -> None:
    """Print counts (subscribers, sign-ups, erasures and exports per month); no addresses."""
    click.echo(f"subscribers: {stats.subscribers()}")
    click.echo(f"unconfirmed sign-ups and address changes: {stats.pending()}")
    for month, kinds in stats.monthly().items():
        for kind, count in sorted(kinds.items()):
            click.echo(f"{month}  {kind:<28} {count}")


# --- admin: staff accounts for the admin pages ------------------------------------------
# Staff addresses are printed to the operator's terminal, never logged.


def _account_call(func, *args):
    """Run an auth service call; turn its AccountError into a clean message and exit 1."""
    try:
        return func(*args)
    except auth.AccountError as exc:
        raise click.ClickException(str(exc)) from None


_password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (for scripts)."
)


def _new_password(password_stdin: bool) -> str:
    """Read the password from standard input, or ask for it twice without echoing it."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(
        f"Password (at least {auth.MIN_PASSWORD_LENGTH} characters)",
        hide_input=True,
        confirmation_prompt=True,
    )


@admin_cli.command("create")
@click.argument("email")
@_password_stdin
def admin_create(email: str, password_stdin: bool) -> None:
    """Make a staff account for the admin pages; the password is asked for twice."""
    user = _account_call(auth.create_admin, email, _new_password(password_stdin))
    login_url = current_app.config["PUBLIC_URL"] + "/admin/login"
    click.echo(f"Created admin account {user.id}. Log in at {login_url}")


@admin_cli.command("list")
def admin_list() -> None:
    """List the staff accounts: address, when made, last login, and whether locked."""
    users = auth.list_admins()
    if not users:
        click.echo("No admin accounts. Make one with: flask --app newsletter admin create EMAIL")
        return
    width = max(len("email"), *(len(user.email) for user in users))
    click.echo(f"{'email':<{width}}  {'created':<20} {'last login':<20} locked")
    for user in users:
        last_login = _when(user.last_login_at) if user.last_login_at else "never"
        locked = f"until {_when(user.locked_until)}" if auth.is_locked(user) else "no"
        click.echo(f"{user.email:<{width}}  {_when(user.created_at):<20} {last_login:<20} {locked}")


@admin_cli.command("password")
@click.argument("email")
@_password_stdin
def admin_password(email: str, password_stdin: bool) -> None:
    """Set a new password for EMAIL; every session of the account ends."""
    _account_call(auth.get_admin, email)  # say so before asking for a password
    _account_call(auth.set_password, email, _new_password(password_stdin))
    click.echo("Password changed. Every session of this account has ended.")


@admin_cli.command("unlock")
@click.argument("email")
def admin_unlock(email: str) -> None:
    """Lift the lock-out of EMAIL and forget its failed logins."""
    _account_call(auth.unlock, email)
    click.echo("Unlocked. The account can log in again.")


@admin_cli.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def admin_delete(email: str, yes: bool) -> None:
    """Delete the staff account EMAIL; its sessions end at once."""
    _account_call(auth.get_admin, email)
    if not yes:
        click.confirm("Delete this admin account?", abort=True)
    _account_call(auth.delete_admin, email)
    click.echo("Deleted. Its sessions have ended.")


# --- token: bearer tokens for the JSON API ----------------------------------------------


@token_cli.command("create")
@click.argument("name")
def token_create(name: str) -> None:
    """Make an API token called NAME; it is printed once, alone on the last line."""
    try:
        _, token = api_tokens.create(name)
    except api_tokens.TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Token {name.strip()!r} created. It is shown only now: store it safely.")
    click.echo("Send it as the header 'Authorization: Bearer <token>'. The token:")
    click.echo(token)


@token_cli.command("list")
def token_list() -> None:
    """List the tokens by name, with when they were made and last used (never the token)."""
    rows = api_tokens.list_all()
    if not rows:
        click.echo("No tokens. Make one with: flask --app newsletter token create NAME")
        return
    click.echo(f"{'name':<30} {'created':<20} {'last used':<20} revoked")
    for row in rows:
        click.echo(
            f"{row.name:<30} {_when(row.created_at):<20} {_when(row.last_used_at):<20} "
            f"{_when(row.revoked_at) if row.revoked_at else 'no'}"
        )


@token_cli.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke the token called NAME; the API refuses it from now on."""
    try:
        api_tokens.revoke(name)
    except api_tokens.TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Token {name!r} is revoked.")


# --- campaign: write, test, schedule, watch ---------------------------------------------


def _campaign_call(func, *args):
    """Run a campaigns service call; turn the marketer's errors into clean messages."""
    try:
        return func(*args)
    except campaigns.CampaignError as exc:
        raise click.ClickException(str(exc)) from None


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read()


_FILE = click.Path(exists=True, dir_okay=False)
# What --translation LANG:FIELD=VALUE may set: a file is read, a subject taken as given.
TRANSLATION_FIELDS = {
    "subject": "subject",
    "html-file": "html",
    "markdown-file": "markdown",
    "text-file": "text",
}


def _translations(given: tuple[str, ...]) -> dict[str, dict[str, str | None]]:
    """Read ``de:subject=Neues``, ``de:markdown-file=de.md`` ... into versions by language."""
    versions: dict[str, dict[str, str | None]] = {}
    for item in given:
        language, _, assignment = item.partition(":")
        name, equals, value = assignment.partition("=")
        if not language or not equals or name not in TRANSLATION_FIELDS:
            raise click.BadParameter(
                f"{item!r}: write LANG:FIELD=VALUE, FIELD one of {', '.join(TRANSLATION_FIELDS)}",
                param_hint="--translation",
            )
        field = TRANSLATION_FIELDS[name]
        try:
            versions.setdefault(language, {})[field] = value if field == "subject" else _read(value)
        except OSError as exc:
            raise click.BadParameter(
                f"{item!r}: {exc.strerror}", param_hint="--translation"
            ) from None
    return versions


_translation_option = click.option(
    "--translation",
    "translation",
    multiple=True,
    metavar="LANG:FIELD=VALUE",
    help=(
        "A version in another language, one field per option: "
        "de:subject=..., de:html-file=PATH or de:markdown-file=PATH, de:text-file=PATH."
    ),
)


@campaign_cli.command("create")
@click.option("--subject", required=True, help="The subject line.")
@click.option("--html-file", type=_FILE, help="HTML body.")
@click.option("--markdown-file", type=_FILE, help="Markdown body (instead of --html-file).")
@click.option("--text-file", type=_FILE, help="Plain-text part; made from the HTML when left out.")
@_translation_option
def campaign_create(
    subject: str,
    html_file: str | None,
    markdown_file: str | None,
    text_file: str | None,
    translation: tuple[str, ...],
) -> None:
    """Store a new draft edition, its main version and any translations."""
    if (html_file is None) == (markdown_file is None):
        raise click.UsageError("Give the body as --html-file or as --markdown-file.")
    campaign = _campaign_call(
        lambda: campaigns.create(
            subject,
            _read(html_file),
            _read(text_file),
            markdown=_read(markdown_file),
            translations=_translations(translation),
        )
    )
    languages = ", ".join(row.language for row in campaign.translations)
    click.echo(
        f"Created campaign {campaign.id} (draft)."
        + (f" Translations: {languages}." if languages else "")
    )


@campaign_cli.command("translate")
@click.argument("campaign_id", type=int)
@_translation_option
@click.option("--remove", multiple=True, metavar="LANG", help="Remove the version in LANG.")
def campaign_translate(
    campaign_id: int, translation: tuple[str, ...], remove: tuple[str, ...]
) -> None:
    """Add, replace or remove versions in other languages of a draft or scheduled edition."""
    changes: dict[str, dict | None] = {**_translations(translation)}
    changes.update({language: None for language in remove})
    if not changes:
        raise click.UsageError("Give at least one --translation or --remove.")
    campaign = _campaign_call(lambda: campaigns.update(campaign_id, translations=changes))
    languages = ", ".join(row.language for row in campaign.translations) or "none"
    click.echo(f"Campaign {campaign.id}: translations {languages}.")


@campaign_cli.command("list")
def campaign_list() -> None:
    """List campaigns, newest first."""
    rows = campaigns.list_all()
    if not rows:
        click.echo("No campaigns yet.")
        return
    click.echo(f"{'id':>5}  {'status':<10} {'send at':<20} {'sent':>13}  subject")
    for campaign in rows:
        totals = campaigns.totals(campaign)
        progress = f"{totals['sent']}/{totals['recipients']}"
        click.echo(
            f"{campaign.id:>5}  {campaign.status.value:<10} {_when(campaign.send_at):<20} "
            f"{progress:>13}  {campaign.subject}"
        )


@campaign_cli.command("show")
@click.argument("campaign_id", type=int)
def campaign_show(campaign_id: int) -> None:
    """Show one campaign: status, times and totals."""
    campaign = _campaign_call(campaigns.get, campaign_id)
    totals = campaigns.totals(campaign)
    click.echo(f"campaign {campaign.id}: {campaign.subject}")
    click.echo(f"status:      {campaign.status.value}")
    if campaign.status_reason:
        click.echo(f"reason:      {campaign.status_reason}")
    click.echo(f"send at:     {_when(campaign.send_at)}")
    click.echo(f"started:     {_when(campaign.started_at)}")
    click.echo(f"finished:    {_when(campaign.finished_at)}")
    for name in ("recipients", "sent", "failed", "unknown"):
        click.echo(f"{name + ':':<12} {totals[name]}")
    click.echo(f"text part:   {'made from the HTML' if campaign.text_is_derived else 'own'}")
    for row in campaign.translations:
        click.echo(f"{'in ' + row.language + ':':<12} {row.subject}")


@campaign_cli.command("test")
@click.argument("campaign_id", type=int)
@click.argument("address")
@click.option("--language", help="The version in this language (default: the main version).")
def campaign_test(campaign_id: int, address: str, language: str | None) -> None:
    """Send one test copy to ADDRESS now."""
    _campaign_call(campaigns.send_test, campaign_id, address, language)
    click.echo(f"Test copy of campaign {campaign_id} sent.")


@campaign_cli.command("schedule")
@click.argument("campaign_id", type=int)
@click.option(
    "--at",
    "at",
    metavar="ISO|now",
    help="ISO 8601 time with UTC offset (2026-12-01T10:00:00+01:00) or 'now'. "
    "Default: the next monthly slot (MONTHLY_SLOT).",
)
def campaign_schedule(campaign_id: int, at: str | None) -> None:
    """Schedule a campaign for a time, now, or the next monthly slot."""
    try:
        send_at = slots.parse_send_at(at)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    campaign = _campaign_call(campaigns.schedule, campaign_id, send_at)
    click.echo(f"Campaign {campaign.id} is scheduled for {_when(campaign.send_at)}.")


@campaign_cli.command("cancel")
@click.argument("campaign_id", type=int)
def campaign_cancel(campaign_id: int) -> None:
    """Stop a scheduled, sending or paused campaign."""
    _campaign_call(campaigns.cancel, campaign_id)
    click.echo(f"Campaign {campaign_id} is cancelled.")


@campaign_cli.command("resume")
@click.argument("campaign_id", type=int)
def campaign_resume(campaign_id: int) -> None:
    """Continue a paused campaign where it stopped."""
    campaign = _campaign_call(campaigns.resume, campaign_id)
    click.echo(f"Campaign {campaign.id} is {campaign.status.value} again.")


@campaign_cli.command("watch")
@click.argument("campaign_id", type=int)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between updates.")
def campaign_watch(campaign_id: int, interval: float) -> None:
    """Show a progress bar while the campaign sends; exit when it is done.

    The exit status is 0 when the campaign was sent, 1 when it ended paused or cancelled.
    """

    def current():
        db.session.rollback()  # a fresh snapshot: the workers change the rows
        db.session.expire_all()
        campaign = _campaign_call(campaigns.get, campaign_id)
        return campaign, campaigns.totals(campaign)

    campaign, totals = current()
    if campaign.status == CampaignStatus.DRAFT:
        raise click.ClickException(f"Campaign {campaign_id} is a draft; schedule it first.")
    if campaign.status == CampaignStatus.SCHEDULED:
        click.echo(
            f"Campaign {campaign_id} is scheduled for {_when(campaign.send_at)}; "
            "waiting for it to start (Ctrl-C stops watching, not the campaign)."
        )
        while campaign.status == CampaignStatus.SCHEDULED:
            time.sleep(interval)
            campaign, totals = current()
    if campaign.status == CampaignStatus.SENDING:
        done = totals["sent"] + totals["failed"] + totals["unknown"]
        with click.progressbar(
            length=max(totals["recipients"], 1),
            label=f"Campaign {campaign_id}",
            show_pos=True,
            show_percent=True,
            item_show_func=lambda _: f"sent {totals['sent']}, failed {totals['failed']}",
        ) as bar:
            bar.update(done)
            while campaign.status == CampaignStatus.SENDING:
                time.sleep(interval)
                campaign, totals = current()
                now_done = totals["sent"] + totals["failed"] + totals["unknown"]
                bar.update(max(now_done - done, 0))
                done = now_done
    click.echo(
        f"Campaign {campaign_id} is {campaign.status.value}: {totals['sent']} sent, "
        f"{totals['failed']} failed, {totals['unknown']} unknown "
        f"of {totals['recipients']} recipients."
    )
    if campaign.status_reason:
        click.echo(f"Reason: {campaign.status_reason}")
    if campaign.status != CampaignStatus.SENT:
        raise SystemExit(1)
