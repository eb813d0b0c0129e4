-- Provisioning: where capacity lives (inventory), how each client's containers are shaped
-- (schema extensions), what the planner decided (plans, allocations, unserved) and what
-- exists on the runtime (pool_members, with every action in pool_events).

ALTER TABLE clients ADD COLUMN mode VARCHAR DEFAULT 'provision';  -- provision | forecast-only

CREATE TABLE inventory (
    host                    VARCHAR PRIMARY KEY,
    cpu_cores               DOUBLE  NOT NULL CHECK (cpu_cores > 0),
    memory_mb               DOUBLE  NOT NULL CHECK (memory_mb > 0),
    net_mbps                DOUBLE  CHECK (net_mbps >= 0),                -- NULL: not tracked
    io_ops                  DOUBLE  CHECK (io_ops >= 0),                  -- NULL: not tracked
    cost_core_minute        DOUBLE  CHECK (cost_core_minute >= 0),        -- NULL: cost model
    cost_memory_gib_minute  DOUBLE  CHECK (cost_memory_gib_minute >= 0),  -- NULL: cost model
    source                  VARCHAR NOT NULL,  -- file path, or 'default' for this machine
    updated_at              TIMESTAMP NOT NULL
);

CREATE TABLE client_schema_extensions (
    client_id    VARCHAR   NOT NULL,
    name         VARCHAR   NOT NULL,  -- the extension's name, unique per client
    precedence   INTEGER   NOT NULL,  -- copied from the document, for listing
    document     JSON      NOT NULL,  -- the extension document, validated on the way in
    updated_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (client_id, name)
);

CREATE TABLE plans (
    plan_id         VARCHAR   PRIMARY KEY,
    created_at      TIMESTAMP NOT NULL,
    first_window    TIMESTAMP NOT NULL,
    tick_seconds    INTEGER   NOT NULL,
    windows         INTEGER   NOT NULL,
    buffer_seconds  DOUBLE    NOT NULL,
    dry_run         BOOLEAN   NOT NULL,
    totals          JSON      NOT NULL   -- expected cost and cold starts vs reactive
);

CREATE TABLE allocations (                -- the desired pool per client, window and tier
    plan_id               VARCHAR   NOT NULL,
    client_id             VARCHAR   NOT NULL,
    window_start          TIMESTAMP NOT NULL,
    window_end            TIMESTAMP NOT NULL,
    tier                  VARCHAR   NOT NULL,  -- active | shadow | cold | none
    count                 BIGINT    NOT NULL,  -- 0 on 'none' rows (demand left cold)
    host                  VARCHAR,             -- NULL on 'none' rows
    mode                  VARCHAR   NOT NULL,  -- provision | forecast-only
    expected_cost         DOUBLE    NOT NULL,
    expected_cold_starts  DOUBLE    NOT NULL,
    priority              DOUBLE    NOT NULL,
    config                JSON                 -- the rendered container config
);

CREATE TABLE unserved (                   -- demand the capacity could not hold, and why
    plan_id       VARCHAR   NOT NULL,
    client_id     VARCHAR   NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    tier          VARCHAR   NOT NULL,
    placed_as     VARCHAR   NOT NULL,
    instances     BIGINT    NOT NULL,
    mode          VARCHAR   NOT NULL,
    reason        VARCHAR   NOT NULL
);

CREATE TABLE pool_members (               -- every container or process prewarm has held
    member_id           VARCHAR   PRIMARY KEY,
    client_id           VARCHAR   NOT NULL,
    plan_id             VARCHAR,
    runtime             VARCHAR   NOT NULL,  -- docker | process
    tier                VARCHAR   NOT NULL,  -- active | shadow | cold | released
    host                VARCHAR,
    endpoint            VARCHAR,
    created_at          TIMESTAMP,
    released_at         TIMESTAMP,
    activations         INTEGER   NOT NULL DEFAULT 0,
    last_activation_ms  DOUBLE,
    observed_at         TIMESTAMP NOT NULL
);

CREATE TABLE pool_events (                -- every action applied, timed
    member_id  VARCHAR,
    client_id  VARCHAR   NOT NULL,
    plan_id    VARCHAR,
    runtime    VARCHAR   NOT NULL,
    action     VARCHAR   NOT NULL,  -- create | shadow | activate | release
    tier       VARCHAR,
    host       VARCHAR,
    ms         DOUBLE,
    ok         BOOLEAN   NOT NULL,
    error      VARCHAR,
    reason     VARCHAR,
    happened_at  TIMESTAMP NOT NULL
);
