"""Settings: defaults, the YAML file, environment overrides, errors, and the shipped config.yaml."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
from pathlib import Path

import pytest
import yaml

from davserver.config import (
    MAX_SECONDS,
    ConfigError,
    Settings,
    env_name,
    iter_options,
    load_settings,
    trusted_networks,
    unknown_environment,
)
from davserver.db.types import utcnow
from tests.servers import REPO_ROOT

REPO_CONFIG = REPO_ROOT / "config.yaml"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults --------------------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(None, env={})
    assert settings == Settings()
    assert settings.data_dir == "./data"
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.max_xml_body == 1024 * 1024
    assert settings.database.url == ""
    assert settings.storage.fsync is True
    assert settings.admin.user == "admin"
    assert settings.admin.password == ""
    assert settings.dav.realm == "davserver"
    assert settings.logging.query_header is False


def test_default_database_and_blobs_live_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(None, env={"DAVSERVER_DATA_DIR": str(tmp_path / "d")})
    assert settings.database_url == f"sqlite:///{(tmp_path / 'd').resolve()}/davserver.sqlite3"
    assert settings.blob_path == (tmp_path / "d" / "blobs").resolve()


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "absent.yaml", env={}) == Settings()


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path / "c.yaml", ""), env={}) == Settings()


def test_every_option_has_a_default_and_help() -> None:
    options = dict(iter_options())
    assert "data_dir" in options
    assert "server.port" in options
    assert "database.url" in options
    for dotted, f in options.items():
        assert f.default is not dataclasses.MISSING, dotted
        assert f.metadata.get("help"), dotted


def test_env_names() -> None:
    assert env_name("data_dir") == "DAVSERVER_DATA_DIR"
    assert env_name("database.url") == "DAVSERVER_DATABASE_URL"
    assert env_name("server.port") == "DAVSERVER_SERVER_PORT"


# --- the YAML file ---------------------------------------------------------------------------


def test_values_from_the_yaml_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "config.yaml",
        """
data_dir: /srv/dav
server:
  host: 0.0.0.0
  port: 9000
  threads: 4
database:
  url: postgresql+psycopg://dav@db/dav
  echo: true
storage:
  fsync: false
admin:
  user: root
  password: s3cret
dav:
  realm: Team files
logging:
  level: DEBUG
""",
    )
    settings = load_settings(path, env={})
    assert settings.data_dir == "/srv/dav"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000
    assert settings.server.threads == 4
    assert settings.server.block_size == 256 * 1024  # untouched options keep their default
    assert settings.database.url == "postgresql+psycopg://dav@db/dav"
    assert settings.database_url == "postgresql+psycopg://dav@db/dav"
    assert settings.database.echo is True
    assert settings.storage.fsync is False
    assert settings.admin.user == "root"
    assert settings.admin.password == "s3cret"
    assert settings.dav.realm == "Team files"
    assert settings.logging.level == "DEBUG"


def test_yaml_strings_become_ints_and_bools(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", 'server:\n  port: "8443"\nstorage:\n  fsync: "no"\n')
    settings = load_settings(path, env={})
    assert settings.server.port == 8443
    assert settings.storage.fsync is False


# --- the environment -------------------------------------------------------------------------


def test_environment_overrides_defaults() -> None:
    env = {
        "DAVSERVER_DATA_DIR": "/var/lib/davserver",
        "DAVSERVER_DATABASE_URL": "postgresql+psycopg://u@h/db",
        "DAVSERVER_ADMIN_USER": "boss",
        "DAVSERVER_ADMIN_PASSWORD": "hunter2",
        "DAVSERVER_SERVER_PORT": "8099",
    }
    settings = load_settings(None, env=env)
    assert settings.data_dir == "/var/lib/davserver"
    assert settings.database.url == "postgresql+psycopg://u@h/db"
    assert settings.admin.user == "boss"
    assert settings.admin.password == "hunter2"
    assert settings.server.port == 8099
    assert isinstance(settings.server.port, int)


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "c.yaml",
        "data_dir: /from/file\nserver:\n  port: 9000\n  host: 10.0.0.1\n"
        "database:\n  url: sqlite:///file.db\nadmin:\n  user: fileadmin\n  password: filepw\n",
    )
    env = {
        "DAVSERVER_DATA_DIR": "/from/env",
        "DAVSERVER_DATABASE_URL": "sqlite:///env.db",
        "DAVSERVER_ADMIN_USER": "envadmin",
        "DAVSERVER_ADMIN_PASSWORD": "envpw",
        "DAVSERVER_SERVER_PORT": "9100",
    }
    settings = load_settings(path, env=env)
    assert settings.data_dir == "/from/env"
    assert settings.database.url == "sqlite:///env.db"
    assert settings.admin.user == "envadmin"
    assert settings.admin.password == "envpw"
    assert settings.server.port == 9100
    assert settings.server.host == "10.0.0.1"  # not in the environment: the file's value


def test_environment_bools() -> None:
    for text, expected in [("0", False), ("false", False), ("1", True), ("yes", True)]:
        settings = load_settings(None, env={"DAVSERVER_STORAGE_FSYNC": text})
        assert settings.storage.fsync is expected, text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DAVSERVER_TRASH_ENABLED": ""}, "trash.enabled: expected true or false, got ''"),
        ({"DAVSERVER_STORAGE_FSYNC": " "}, "storage.fsync: expected true or false"),
    ],
)
def test_an_empty_bool_is_refused_not_taken_as_false(env: dict[str, str], message: str) -> None:
    """``DAVSERVER_TRASH_ENABLED=`` turned the trash off without a word: every DELETE purged."""
    with pytest.raises(ConfigError) as refused:
        load_settings(None, env=env)
    assert message in str(refused.value)


def test_a_number_with_a_fraction_is_refused_not_cut_down(tmp_path: Path) -> None:
    """``gc_grace_seconds: 0.9`` became 0, the grace only for a stopped server."""
    path = write_yaml(tmp_path / "c.yaml", "maintenance:\n  gc_grace_seconds: 0.9\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path, env={})
    assert "maintenance.gc_grace_seconds: expected an integer, got 0.9" in str(refused.value)


def test_unrelated_environment_variables_are_ignored() -> None:
    env = {"DAVSERVER_NOT_AN_OPTION": "x", "HOME": "/root", "PORT": "1"}
    assert load_settings(None, env=env) == Settings()


def test_a_variable_that_names_no_option_is_told_with_the_one_it_may_mean() -> None:
    """Ignored, a misspelt DAVSERVER_DATABASE_URL left the server on SQLite without a word;
    ``davserver serve`` now warns of each such variable."""
    env = {
        "DAVSERVER_DATABSE_URL": "postgresql+psycopg://db/dav",
        "DAVSERVER_SERVER_PORT": "8080",
        "DAVSERVER_NOT_AN_OPTION": "x",
        "DAVSERVER_TEST_PG": "postgresql+psycopg://localhost/test",  # the test suite's own
        "PORT": "1",
    }
    assert unknown_environment(env) == [
        "DAVSERVER_DATABSE_URL names no option and is ignored; did you mean"
        " DAVSERVER_DATABASE_URL?",
        "DAVSERVER_NOT_AN_OPTION names no option and is ignored",
    ]


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAVSERVER_SERVER_PORT", "8123")
    assert load_settings(None).server.port == 8123


def test_keyword_overrides_win_over_everything(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "server:\n  port: 9000\n")
    settings = load_settings(
        path, env={"DAVSERVER_SERVER_PORT": "9100"}, server__port=9200, data_dir="/kw"
    )
    assert settings.server.port == 9200
    assert settings.data_dir == "/kw"
    # None means "not given" (an unset command-line flag)
    assert load_settings(path, env={}, server__port=None).server.port == 9000


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "no_such_option: 1\n",
        "server:\n  no_such_option: 1\n",
        "serverr:\n  port: 1\n",
        "database:\n  url: x\n  pool: 3\n",
    ],
)
def test_unknown_keys_are_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write_yaml(tmp_path / "c.yaml", text), env={})


def test_unknown_keyword_override_is_an_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(None, env={}, server__no_such=1)


@pytest.mark.parametrize(
    "text", ["server:\n  port: eighty\n", "server:\n  threads: 1.5x\n", "server:\n  port: ''\n"]
)
def test_bad_int_in_the_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write_yaml(tmp_path / "c.yaml", text), env={})


@pytest.mark.parametrize("value", ["eighty", "", "80 80", "0x50"])
def test_bad_int_in_the_environment_is_an_error(value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(None, env={"DAVSERVER_SERVER_PORT": value})


def test_bad_bool_is_an_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(None, env={"DAVSERVER_STORAGE_FSYNC": "maybe"})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write_yaml(tmp_path / "c.yaml", text), env={})


def test_a_file_that_must_exist_is_an_error_when_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*absent\.yaml: No such file"):
        load_settings(tmp_path / "absent.yaml", env={}, required=True)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path, env={}, required=True)  # a folder


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("server:\n  port: [1\n", "c.yaml is not valid YAML: expected ',' or ']'"),
        ("server:\n\tport: 1\n", "c.yaml is not valid YAML: "),
        ("a: b: c\n", "at line 1, column 5"),
    ],
)
def test_malformed_yaml_is_one_line_naming_the_place(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write_yaml(tmp_path / "c.yaml", text), env={})
    assert problem in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, env={})


def _bounded() -> list[tuple[str, int | None, int | None]]:
    return [
        (dotted, f.metadata.get("low"), f.metadata.get("high"))
        for dotted, f in iter_options()
        if f.metadata.get("low") is not None or f.metadata.get("high") is not None
    ]


def test_every_number_option_has_a_range() -> None:
    bounded = {dotted for dotted, _, _ in _bounded()}
    numbers = {
        dotted
        for dotted, f in iter_options()
        if isinstance(f.default, int) and not isinstance(f.default, bool)
    }
    assert len(numbers) > 20
    assert numbers - bounded == set()


def test_every_duration_has_an_upper_bound() -> None:
    """A huge duration passed the settings and failed at run time: gc's cutoff date out of
    range (a traceback), the housekeeping thread's timer overflowing (it died)."""
    durations = [
        dotted
        for dotted, f in iter_options()
        if ("seconds" in dotted or "timeout" in dotted) and not isinstance(f.default, bool)
    ]
    assert len(durations) > 10
    assert [d for d, f in iter_options() if d in durations and f.metadata["high"] is None] == []
    # The bound is one a timer takes and a date can step back or forward by.
    assert MAX_SECONDS <= threading.TIMEOUT_MAX
    assert utcnow() - dt.timedelta(seconds=MAX_SECONDS) < utcnow() + dt.timedelta(
        seconds=MAX_SECONDS
    )


@pytest.mark.parametrize(("dotted", "low", "high"), _bounded())
def test_numbers_outside_their_range_are_refused(
    dotted: str, low: int | None, high: int | None
) -> None:
    name = env_name(dotted)
    for inside in (low, high):
        if inside is not None:
            load_settings(None, env={name: str(inside)})
    for outside in (None if low is None else low - 1, None if high is None else high + 1):
        if outside is not None:
            with pytest.raises(ConfigError, match=f"{dotted}: expected a number"):
                load_settings(None, env={name: str(outside)})


def test_a_token_secret_shorter_than_its_hash_is_refused() -> None:
    """A 1-byte signing key was taken; any token would give it away to an offline guess."""
    name = env_name("auth.token_secret")
    with pytest.raises(ConfigError, match=r"auth\.token_secret: at least 32 bytes"):
        load_settings(None, env={name: "x" * 31})
    assert load_settings(None, env={name: "x" * 32}).auth.token_secret == "x" * 32
    assert load_settings(None, env={}).auth.token_secret == ""  # one is generated


def test_a_section_line_whose_options_are_all_commented_out_is_empty(tmp_path: Path) -> None:
    """config.yaml invites uncommenting a section and its options: commented out again, the
    section line alone read as null and was refused as "unknown option(s) ...: server"."""
    text = "server:\n#  port: 9000\ndav:\n  realm: home\n"
    settings = load_settings(write_yaml(tmp_path / "c.yaml", text), env={})
    assert (settings.server.port, settings.dav.realm) == (8080, "home")
    with pytest.raises(ConfigError, match="unknown option"):
        load_settings(write_yaml(tmp_path / "d.yaml", "server: 5\n"), env={})


def test_a_yaml_boolean_is_not_a_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.threads: expected an integer"):
        load_settings(write_yaml(tmp_path / "c.yaml", "server:\n  threads: yes\n"), env={})


@pytest.mark.parametrize(
    "line",
    [
        "admin:\n  password: 0x5eed5eed5eed",  # read as 104373592874733
        "admin:\n  password: 1_234_567_8",  # read as 12345678
        "dav:\n  realm: yes",  # read as True
    ],
)
def test_a_yaml_number_or_boolean_is_not_taken_as_text(tmp_path: Path, line: str) -> None:
    """An unquoted value YAML reads as a number or a boolean was made text by str(): the
    admin's password 0x5eed5eed5eed became 104373592874733, and the written one was refused.
    Quoted, it is the text written."""
    with pytest.raises(ConfigError, match=r"expected text, got .*; quote it in YAML"):
        load_settings(write_yaml(tmp_path / "c.yaml", line + "\n"), env={})
    key, _, value = line.rpartition(": ")
    settings = load_settings(write_yaml(tmp_path / "q.yaml", f'{key}: "{value}"\n'), env={})
    section, _, name = key.partition(":\n  ")
    assert getattr(getattr(settings, section), name) == value


@pytest.mark.parametrize("given", [{"server__host": ""}, {"server__host": "  "}])
def test_an_empty_host_is_refused_before_anything_starts(given: dict[str, str]) -> None:
    """An empty host went through: the database was migrated, then cheroot's traceback."""
    with pytest.raises(ConfigError, match=r"server\.host: must not be empty"):
        load_settings(None, env={}, **given)
    with pytest.raises(ConfigError, match=r"server\.host: must not be empty"):
        load_settings(None, env={"DAVSERVER_SERVER_HOST": ""})


def test_a_choice_is_taken_in_any_case_and_kept_as_listed() -> None:
    assert load_settings(None, env={"DAVSERVER_LOGGING_LEVEL": "debug"}).logging.level == "DEBUG"
    settings = load_settings(
        None, env={"DAVSERVER_STORAGE_BACKEND": "S3", "DAVSERVER_S3_BUCKET": "b"}
    )
    assert settings.storage.backend == "s3"
    with pytest.raises(ConfigError, match=r"logging\.level: expected one of DEBUG, INFO"):
        load_settings(None, env={"DAVSERVER_LOGGING_LEVEL": "verbose"})


@pytest.mark.parametrize(
    "env",
    [
        {"DAVSERVER_SERVER_SSL_CERTIFICATE": "/etc/cert.pem"},
        {"DAVSERVER_SERVER_SSL_PRIVATE_KEY": "/etc/key.pem"},
    ],
)
def test_tls_needs_a_certificate_and_a_key(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TLS needs both"):
        load_settings(None, env=env)


@pytest.mark.parametrize("prefix", ["a/../b", "..", "./x", "site//a/"])
def test_an_s3_prefix_with_dot_or_empty_parts_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"s3\.prefix: .* has an empty, '\.' or '\.\.' part"):
        load_settings(None, env={"DAVSERVER_S3_PREFIX": prefix})


@pytest.mark.parametrize("prefix", ["", "/", "site-a", "/site-a/", "davserver/site-a/", "a..b/"])
def test_an_s3_prefix_of_plain_names_is_taken(prefix: str) -> None:
    assert load_settings(None, env={"DAVSERVER_S3_PREFIX": prefix}).s3.prefix == prefix


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- the shipped config.yaml -----------------------------------------------------------------

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<value>.*)$")


def documented_options(text: str) -> set[str]:
    """Dotted names of the options in a config.yaml, set or shown commented out.

    A line ``# key: value`` (or ``key: value``) at the left margin is a top-level option and
    ``# section:`` starts a section; indented ``#   key: value`` lines are options of that
    section. Comment lines inside (``#   # help``) are skipped.
    """
    found: set[str] = set()
    section: str | None = None
    for raw in text.splitlines():
        line = raw
        if line.startswith("#"):
            line = line[1:]
            if line.startswith(" "):
                line = line[1:]
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        indent, key, value = match["indent"], match["key"], match["value"].strip()
        if not indent:
            if value in ("", "#") or value.startswith("#"):
                section = key
            else:
                section = None
                found.add(key)
        elif section is not None:
            found.add(f"{section}.{key}")
    return found


def test_documented_options_parser() -> None:
    text = (
        "# Help text: with a colon. [X]\n# data_dir: ./data\n\n# server:\n"
        "#   # Port help. [DAVSERVER_SERVER_PORT]\n#   port: 8080\ndatabase:\n  url: ''\n"
    )
    assert documented_options(text) == {"data_dir", "server.port", "database.url"}


def test_repo_config_yaml_exists() -> None:
    assert REPO_CONFIG.is_file(), f"{REPO_CONFIG} is missing"


def test_repo_config_yaml_documents_every_option() -> None:
    assert REPO_CONFIG.is_file(), f"{REPO_CONFIG} is missing"
    text = REPO_CONFIG.read_text(encoding="utf-8")
    documented = documented_options(text)
    missing = [dotted for dotted, _ in iter_options() if dotted not in documented]
    assert missing == [], f"options missing from config.yaml: {missing}"
    unknown = sorted(documented - {dotted for dotted, _ in iter_options()})
    assert unknown == [], f"config.yaml shows options that do not exist: {unknown}"
    missing_env = [dotted for dotted, _ in iter_options() if env_name(dotted) not in text]
    assert missing_env == [], f"config.yaml does not name the environment variable of {missing_env}"


def test_repo_config_yaml_loads() -> None:
    """The file as shipped is valid YAML and valid settings (values as shown, or all commented)."""
    assert REPO_CONFIG.is_file(), f"{REPO_CONFIG} is missing"
    data = yaml.safe_load(REPO_CONFIG.read_text(encoding="utf-8"))
    assert data is None or isinstance(data, dict)
    load_settings(REPO_CONFIG, env={})


def test_trusted_proxies_are_addresses_or_networks() -> None:
    settings = load_settings(None, env={"DAVSERVER_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert [str(n) for n in trusted_networks(settings.server.trusted_proxies)] == [
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ConfigError, match=r"not an address: 'proxy\.local'"):
        load_settings(None, env={"DAVSERVER_SERVER_TRUSTED_PROXIES": "10.0.0.1, proxy.local"})
