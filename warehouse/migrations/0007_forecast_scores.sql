-- One word per meaning: "reconcile" is the container diff (provisioning/reconciler.py);
-- scoring forecasts and pool outcomes against what happened is "scoring". Its table and
-- timestamp follow. Rows, types and constraints are kept as they are.
--
-- The views reading the table (v_client_accuracy, v_cost_vs_reactive) need not be dropped
-- first: DuckDB resolves a view's tables when it is queried, and views.sql, changed with
-- this migration, re-creates them over `forecast_scores` right after the migrations.

ALTER TABLE reconciliations RENAME TO forecast_scores;
ALTER TABLE forecast_scores RENAME COLUMN reconciled_at TO scored_at;
