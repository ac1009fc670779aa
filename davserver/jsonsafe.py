"""JSON-safe forms of the values services return (UUIDs, datetimes, sets), for every JSON
output: the CLI's --json and the JSON API."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """A JSON-safe form of a value from a row."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)  # PostgreSQL's INET
    if isinstance(value, frozenset | set):
        return sorted(plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value
