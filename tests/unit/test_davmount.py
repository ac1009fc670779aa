"""`davserver davmount`: mount instructions carry this server's own URL for every client."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from davserver.cli import public_url
from davserver.davmount import instructions
from tests.servers import REPO_ROOT


def test_every_client_gets_the_files_url() -> None:
    text = instructions("https://dav.example.org:8443/", "alice")
    for client in ("Windows Explorer", "macOS Finder", "GNOME Files", "davfs2", "rclone", "curl"):
        assert client in text
    assert "https://dav.example.org:8443/files/" in text
    assert r"\\dav.example.org@SSL@8443\DavWWWRoot\files" in text
    assert "davs://alice@dav.example.org:8443/files/" in text
    assert "BasicAuthLevel" not in text  # only needed without TLS


def test_plain_http_warns_about_basic_auth_on_windows() -> None:
    text = instructions("http://127.0.0.1:8080", "bob")
    assert "BasicAuthLevel" in text
    assert "dav://bob@127.0.0.1:8080/files/" in text


def test_cli_uses_the_configured_port(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "davserver", "davmount"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no config.yaml there: the environment's port
        env={
            "DAVSERVER_SERVER_PORT": "9123",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
        },
        timeout=60,
        check=True,
    )
    assert "http://127.0.0.1:9123/files/" in result.stdout


def test_cli_refuses_a_url_clients_cannot_use(tmp_path: Path) -> None:
    """A mistyped --url would be printed into every instruction: say so instead (exit 2)."""

    def davmount(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "davserver", "davmount", "--url", url],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
            timeout=60,
        )

    for url in ("dav.example.org", "ftp://dav.example.org/", "http://a b/", "http://h:99999/"):
        result = davmount(url)
        assert result.returncode == 2 and "--url" in result.stderr, (url, result.stderr)
        assert result.stdout == ""
    behind_a_proxy = davmount("https://example.org/dav/")
    assert behind_a_proxy.returncode == 0
    assert "https://example.org/dav/files/" in behind_a_proxy.stdout


@pytest.mark.parametrize(
    "url",
    [
        "https://dav.example.org/?token=1",  # the clients append paths after the query
        "https://dav.example.org/#top",
        "https://dav.example.org/dav?",
        "https://alice:secret@dav.example.org/",  # a password printed into every example
        "https://alice@dav.example.org/",
        "https://dav.example.org:0/",
        "https://dav.example.org:/",
        "https://dav.example.org\\evil.example/",  # Windows reads a backslash as a slash
        "https://dav.example.org/a\\b/",
    ],
)
def test_a_url_the_instructions_would_carry_wrongly_is_refused(url: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected http"):
        public_url(url)


@pytest.mark.parametrize(
    "url",
    ["https://dav.example.org", "http://[::1]:8080/dav/", "https://dav.example.org:443/a%20b/"],
)
def test_a_url_with_a_host_port_and_path_is_taken_as_given(url: str) -> None:
    assert public_url(url) == url
