"""What the JSON API reads from a request: its JSON body (or form fields), its query
parameters, and the fields in them, each checked, with a BadRequest that names what is wrong."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl

from davserver.errors import BadRequest, NotFound, UploadIncomplete
from davserver.http_request import BODY_DEADLINE_KEY
from davserver.services.bounds import check_days, spelled_number


class BodyTooLarge(Exception):
    """A chunked body grew past ``server.max_xml_body`` (one with a Content-Length over it
    is refused by the front before the API runs)."""


class BodyTooSlow(Exception):
    """The body did not arrive within ``BODY_SECONDS``."""


# How long an API request's body (at most ``server.max_xml_body``, 2 MiB) may take to arrive.
# ``POST /api/v1/token`` reads it before anyone has signed in: sent a byte every few seconds,
# 40 bodies held every server thread (a read waits up to ``server.request_timeout`` for each
# byte) and the health check timed out.
BODY_SECONDS = 15.0


def _read(environ: dict[str, Any], size: int) -> bytes:
    """Up to ``size`` bytes of the request's body; BodyTooSlow when they do not arrive within
    ``BODY_SECONDS`` (the server then cuts the reading off: ``http_request.BODY_DEADLINE_KEY``)."""
    limit = environ.get(BODY_DEADLINE_KEY)
    if limit is None:  # the app called without a server (tests)
        return bytes(environ["wsgi.input"].read(size))
    with limit(BODY_SECONDS) as deadline:
        try:
            raw = bytes(environ["wsgi.input"].read(size))
        except (OSError, UploadIncomplete):  # a chunked body's reader says the latter
            if not deadline.expired:
                raise
            raw = b""
    if deadline.expired:
        raise BodyTooSlow
    return raw


def read_body(environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """The request's JSON object (or form fields); BadRequest when it is neither.

    A "form" that is a JSON object is read as JSON: ``curl -d '{...}'`` labels it a form.
    A chunked body (no Content-Length: a pipe, a generator) is read up to ``limit`` bytes."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        raw = _read(environ, limit + 1)
        if len(raw) > limit:
            raise BodyTooLarge
    else:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        raw = _read(environ, length) if length > 0 else b""
    kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded" and not raw.lstrip().startswith(b"{"):
        try:
            # Strict, as for the query: bytes that are not UTF-8 read as U+FFFD would name
            # another item.
            text = raw.decode("utf-8")
            body = _fields(parse_qsl(text, errors="strict"))
        except UnicodeDecodeError:
            raise BadRequest("the body is not valid UTF-8") from None
    else:
        try:
            body = json.loads(raw or b"{}", object_pairs_hook=_fields, parse_int=_whole_number)
        except (ValueError, UnicodeDecodeError):  # a field given twice is a BadRequest
            raise BadRequest("the body is not valid JSON") from None
        except RecursionError:  # [[[[... deeper than Python's stack
            raise BadRequest("the body is nested too deeply") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
    check_text(body)
    return body


# More digits than any field takes (2^63 has 19): Python refuses past 4,300 with a ValueError
# that read as "the body is not valid JSON".
_MAX_DIGITS = 100


def _whole_number(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise BadRequest(f"a number in the body has more than {_MAX_DIGITS} digits")
    return int(text)


def _fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's (or a form's) fields; BadRequest for one given twice, which a reader
    taking the first (a proxy, an audit tool) and this one taking the last would each read
    as another request."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise BadRequest(f"the field {name!r} is given twice")
        fields[name] = value
    return fields


_MAX_DEPTH = 32  # far more than any request of this API has


def check_text(value: Any, depth: int = 0) -> None:
    """BadRequest when a string of a parsed JSON value, keys included, holds a NUL character
    (no name can hold one, and PostgreSQL refuses it in any text) or a lone surrogate
    (``"\\ud800"`` is valid JSON, but no UTF-8 carries it to the database), or when the value
    is nested deeper than ``_MAX_DEPTH``."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest("the body contains a NUL character")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("the body contains a lone surrogate (\\ud800-\\udfff)") from None
        return
    if depth > _MAX_DEPTH and isinstance(value, dict | list):
        raise BadRequest("the body is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_text(item, depth + 1)


def expiry_days(body: dict[str, Any], *, at_least: int, what: str = "expires_days") -> int | None:
    """The body's ``expires_days``: None when absent, else a whole number from ``at_least``
    to ``bounds.MAX_DAYS``; BadRequest for anything else."""
    days = body.get("expires_days")
    return None if days is None else check_days(days, at_least=at_least, what=what)


def optional_text(body: dict[str, Any], name: str) -> str | None:
    """The body's ``name`` field: None when absent, else a string."""
    value = body.get(name)
    if not isinstance(value, str | None):
        raise BadRequest(f"{name} is a string")
    return value


def query_params(environ: dict[str, Any], *names: str) -> dict[str, str]:
    """The query's parameters, each of ``names`` at most once; BadRequest for any other, so
    that a script's ``offset`` or misspelt ``limt`` is not silently ignored."""
    query: dict[str, str] = {}
    try:
        # Strict: bytes that are not UTF-8 read as U+FFFD would name another item.
        pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the query is not valid UTF-8") from None
    for name, value in pairs:
        if name not in names:
            takes = ", ".join(names) or "no parameters"
            raise BadRequest(f"unknown query parameter {name!r}; this endpoint takes {takes}")
        if name in query:
            raise BadRequest(f"the query parameter {name!r} is given twice")
        query[name] = value
    return query


def query_number(query: dict[str, str], name: str, at_most: int, *, at_least: int) -> int | None:
    """The query's ``name``: None when absent, else a whole number in range; BadRequest."""
    text = query.get(name)
    if text is None:
        return None
    number = spelled_number(text, at_most) if text.isascii() and text.isdigit() else None
    if number is None or number < at_least:
        raise BadRequest(f"{name} is a whole number from {at_least} to {at_most}")
    return number


def required_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} is required (a string)")
    return value


def parse_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound("no such item") from None
