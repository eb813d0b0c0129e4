-- The loop left running: one chained cycle on one clock, plans in a monotonic order, the
-- members each plan wants (with what stabilisation holds), the runtime a pool lives on, the
-- feed a warehouse follows and the files it took, and why each model version was trained.

-- Plans are ordered by `seq` (assigned max + 1 inside the writing transaction; writes are
-- serialised), never by the data clock: two plans on the same data differ only in seq.
ALTER TABLE plans ADD COLUMN seq BIGINT;
ALTER TABLE plans ADD COLUMN cycle_id VARCHAR;  -- the cycle that made it (NULL: a command)
-- When it was recorded, on the wall clock: the scale-down hold looks back over plans by
-- this, so a change of clock (the demo's data clock, then a live feed's) holds as well.
ALTER TABLE plans ADD COLUMN recorded_at TIMESTAMP;
UPDATE plans SET seq = o.n
FROM (SELECT plan_id, row_number() OVER (ORDER BY created_at, plan_id) AS n FROM plans) o
WHERE plans.plan_id = o.plan_id;

CREATE TABLE plan_targets (              -- what apply makes true, per client and host
    plan_id      VARCHAR NOT NULL,
    client_id    VARCHAR NOT NULL,
    host         VARCHAR,
    active       BIGINT  NOT NULL,  -- members wanted now, per tier (created when missing)
    shadow       BIGINT  NOT NULL,
    cold         BIGINT  NOT NULL,
    hold         BIGINT  NOT NULL,  -- members never released below (scale-down stabilisation)
    floor_need   BIGINT  NOT NULL,  -- the need just observed (the reactive safety net)
    reason       VARCHAR             -- what raised the target above the plan's windows
);

CREATE TABLE pool_runtimes (             -- the runtime each pool lives on, chosen once
    pool        VARCHAR   PRIMARY KEY,
    runtime     VARCHAR   NOT NULL,  -- docker | process
    chosen_at   TIMESTAMP NOT NULL,
    reason      VARCHAR   NOT NULL
);

CREATE TABLE cycles (                    -- one row per prewarm-cycle run
    cycle_id       VARCHAR   PRIMARY KEY,
    seq            BIGINT    NOT NULL,
    feed           VARCHAR   NOT NULL,  -- none | spool:DIR | trace:DIR | synthetic
    status         VARCHAR   NOT NULL,  -- running | done | failed
    started_at     TIMESTAMP NOT NULL,  -- wall clock, UTC
    finished_at    TIMESTAMP,
    clock_at       TIMESTAMP NOT NULL,  -- the cycle's clock at start (data or replay time)
    watermark      TIMESTAMP,           -- newest usage bucket once this cycle ingested
    ingested_rows  BIGINT,
    predicted      BOOLEAN,             -- false: no new data or model, forecasts were current
    models         VARCHAR,             -- fingerprint of the model versions predicted with
    plan_id        VARCHAR,
    first_window   TIMESTAMP,           -- the plan's first window: after the expected finish
    lead_seconds   DOUBLE,              -- expected duration the plan looked past (clock s)
    runtime        VARCHAR,
    creates        INTEGER,
    releases       INTEGER,
    pauses         INTEGER,
    unpauses       INTEGER,
    failed_actions INTEGER,
    seconds        DOUBLE,              -- wall seconds
    lag_seconds    DOUBLE,              -- clock when the pool was applied - end of watermark
    late_seconds   DOUBLE,              -- how long after its scheduled time the run started
    drifted        INTEGER,
    pinned         BOOLEAN,             -- the lead was given, not predicted (tests, soaks)
    error          VARCHAR
);

CREATE TABLE feed_state (                -- the one feed this warehouse follows
    id          INTEGER   PRIMARY KEY CHECK (id = 1),
    kind        VARCHAR   NOT NULL,  -- none | spool | trace | synthetic
    location    VARCHAR,             -- spool or trace directory
    params      JSON      NOT NULL,  -- population and clock (seed, clients, speed, start ...)
    updated_at  TIMESTAMP NOT NULL
);

CREATE TABLE feed_files (                -- spool files taken: each exactly once
    path          VARCHAR   NOT NULL,
    content_hash  VARCHAR   NOT NULL,
    size_bytes    BIGINT    NOT NULL,
    batch_id      VARCHAR   NOT NULL,
    status        VARCHAR   NOT NULL,  -- loaded | rejected | duplicate (content taken before)
    taken_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (path, content_hash)
);

ALTER TABLE model_runs ADD COLUMN trigger VARCHAR;    -- schedule | drift | feedback | manual
ALTER TABLE model_runs ADD COLUMN weighting VARCHAR;  -- how recent data was weighted, if at all
