"""`davserver serve` refuses settings it cannot run with, in one line, before touching anything;
and serves HTTPS when given a certificate and its key.

Each case starts the real command in a subprocess (its cwd a fresh folder, so no developer's
config.yaml is read) and checks the exit status (2: a usage or settings error), that stderr
ends with one ``davserver: ...`` line naming the option, and that nothing was created.
"""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.certificates import self_signed
from tests.servers import REPO_ROOT, LiveServer, basic_auth_header, free_port

RUN_TIMEOUT = 60.0


def serve(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``davserver [args] serve`` until it exits; a server that starts is a failure."""
    try:
        return command(cwd, env, *args, "serve", "--port", str(free_port()), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"davserver started instead of refusing its settings: {exc.stdout!r}")


def command(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``davserver args`` (a command that ends by itself) until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "davserver", *args],
        cwd=cwd,
        env=_env(cwd, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(cwd: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["DAVSERVER_DATA_DIR"] = str(cwd / "data")
    return {**env, **extra}


@contextmanager
def serving(
    cwd: Path, env: dict[str, str], *args: str, stderr: int = subprocess.DEVNULL
) -> Iterator[list[str]]:
    """``davserver serve ARGS`` for the block; yields its output up to the line announcing
    where it listens (stderr too with ``subprocess.STDOUT``), then stops it."""
    with subprocess.Popen(
        [sys.executable, "-m", "davserver", "serve", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            lines = []
            for line in process.stdout:
                lines.append(line)
                if "listening on" in line:
                    break
            yield lines
        finally:
            process.terminate()
            process.wait(timeout=30)


def assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2 with one ``davserver:`` line naming ``fragments``, and no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert last.startswith("davserver: "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"DAVSERVER_SERVER_BLOCK_SIZE": "0"}, ("server.block_size", "got 0")),
        ({"DAVSERVER_SERVER_BLOCK_SIZE": "-5"}, ("server.block_size",)),
        ({"DAVSERVER_SERVER_THREADS": "0"}, ("server.threads",)),
        ({"DAVSERVER_SERVER_MAX_XML_BODY": "-1"}, ("server.max_xml_body",)),
        ({"DAVSERVER_SERVER_WORKERS": "-2"}, ("server.workers",)),
        ({"DAVSERVER_DATABASE_POOL_SIZE": "0"}, ("database.pool_size",)),
        ({"DAVSERVER_TRASH_RETENTION_DAYS": "99999999"}, ("trash.retention_days",)),
        ({"DAVSERVER_LOGGING_LEVEL": "verbose"}, ("logging.level", "DEBUG, INFO")),
        (
            {"DAVSERVER_SERVER_SSL_CERTIFICATE": "/etc/ssl/cert.pem"},
            ("server.ssl_private_key is not", "TLS needs both"),
        ),
        (
            {
                "DAVSERVER_SERVER_SSL_CERTIFICATE": "/nonexistent/cert.pem",
                "DAVSERVER_SERVER_SSL_PRIVATE_KEY": "/nonexistent/key.pem",
            },
            ("server.ssl_certificate: cannot read /nonexistent/cert.pem",),
        ),
        ({"DAVSERVER_DATABASE_URL": "not a url"}, ("database.url is not a database URL",)),
        (
            {"DAVSERVER_DATABASE_URL": "postgres://dav:s3cret@db/dav"},
            ("no database driver 'postgres'", "postgresql+psycopg://"),
        ),
        (
            {"DAVSERVER_DATABASE_URL": "mysql://dav:s3cret@db/dav"},
            ("only SQLite and PostgreSQL",),
        ),
        ({"DAVSERVER_STORAGE_BACKEND": "s3"}, ("s3.bucket is not set",)),
        ({"DAVSERVER_DATABASE_URL": "sqlite://"}, ("an in-memory SQLite database",)),
        (
            {
                "DAVSERVER_STORAGE_BACKEND": "s3",
                "DAVSERVER_S3_BUCKET": "photos",
                "DAVSERVER_S3_ENDPOINT_URL": "minio:9000",  # no scheme: a traceback
            },
            ("s3.endpoint_url: 'minio:9000' is not a URL",),
        ),
        ({"DAVSERVER_STORAGE_BACKEND": "ftp"}, ("storage.backend", "filesystem, s3")),
        (
            {
                "DAVSERVER_STORAGE_BACKEND": "s3",
                "DAVSERVER_S3_BUCKET": "photos",
                "DAVSERVER_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                "DAVSERVER_S3_ACCESS_KEY_ID": "dav",
                "DAVSERVER_S3_SECRET_ACCESS_KEY": "s3cret",
            },
            ("s3.bucket: cannot use s3://photos/ at http://127.0.0.1:9", "not answering"),
        ),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else None,
)
def test_settings_it_cannot_run_with_are_refused_in_one_line(
    tmp_path: Path, env: dict[str, str], fragments: tuple[str, ...]
) -> None:
    stderr = assert_refused(serve(tmp_path, env), *fragments)
    assert "s3cret" not in stderr  # a database password is never printed
    assert not (tmp_path / "data").exists()  # refused before creating anything


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DAVSERVER_ADMIN_PASSWORD": "ab"}, "a password has at least 8 characters"),
        ({"DAVSERVER_ADMIN_USER": "a b"}, "a username has only ASCII letters"),
    ],
    ids=["short-password", "bad-name"],
)
def test_a_first_admin_the_account_rules_refuse_is_named_in_one_line(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    """The first admin was made with any password given ("ab", one over 1 KiB that no login
    could send, one with a NUL), where no one could set such a password later; a name the
    rules refuse was a traceback."""
    assert_refused(serve(tmp_path, env), "admin.user / admin.password", fragment)
    with sqlite3.connect(tmp_path / "data" / "davserver.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_a_database_out_of_reach_is_named_in_one_line(tmp_path: Path) -> None:
    """Nothing listens there: ``serve`` logged two tracebacks from the child that brings the
    schema up to date; the other commands said it in one line, as it does now."""
    env = {"DAVSERVER_DATABASE_URL": "postgresql+psycopg://dav:s3cret@127.0.0.1:9/dav"}
    stderr = assert_refused(serve(tmp_path, env), "cannot use the database")
    assert "Traceback" not in stderr and "s3cret" not in stderr


@pytest.mark.parametrize("url", ["notaurl", "mysql://dav@db/dav"])
def test_a_command_names_a_database_url_it_cannot_use_in_one_line(tmp_path: Path, url: str) -> None:
    """``serve`` and ``db upgrade`` did; ``user list``, ``gc`` and the others ended in a
    traceback (the check for a missing SQLite file read the URL first)."""
    for args in (("user", "list"), ("gc",)):
        done = command(tmp_path, {"DAVSERVER_DATABASE_URL": url}, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("davserver: database.url")


def test_folders_that_cannot_be_made_are_named(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the data folder should be")
    assert_refused(
        serve(tmp_path, {"DAVSERVER_DATA_DIR": str(tmp_path / "taken")}),
        f"data_dir: cannot create the folder {tmp_path / 'taken'}",
    )
    assert_refused(
        serve(tmp_path, {"DAVSERVER_STORAGE_BLOB_DIR": str(tmp_path / "taken" / "blobs")}),
        "storage.blob_dir: cannot create the folder",
    )
    # Its tmp/ (uploads in progress) was made later, unguarded: a traceback and exit 1.
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "tmp").write_text("a file where the uploads' folder should be")
    assert_refused(
        serve(tmp_path, {"DAVSERVER_STORAGE_BLOB_DIR": str(tmp_path / "blobs")}),
        f"storage.blob_dir: cannot create the folder {tmp_path / 'blobs' / 'tmp'}",
    )


def test_commands_make_the_data_folder_as_serve_does_or_name_it(tmp_path: Path) -> None:
    # ``db upgrade`` on a new install failed with "unable to open database file"; a command
    # whose data folder was a file ended in a traceback (NotADirectoryError).
    fresh = {"DAVSERVER_DATA_DIR": str(tmp_path / "new" / "data")}
    done = command(tmp_path, fresh, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new" / "data" / "blobs").is_dir()
    (tmp_path / "taken").write_text("a file where the data folder should be")
    taken = {"DAVSERVER_DATA_DIR": str(tmp_path / "taken")}
    assert_refused(command(tmp_path, taken, "db", "upgrade"), "data_dir: cannot create the folder")
    blobs_taken = {**fresh, "DAVSERVER_STORAGE_BLOB_DIR": str(tmp_path / "taken" / "blobs")}
    for args in (("user", "list"), ("trash", "purge")):
        assert_refused(
            command(tmp_path, blobs_taken, *args), "storage.blob_dir: cannot create the folder"
        )


def test_commands_do_not_answer_from_a_new_empty_database(tmp_path: Path) -> None:
    # Run from another folder (cron runs in $HOME) or with a mistyped data_dir, a command
    # made a new SQLite database there and answered from it: user list listed nobody,
    # trash purge purged nothing, user create created a user no server would see; exit 0.
    for args in (("user", "list"), ("trash", "purge"), ("user", "create", "alice")):
        stderr = assert_refused(command(tmp_path, {}, *args), "no database at")
        assert str(tmp_path / "data" / "davserver.sqlite3") in stderr
    assert not (tmp_path / "data").exists()
    assert command(tmp_path, {}, "db", "upgrade").returncode == 0
    assert command(tmp_path, {}, "user", "list").returncode == 0


def test_a_schema_newer_than_this_davserver_is_named_not_a_traceback(tmp_path: Path) -> None:
    # After rolling the software back over a database a newer davserver migrated, every
    # command (serve, db upgrade, user list) ended in Alembic's "Can't locate revision"
    # traceback.
    assert command(tmp_path, {}, "db", "upgrade").returncode == 0
    with sqlite3.connect(tmp_path / "data" / "davserver.sqlite3") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    expected = "schema is at revision '9999_from_the_future', which this davserver does not"
    assert_refused(serve(tmp_path, {}), expected)
    for args in (("db", "upgrade"), ("user", "list")):
        assert_refused(command(tmp_path, {}, *args), expected)


def test_a_row_an_admins_edit_left_pointing_at_nothing_stops_no_command(tmp_path: Path) -> None:
    # The sqlite3 shell keeps foreign keys off: deleting a user there leaves their roles
    # behind. Every command then ended in a traceback blaming a migration that never ran.
    assert command(tmp_path, {}, "db", "upgrade").returncode == 0
    assert command(tmp_path, {}, "user", "create", "carol").returncode == 0
    with sqlite3.connect(tmp_path / "data" / "davserver.sqlite3") as db:
        db.execute("DELETE FROM users WHERE username = 'carol'")
        assert db.execute("PRAGMA foreign_key_check").fetchall()
    for args in (("user", "list"), ("db", "upgrade")):
        done = command(tmp_path, {}, *args)
        assert done.returncode == 0, done.stderr


def test_a_certificate_and_key_that_do_not_load_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    env = {
        "DAVSERVER_SERVER_SSL_CERTIFICATE": str(junk),
        "DAVSERVER_SERVER_SSL_PRIVATE_KEY": str(junk),
    }
    assert_refused(serve(tmp_path, env), "not a PEM certificate and its private key")


def test_a_named_config_file_must_exist_and_be_yaml(tmp_path: Path) -> None:
    assert_refused(
        serve(tmp_path, {}, "--config", str(tmp_path / "absent.yaml")),
        f"cannot read {tmp_path / 'absent.yaml'}: No such file or directory",
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  port: [1\n")
    assert_refused(serve(tmp_path, {}, "--config", str(broken)), "broken.yaml is not valid YAML")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    assert_refused(serve(tmp_path, {}, "--config", str(binary)), "binary.yaml is not valid YAML")


# --- HTTPS ---------------------------------------------------------------------------------


def test_a_key_that_is_encrypted_or_not_the_certificates_is_refused(tmp_path: Path) -> None:
    """An encrypted key made OpenSSL prompt for its passphrase on the terminal, then failed
    with a traceback (EINVAL); a key of another certificate was 'not a PEM certificate'."""
    cert, key = self_signed(tmp_path)
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    env = {
        "DAVSERVER_SERVER_SSL_CERTIFICATE": str(cert),
        "DAVSERVER_SERVER_SSL_PRIVATE_KEY": str(encrypted),
    }
    stderr = assert_refused(serve(tmp_path, env), "server.ssl_private_key is encrypted")
    assert "pass phrase" not in stderr
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed(other)
    env["DAVSERVER_SERVER_SSL_PRIVATE_KEY"] = str(other_key)
    assert_refused(serve(tmp_path, env), "ssl_private_key is not the key of server.ssl_cert")


def test_serves_https_with_a_certificate_and_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = _env(
        tmp_path,
        {
            "DAVSERVER_SERVER_SSL_CERTIFICATE": str(cert),
            "DAVSERVER_SERVER_SSL_PRIVATE_KEY": str(key),
            "DAVSERVER_ADMIN_USER": "tlsadmin",
            "DAVSERVER_ADMIN_PASSWORD": "tls-password-1",
            "PYTHONUNBUFFERED": "1",
        },
    )
    # Port 0, read back from the announcement: a port picked free beforehand was once taken
    # by another test's connection before the server could bind it (it left without a line).
    args = ("--host", "127.0.0.1", "--port", "0")
    with serving(tmp_path, env, *args, stderr=subprocess.STDOUT) as lines:  # why, if not
        announced = lines[-1] if lines else ""
        found = re.search(r"davserver listening on https://127\.0\.0\.1:(\d+)/", announced)
        assert found, lines
        port = int(found[1])

        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        auth = {"Authorization": basic_auth_header("tlsadmin", "tls-password-1")}
        conn.request("PUT", "/files/over-tls.txt", body=b"secret bytes", headers=auth)
        created = conn.getresponse()
        created.read()
        assert created.status == 201, "PUT over TLS"
        conn.request("GET", "/files/over-tls.txt", headers=auth)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"secret bytes")
        conn.close()

        # Plain HTTP on the TLS port (an http:// URL) is told to use https, not reset:
        # "connection reset by peer" was all a client could show its user.
        for method, body in (("GET", None), ("PUT", b"x" * 100_000)):
            plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            plain.request(method, "/files/over-tls.txt", body=body, headers=auth)
            refused = plain.getresponse()
            assert refused.status == 400, method
            assert b"use an https:// URL" in refused.read()
            plain.close()
        # ... and the server goes on serving TLS.
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        conn.request("GET", "/files/over-tls.txt", headers=auth)
        assert conn.getresponse().read() == b"secret bytes"
        conn.close()


def test_a_first_start_tells_the_migrations_and_nothing_that_looks_wrong(
    live_server: LiveServer,
) -> None:
    """The admin reads the first start's output for the generated password. Alembic listed
    seven plugins it set up and SQLAlchemy warned three times of indexes it could not reflect
    (SAWarning), which look like faults and are none."""
    text = live_server.stderr_text()
    assert "Running upgrade" in text  # the first start's log is all there
    assert "Warning" not in text and "setup plugin" not in text, text[:3000]


@pytest.mark.parametrize(
    ("host", "extra", "warned"),
    [
        ("0.0.0.0", {}, True),
        ("0.0.0.0", {"DAVSERVER_SERVER_TRUSTED_PROXIES": "127.0.0.1"}, False),  # a TLS proxy
        ("127.0.0.1", {}, False),
    ],
    ids=["every-interface", "behind-a-proxy", "loopback"],
)
def test_plain_http_off_this_machine_is_warned_about(
    tmp_path: Path, host: str, extra: dict[str, str], warned: bool
) -> None:
    """Basic passwords cross the network in clear text over plain HTTP, and Windows will not
    send them at all: a server listening past loopback without TLS, and with no proxy in front
    of it, says so once at start."""
    port = free_port()
    env = _env(tmp_path, {"DAVSERVER_ADMIN_PASSWORD": "plain-http-1", "PYTHONUNBUFFERED": "1"})
    args = ("--host", host, "--port", str(port))
    with serving(tmp_path, {**env, **extra}, *args, stderr=subprocess.STDOUT) as lines:
        text = "".join(lines)
        assert "listening on http://" in text, text
        assert ("passwords cross the network in clear text" in text) == warned, text
