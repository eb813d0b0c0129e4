-- Clients shape their own schema (issue 15): every change to a client's attributes or schema
-- extensions, by the API or the CLI, is recorded with who made it and when.

CREATE TABLE client_changes (
    client_id   VARCHAR   NOT NULL,
    action      VARCHAR   NOT NULL,  -- attributes | extension-add | extension-remove
    name        VARCHAR,             -- the extension's name (NULL for attributes)
    document    JSON,                -- what was stored: the attributes or the extension
    actor       VARCHAR   NOT NULL,  -- api:pw_<key_id> (the key's public half) | cli
    changed_at  TIMESTAMP NOT NULL
);
