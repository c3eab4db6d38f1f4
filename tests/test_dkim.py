"""DKIM: mail built by the project's builder, signed, and verified by dkimpy's verifier."""

from __future__ import annotations

import base64
import re
import subprocess

import dkim as dkimpy
import pytest

from newsletter import create_app
from newsletter.config import ConfigError, load
from newsletter.extensions import db
from newsletter.mail import builders as mailing
from newsletter.mail import dkim

DOMAIN = "news.example.com"
SELECTOR = "nl2026"
LONG_UNSUBSCRIBE = "http://news.example.org/unsubscribe/" + "Ab1-_" * 40  # 236 characters


def _key(tmp_path, kind: str):
    path = tmp_path / f"{kind}.key"
    if kind == "rsa":
        command = ["openssl", "genrsa", "-out", str(path), "2048"]
    elif kind == "ed25519":
        command = ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return path


@pytest.fixture(params=["rsa", "ed25519"])
def signing_app(request, base_environ, migrated, tmp_path):
    environ = {
        **base_environ,
        "DKIM_DOMAIN": DOMAIN,
        "DKIM_SELECTOR": SELECTOR,
        "DKIM_PRIVATE_KEY_FILE": str(_key(tmp_path, request.param)),
    }
    app = create_app(environ=environ)
    app.key_kind, app.key_path = request.param, environ["DKIM_PRIVATE_KEY_FILE"]
    with app.app_context():
        yield app
        db.session.remove()  # builders read the operator's texts: give the connection back
        db.engine.dispose()
    app.extensions["redis"].close()


def _dns(record_line: str):
    """A resolver that serves the record the `dkim record` line describes, and nothing else."""
    name, rest = record_line.split(" IN TXT ", 1)
    value = "".join(re.findall(r'"([^"]*)"', rest)).encode()

    def dnsfunc(query, timeout=5):
        return value if query.decode().rstrip(".") == name.rstrip(".") else None

    return dnsfunc


def _tags(signed: bytes) -> dict[str, str]:
    header = re.search(rb"^DKIM-Signature: (.*?)\r\n(?=\S)", signed, re.S | re.M).group(1)
    unfolded = re.sub(rb"\s+", b"", header).decode()
    return dict(item.split("=", 1) for item in unfolded.split(";") if item)


def test_an_edition_is_signed_over_exactly_the_contract_headers_and_verifies(signing_app):
    template = mailing.edition_template("Our news", "<p>Hello</p>", "Hello")
    mail = template.render("reader@example.net", {"unsubscribe_url": LONG_UNSUBSCRIBE})
    assert f"List-Unsubscribe: <{LONG_UNSUBSCRIBE}>".encode() in mail.data

    signed = dkim.sign(mail.data)

    assert signed.endswith(mail.data)
    tags = _tags(signed)
    assert tags["h"].split(":") == [
        "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
        "list-id", "list-unsubscribe", "list-unsubscribe-post",
    ]  # fmt: skip
    assert (tags["d"], tags["s"], tags["c"]) == (DOMAIN, SELECTOR, "relaxed/relaxed")
    expected = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[signing_app.key_kind]
    assert tags["a"] == expected
    dnsfunc = _dns(dkim.dns_record())
    assert dkimpy.verify(signed, dnsfunc=dnsfunc)
    # The one-click headers are covered: a changed unsubscribe target fails verification.
    tampered = signed.replace(LONG_UNSUBSCRIBE.encode(), b"http://evil.example/x", 2)
    assert not dkimpy.verify(tampered, dnsfunc=dnsfunc)


@pytest.mark.parametrize(
    "build",
    [
        lambda: mailing.confirmation_mail("new@example.net", "http://news.example.org/confirm/a"),
        lambda: mailing.manage_mail("reader@example.net", "http://news.example.org/manage/b", "de"),
        lambda: mailing.change_address_mail("neu@example.net", "http://news.example.org/confirm/c"),
    ],
    ids=["confirmation", "manage link (German)", "address change"],
)
def test_a_mail_without_list_headers_signs_only_the_headers_it_has(signing_app, build):
    """The end-to-end check of every kind as sent is in tests/test_deliverability.py."""
    signed = dkim.sign(build().data)
    assert _tags(signed)["h"].split(":") == [
        "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    ]  # fmt: skip
    assert dkimpy.verify(signed, dnsfunc=_dns(dkim.dns_record()))


def test_dkim_record_prints_the_txt_record_in_strings_of_at_most_255(signing_app):
    result = signing_app.test_cli_runner().invoke(args=["dkim", "record"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f'{SELECTOR}._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=')
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(s) <= 255 for s in strings)
    value = "".join(strings)
    kind = {"rsa": "rsa", "ed25519": "ed25519"}[signing_app.key_kind]
    assert value.startswith(f"v=DKIM1; k={kind}; p=")
    public = base64.b64decode(value.split("p=", 1)[1])
    openssl = subprocess.run(
        ["openssl", "pkey", "-in", signing_app.key_path, "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    if kind == "rsa":  # SubjectPublicKeyInfo, as OpenSSL writes it
        assert public == openssl
    else:  # RFC 8463: the bare 32-byte key
        assert public == openssl[-32:] and len(public) == 32


def test_a_dknewkey_ed25519_seed_file_works_too(base_environ, migrated, tmp_path):
    import nacl.signing

    seed = nacl.signing.SigningKey.generate().encode()
    key_file = tmp_path / "seed.key"
    key_file.write_text(base64.b64encode(seed).decode())
    config = load(
        {
            **base_environ,
            "DKIM_DOMAIN": DOMAIN,
            "DKIM_SELECTOR": SELECTOR,
            "DKIM_PRIVATE_KEY_FILE": str(key_file),
        },  # fmt: skip
        str(tmp_path),
    )
    assert config["DKIM_ALGORITHM"] == "ed25519-sha256"


def test_without_dkim_settings_mail_is_left_as_it_is(app):
    mail = mailing.confirmation_mail("new@example.net", "http://news.example.org/confirm/abc")
    assert not dkim.enabled()
    assert dkim.sign(mail.data) == mail.data


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"DKIM_DOMAIN": DOMAIN}, "DKIM needs all of"),
        ({"DKIM_PRIVATE_KEY_FILE": "/nonexistent/dkim.key"}, "DKIM needs all of"),
        (
            {
                "DKIM_PRIVATE_KEY_FILE": "/nonexistent/dkim.key",
                "DKIM_DOMAIN": DOMAIN,
                "DKIM_SELECTOR": SELECTOR,
            },
            "cannot be read",
        ),  # fmt: skip
        (
            {"DKIM_PRIVATE_KEY_FILE": "GARBAGE", "DKIM_DOMAIN": DOMAIN, "DKIM_SELECTOR": SELECTOR},
            "holds no RSA or Ed25519 private key",
        ),  # fmt: skip
        (
            {"DKIM_PRIVATE_KEY_FILE": "EC", "DKIM_DOMAIN": DOMAIN, "DKIM_SELECTOR": SELECTOR},
            "holds no RSA or Ed25519 private key",
        ),  # fmt: skip
        (
            {
                "DKIM_PRIVATE_KEY_FILE": "RSA",
                "DKIM_DOMAIN": DOMAIN,
                "DKIM_SELECTOR": "bad selector",
            },
            "is not a DNS label",
        ),  # fmt: skip
    ],
)
def test_a_bad_dkim_setting_stops_the_start_with_one_clear_line(
    base_environ, tmp_path, settings, message
):
    settings = dict(settings)
    if settings.get("DKIM_PRIVATE_KEY_FILE") == "GARBAGE":
        garbage = tmp_path / "garbage.key"
        garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        settings["DKIM_PRIVATE_KEY_FILE"] = str(garbage)
    elif settings.get("DKIM_PRIVATE_KEY_FILE") == "EC":
        ec = tmp_path / "ec.key"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(ec)], check=True, capture_output=True,
        )  # fmt: skip
        settings["DKIM_PRIVATE_KEY_FILE"] = str(ec)
    elif settings.get("DKIM_PRIVATE_KEY_FILE") == "RSA":
        settings["DKIM_PRIVATE_KEY_FILE"] = str(_key(tmp_path, "rsa"))
    with pytest.raises(ConfigError) as error:
        load({**base_environ, **settings}, str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)
