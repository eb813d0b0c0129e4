-- Documented views for ad-hoc questions (README: "Asking the warehouse").
-- Re-created whenever this file changes; they hold no data of their own.

-- How accurate each client's forecasts have been, per metric, over every scored bucket.
CREATE OR REPLACE VIEW v_client_accuracy AS
SELECT
    r.client_id,
    r.metric,
    count(*)                                                          AS buckets,
    sum(abs(r.actual - r.predicted_p50)) / nullif(sum(abs(r.actual)), 0) AS wmape,
    avg(r.covered::INTEGER)                                           AS coverage_80,
    avg(r.pinball)                                                    AS mean_pinball,
    min(r.window_start)                                               AS since,
    max(r.window_end)                                                 AS until,
    any_value(m.model_version)                                        AS model_version,
    any_value(m.alias)                                                AS model_alias
FROM forecast_scores r
LEFT JOIN (
    SELECT client_id, model_version, alias FROM model_runs
    QUALIFY row_number() OVER (PARTITION BY client_id ORDER BY trained_at DESC) = 1
) m USING (client_id)
GROUP BY r.client_id, r.metric;

-- What each client holds right now on each host, by tier, and how fast its activations
-- have been (one row per client and host).
CREATE OR REPLACE VIEW v_pool_status AS
SELECT
    c.client_id,
    coalesce(c.mode, 'provision')                              AS mode,
    p.host,
    count(*) FILTER (WHERE p.tier = 'active')                  AS active,
    count(*) FILTER (WHERE p.tier = 'shadow')                  AS shadow,
    count(*) FILTER (WHERE p.tier = 'cold')                    AS cold,
    any_value(p.runtime)                                       AS runtime,
    sum(p.activations)                                         AS activations,
    avg(p.last_activation_ms)                                  AS avg_last_activation_ms,
    max(p.observed_at)                                         AS observed_at
FROM clients c
JOIN pool_members p ON p.client_id = c.client_id AND p.released_at IS NULL
GROUP BY c.client_id, c.mode, p.host;

-- Every host as last probed: healthy or why not, and the capacity the planner may use (a
-- down host offers nothing; one never probed, what its file says).
CREATE OR REPLACE VIEW v_hosts AS
SELECT i.host, coalesce(i.engine, 'local') AS engine, s.healthy, s.error,
       i.cpu_cores AS file_cpu_cores, s.engine_cpu_cores,
       CASE WHEN s.healthy IS DISTINCT FROM false
            THEN coalesce(s.cpu_cores, i.cpu_cores) END AS planned_cpu_cores,
       i.memory_mb AS file_memory_mb, s.engine_memory_mb,
       CASE WHEN s.healthy IS DISTINCT FROM false
            THEN coalesce(s.memory_mb, i.memory_mb) END AS planned_memory_mb,
       s.checked_at
FROM inventory i LEFT JOIN host_status s USING (host)
ORDER BY i.host;

-- prewarm's cost and cold starts against a purely reactive autoscaler, per client and day.
CREATE OR REPLACE VIEW v_cost_vs_reactive AS
SELECT
    client_id,
    date_trunc('day', window_start)               AS day,
    count(*)                                      AS buckets,
    sum(cold_starts)                              AS cold_starts,
    sum(reactive_cold_starts)                     AS reactive_cold_starts,
    sum(idle_cost)                                AS idle_cost,
    sum(cost)                                     AS cost,
    sum(reactive_cost)                            AS reactive_cost,
    sum(reactive_cost) - sum(cost)                AS saved
FROM forecast_scores
WHERE metric = 'concurrency'
GROUP BY ALL;

-- Demand windows ahead: the latest predicted profile of each client, from the data's clock.
CREATE OR REPLACE VIEW v_upcoming_windows AS
WITH latest AS (
    SELECT * FROM profiles JOIN latest_runs USING (client_id, generated_at)
),
clock AS (SELECT max(ts) AS now FROM usage)
SELECT
    l.client_id, l.window_start, l.window_end, l.duration_minutes,
    l.concurrency_p50, l.concurrency_p90, l.requests_p50, l.requests_p90,
    l.memory_mb_p90, l.cpu_cores_p90, l.p_active, l.confidence, l.model_version
FROM latest l, clock
WHERE l.window_end > clock.now
ORDER BY l.window_start, l.client_id;

-- Pool churn per hour: members the controller created and released (requests' cold starts
-- are counted apart). A converged loop keeps this near zero while demand holds still.
CREATE OR REPLACE VIEW v_churn AS
SELECT
    date_trunc('hour', happened_at)                                             AS hour,
    count(*) FILTER (WHERE action = 'create' AND ok)                            AS created,
    count(*) FILTER (WHERE action = 'release' AND ok)                           AS released,
    count(*) FILTER (WHERE action IN ('create', 'release') AND ok)              AS churn,
    count(*) FILTER (WHERE action = 'activate' AND reason LIKE 'request:%')     AS requests,
    count(*) FILTER (WHERE action = 'activate' AND reason LIKE 'request: cold%') AS cold_starts
FROM pool_events
GROUP BY 1;

-- The loop's own record, one row per prewarm-cycle run, newest first when ordered by seq.
CREATE OR REPLACE VIEW v_cycles AS
SELECT seq, cycle_id, status, feed, started_at, clock_at, watermark, ingested_rows, predicted,
       plan_id, first_window, lead_seconds, lag_seconds, late_seconds, seconds, runtime,
       creates, releases, pauses, unpauses, failed_actions, drifted, error
FROM cycles;
