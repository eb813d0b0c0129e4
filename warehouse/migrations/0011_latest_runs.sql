-- Each client's newest prediction run (issue 16). "The latest run" was found by ranking
-- every retained run per client (576 at the 2-day retention): at 1,000 clients a client's
-- profile read scanned 69 M forecast rows, 0.1-0.5 s, on every view the API re-read after a
-- cycle. Prediction writes this row with its run (warehouse.predictions.write_predictions);
-- readers look the run up here and read only its rows.
CREATE TABLE latest_runs (
    client_id     VARCHAR   PRIMARY KEY,
    generated_at  TIMESTAMP NOT NULL
);

INSERT INTO latest_runs
SELECT client_id, max(generated_at) FROM (
    SELECT client_id, generated_at FROM forecasts
    UNION ALL SELECT client_id, generated_at FROM forecast_exceedance
    UNION ALL SELECT client_id, generated_at FROM profiles
) GROUP BY client_id;
