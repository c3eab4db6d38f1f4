"""DKIM signatures (RFC 6376) for outgoing mail, with the key read once at start (config).

Signing covers exactly the headers RFC 8058 section 4 asks for, those that are present:
a receiver honours one-click unsubscribe only when List-Unsubscribe and
List-Unsubscribe-Post are signed.
"""

from __future__ import annotations

import base64
import re

import dkim as dkimpy
from flask import current_app

SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


def enabled() -> bool:
    return current_app.config.get("DKIM_KEY") is not None


def sign(message: bytes) -> bytes:
    """Return ``message`` with a DKIM-Signature on top; unchanged when DKIM is not set up."""
    config = current_app.config
    if config.get("DKIM_KEY") is None:
        return message
    head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    present = {name.lower() for name in _FIELD_NAME.findall(head)}
    include = [name.encode() for name in SIGNED_HEADERS if name.lower().encode() in present]
    signature = dkimpy.sign(
        message,
        config["DKIM_SELECTOR"].encode(),
        config["DKIM_DOMAIN"].encode(),
        config["DKIM_KEY"],
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=config["DKIM_ALGORITHM"].encode(),
        include_headers=include,
    )
    return signature + message


def dns_record() -> str:
    """The TXT record to publish, in zone-file form, split into strings of at most 255."""
    config = current_app.config
    if config.get("DKIM_KEY") is None:
        raise RuntimeError("DKIM is not set up (DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY_FILE)")
    if config["DKIM_ALGORITHM"] == "ed25519-sha256":
        import nacl.signing

        seed = base64.b64decode(config["DKIM_KEY"])
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        value = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    else:
        from dkim.crypto import parse_pem_private_key

        key = parse_pem_private_key(config["DKIM_KEY"])
        spki = _rsa_public_key_info(key["modulus"], key["publicExponent"])
        value = f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{config['DKIM_SELECTOR']}._domainkey.{config['DKIM_DOMAIN']}. IN TXT {strings}"


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _der_int(number: int) -> bytes:
    return _der(0x02, number.to_bytes(number.bit_length() // 8 + 1, "big"))


_RSA_ENCRYPTION = bytes.fromhex("300d06092a864886f70d0101010500")  # AlgorithmIdentifier


def _rsa_public_key_info(modulus: int, exponent: int) -> bytes:
    """SubjectPublicKeyInfo DER, what `openssl rsa -pubout` gives and DKIM's p= carries."""
    public_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    return _der(0x30, _RSA_ENCRYPTION + _der(0x03, b"\0" + public_key))
