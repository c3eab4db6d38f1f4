"""The command line: API tokens and campaigns, as an operator or marketer types them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from newsletter import auth, campaigns
from newsletter.extensions import db
from newsletter.models import ApiToken, Campaign, CampaignStatus
from newsletter.queue import get_queue
from tests.conftest import ROOT
from tests.html_vectors import BENIGN, UNSAFE, assert_benign_kept, assert_clean

HTML = "<h1>December</h1><p>Release notes and the <a href='https://example.com/f'>forum</a>.</p>"


def invoke(runner, *args: str, ok: bool = True):
    result = runner.invoke(args=list(args))
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


def bearer(client, token: str, path: str = "/api/v1/stats"):
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def html_file(tmp_path):
    path = tmp_path / "edition.html"
    path.write_text(HTML, encoding="utf-8")
    return str(path)


def create_campaign(runner, html_file: str, subject: str = "December news") -> int:
    result = invoke(runner, "campaign", "create", "--subject", subject, "--html-file", html_file)
    return int(result.output.split("campaign ")[1].split(" ")[0])


# --- tokens ---------------------------------------------------------------------------


def test_token_create_prints_the_token_alone_on_the_last_line(runner, client):
    result = invoke(runner, "token", "create", "ci-bot")
    lines = result.output.rstrip("\n").split("\n")
    token = lines[-1]
    assert token.startswith("nl_") and " " not in token and len(token) > 40
    assert len(lines) > 1, "an explanation comes first"
    assert token not in "\n".join(lines[:-1])
    assert bearer(client, token).status_code == 200
    stored = db.session.scalar(select(ApiToken))
    assert stored.name == "ci-bot" and token not in stored.token_hash


def test_token_names_are_unique(runner):
    invoke(runner, "token", "create", "ci-bot")
    result = invoke(runner, "token", "create", "ci-bot", ok=False)
    assert "exists already" in result.output


def test_token_list_and_revoke(runner, client):
    token = invoke(runner, "token", "create", "reporting").output.strip().split("\n")[-1]
    listed = invoke(runner, "token", "list").output
    assert "reporting" in listed and token not in listed
    invoke(runner, "token", "revoke", "reporting")
    assert bearer(client, token).status_code == 401
    assert "reporting" in invoke(runner, "token", "list").output
    result = invoke(runner, "token", "revoke", "nobody", ok=False)
    assert "no token named" in result.output


# --- campaigns ------------------------------------------------------------------------


def test_campaign_create_list_and_show(runner, html_file, tmp_path):
    first = create_campaign(runner, html_file, "November news")
    text_file = tmp_path / "edition.txt"
    text_file.write_text("December, in plain words.", encoding="utf-8")
    result = invoke(
        runner,
        "campaign",
        "create",
        "--subject",
        "December news",
        "--html-file",
        html_file,
        "--text-file",
        str(text_file),
    )
    second = int(result.output.split("campaign ")[1].split(" ")[0])
    assert db.session.get(Campaign, second).text == "December, in plain words."
    assert "December" in db.session.get(Campaign, first).text  # derived from the HTML

    listed = invoke(runner, "campaign", "list").output.splitlines()
    assert "December news" in listed[1] and "November news" in listed[2], "newest first"

    shown = invoke(runner, "campaign", "show", str(first)).output
    assert "November news" in shown and "status:      draft" in shown
    assert "made from the HTML" in shown
    assert "There is no campaign 999" in invoke(runner, "campaign", "show", "999", ok=False).output


def test_campaign_create_refuses_an_empty_subject(runner, html_file):
    result = invoke(
        runner, "campaign", "create", "--subject", " ", "--html-file", html_file, ok=False
    )
    assert "subject" in result.output
    assert db.session.scalar(select(Campaign)) is None


def test_campaign_create_cleans_unsafe_html(runner, tmp_path):
    path = tmp_path / "unsafe.html"
    path.write_text(UNSAFE + BENIGN, encoding="utf-8")
    campaign_id = create_campaign(runner, str(path))
    stored = db.session.get(Campaign, campaign_id)
    assert_clean(stored.html)
    assert_benign_kept(stored.html)


def test_campaign_test_sends_one_copy(runner, html_file, smtp):
    auth.create_admin("marketing@example.com", "correct horse battery")
    auth.create_admin("refuse@example.com", "correct horse battery")
    campaign_id = create_campaign(runner, html_file)
    invoke(runner, "campaign", "test", str(campaign_id), "marketing@example.com")
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["marketing@example.com"]
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    result = invoke(runner, "campaign", "test", str(campaign_id), "no-address", ok=False)
    assert "to:" in result.output
    result = invoke(runner, "campaign", "test", str(campaign_id), "reader@example.com", ok=False)
    assert "staff (admin) account" in result.output
    assert smtp.to("reader@example.com") == []
    smtp.handler.replies["refuse@example.com"] = "554 5.7.1 rejected"
    result = invoke(runner, "campaign", "test", str(campaign_id), "refuse@example.com", ok=False)
    assert "did not take the test copy" in result.output


def test_campaign_schedule_defaults_to_the_next_slot(runner, html_file):
    campaign_id = create_campaign(runner, html_file)
    result = invoke(runner, "campaign", "schedule", str(campaign_id))
    stored = db.session.get(Campaign, campaign_id)
    assert stored.status == CampaignStatus.SCHEDULED
    assert stored.send_at == campaigns.next_slot()
    assert stored.send_at.strftime("%Y-%m-%d %H:%M UTC") in result.output


def test_campaign_schedule_at_a_time_with_offset(runner, html_file):
    campaign_id = create_campaign(runner, html_file)
    invoke(runner, "campaign", "schedule", str(campaign_id), "--at", "2031-07-01T10:00:00+02:00")
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).send_at == datetime(2031, 7, 1, 8, 0, tzinfo=UTC)
    result = invoke(
        runner, "campaign", "schedule", str(campaign_id), "--at", "2031-07-01T10:00", ok=False
    )
    assert "UTC offset" in result.output
    result = invoke(runner, "campaign", "schedule", str(campaign_id), "--at", "soon", ok=False)
    assert "ISO 8601" in result.output


def test_campaign_schedule_now_cancel_and_resume(runner, html_file):
    campaign_id = create_campaign(runner, html_file)
    invoke(runner, "campaign", "schedule", str(campaign_id), "--at", "now")
    assert f"start-{campaign_id}" in get_queue("tick").get_job_ids()
    result = invoke(runner, "campaign", "resume", str(campaign_id), ok=False)
    assert "only a paused campaign can be resumed" in result.output
    invoke(runner, "campaign", "cancel", str(campaign_id))
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).status == CampaignStatus.CANCELLED
    result = invoke(runner, "campaign", "cancel", str(campaign_id), ok=False)
    assert "is cancelled" in result.output


def test_campaign_watch_refuses_a_draft(runner, html_file):
    campaign_id = create_campaign(runner, html_file)
    result = invoke(runner, "campaign", "watch", str(campaign_id), ok=False)
    assert "draft" in result.output


@pytest.mark.slow
def test_campaign_watch_follows_a_send_to_the_end(
    runner, html_file, subscribed, smtp, base_environ
):
    """A real worker process sends while ``campaign watch`` shows progress and then exits."""
    readers = [f"reader{n}@example.com" for n in range(3)]
    for reader in readers:
        subscribed(reader)
    campaign_id = create_campaign(runner, html_file)
    invoke(runner, "campaign", "schedule", str(campaign_id), "--at", "now")
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py"), "--burst"],
        env={**os.environ, **base_environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = invoke(runner, "campaign", "watch", str(campaign_id), "--interval", "0.2")
    finally:
        worker.wait(timeout=120)
    assert f"Campaign {campaign_id} is sent: 3 sent, 0 failed, 0 unknown of 3" in result.output
    editions = [m for m in smtp.messages if m.message["List-Unsubscribe"]]
    assert sorted(r for m in editions for r in m.rcpt_tos) == sorted(readers)


# --- translations -----------------------------------------------------------------------


def test_campaign_create_takes_markdown_and_translations(runner, tmp_path, smtp, staff):
    main = tmp_path / "main.md"
    main.write_text("# December\n\nThe **forum** is open.\n", encoding="utf-8")
    german = tmp_path / "de.md"
    german.write_text("# Dezember\n\nDas **Forum** ist offen.\n", encoding="utf-8")
    main_args = ["--subject", "December news", "--markdown-file", str(main)]
    german_args = ["--translation", "de:subject=Neues im Dezember"]
    german_args += ["--translation", f"de:markdown-file={german}"]
    result = invoke(runner, "campaign", "create", *main_args, *german_args)
    assert "Translations: de." in result.output
    campaign = db.session.scalar(select(Campaign))
    assert "<strong" in campaign.html and campaign.source_format == "markdown"
    [translation] = campaign.translations
    assert translation.subject == "Neues im Dezember" and "<strong" in translation.html
    assert "Neues im Dezember" in invoke(runner, "campaign", "show", str(campaign.id)).output

    invoke(runner, "campaign", "test", str(campaign.id), "staff@example.com", "--language", "de")
    [mail] = smtp.messages
    assert mail.message["Subject"] == "[Test] Neues im Dezember" and "Forum" in mail.html


def test_campaign_translate_adds_replaces_and_removes(runner, html_file, tmp_path):
    campaign_id = create_campaign(runner, html_file)
    german = tmp_path / "de.html"
    german.write_text("<p>Hallo</p>", encoding="utf-8")
    args = ["campaign", "translate", str(campaign_id)]
    result = invoke(
        runner,
        *args,
        "--translation",
        "de:subject=Hallo",
        "--translation",
        f"de:html-file={german}",
    )
    assert "translations de" in result.output
    assert db.session.get(Campaign, campaign_id).translations[0].html == "<p>Hallo</p>"
    assert "translations none" in invoke(runner, *args, "--remove", "de").output
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).translations == []


@pytest.mark.parametrize(
    "option, words",
    [
        ("fr:subject=Salut", "not a language of this newsletter"),
        ("de:subject=Hallo", "body"),
        ("de-subject=x", "LANG:FIELD=VALUE"),
        ("de:html-file=/nonexistent/de.html", "No such file"),
    ],
)
def test_campaign_create_refuses_translations_it_cannot_use(runner, html_file, option, words):
    args = ["--subject", "S", "--html-file", html_file, "--translation", option]
    result = invoke(runner, "campaign", "create", *args, ok=False)
    assert words in result.output
    assert "Traceback" not in result.output
    assert db.session.scalar(select(Campaign)) is None
