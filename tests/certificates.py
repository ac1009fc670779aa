"""Self-signed TLS certificates for tests, made with the openssl command."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

OPENSSL_TIMEOUT = 60.0


def self_signed(folder: Path, name: str = "") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its new key, as ``folder/{name}cert.pem`` and
    ``folder/{name}key.pem``. Without openssl the test skips (fails where CI is set)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set, so the TLS test must run: openssl is not installed")
        pytest.skip("openssl is not installed")
    cert, key = folder / f"{name}cert.pem", folder / f"{name}key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT,
    )  # fmt: skip
    return cert, key


def der_of(cert: Path) -> bytes:
    """The certificate in ``cert`` (PEM) as the DER bytes a TLS peer presents."""
    return ssl.PEM_cert_to_DER_cert(cert.read_text())
