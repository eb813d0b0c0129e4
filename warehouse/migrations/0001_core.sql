-- Core tables of the data contract: who the clients are, what they used, what happened
-- around them, and the audit trail of every ingest. Timestamps are UTC, stored naive.

CREATE TABLE clients (
    client_id            VARCHAR PRIMARY KEY,
    tier                 VARCHAR,          -- free | standard | premium: drives the SLO
    region               VARCHAR,          -- matches calendar.region
    service              VARCHAR,          -- what the client runs (api, batch, http trigger...)
    container_cpu        DOUBLE,           -- cores one container of this client needs
    container_memory_mb  DOUBLE,           -- memory one container of this client needs
    freq_seconds         INTEGER NOT NULL, -- bucket width of this client's usage series
    source               VARCHAR NOT NULL, -- which source created the client
    attributes           JSON,             -- source-specific originals (owner/app/function...)
    first_ts             TIMESTAMP,        -- first usage bucket seen
    updated_at           TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE usage (
    client_id    VARCHAR   NOT NULL,
    ts           TIMESTAMP NOT NULL,  -- start of the bucket, UTC
    requests     DOUBLE,              -- calls in the bucket
    concurrency  DOUBLE,              -- instances needed at once (peak or Little's law)
    cpu_cores    DOUBLE,              -- mean cores busy
    memory_mb    DOUBLE,              -- peak memory held
    net_mbps     DOUBLE,              -- mean network throughput
    io_ops       DOUBLE,              -- storage operations in the bucket
    batch_id     VARCHAR   NOT NULL   -- ingest_batches.batch_id that wrote the row
);

CREATE TABLE calendar (
    region    VARCHAR   NOT NULL,  -- a client region, or 'global'
    start_ts  TIMESTAMP NOT NULL,
    end_ts    TIMESTAMP NOT NULL,
    name      VARCHAR   NOT NULL,
    kind      VARCHAR   NOT NULL,  -- holiday | launch | sale | maintenance ...
    PRIMARY KEY (region, start_ts, name)
);

CREATE TABLE ingest_batches (
    batch_id          VARCHAR PRIMARY KEY,
    source            VARCHAR   NOT NULL,  -- synthetic | azure-functions | events
    location          VARCHAR   NOT NULL,  -- path or generator parameters
    content_hash      VARCHAR   NOT NULL,  -- same input => same hash => no-op
    freq_seconds      INTEGER   NOT NULL,
    rows_in           BIGINT    NOT NULL,
    rows_loaded       BIGINT    NOT NULL,
    rows_quarantined  BIGINT    NOT NULL,
    status            VARCHAR   NOT NULL,  -- loaded | rejected | failed
    message           VARCHAR,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP
);

CREATE TABLE quarantine (
    batch_id        VARCHAR   NOT NULL,
    row_number      BIGINT    NOT NULL,  -- 1-based position in the input as read
    "row"           JSON      NOT NULL,  -- the original row, untouched
    expectation     VARCHAR   NOT NULL,  -- which expectation(s) it failed
    quarantined_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
