"""Password hashing through passlib's API (the maintained ``libpass`` distribution).

argon2id for new hashes; bcrypt hashes from imported accounts still verify and are flagged for
an upgrade to argon2 on the next successful login. Inputs longer than MAX_PASSWORD_BYTES are
refused before any hashing, so a huge password costs nothing. At most ``max_concurrent``
hashes run at once (argon2 takes 19 MiB each), so a burst of logins cannot exhaust memory.
Passwords are compared in Unicode's composed form (NFC), whatever form a client sends.
"""

from __future__ import annotations

import threading
import unicodedata

from passlib.context import CryptContext

MAX_PASSWORD_BYTES = 1024
_BCRYPT = ("$2a$", "$2b$", "$2y$")
_BCRYPT_BYTES = 72

# argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane): a login costs ~20 ms and
# 19 MiB rather than the library default of 64 MiB.
_context = CryptContext(
    schemes=["argon2", "bcrypt"],
    deprecated=["bcrypt"],
    argon2__memory_cost=19456,
    argon2__time_cost=2,
    argon2__parallelism=1,
)


class PasswordHasher:
    def __init__(self, *, max_concurrent: int = 4) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # A fixed hash to verify against when the user does not exist, so unknown users
        # cost the same time as wrong passwords.
        self._dummy_hash = _context.hash("davserver-dummy-password")

    def hash(self, password: str) -> str:
        with self._slots:
            return _context.hash(_composed(password))

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """(matches, replacement hash or None). Unknown hash formats never match.

        Passwords are hashed in Unicode's composed form (NFC), as RFC 8265 prepares them: "é"
        typed on a Mac may arrive as "e" and a combining accent, on Windows as one character.
        A hash stored before that is of whichever form its owner typed, so a non-ASCII password
        that does not match composed is tried as given and decomposed, and a match there is
        replaced by the composed form's hash."""
        if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
            return False, None
        composed = _composed(password)
        with self._slots:
            forms = _forms(password, composed)
            if not stored_hash:
                for form in forms:  # as many as a user's wrong password costs: no oracle
                    _context.verify(form, self._dummy_hash)
                return False, None
            for form in forms:
                ok, replacement = self._verify_one(form, stored_hash)
                if ok:
                    if form != composed:
                        replacement = _context.hash(composed)
                    return True, replacement
            return False, None

    def _verify_one(self, password: str, stored_hash: str) -> tuple[bool, str | None]:
        try:
            if stored_hash.startswith(_BCRYPT) and len(password.encode()) > _BCRYPT_BYTES:
                return self._verify_bcrypt_prefix(password, stored_hash)
            return _context.verify_and_update(password, stored_hash)
        except (ValueError, TypeError, UnicodeEncodeError):
            return False, None

    @staticmethod
    def _verify_bcrypt_prefix(password: str, stored_hash: str) -> tuple[bool, str | None]:
        """bcrypt reads the first 72 bytes of a password: PHP's ``password_hash`` and the
        systems accounts are imported from hashed longer ones so, and the bcrypt library now
        refuses them (ValueError), so such a user could never sign in. The replacement hash is
        of the whole password."""
        if not _context.verify(password.encode()[:_BCRYPT_BYTES], stored_hash):
            return False, None
        return True, _context.hash(password)


def _composed(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def _forms(password: str, composed: str) -> list[str]:
    """The forms a stored hash may be of: composed first, then as typed and decomposed."""
    if password.isascii():
        return [password]
    forms = [composed]
    for form in (password, unicodedata.normalize("NFD", password)):
        if form not in forms:
            forms.append(form)
    return forms
