"""What every CLI command shares: the deployment's services, and output for people or scripts.

People get aligned tables; ``--json`` gives scripts one JSON document (a list for listings, an
object for one item). Values are made JSON-safe (``davserver.jsonsafe.plain``: UUIDs, datetimes)
so commands pass rows as they come.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from davserver.config import ConfigError, Settings, load_settings
from davserver.context import Services
from davserver.errors import BadRequest
from davserver.jsonsafe import plain
from davserver.services.bounds import check_days, parse_time
from davserver.services.maintenance import Progress

DEFAULT_CONFIG = "config.yaml"


def settings_of(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings from ``--config`` (which must exist), or ./config.yaml when present."""
    named = args.config is not None
    return load_settings(args.config if named else DEFAULT_CONFIG, required=named, **overrides)


@contextmanager
def open_services(args: argparse.Namespace) -> Iterator[Services]:
    """The services for the settings the command line names, their folders made as ``serve``
    makes them; the schema is brought up to date."""
    from davserver.bootstrap import make_folders
    from davserver.db.migrate import upgrade

    settings = settings_of(args)
    require_sqlite_file(settings)
    make_folders(settings)
    services = Services(settings)
    try:
        upgrade(services.db)
        yield services
    finally:
        services.close()


def require_sqlite_file(settings: Settings) -> None:
    """ConfigError when the settings name a SQLite file that does not exist. Commands work
    on a deployment that ``serve`` or ``db upgrade`` made: run from another folder (cron
    runs in $HOME, where ./data is not the server's) or with a mistyped data_dir, they
    would otherwise make a new, empty database and answer from it."""
    from davserver.db.engine import check_url

    url = check_url(settings.database_url)  # ConfigError when it is no database URL
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if not Path(path).exists():
        raise ConfigError(
            f"no database at {path}: name the server's settings (--config, "
            "DAVSERVER_DATA_DIR, DAVSERVER_DATABASE_URL), or create it with davserver db upgrade"
        )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _cell(value: Any) -> str:
    value = plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return _printable(",".join(str(v) for v in value)) or "-"
    return _printable(str(value))


def _printable(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``. File names may hold the C1
    controls (U+0080 to U+009F; XML allows them), and a terminal takes U+009B for the start of
    an escape sequence and U+0085 for a new line: a name in a table could recolour or clear
    an admin's screen, or forge rows. ``--json`` escapes them as JSON does."""
    if text.isprintable():
        return text
    return "".join(f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text)


def emit_rows(
    args: argparse.Namespace, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """A listing: a table with the given columns, or with --json every field of every row."""
    if getattr(args, "json", False):
        json.dump([plain(row) for row in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


def emit_item(args: argparse.Namespace, item: Mapping[str, Any]) -> None:
    """One item: ``key: value`` lines, or with --json one object."""
    if getattr(args, "json", False):
        json.dump(plain(item), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    width = max((len(k) for k in item), default=0)
    for key, value in item.items():
        sys.stdout.write(f"{key.ljust(width)}  {_cell(value)}\n")


PROGRESS_EVERY = 1.0  # seconds between progress lines


class ProgressLine:
    """Prints the newest progress to stderr at most once per ``PROGRESS_EVERY`` seconds, so
    short runs print nothing."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.last = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        count = f"{progress.done}" + (f"/{progress.total}" if progress.total is not None else "")
        line = f"{self.command}: {progress.phase} {count}"
        if progress.bytes_total:
            share = 100 * progress.bytes_done / progress.bytes_total
            done, total = human_size(progress.bytes_done), human_size(progress.bytes_total)
            line += f", {done} of {total}"
            line += f" ({share:.0f}%)"
        elif progress.bytes_done:
            line += f", {human_size(progress.bytes_done)}"
        print(line, file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def whole_number(at_least: int, at_most: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``at_least`` to ``at_most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not at_least <= value <= at_most:
            raise argparse.ArgumentTypeError(f"must be from {at_least} to {at_most}")
        return value

    return parse


def days(at_least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of days from ``at_least`` to ``bounds.MAX_DAYS``."""

    def parse(text: str) -> int:
        try:
            return check_days(int(text), at_least=at_least, what="DAYS")
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
        except BadRequest as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def timestamp(text: str) -> dt.datetime:
    """An argparse type: an ISO 8601 time, in UTC when it names no offset."""
    try:
        return parse_time(text)
    except BadRequest:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def item_path(text: str) -> tuple[str, str]:
    """``OWNER:/path`` or ``@GROUP:/path`` -> (space, path), for argparse. Doubled slashes
    (``"$DIR/"`` with DIR ending in one) mean one, as in a shell."""
    space, colon, path = text.partition(":")
    if not colon or not space:
        raise argparse.ArgumentTypeError(
            f"name an item as OWNER:/path or @GROUP:/path, not {text!r}"
        )
    return space, re.sub("/{2,}", "/", path) or "/"
