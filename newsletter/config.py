"""Configuration: defaults in code, values from the environment, checked at start.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import fcntl
import os
import re
from email.header import Header
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import idna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from newsletter.slots import MonthlySlot

DEV_SECRET_KEY = "dev-only-insecure-secret-key"
MIN_SECRET_KEY_LENGTH = 32


class ConfigError(Exception):
    """The environment does not describe a service that can run."""


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _int(name: str, value: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, not {number}")
    return number


def _float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must not be negative")
    return number


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(name: str, value: str) -> int:
    """Read ``172800``, ``48h``, ``30m`` or ``2d`` as seconds."""
    match = _DURATION.match(value.lower())
    if not match:
        raise ConfigError(f"{name} must be a duration like 3600, 30m, 48h or 2d, not {value!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{name} must be longer than zero")
    return seconds


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def database_uri(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver we install."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _check_database(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"DATABASE_URL is not a database URL: {url!r}") from None
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError("DATABASE_URL must be a sqlite:// or postgresql:// URL")
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(
                "DATABASE_URL: an in-memory SQLite database cannot be shared with workers; "
                "name a file"
            )
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise ConfigError(f"DATABASE_URL: the folder {str(folder)!r} does not exist")


def _check_redis(url: str) -> None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")


def _idna_host(name: str, host: str) -> str:
    """Return ``host`` in its ASCII (IDNA 2008) form, as links and Message-IDs need it."""
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ConfigError(f"{name}: the host {host!r} is not a valid domain name ({exc})") from None


def _check_public_url(url: str) -> str:
    """Check PUBLIC_URL and return it in ASCII: an IDN host in IDNA, a path percent-encoded.

    Every link in every mail is built from it; a non-ASCII URL would make each message
    unsendable, so it is converted here, once, or refused with one clear line.
    """
    match = re.match(r"^(https?)://([^\s/?#@]+)(/[^\s?#]*)?$", url)
    if not match:
        raise ConfigError(f"PUBLIC_URL must be an http(s) URL without query, not {url!r}")
    scheme, netloc, path = match.group(1), match.group(2), match.group(3) or ""
    host, colon, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    if colon and not port.isdigit():
        raise ConfigError(f"PUBLIC_URL has a bad port: {url!r}")
    ascii_netloc = _idna_host("PUBLIC_URL", host) + (f":{port}" if colon else "")
    return f"{scheme}://{ascii_netloc}{quote(path, safe='/%:@!$&()*+,;=~-._')}".rstrip("/")


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(\.{_ATEXT})+$")


def _check_list_id(value: str) -> str:
    """Return LIST_ID ready for the wire: ``Description <label.domain>`` in ASCII (RFC 2919)."""
    match = re.match(r"^\s*(.*?)\s*<([^<>\s]+)>\s*$", value)
    if not match or "\r" in value or "\n" in value:
        raise ConfigError(f"LIST_ID must look like 'Our News <news.example.com>', not {value!r}")
    phrase, list_id = match.group(1), _idna_host("LIST_ID", match.group(2))
    if not _DOT_ATOM.match(list_id):
        raise ConfigError(f"LIST_ID: {match.group(2)!r} is not an identifier like news.example.com")
    if not phrase.isascii():
        phrase = Header(phrase, "utf-8").encode()
    return f"{phrase} <{list_id}>" if phrase else f"<{list_id}>"


# --- deliverability: VERP bounces and DKIM (docs/deliverability.md) ----------------------

# A VERP tag is 32 characters (newsletter/bounces.py); with the "+" the whole local part of
# BOUNCE_ADDRESS plus the tag stays within SMTP's 64 (RFC 5321 section 4.5.3.1.1).
BOUNCE_LOCAL_PART_MAX = 64 - 1 - 32


class ImapTarget(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    mailbox: str


def parse_imap_url(url: str) -> ImapTarget:
    """Read ``imaps://user:password@host[:port]/MAILBOX`` (user and password percent-encoded)."""
    parts = urlsplit(url)
    if parts.scheme != "imaps" or not parts.hostname or not parts.username:
        raise ConfigError("BOUNCE_IMAP_URL must look like imaps://user:password@host/INBOX")
    try:
        port = parts.port or 993
    except ValueError:
        raise ConfigError("BOUNCE_IMAP_URL has a bad port") from None
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapTarget(
        parts.hostname, port, unquote(parts.username), unquote(parts.password or ""), mailbox
    )


def _bounce_address(value: str) -> str:
    local, at, domain = value.strip().rpartition("@")
    if not at or not re.fullmatch(r"[A-Za-z0-9._-]+", local) or not domain:
        raise ConfigError(
            f"BOUNCE_ADDRESS must be one plain address like bounces@news.example.com, "
            f"without '+', not {value!r}"
        )
    if len(local) > BOUNCE_LOCAL_PART_MAX:
        raise ConfigError(
            f"BOUNCE_ADDRESS: the part before @ may have at most {BOUNCE_LOCAL_PART_MAX} "
            "characters (the VERP tag needs the rest of SMTP's 64)"
        )
    return f"{local.lower()}@{_idna_host('BOUNCE_ADDRESS', domain)}"


_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")


def _dkim_key(path: str) -> tuple[str, bytes]:
    """Read the DKIM key file once; return (algorithm, key in dkimpy's form).

    RSA keys are PEM (``openssl genrsa``, PKCS#1 or PKCS#8); Ed25519 keys are PEM from
    ``openssl genpkey -algorithm ed25519`` or dkimpy's base64 seed (``dknewkey``).
    """
    import base64
    import binascii

    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"DKIM_PRIVATE_KEY_FILE {path!r} cannot be read ({exc.strerror})"
        ) from None
    text = data.replace(b"\r\n", b"\n").strip()
    body = b"".join(line for line in text.split(b"\n") if not line.startswith(b"-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        der = b""
    if len(der) == 48 and der.startswith(_PKCS8_ED25519):
        return "ed25519-sha256", base64.b64encode(der[16:])
    if len(der) == 32 and not text.startswith(b"-----"):
        return "ed25519-sha256", body
    try:
        key = parse_pem_private_key(text + b"\n")
    except (UnparsableKeyError, ValueError, IndexError, TypeError):
        raise ConfigError(
            f"DKIM_PRIVATE_KEY_FILE {path!r} holds no RSA or Ed25519 private key"
        ) from None
    if key["modulus"].bit_length() < 1024:
        raise ConfigError("DKIM_PRIVATE_KEY_FILE: the RSA key is shorter than 1024 bits")
    return "rsa-sha256", text + b"\n"


def _deliverability(env: dict[str, str]) -> dict:
    """BOUNCE_* and DKIM_*: both features are off until their variables are set."""
    bounce_address = env.get("BOUNCE_ADDRESS", "").strip()
    imap_url = env.get("BOUNCE_IMAP_URL", "").strip()
    if imap_url:
        parse_imap_url(imap_url)
    ca_file = env.get("BOUNCE_IMAP_CA_FILE", "").strip()
    if ca_file and not os.access(ca_file, os.R_OK):
        raise ConfigError(f"BOUNCE_IMAP_CA_FILE {ca_file!r} cannot be read")
    config: dict = {
        "BOUNCE_ADDRESS": _bounce_address(bounce_address) if bounce_address else None,
        "BOUNCE_IMAP_URL": imap_url or None,
        # A CA bundle to trust instead of the system's (a self-signed IMAP server).
        "BOUNCE_IMAP_CA_FILE": ca_file or None,
        "BOUNCE_SOFT_LIMIT": _int(
            "BOUNCE_SOFT_LIMIT", env.get("BOUNCE_SOFT_LIMIT", "3"), minimum=1
        ),
        "DKIM_DOMAIN": None,
        "DKIM_SELECTOR": None,
        "DKIM_ALGORITHM": None,
        "DKIM_KEY": None,
    }
    dkim = {name: env.get(name, "").strip() for name in ("DKIM_DOMAIN", "DKIM_SELECTOR")}
    key_file = env.get("DKIM_PRIVATE_KEY_FILE", "").strip()
    if any(dkim.values()) or key_file:
        if not all(dkim.values()) or not key_file:
            raise ConfigError(
                "DKIM needs all of DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE"
            )
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", dkim["DKIM_SELECTOR"]):
            raise ConfigError(f"DKIM_SELECTOR {dkim['DKIM_SELECTOR']!r} is not a DNS label")
        config["DKIM_DOMAIN"] = _idna_host("DKIM_DOMAIN", dkim["DKIM_DOMAIN"])
        config["DKIM_SELECTOR"] = dkim["DKIM_SELECTOR"].lower()
        config["DKIM_ALGORITHM"], config["DKIM_KEY"] = _dkim_key(key_file)
    return config


_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


def _check_languages(value: str) -> list[str]:
    """LANGUAGES as a list, the fallback first; each needs a catalogue (or is the source)."""
    from newsletter import i18n  # no import-time work

    languages = list(dict.fromkeys(_csv(value.replace("-", "_"))))
    if not languages:
        raise ConfigError("LANGUAGES must name at least one language, e.g. en,de")
    available = i18n.available()
    for language in languages:
        if not _LANGUAGE_CODE.match(language):
            raise ConfigError(f"LANGUAGES: {language!r} is not a language code like de or pt_BR")
        if language not in available:
            raise ConfigError(
                f"LANGUAGES: there is no catalogue for {language!r} "
                f"(newsletter/translations has: {', '.join(available)})"
            )
    return languages


def _check_imprint_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not re.match(r"^https?://[^\s/?#]+[^\s]*$", value):
        raise ConfigError(f"IMPRINT_URL must be an http(s) URL, not {value!r}")
    return value


def process_environ() -> dict[str, str]:
    """A copy of this process's environment: for create_app, and launchers' children."""
    return dict(os.environ)


# ``make run`` writes its settings here while it runs (and holds the lock beside them), so
# that the CLI in another shell finds the same instance in development mode by itself.
MAKE_RUN_SETTINGS = "make-run.env"
MAKE_RUN_LOCK = "make-run.lock"


def make_run_is_running(instance_path: str | os.PathLike) -> bool:
    """Whether a ``make run`` holds the lock of this instance folder right now."""
    lock_file = Path(instance_path) / MAKE_RUN_LOCK
    if not lock_file.exists():
        return False
    with open(lock_file) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def make_run_settings(instance_path: str | os.PathLike) -> dict[str, str]:
    """The settings of the ``make run`` running on this instance folder, or ``{}``."""
    settings_file = Path(instance_path) / MAKE_RUN_SETTINGS
    if not settings_file.exists() or not make_run_is_running(instance_path):
        return {}
    settings = {}
    for line in settings_file.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip():
            settings[name.strip()] = value.strip()
    return settings


def load(environ: dict[str, str] | None = None, instance_path: str = "instance") -> dict:
    """Build the Flask config from the environment; raise ConfigError with a clear message.

    In a shell that set neither NEWSLETTER_ENV nor SECRET_KEY, next to a running
    ``make run`` on the same instance folder, its settings apply (development mode):
    ``flask --app newsletter admin create ...`` then works without any variable.
    """
    env = dict(os.environ if environ is None else environ)
    borrowed = False
    if not env.get("NEWSLETTER_ENV") and not env.get("SECRET_KEY"):
        dev = make_run_settings(instance_path)
        borrowed = bool(dev)
        env = {**dev, **env}
    mode = env.get("NEWSLETTER_ENV", "production").strip().lower()
    if mode not in {"production", "development", "testing"}:
        raise ConfigError("NEWSLETTER_ENV must be production, development or testing")
    production = mode == "production"

    secret_key = env.get("SECRET_KEY", "")
    if not secret_key:
        if production:
            raise ConfigError(
                "SECRET_KEY is not set. Set it to a long random string, for example the "
                "output of: python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        secret_key = DEV_SECRET_KEY
    elif production and len(secret_key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"SECRET_KEY is too short ({len(secret_key)} characters); "
            f"use at least {MIN_SECRET_KEY_LENGTH} random characters"
        )

    database_url = database_uri(
        env.get("DATABASE_URL") or f"sqlite:///{Path(instance_path).resolve() / 'newsletter.db'}"
    )
    if env.get("DATABASE_URL"):
        _check_database(database_url)

    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url:
        _check_redis(redis_url)

    public_url = _check_public_url(env.get("PUBLIC_URL", "http://127.0.0.1:5000"))

    slot = env.get("MONTHLY_SLOT", "first tue 10:00 Europe/Berlin")
    try:
        MonthlySlot.parse(slot)
    except ValueError as exc:
        raise ConfigError(f"MONTHLY_SLOT: {exc}") from None

    default_sender = env.get("MAIL_DEFAULT_SENDER", "Newsletter <newsletter@example.com>")
    if "\r" in default_sender or "\n" in default_sender or "@" not in default_sender:
        raise ConfigError("MAIL_DEFAULT_SENDER must be one address, like 'News <news@example.com>'")

    store_ip = env.get("STORE_IP_PREFIX", "false")
    config = {
        "NEWSLETTER_ENV": mode,
        "SECRET_KEY": secret_key,
        "SECRET_KEY_FALLBACKS": _csv(env.get("SECRET_KEY_FALLBACKS", "")) or None,
        "SQLALCHEMY_DATABASE_URI": database_url,
        # SQL parameters hold addresses: keep them out of exception texts (and so logs).
        # A pooled connection may have died with a database restart: test it before use,
        # so the first request afterwards gets a fresh one instead of an error.
        "SQLALCHEMY_ENGINE_OPTIONS": {"hide_parameters": True, "pool_pre_ping": True},
        "REDIS_URL": redis_url,
        "PUBLIC_URL": public_url,
        "TRUSTED_HOSTS": _csv(env.get("TRUSTED_HOSTS", "")) or None,
        # How many reverse proxies in front of us set X-Forwarded-For/-Proto (0: none).
        "PROXY_COUNT": _int("PROXY_COUNT", env.get("PROXY_COUNT", "0")),
        "EMBED_ORIGINS": [o.rstrip("/") for o in _csv(env.get("EMBED_ORIGINS", ""))],
        "SIGNUP_LIMIT_PER_IP": env.get("SIGNUP_LIMIT_PER_IP", "30/hour"),
        "SIGNUP_LIMIT_PER_ADDRESS": env.get("SIGNUP_LIMIT_PER_ADDRESS", "3/hour"),
        "MANAGE_LIMIT_PER_IP": env.get("MANAGE_LIMIT_PER_IP", "30/hour"),
        "MANAGE_LIMIT_PER_ADDRESS": env.get("MANAGE_LIMIT_PER_ADDRESS", "3/hour"),
        "API_TEST_SEND_LIMIT": env.get("API_TEST_SEND_LIMIT", "60/hour"),
        "ADMIN_LOGIN_LIMIT_PER_IP": env.get("ADMIN_LOGIN_LIMIT_PER_IP", "20/10minutes"),
        "ADMIN_MAX_FAILED_LOGINS": _int(
            "ADMIN_MAX_FAILED_LOGINS", env.get("ADMIN_MAX_FAILED_LOGINS", "5"), minimum=1
        ),
        "ADMIN_LOCKOUT": parse_duration("ADMIN_LOCKOUT", env.get("ADMIN_LOCKOUT", "15m")),
        "ADMIN_SESSION_MAX_AGE": parse_duration(
            "ADMIN_SESSION_MAX_AGE", env.get("ADMIN_SESSION_MAX_AGE", "12h")
        ),
        "EMAIL_CHECK_DELIVERABILITY": _bool(
            "EMAIL_CHECK_DELIVERABILITY",
            env.get("EMAIL_CHECK_DELIVERABILITY", "true" if production else "false"),
        ),
        "SEND_RATE": _float("SEND_RATE", env.get("SEND_RATE", "0")),
        "BATCH_SIZE": _int("BATCH_SIZE", env.get("BATCH_SIZE", "500"), minimum=1),
        "CONFIRM_MAX_AGE": parse_duration("CONFIRM_MAX_AGE", env.get("CONFIRM_MAX_AGE", "48h")),
        "MANAGE_MAX_AGE": parse_duration("MANAGE_MAX_AGE", env.get("MANAGE_MAX_AGE", "24h")),
        "OVERDUE_LIMIT": parse_duration("OVERDUE_LIMIT", env.get("OVERDUE_LIMIT", "6h")),
        "SEND_LEASE": parse_duration("SEND_LEASE", env.get("SEND_LEASE", "60s")),
        # A 4xx answer is retried after SEND_RETRY_DELAY, then twice as long each time, up to
        # SEND_RETRY_ATTEMPTS tries in all; then the message counts as failed.
        "SEND_RETRY_DELAY": parse_duration("SEND_RETRY_DELAY", env.get("SEND_RETRY_DELAY", "5m")),
        "SEND_RETRY_ATTEMPTS": _int(
            "SEND_RETRY_ATTEMPTS", env.get("SEND_RETRY_ATTEMPTS", "5"), minimum=1
        ),
        # A confirmation mail refused with 4xx is tried CONFIRM_RETRY_ATTEMPTS times in all,
        # CONFIRM_RETRY_DELAY apart, doubling each time; then the sign-up is given up.
        "CONFIRM_RETRY_DELAY": parse_duration(
            "CONFIRM_RETRY_DELAY", env.get("CONFIRM_RETRY_DELAY", "1m")
        ),
        "CONFIRM_RETRY_ATTEMPTS": _int(
            "CONFIRM_RETRY_ATTEMPTS", env.get("CONFIRM_RETRY_ATTEMPTS", "5"), minimum=1
        ),
        "TICK_INTERVAL": parse_duration("TICK_INTERVAL", env.get("TICK_INTERVAL", "15s")),
        "SMTP_TIMEOUT": _float("SMTP_TIMEOUT", env.get("SMTP_TIMEOUT", "30")),
        # SMTP connections each worker keeps busy at once (README: Scale-out).
        "SMTP_CONNECTIONS": _int(
            "SMTP_CONNECTIONS", env.get("SMTP_CONNECTIONS", "4"), minimum=1, maximum=64
        ),
        "MONTHLY_SLOT": slot,
        "STORE_IP_PREFIX": _bool("STORE_IP_PREFIX", store_ip),
        "LIST_ID": _check_list_id(env.get("LIST_ID", "Newsletter <newsletter.example.com>")),
        "LANGUAGES": _check_languages(env.get("LANGUAGES", "en,de")),
        "SITE_NAME": env.get("SITE_NAME", "").strip() or "Example Company Newsletter",
        # The company's legal notice (Impressum): linked in every mail and on every page.
        "IMPRINT_URL": _check_imprint_url(env.get("IMPRINT_URL", "")),
        "CONTROLLER_NAME": env.get("CONTROLLER_NAME", "Example Company GmbH"),
        "CONTROLLER_ADDRESS": env.get("CONTROLLER_ADDRESS", "Example Street 1, 12345 Example City"),
        "CONTROLLER_EMAIL": env.get("CONTROLLER_EMAIL", "privacy@example.com"),
        "DEV_OUTBOX_DIR": env.get("DEV_OUTBOX_DIR") or None,
        "MAIL_SERVER": env.get("MAIL_SERVER", "127.0.0.1"),
        "MAIL_PORT": _int("MAIL_PORT", env.get("MAIL_PORT", "25"), minimum=1),
        "MAIL_USE_TLS": _bool("MAIL_USE_TLS", env.get("MAIL_USE_TLS", "false")),
        "MAIL_USE_SSL": _bool("MAIL_USE_SSL", env.get("MAIL_USE_SSL", "false")),
        "MAIL_USERNAME": env.get("MAIL_USERNAME") or None,
        "MAIL_PASSWORD": env.get("MAIL_PASSWORD") or None,
        "MAIL_DEFAULT_SENDER": default_sender,
        # Never let Flask-Mail swallow sends: tests talk to a real SMTP server.
        "MAIL_SUPPRESS_SEND": False,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": public_url.startswith("https://"),
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "MAX_FORM_MEMORY_SIZE": 64 * 1024,
        "WTF_CSRF_TIME_LIMIT": None,
        "TESTING": mode == "testing",
        "USING_MAKE_RUN_SETTINGS": borrowed,
    }
    config.update(_deliverability(env))
    try:
        ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:  # pragma: no cover - depends on the host
        raise ConfigError("the system has no time zone data; install tzdata") from None
    return config
