"""API keys: held as SHA-256 digests, compared in constant time; each key owns the videos it creates."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from service.core.errors import Unauthorized
from service.core.redis_keys import PUBLIC_OWNER
from service.core.settings import SettingsError

log = logging.getLogger("wanserve.api")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys. With none, the API is open and every caller is ``PUBLIC_OWNER``."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @classmethod
    def load(cls, keys: str | None, keys_file: Path | None) -> ApiKeys:
        """From ``WANSERVE_API_KEYS`` (comma-separated) and ``WANSERVE_API_KEYS_FILE`` (one per line).

        Raises:
            SettingsError: The keys file cannot be read, or holds no key (the API would be open to anyone
                while its operator meant to close it).
        """
        found = [key.strip() for key in (keys or "").split(",")]
        if keys_file is not None:
            try:
                lines = keys_file.read_text().splitlines()
            except OSError as exc:
                raise SettingsError(f"WANSERVE_API_KEYS_FILE={keys_file}: {exc.strerror or exc}") from None
            from_file = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
            if not from_file:
                raise SettingsError(f"WANSERVE_API_KEYS_FILE={keys_file} holds no key: the API would be open")
            found += from_file
        api_keys = cls([key for key in found if key])
        if not api_keys.enabled:
            log.warning("NO API KEYS CONFIGURED: anyone who can reach this port can create and read videos")
        return api_keys

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str:
        """The owner id for an ``Authorization: Bearer <key>`` header.

        Raises:
            Unauthorized: keys are configured and the header is missing or holds no known key.
        """
        if not self.enabled:
            return PUBLIC_OWNER
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        digest = _digest(key.strip())
        # Compare against every key, always, so that timing says nothing about which one nearly matched.
        matched = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matched):
            raise Unauthorized("Invalid API key.")
        return "key_" + digest.hex()[:16]
