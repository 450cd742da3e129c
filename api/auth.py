"""Optional API keys.

The gateway is configured with the SHA-256 hex digests of the keys it accepts
(``BATCHLINE_API_KEYS``, comma-separated; ``batchline keygen`` makes a key and its digest), never
with the keys themselves. A caller sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``;
its digest is compared with every configured one in constant time. The digest is the caller's
identity: jobs are created with it as their owner, and only that key can read or cancel them.
With no keys configured, auth is off and every caller may see every job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from api.errors import Unauthorized
from queueing.errors import ConfigError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    """The SHA-256 hex digest under which a key is configured (and owns its jobs)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its digest."""
    key = "bl_" + secrets.token_urlsafe(32)
    return key, digest(key)


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request presents (``X-API-Key: <key>`` or ``Authorization: Bearer <key>``).
    Unauthorized for an Authorization header that is not a Bearer key, or for two headers that
    name different keys: a request with a wrong credential is refused even beside a right one."""
    bearer = None
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        bearer = credentials.strip()
        if scheme.lower() != "bearer" or not bearer:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    if x_api_key and bearer and not hmac.compare_digest(x_api_key, bearer):
        raise Unauthorized("X-API-Key and Authorization name different keys")
    return x_api_key or bearer


class ApiKeys:
    """The accepted keys' digests; :meth:`owner` authenticates one request."""

    def __init__(self, digests: Iterable[str]) -> None:
        self.digests = tuple(d.strip().lower() for d in digests)
        for value in self.digests:
            if not _DIGEST.match(value):
                raise ConfigError(
                    f"BATCHLINE_API_KEYS holds {value[:12]!r}..., which is not a SHA-256 hex "
                    "digest (configure digests, not keys: `batchline keygen` prints both)"
                )

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def owner(self, presented: str | None) -> str | None:
        """The caller's identity (its key's digest), None when auth is off; Unauthorized
        when a key is needed and this one is missing or unknown."""
        if not self.enabled:
            return None
        if not presented:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        candidate = digest(presented)
        found = False
        for value in self.digests:
            # Every digest is compared (no early exit), each in constant time.
            found |= hmac.compare_digest(candidate, value)
        if not found:
            raise Unauthorized("unknown API key")
        return candidate
