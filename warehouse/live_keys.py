"""The live API keys as one in-memory snapshot, so a key is checked without a query.

`warehouse.api_keys.verify_key` opens the warehouse for every key it checks; the API checks
a key on every request, and a flood of made-up keys would then queue legitimate requests
behind warehouse work. A snapshot holds what verification needs (key id, client, salt,
salted hash) of every live key, read in one query; the API decides how fresh it must be
(`api/keys.py`). Verification is the same as `verify_key`'s: the same HMAC, compared in
constant time, and a dummy comparison for an unknown key id.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from warehouse.api_keys import _DUMMY_SALT, _hash, parse_key
from warehouse.db import connect


@dataclass(frozen=True)
class LiveKeys:
    """Every live key: key id -> (client id, salt, salted hash of the secret)."""

    by_id: Mapping[str, tuple[str, bytes, str]]

    def knows(self, key: str) -> bool:
        """Whether the key's id names a live key (its secret unchecked)."""
        parsed = parse_key(key)
        return parsed is not None and parsed[0] in self.by_id

    def client_of(self, key: str) -> str | None:
        """The client a live key belongs to, or None (malformed, unknown, revoked, forged)."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self.by_id.get(key_id)
        if row is None:
            hmac.compare_digest(_hash(_DUMMY_SALT, secret), _hash(_DUMMY_SALT, ""))
            return None
        client_id, salt, stored = row
        return client_id if hmac.compare_digest(_hash(salt, secret), stored) else None


def read_live_keys(path: Path, *, wait_s: float | None = None) -> LiveKeys:
    """The snapshot of every unrevoked key of an existing client."""
    with connect(path, read_only=True, wait_s=wait_s) as con:
        rows = con.execute(
            "SELECT k.key_id, k.client_id, k.salt, k.secret_hash FROM api_keys k"
            " JOIN clients c USING (client_id) WHERE k.revoked_at IS NULL"
        ).fetchall()
    return LiveKeys(
        {
            key_id: (client_id, bytes.fromhex(salt), stored)
            for key_id, client_id, salt, stored in rows
        }
    )
