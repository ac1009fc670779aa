"""Portable column types shared by every model (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import mapped_column


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on both engines.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored naive in UTC
    and given back their UTC zone on load. Naive values are refused on the way in.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# The earliest and latest aware UTC times: "never" and "for good" where a time is compared.
NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)
FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class InetType(sa.TypeDecorator[str]):
    """INET on PostgreSQL, text elsewhere; an address is a string either way (psycopg reads
    INET as an ``ipaddress`` object, which JSON and comparisons with text trip over)."""

    impl = sa.String(45)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.INET())
        return dialect.type_descriptor(sa.String(45))

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else str(value)


uuid_pk = Annotated[uuid.UUID, mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)]
bigint_pk = Annotated[
    int,
    mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
]
created_at = Annotated[dt.datetime, mapped_column(UTCDateTime, default=utcnow, nullable=False)]
timestamp = Annotated[dt.datetime, mapped_column(UTCDateTime, nullable=False)]
timestamp_or_none = Annotated[dt.datetime | None, mapped_column(UTCDateTime, nullable=True)]
