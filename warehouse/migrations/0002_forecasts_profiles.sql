-- What the models said (forecasts, exceedance), what it means for each client (profiles),
-- and what came back (feedback, reconciliations) to correct the next training.

CREATE TABLE forecasts (
    client_id      VARCHAR   NOT NULL,
    metric         VARCHAR   NOT NULL,
    origin         TIMESTAMP NOT NULL,  -- last observed bucket the forecast starts from
    ts             TIMESTAMP NOT NULL,  -- forecast bucket start
    horizon        INTEGER   NOT NULL,  -- steps ahead of origin
    p10            DOUBLE    NOT NULL,
    p50            DOUBLE    NOT NULL,
    p90            DOUBLE    NOT NULL,
    model_name     VARCHAR   NOT NULL,
    model_version  VARCHAR   NOT NULL,
    generated_at   TIMESTAMP NOT NULL
);

CREATE TABLE forecast_exceedance (
    client_id      VARCHAR   NOT NULL,
    origin         TIMESTAMP NOT NULL,
    ts             TIMESTAMP NOT NULL,
    horizon        INTEGER   NOT NULL,
    level          INTEGER   NOT NULL,  -- instance count k
    p_exceed       DOUBLE    NOT NULL,  -- P(concurrency need >= k)
    model_version  VARCHAR   NOT NULL,
    generated_at   TIMESTAMP NOT NULL
);

CREATE TABLE profiles (
    client_id            VARCHAR   NOT NULL,
    generated_at         TIMESTAMP NOT NULL,
    origin               TIMESTAMP NOT NULL,
    window_start         TIMESTAMP NOT NULL,  -- when demand rises above the idle floor
    window_end           TIMESTAMP NOT NULL,  -- exclusive
    duration_minutes     DOUBLE    NOT NULL,  -- for how long
    requests_p50         DOUBLE,              -- peak of each resource's quantile in the window
    requests_p90         DOUBLE,
    concurrency_p50      DOUBLE,
    concurrency_p90      DOUBLE,
    cpu_cores_p50        DOUBLE,
    cpu_cores_p90        DOUBLE,
    memory_mb_p50        DOUBLE,
    memory_mb_p90        DOUBLE,
    net_mbps_p50         DOUBLE,
    net_mbps_p90         DOUBLE,
    io_ops_p50           DOUBLE,
    io_ops_p90           DOUBLE,
    p_active             DOUBLE,              -- max P(concurrency >= 1) in the window
    confidence           DOUBLE    NOT NULL,  -- in [0, 1], see models/profile.py
    model_name           VARCHAR   NOT NULL,
    model_version        VARCHAR   NOT NULL
);

CREATE TABLE feedback (
    feedback_id   VARCHAR   PRIMARY KEY,
    client_id     VARCHAR   NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    window_end    TIMESTAMP NOT NULL,
    score         INTEGER   NOT NULL,  -- 1 (forecast useless) .. 5 (spot on)
    actual        JSON,                -- optional actual usage the client reports, per metric
    comment       VARCHAR,
    received_at   TIMESTAMP NOT NULL
);

CREATE TABLE reconciliations (
    client_id      VARCHAR   NOT NULL,
    window_start   TIMESTAMP NOT NULL,
    window_end     TIMESTAMP NOT NULL,
    metric         VARCHAR   NOT NULL,
    predicted_p10  DOUBLE,
    predicted_p50  DOUBLE,
    predicted_p90  DOUBLE,
    actual         DOUBLE,
    error          DOUBLE,     -- actual - predicted_p50
    covered        BOOLEAN,    -- actual within [p10, p90]
    pinball        DOUBLE,
    cold_starts    DOUBLE,
    idle_cost      DOUBLE,
    reactive_cost  DOUBLE,
    action         VARCHAR,
    reason         VARCHAR,
    reconciled_at  TIMESTAMP NOT NULL
);

CREATE TABLE model_runs (
    client_id      VARCHAR   NOT NULL,
    model_name     VARCHAR   NOT NULL,
    model_version  VARCHAR   NOT NULL,
    alias          VARCHAR,              -- champion | challenger
    fallback       VARCHAR,              -- why the global model serves this client, if it does
    reason         VARCHAR,              -- why it was (not) promoted
    trained_until  TIMESTAMP NOT NULL,
    wmape          DOUBLE,
    baseline_wmape DOUBLE,
    trained_at     TIMESTAMP NOT NULL
);
