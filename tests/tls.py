"""A throwaway TLS certificate for the loopback servers the tests start."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """Write key.pem and cert.pem (P-256, for 127.0.0.1 and localhost) into ``folder``."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that verifies the server against ``cert`` only."""
    return ssl.create_default_context(cafile=str(cert))
