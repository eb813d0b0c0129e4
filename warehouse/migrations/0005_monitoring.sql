-- Monitoring: what pool members actually used, and when a client's forecasts drifted.

ALTER TABLE reconciliations ADD COLUMN reactive_cold_starts DOUBLE;  -- a reactive policy's
ALTER TABLE reconciliations ADD COLUMN cost DOUBLE;  -- idle cost + cold starts x penalty

CREATE TABLE pool_member_stats (
    member_id    VARCHAR   NOT NULL,
    client_id    VARCHAR   NOT NULL,
    runtime      VARCHAR   NOT NULL,
    tier         VARCHAR   NOT NULL,
    cpu_percent  DOUBLE,
    memory_mb    DOUBLE,
    observed_at  TIMESTAMP NOT NULL
);

CREATE TABLE drift_events (
    client_id      VARCHAR   NOT NULL,
    detected_at    TIMESTAMP NOT NULL,
    metric         VARCHAR   NOT NULL,  -- the metric that drifted, or 'feedback'
    value          DOUBLE,              -- coverage, relative pinball or lowest rating
    threshold      DOUBLE,
    reason         VARCHAR   NOT NULL,
    retrained      BOOLEAN   NOT NULL,
    model_version  VARCHAR              -- the version the retraining registered
);
