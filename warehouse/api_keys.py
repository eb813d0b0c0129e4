"""API keys: issue, rotate and verify the keys clients call the HTTP API with.

A key reads `pw_<key_id>_<secret>`: `key_id` (16 hex characters) names its row in
`api_keys`, `secret` is 32 random bytes (`secrets.token_urlsafe`, 43 characters). The key is
returned once, when issued; the warehouse keeps only the key id, a random per-row salt and
HMAC-SHA256(salt, secret), compared with `hmac.compare_digest`.

Why a fast hash is enough: the secret carries 256 bits of entropy, so guessing it is out of
reach however fast each guess is. Slow password hashes (bcrypt, scrypt, argon2) exist to
slow dictionary attacks on low-entropy, human-chosen passwords; a random key has no
dictionary, and a slow hash would only add tens of milliseconds to every request. The salt
keys the HMAC so a stolen table cannot be matched against precomputed hashes.

Each client has at most one live key: `issue_key` refuses a client that already has one and
`rotate_key` revokes the old key (kept as a row, for audits) in the transaction that
creates the new one, so the old key stops working the moment the new one exists.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import datetime
from pathlib import Path

import duckdb

from core.errors import PrewarmError
from core.times import utc_now
from warehouse.db import connect, fetch_one, fetch_value, transaction
from warehouse.validation import is_client_id

log = logging.getLogger(__name__)

KEY_PREFIX = "pw"
_KEY_ID_BYTES = 8  # 16 hex characters: unique enough to name a row, never secret
_SECRET_BYTES = 32  # 256 bits of entropy
_KEY_PATTERN = re.compile(r"^pw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
# Compared against when a key id is unknown, so a miss costs the same HMAC as a hit.
_DUMMY_SALT = secrets.token_bytes(16)
_BARE_CLIENT_SOURCE = "api"


def parse_key(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, or None (malformed keys never reach the DB)."""
    match = _KEY_PATTERN.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def issue_key(
    path: Path,
    client_id: str,
    create_client: bool,
    *,
    freq_seconds: int = 300,
    wait_s: float | None = None,
) -> str:
    """Issue the first key of a client; return it (shown once, never stored in clear).

    With `create_client`, a missing client gets a bare row (source 'api', `freq_seconds`
    bucket width) that a later ingest fills in. A client that already has a live key is an
    error: `rotate_key` replaces keys.
    """
    _check_client_id(client_id)
    with connect(path, read_only=False, wait_s=wait_s) as con, transaction(con):
        if not _client_exists(con, client_id):
            if not create_client:
                raise PrewarmError(
                    f"No client {client_id!r} in the warehouse; ingest its usage first, or "
                    "create it with the key (`prewarm clients add` does)."
                )
            con.execute(
                "INSERT INTO clients (client_id, freq_seconds, source, updated_at)"
                " VALUES (?, ?, ?, ?)",
                [client_id, freq_seconds, _BARE_CLIENT_SOURCE, utc_now()],
            )
            log.info("created bare client %s for its API key", client_id)
        live = fetch_value(
            con,
            "SELECT key_id FROM api_keys WHERE client_id = ? AND revoked_at IS NULL",
            [client_id],
        )
        if live is not None:
            raise PrewarmError(
                f"Client {client_id!r} already has an API key ({KEY_PREFIX}_{live}_...); "
                "replace it with `prewarm clients rotate-key`."
            )
        key = _insert_key(con, client_id)
    log.info("issued API key %s for %s", key[: len(KEY_PREFIX) + 17], client_id)
    return key


def rotate_key(path: Path, client_id: str, *, wait_s: float | None = None) -> str:
    """Replace a client's key with a new one (returned once); the old key stops working."""
    _check_client_id(client_id)
    with connect(path, read_only=False, wait_s=wait_s) as con, transaction(con):
        if not _client_exists(con, client_id):
            raise PrewarmError(
                f"No client {client_id!r} in the warehouse: there is no key to rotate. "
                "Issue a first key with `prewarm clients add`."
            )
        now = utc_now()
        con.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
            [now, client_id],
        )
        key = _insert_key(con, client_id, now)
    log.info("rotated the API key of %s", client_id)
    return key


def verify_key(path: Path, key: str, *, wait_s: float | None = None) -> str | None:
    """The client id a live key belongs to, or None for a malformed, unknown or revoked key."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    with connect(path, read_only=True, wait_s=wait_s) as con:
        row = fetch_one(
            con,
            "SELECT k.client_id, k.salt, k.secret_hash FROM api_keys k"
            " JOIN clients c USING (client_id)"
            " WHERE k.key_id = ? AND k.revoked_at IS NULL",
            [key_id],
        )
    if row is None:
        hmac.compare_digest(_hash(_DUMMY_SALT, secret), _hash(_DUMMY_SALT, ""))
        return None
    client_id, salt, stored = row
    if not hmac.compare_digest(_hash(bytes.fromhex(salt), secret), stored):
        return None
    return str(client_id)


# --- helpers ------------------------------------------------------------------------------


def _insert_key(con: duckdb.DuckDBPyConnection, client_id: str, now: datetime | None = None) -> str:
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    salt = secrets.token_bytes(16)
    con.execute(
        "INSERT INTO api_keys (key_id, client_id, salt, secret_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [key_id, client_id, salt.hex(), _hash(salt, secret), now or utc_now()],
    )
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def _hash(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def _client_exists(con: duckdb.DuckDBPyConnection, client_id: str) -> bool:
    return bool(fetch_value(con, "SELECT count(*) FROM clients WHERE client_id = ?", [client_id]))


def _check_client_id(client_id: str) -> None:
    if not is_client_id(client_id):
        raise PrewarmError(
            f"{client_id!r} is not a valid client id: 1-128 characters from letters, digits "
            "and . _ : @ -, starting with a letter or digit."
        )
