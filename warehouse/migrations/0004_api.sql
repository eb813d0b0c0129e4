-- The client-facing API: the keys clients authenticate with.
--
-- A table of its own rather than columns on `clients`: a key is looked up by its id on every
-- request (a primary-key point lookup), a rotation keeps the replaced key as a revoked row
-- (who had which key when, for audits) instead of overwriting it, and ingests upserting
-- `clients` can never touch credentials. Only a salted HMAC of the secret is stored; the key
-- itself is shown once, when issued. One client has at most one live (unrevoked) key,
-- enforced by warehouse/api_keys.py in the same transaction that issues it.

CREATE TABLE api_keys (
    key_id       VARCHAR   PRIMARY KEY,  -- public part of the key: pw_<key_id>_<secret>
    client_id    VARCHAR   NOT NULL,     -- clients.client_id
    salt         VARCHAR   NOT NULL,     -- hex; the HMAC key for this row's secret
    secret_hash  VARCHAR   NOT NULL,     -- hex HMAC-SHA256(salt, secret)
    created_at   TIMESTAMP NOT NULL,
    revoked_at   TIMESTAMP               -- set when rotated away; NULL while the key works
);
