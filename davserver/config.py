"""Settings: one schema, loaded once from config.yaml plus environment overrides.

Every option is a dataclass field with a default, a type and a help text (``metadata["help"]``).
The environment variable for an option is ``DAVSERVER_`` + section + ``_`` + key, upper-cased
(``database.url`` -> ``DAVSERVER_DATABASE_URL``); top-level options drop the section
(``data_dir`` -> ``DAVSERVER_DATA_DIR``). Settings are frozen and passed to constructors; nothing
reads them from a global.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "DAVSERVER_"
# The longest span in days any option, expiry or retention takes: a hundred years, far from
# the year 9999 where Python's datetimes end (davserver.services.bounds uses it too).
MAX_DAYS = 36_500
MIN_TOKEN_SECRET = 32  # bytes
MAX_SECONDS = MAX_DAYS * 86_400  # a duration's bound: dates and timers stay in range


def opt(
    default: Any,
    help: str,
    *,
    low: int | None = None,
    high: int | None = None,
    choices: tuple[str, ...] = (),
    required: bool = False,
) -> Any:
    """A settings field with its help text, and for a number its range ``low..high``, for a
    text the ``choices`` it may take (compared without case), or whether it must not be
    empty (``required``)."""
    metadata = {"help": help, "low": low, "high": high, "choices": choices, "required": required}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerSettings:
    host: str = opt(
        "127.0.0.1", "Address to listen on; 0.0.0.0 for every interface.", required=True
    )
    port: int = opt(8080, "TCP port to listen on (0: any free one).", low=0, high=65535)
    threads: int = opt(
        32,
        "Threads per server process; each request, upload or download holds one.",
        low=1,
        high=1000,
    )
    workers: int = opt(
        1,
        "Server processes sharing the port (Linux); each has its own threads and database"
        " pool. One process computes on one core at a time: use about one per core (0: one"
        " per CPU).",
        low=0,
        high=256,
    )
    block_size: int = opt(
        256 * 1024,
        "Bytes per read or write when streaming bodies.",
        low=4096,
        high=16 * 1024 * 1024,
    )
    max_xml_body: int = opt(
        1024 * 1024, "Largest PROPFIND/PROPPATCH/LOCK body accepted (413).", low=4096
    )
    request_timeout: int = opt(
        60, "Seconds a connection may stay idle before it is closed.", low=1, high=MAX_SECONDS
    )
    header_timeout: int = opt(
        20,
        "Seconds a client has, once it starts a request, for its request line and headers (and"
        " a new connection's TLS handshake); a slower one is cut off.",
        low=1,
        high=MAX_SECONDS,
    )
    keep_alive_connections: int = opt(
        500,
        "Idle keep-alive connections kept open per server process (each mounted drive holds"
        " one); past this an answer closes its connection. Each takes a file descriptor.",
        low=0,
    )
    malloc_arenas: int = opt(
        2,
        "glibc malloc arenas shared by all threads (0: glibc's default, 8 per core).",
        low=0,
        high=1024,
    )
    ssl_certificate: str = opt("", "PEM certificate file; TLS is on when this and the key are set.")
    ssl_private_key: str = opt("", "PEM private key file for TLS.")
    tls_reload_seconds: int = opt(
        60,
        "How often the certificate and key files are looked at for a new pair (a renewal),"
        " which new connections then get without a restart; SIGHUP loads them at once."
        " 0: only on SIGHUP.",
        low=0,
        high=MAX_SECONDS,
    )
    trusted_proxies: str = opt(
        "",
        "Reverse proxies or load balancers in front of the server (comma-separated addresses"
        " or networks, such as 10.0.0.0/8): from them the client's address is taken from"
        " X-Forwarded-For, for throttling, sessions and the logbook. Empty: nobody's.",
    )
    metrics: bool = opt(
        True,
        "GET /metrics answers admins (an admin's read-only API key, say) with request counts,"
        " durations and process figures in Prometheus's text format, summed over the worker"
        " processes.",
    )

    def __post_init__(self) -> None:
        """The rules between options, checked wherever settings are made."""
        trusted_networks(self.trusted_proxies)  # a typo stops the start, not a request
        if bool(self.ssl_certificate) != bool(self.ssl_private_key):
            given, missing = (
                ("ssl_certificate", "ssl_private_key")
                if self.ssl_certificate
                else ("ssl_private_key", "ssl_certificate")
            )
            raise ConfigError(
                f"server.{given} is set but server.{missing} is not: TLS needs both (or neither)"
            )


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = opt("", "SQLAlchemy URL; empty means SQLite at <data_dir>/davserver.sqlite3.")
    pool_size: int = opt(10, "Connections kept open per server process (PostgreSQL).", low=1)
    echo: bool = opt(False, "Log every SQL statement (debugging only).")
    ping_after_idle_seconds: int = opt(
        1,
        "A pooled connection unused this long is checked (one round trip) before its next use,"
        " and replaced if the server dropped it (PostgreSQL); 0 checks it at every use.",
        low=0,
        high=MAX_SECONDS,
    )
    reconnect_after_seconds: int = opt(
        600,
        "A pooled connection this old is closed and replaced at its next use (PostgreSQL), and"
        " its prepared statements with it: PostgreSQL plans them again for the tables as they"
        " are then. Otherwise a plan made while a table was small lasts as long as the"
        " connection, when autovacuum (which analyses growing tables, and so makes PostgreSQL"
        " plan again) is off. 0 keeps connections open for good.",
        low=0,
        high=MAX_SECONDS,
    )


@dataclass(frozen=True)
class StorageSettings:
    backend: str = opt(
        "filesystem",
        "Where blob bytes live: filesystem (in blob_dir) or s3 (an S3-compatible object store,"
        " the s3 section; uploads wait in blob_dir/tmp until their hash is known).",
        choices=("filesystem", "s3"),
    )
    blob_dir: str = opt("", "Folder of the blob store; empty means <data_dir>/blobs.")
    fsync: bool = opt(
        True,
        "Make each upload durable before it is answered: its blob is flushed (fsync) before its"
        " version is committed, and SQLite flushes each commit (synchronous=FULL, else NORMAL),"
        " so a power cut loses no answered upload.",
    )


@dataclass(frozen=True)
class S3Settings:
    bucket: str = opt("", "Bucket holding the blobs (storage.backend s3); it must exist.")
    prefix: str = opt(
        "", "Key prefix in the bucket, such as davserver/ (empty: the bucket's top level)."
    )
    endpoint_url: str = opt(
        "",
        "URL of an S3-compatible store (MinIO, SeaweedFS, Ceph, Garage); empty: AWS S3.",
    )
    region: str = opt("", "Region of the bucket; empty: boto3's default.")
    access_key_id: str = opt(
        "",
        "Access key; empty: boto3's own chain (AWS_ACCESS_KEY_ID, ~/.aws, an instance role).",
    )
    secret_access_key: str = opt("", "Secret key of access_key_id.")
    addressing_style: str = opt(
        "auto",
        "path (http://host/bucket/key, what most self-hosted stores need), virtual"
        " (http://bucket.host/key), or auto (boto3 chooses).",
        choices=("auto", "path", "virtual"),
    )


@dataclass(frozen=True)
class AdminSettings:
    user: str = opt("admin", "Username of the first admin, created on start if missing.")
    password: str = opt(
        "",
        "Password of the first admin (8 characters at least); empty means generate and print once.",
    )


@dataclass(frozen=True)
class DavSettings:
    realm: str = opt("davserver", "Realm shown in the Basic authentication prompt.")
    lock_max_timeout: int = opt(
        7 * 24 * 3600, "Longest lock lifetime a client may ask for (s).", low=1, high=MAX_SECONDS
    )


@dataclass(frozen=True)
class AuthSettings:
    credential_cache_seconds: int = opt(
        300,
        "Seconds a verified Basic password is recognised without hashing after its last use.",
        low=0,
        high=MAX_SECONDS,
    )
    access_token_seconds: int = opt(
        900, "Lifetime of a Bearer access token from /api/v1/token.", low=1, high=MAX_SECONDS
    )
    refresh_token_days: int = opt(
        30, "Lifetime of a refresh token; each one works only once.", low=1, high=MAX_DAYS
    )
    token_secret: str = opt(
        "",
        "Key signing access tokens, at least 32 bytes; empty means one generated once and kept"
        " in the database.",
    )
    session_idle_seconds: int = opt(
        1800,
        "A client's session ends after this long without a request; the next one starts anew.",
        low=1,
        high=MAX_SECONDS,
    )
    max_failures_per_user: int = opt(
        5, "Failed logins for one account within the window before it is locked (429).", low=1
    )
    max_failures_per_address: int = opt(
        20,
        "Failed logins from one client address within the window before it is locked (429).",
        low=1,
    )
    failure_window_seconds: int = opt(
        900, "Window in which failed logins are counted.", low=1, high=MAX_SECONDS
    )
    ban_seconds: int = opt(
        900, "How long a locked account or address is refused.", low=0, high=MAX_SECONDS
    )


@dataclass(frozen=True)
class MaintenanceSettings:
    gc_grace_seconds: int = opt(
        3600,
        "gc leaves blobs, orphan files and upload leftovers younger than this alone (s).",
        low=0,
        high=MAX_SECONDS,
    )
    housekeeping_seconds: int = opt(
        3600,
        "A running server purges expired trash items, packages and refresh tokens, and logbook"
        " rows past logbook_retention_days, this often (s; 0: never; then run `davserver"
        " housekeeping` from cron, or nothing is pruned).",
        low=0,
        high=MAX_SECONDS,
    )
    logbook_retention_days: int = opt(
        0,
        "Logbook rows older than this many days are deleted by the running server's"
        " housekeeping, or `davserver housekeeping` (0: kept for ever). They name users,"
        " items, client addresses and user agents: privacy rules may ask for a limit.",
        low=0,
        high=MAX_DAYS,
    )


@dataclass(frozen=True)
class PackageSettings:
    default_expiry_days: int = opt(
        30,
        "Days a package lives when its creator names no expiry (MKCOL, or the API and CLI"
        " without one); 0: until deleted.",
        low=0,
        high=MAX_DAYS,
    )


@dataclass(frozen=True)
class ImageSettings:
    thumbnail_sizes: str = opt(
        "64,256", "Sizes (px, longer side) a client may ask for as ?thumbnail=N; comma-separated."
    )
    preview_sizes: str = opt(
        "1024,2048", "Sizes (px, longer side) a client may ask for as ?preview=N; comma-separated."
    )
    qualities: str = opt(
        "60,80,90", "Quality levels (1-95) a client may ask for as &quality=N (JPEG and WebP)."
    )
    default_quality: int = opt(
        80, "Quality level when a request names none; one of qualities.", low=1, high=95
    )
    input_formats: str = opt(
        "JPEG,PNG,WEBP,GIF,TIFF,BMP",
        "Source formats converted, recognised by content (Pillow names); others get 415.",
    )
    max_pixels: int = opt(
        50_000_000, "Largest source converted (width x height); larger ones get 422 (bombs).", low=1
    )
    workers: int = opt(
        2,
        "Conversions run at once per server process, each in a worker process of its own.",
        low=1,
        high=64,
    )
    memory_limit_mb: int = opt(
        1024,
        "Address space of each worker process (MiB); a conversion needing more gets 422.",
        low=64,
    )
    timeout: int = opt(
        30,
        "Seconds one conversion may take before its worker is killed (422).",
        low=1,
        high=MAX_SECONDS,
    )
    render_on_upload: bool = opt(
        False, "Make the thumbnail sizes in the background as soon as an image is uploaded."
    )


@dataclass(frozen=True)
class VersionSettings:
    keep_last: int = opt(
        50, "Versions kept per file, newest first (0: all); the current one always stays.", low=0
    )
    thin_after_days: int = opt(
        30,
        "Versions older than this many days are thinned to the last of each day (0: never).",
        low=0,
        high=MAX_DAYS,
    )
    coalesce_seconds: int = opt(
        0,
        "An upload by the same user this soon after the file's previous version replaces that "
        "version instead of adding one (0: off; uploads under one lock always coalesce).",
        low=0,
        high=MAX_SECONDS,
    )


@dataclass(frozen=True)
class TrashSettings:
    enabled: bool = opt(
        True,
        "DELETE moves items to the trash, where they can be restored until purged; false:"
        " DELETE removes them for good at once, and housekeeping purges whatever else is in"
        " the trash (items replaced by a MOVE or COPY onto them, and those deleted before).",
    )
    retention_days: int = opt(
        30,
        "Deleted items are purged for good this many days after deletion (0: never).",
        low=0,
        high=MAX_DAYS,
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = opt(
        "INFO",
        "How much the server logs.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    query_header: bool = opt(
        False, "Add X-Query-Count (SQL statements run) to every response; for benchmarks."
    )


@dataclass(frozen=True)
class Settings:
    data_dir: str = opt("./data", "Folder for the SQLite database and blobs when no URL is set.")
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    dav: DavSettings = field(default_factory=DavSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    packages: PackageSettings = field(default_factory=PackageSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    versions: VersionSettings = field(default_factory=VersionSettings)
    trash: TrashSettings = field(default_factory=TrashSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def __post_init__(self) -> None:
        if self.auth.token_secret and len(self.auth.token_secret.encode()) < MIN_TOKEN_SECRET:
            raise ConfigError(
                f"auth.token_secret: at least {MIN_TOKEN_SECRET} bytes, as long as the hash"
                " that signs with it (HS256); shorter ones can be guessed offline from any"
                " token. Leave it empty to have one generated"
            )
        if self.storage.backend == "s3" and not self.s3.bucket:
            raise ConfigError("storage.backend is s3 but s3.bucket is not set")
        endpoint = urlsplit(self.s3.endpoint_url or "")
        if self.s3.endpoint_url and (
            endpoint.scheme not in ("http", "https") or not endpoint.hostname
        ):
            raise ConfigError(
                f"s3.endpoint_url: {self.s3.endpoint_url!r} is not a URL; expected"
                " http://host:port or https://host"
            )
        segments = self.s3.prefix.strip("/").split("/")
        if self.s3.prefix.strip("/") and any(s in ("", ".", "..") for s in segments):
            # Keys are taken literally by AWS, but stores that map them onto paths (SeaweedFS's
            # filer, a gateway over a file system) would resolve them elsewhere.
            raise ConfigError(
                f"s3.prefix: {self.s3.prefix!r} has an empty, '.' or '..' part; use names"
                " separated by single slashes, such as davserver/site-a/"
            )

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'davserver.sqlite3'}"

    @property
    def blob_path(self) -> Path:
        return Path(self.storage.blob_dir or Path(self.data_dir) / "blobs").resolve()


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def trusted_networks(text: str) -> Networks:
    """The ``server.trusted_proxies`` setting: comma-separated addresses or networks.

    Raises ConfigError (naming the entry) for one that is neither.
    """
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(f"server.trusted_proxies: not an address: {entry!r}") from None
    return tuple(networks)


class ConfigError(ValueError):
    """A config file or environment value that does not fit the schema."""


def iter_options() -> typing.Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every option as (dotted name, field), top-level first."""
    for f in dataclasses.fields(Settings):
        if dataclasses.is_dataclass(_field_type(Settings, f)):
            for sub in dataclasses.fields(_field_type(Settings, f)):
                yield f"{f.name}.{sub.name}", sub
        else:
            yield f.name, f


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


# Variables of the test suite (DAVSERVER_TEST_PG), not options.
_TEST_PREFIX = ENV_PREFIX + "TEST_"


def unknown_environment(env: Mapping[str, str] | None = None) -> list[str]:
    """What to say of each ``DAVSERVER_`` variable that names no option, with the one it may
    have meant. Such a variable is ignored, so a misspelt ``DAVSERVER_DATABASE_URL`` left a
    server on SQLite without a word."""
    env = os.environ if env is None else env
    names = sorted(env_name(dotted) for dotted, _ in iter_options())
    problems = []
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable.startswith(_TEST_PREFIX):
            continue
        if variable in names:
            continue
        # By what follows the prefix, which every name shares.
        suffixes = [name.removeprefix(ENV_PREFIX) for name in names]
        close = difflib.get_close_matches(
            variable.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.8
        )
        meant = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        problems.append(f"{variable} names no option and is ignored{meant}")
    return problems


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    required: bool = False,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then the YAML file, then the environment, then overrides.

    A missing file means defaults, unless it is ``required`` (named by the user).
    ``overrides`` use dotted names with ``__`` for the dot (``server__port=8081``).
    Raises ConfigError on unreadable or malformed files, unknown keys, values of the wrong
    type or out of their range, and settings that contradict each other.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None and (required or Path(path).exists()):
        values = _flatten(_without_empty_sections(_read_yaml(path)))
    known = dict(iter_options())
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) in {path}: {', '.join(unknown)}")
    for dotted in known:
        if env_name(dotted) in env:
            values[dotted] = env[env_name(dotted)]
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted not in known:
            raise ConfigError(f"unknown option: {dotted}")
        if value is not None:
            values[dotted] = value
    return _build(values)


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return loaded


def _yaml_problem(exc: Exception) -> str:
    """What is wrong, and where, on one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def _without_empty_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the section lines that hold nothing (``server:`` left in when its
    options were commented out again, as config.yaml invites): YAML reads them as null, which
    was refused as an unknown option named like the section."""
    sections = {
        f.name
        for f in dataclasses.fields(Settings)
        if dataclasses.is_dataclass(_field_type(Settings, f))
    }
    return {key: value for key, value in data.items() if not (key in sections and value is None)}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _field_type(cls: type, f: dataclasses.Field[Any]) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _coerce(dotted: str, f: dataclasses.Field[Any], kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        # An empty value (DAVSERVER_TRASH_ENABLED=) is no answer: taken as false, it purged
        # every deletion at once.
        raise ConfigError(f"{dotted}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, (bool, float)):  # YAML's yes/no, or 0.9 (int() made it 0)
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}") from None
        return _in_range(dotted, f, number)
    if kind is str:
        if isinstance(value, bool | int | float):
            # YAML reads an unquoted 0x5eed or 1_000 as a number and yes as true: as text it
            # was another password (104373592874733), 'True' a realm.
            raise ConfigError(f"{dotted}: expected text, got {value!r}; quote it in YAML")
        text = "" if value is None else str(value)
        if f.metadata.get("required") and not text.strip():
            raise ConfigError(f"{dotted}: must not be empty")
        choices = f.metadata.get("choices") or ()
        if choices:
            chosen = {choice.lower(): choice for choice in choices}.get(text.lower())
            if chosen is None:
                raise ConfigError(f"{dotted}: expected one of {', '.join(choices)}, got {text!r}")
            return chosen
        return text
    if isinstance(kind, types.UnionType):
        return value
    raise ConfigError(f"{dotted}: unsupported type {kind!r}")


def _in_range(dotted: str, f: dataclasses.Field[Any], number: int) -> int:
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if (low is not None and number < low) or (high is not None and number > high):
        if high is None:
            expected = f"at least {low}"
        elif low is None:
            expected = f"at most {high}"
        else:
            expected = f"from {low} to {high}"
        raise ConfigError(f"{dotted}: expected a number {expected}, got {number}")
    return number


def _build(values: Mapping[str, Any]) -> Settings:
    top: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = _field_type(Settings, f)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            sub_kwargs = {
                sub.name: _coerce(f"{f.name}.{sub.name}", sub, _field_type(kind, sub), values[key])
                for sub in dataclasses.fields(kind)
                if (key := f"{f.name}.{sub.name}") in values
            }
            top[f.name] = kind(**sub_kwargs)
        elif f.name in values:
            top[f.name] = _coerce(f.name, f, kind, values[f.name])
    return Settings(**top)


def _range_text(f: dataclasses.Field[Any]) -> str:
    low, high, choices = f.metadata["low"], f.metadata["high"], f.metadata["choices"]
    if choices:
        return f" One of {', '.join(choices)}."
    if low is not None and high is not None:
        return f" From {low} to {high}."
    if low is not None:
        return f" At least {low}."
    return ""


def documented_defaults() -> str:
    """config.yaml text with every option commented out at its default, with help and env name."""
    lines = [
        "# davserver settings. Every option is shown at its default, commented out; uncomment to",
        "# change it. Each can also be set by the environment variable named beside it, which",
        "# wins over this file. To change a nested option, uncomment its section line as well.",
        "# Regenerate this file with `davserver config`.",
        "",
    ]
    section = None
    for dotted, f in iter_options():
        head, _, key = dotted.rpartition(".")
        if head != section and head:
            lines += ["", f"# {head}:"]
            section = head
        default = f.default if f.default is not dataclasses.MISSING else None
        value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        indent = "#   " if head else "# "
        help_text = f.metadata["help"] + _range_text(f)
        lines.append(f"{indent if head else ''}# {help_text} [{env_name(dotted)}]")
        lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + "\n"
