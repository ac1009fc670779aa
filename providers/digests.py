"""Checksums clients send with an upload, and the digest we send with a download.

Uploads may carry ``OC-Checksum: SHA1:<hex>`` (ownCloud/Nextcloud clients and rclone; MD5 and
SHA256 too) or RFC 9530 ``Repr-Digest``/``Content-Digest: sha-256=:<base64>:``. Every digest we
compute is checked; a mismatch fails the upload and stores nothing. Algorithms we do not
compute are ignored, as RFC 9530 allows. GET and HEAD answer with ``Repr-Digest``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError

_OC_ALGORITHMS = {"sha1": "sha1", "md5": "md5", "sha256": "sha256", "sha-256": "sha256"}
_HEX_LENGTH = {"sha1": 40, "md5": 32, "sha256": 64}
# RFC 9530 algorithm names for the digests we compute.
_RFC9530_ALGORITHMS = {"sha-256": "sha256", "sha-1": "sha1", "md5": "md5"}
_DICT_MEMBER = re.compile(r"^\s*([a-z0-9*._-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


def expected_digests(environ: dict[str, Any]) -> dict[str, str]:
    """{"sha256"|"sha1"|"md5": hex} announced by the request; DAVError(400) if malformed."""
    expected: dict[str, str] = {}
    oc = environ.get("HTTP_OC_CHECKSUM", "").strip()
    if oc:
        for token in oc.split():
            algorithm, sep, digest = token.partition(":")
            name = _OC_ALGORITHMS.get(algorithm.lower())
            if not sep or name is None:
                continue
            _add(expected, name, digest.lower(), "OC-Checksum")
    for header in ("HTTP_REPR_DIGEST", "HTTP_CONTENT_DIGEST"):
        value = environ.get(header, "").strip()
        if not value:
            continue
        for member in value.split(","):
            match = _DICT_MEMBER.match(member)
            if match is None:
                raise DAVError(HTTP_BAD_REQUEST, context_info=f"unreadable {header[5:]} header")
            name = _RFC9530_ALGORITHMS.get(match[1])
            if name is None:
                continue
            try:
                digest = base64.b64decode(match[2], validate=True).hex()
            except binascii.Error:
                raise DAVError(HTTP_BAD_REQUEST, context_info="bad base64 in a digest") from None
            _add(expected, name, digest, header[5:].replace("_", "-").title())
    return expected


def _add(expected: dict[str, str], name: str, digest: str, source: str) -> None:
    if len(digest) != _HEX_LENGTH[name] or any(c not in "0123456789abcdef" for c in digest):
        raise DAVError(HTTP_BAD_REQUEST, context_info=f"malformed {name} digest in {source}")
    if expected.get(name, digest) != digest:
        raise DAVError(HTTP_BAD_REQUEST, context_info=f"two different {name} digests")
    expected[name] = digest


def repr_digest(sha256_hex: str) -> str:
    """The ``Repr-Digest`` header value for a representation with this SHA-256."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"
