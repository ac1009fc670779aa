"""Settings: one schema, loaded once from config.yaml plus environment overrides.

Every option is a dataclass field with a default, a type and a help text (``metadata["help"]``).
The environment variable for an option is ``DAVSERVER_`` + section + ``_`` + key, upper-cased
(``database.url`` -> ``DAVSERVER_DATABASE_URL``); top-level options drop the section
(``data_dir`` -> ``DAVSERVER_DATA_DIR``). Settings are frozen and passed to constructors; nothing
reads them from a global.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "DAVSERVER_"


def opt(default: Any, help: str) -> Any:
    """A settings field with its help text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerSettings:
    host: str = opt("127.0.0.1", "Address to listen on; 0.0.0.0 for every interface.")
    port: int = opt(8080, "TCP port to listen on.")
    threads: int = opt(
        32, "Threads per server process; each request, upload or download holds one."
    )
    workers: int = opt(
        1,
        "Server processes sharing the port (Linux); each has its own threads and database"
        " pool. One process computes on one core at a time: use about one per core (0: one"
        " per CPU).",
    )
    block_size: int = opt(256 * 1024, "Bytes per read or write when streaming bodies.")
    max_xml_body: int = opt(1024 * 1024, "Largest PROPFIND/PROPPATCH/LOCK body accepted (413).")
    request_timeout: int = opt(60, "Seconds a connection may stay idle before it is closed.")
    keep_alive_connections: int = opt(
        500,
        "Idle keep-alive connections kept open per server process (each mounted drive holds"
        " one); past this an answer closes its connection. Each takes a file descriptor.",
    )
    malloc_arenas: int = opt(
        2,
        "glibc malloc arenas shared by all threads (0: glibc's default, 8 per core).",
    )
    ssl_certificate: str = opt("", "PEM certificate file; TLS is on when this and the key are set.")
    ssl_private_key: str = opt("", "PEM private key file for TLS.")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = opt("", "SQLAlchemy URL; empty means SQLite at <data_dir>/davserver.sqlite3.")
    pool_size: int = opt(10, "Connections kept open per server process (PostgreSQL).")
    echo: bool = opt(False, "Log every SQL statement (debugging only).")
    ping_after_idle_seconds: int = opt(
        1,
        "A pooled connection unused this long is checked (one round trip) before its next use,"
        " and replaced if the server dropped it (PostgreSQL); 0 checks it at every use.",
    )
    reconnect_after_seconds: int = opt(
        600,
        "A pooled connection this old is closed and replaced at its next use (PostgreSQL), and"
        " its prepared statements with it: PostgreSQL plans them again for the tables as they"
        " are then. Otherwise a plan made while a table was small lasts as long as the"
        " connection, when autovacuum (which analyses growing tables, and so makes PostgreSQL"
        " plan again) is off. 0 keeps connections open for good.",
    )


@dataclass(frozen=True)
class StorageSettings:
    blob_dir: str = opt("", "Folder of the blob store; empty means <data_dir>/blobs.")
    fsync: bool = opt(True, "Make each blob durable (fsync) before its version is committed.")


@dataclass(frozen=True)
class AdminSettings:
    user: str = opt("admin", "Username of the first admin, created on start if missing.")
    password: str = opt("", "Password of the first admin; empty means generate and print once.")


@dataclass(frozen=True)
class DavSettings:
    realm: str = opt("davserver", "Realm shown in the Basic authentication prompt.")
    lock_max_timeout: int = opt(7 * 24 * 3600, "Longest lock lifetime a client may ask for (s).")


@dataclass(frozen=True)
class AuthSettings:
    credential_cache_seconds: int = opt(
        300, "Seconds a verified Basic password is recognised without hashing after its last use."
    )
    access_token_seconds: int = opt(900, "Lifetime of a Bearer access token from /api/v1/token.")
    refresh_token_days: int = opt(30, "Lifetime of a refresh token; each one works only once.")
    token_secret: str = opt(
        "", "Key signing access tokens; empty means one generated once and kept in the database."
    )
    session_idle_seconds: int = opt(
        1800, "A client's session ends after this long without a request; the next one starts anew."
    )
    max_failures_per_user: int = opt(
        5, "Failed logins for one account within the window before it is locked (429)."
    )
    max_failures_per_address: int = opt(
        20, "Failed logins from one client address within the window before it is locked (429)."
    )
    failure_window_seconds: int = opt(900, "Window in which failed logins are counted.")
    ban_seconds: int = opt(900, "How long a locked account or address is refused.")


@dataclass(frozen=True)
class MaintenanceSettings:
    gc_grace_seconds: int = opt(
        3600,
        "gc leaves blobs, orphan files and upload leftovers younger than this alone (s).",
    )
    housekeeping_seconds: int = opt(
        3600,
        "A running server purges expired trash items and packages this often (s; 0: never).",
    )


@dataclass(frozen=True)
class PackageSettings:
    default_expiry_days: int = opt(
        30,
        "Days a package lives when its creator names no expiry (MKCOL, or the API and CLI"
        " without one); 0: until deleted.",
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
    default_quality: int = opt(80, "Quality level when a request names none; one of qualities.")
    input_formats: str = opt(
        "JPEG,PNG,WEBP,GIF,TIFF,BMP",
        "Source formats converted, recognised by content (Pillow names); others get 415.",
    )
    max_pixels: int = opt(
        50_000_000, "Largest source converted (width x height); larger ones get 422 (bombs)."
    )
    workers: int = opt(
        2, "Conversions run at once per server process, each in a worker process of its own."
    )
    memory_limit_mb: int = opt(
        1024, "Address space of each worker process (MiB); a conversion needing more gets 422."
    )
    timeout: int = opt(30, "Seconds one conversion may take before its worker is killed (422).")
    render_on_upload: bool = opt(
        False, "Make the thumbnail sizes in the background as soon as an image is uploaded."
    )


@dataclass(frozen=True)
class VersionSettings:
    keep_last: int = opt(
        50, "Versions kept per file, newest first (0: all); the current one always stays."
    )
    thin_after_days: int = opt(
        30, "Versions older than this many days are thinned to the last of each day (0: never)."
    )
    coalesce_seconds: int = opt(
        0,
        "An upload by the same user this soon after the file's previous version replaces that "
        "version instead of adding one (0: off; uploads under one lock always coalesce).",
    )


@dataclass(frozen=True)
class TrashSettings:
    retention_days: int = opt(
        30, "Deleted items are purged for good this many days after deletion (0: never)."
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = opt("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")
    query_header: bool = opt(
        False, "Add X-Query-Count (SQL statements run) to every response; for benchmarks."
    )


@dataclass(frozen=True)
class Settings:
    data_dir: str = opt("./data", "Folder for the SQLite database and blobs when no URL is set.")
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    dav: DavSettings = field(default_factory=DavSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    packages: PackageSettings = field(default_factory=PackageSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    versions: VersionSettings = field(default_factory=VersionSettings)
    trash: TrashSettings = field(default_factory=TrashSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'davserver.sqlite3'}"

    @property
    def blob_path(self) -> Path:
        return Path(self.storage.blob_dir or Path(self.data_dir) / "blobs").resolve()


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


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then the YAML file, then the environment, then overrides.

    ``overrides`` use dotted names with ``__`` for the dot (``server__port=8081``).
    Raises ConfigError on unknown keys or values of the wrong type.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        values = _flatten(loaded)
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


def _coerce(dotted: str, kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{dotted}: expected true or false, got {value!r}")
    if kind is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}") from None
    if kind is str:
        return "" if value is None else str(value)
    if isinstance(kind, types.UnionType):
        return value
    raise ConfigError(f"{dotted}: unsupported type {kind!r}")


def _build(values: Mapping[str, Any]) -> Settings:
    top: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = _field_type(Settings, f)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            sub_kwargs = {
                sub.name: _coerce(f"{f.name}.{sub.name}", _field_type(kind, sub), values[key])
                for sub in dataclasses.fields(kind)
                if (key := f"{f.name}.{sub.name}") in values
            }
            top[f.name] = kind(**sub_kwargs)
        elif f.name in values:
            top[f.name] = _coerce(f.name, kind, values[f.name])
    return Settings(**top)


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
        lines.append(f"{indent if head else ''}# {f.metadata['help']} [{env_name(dotted)}]")
        lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + "\n"
