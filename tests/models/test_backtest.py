"""Rolling-origin backtests: the JSON contract, honest origins, bare CSV traces."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models.backtest import backtest_clients, backtest_forecasts, backtest_series, read_bare_csv
from models.baselines import naive_forecast, wmape
from models.forecaster import ForecastConfig
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
CONFIG = ForecastConfig(n_estimators=10, tail_estimators=5, max_train_rows=600, max_eval_rows=500)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(3, 5, END, seed=7)


@pytest.fixture(scope="module")
def trace(batch) -> pl.DataFrame:
    """One client as a bare trace would look: ts and arbitrarily named numeric columns."""
    client = batch.rows.get_column("client_id")[0]
    return (
        batch.rows.filter(pl.col("client_id") == client)
        .select("ts", "cpu_cores", "memory_mb")
        .rename({"cpu_cores": "cpu util %", "memory_mb": "mem_used"})
    )


def test_read_bare_csv_stamps_rows_from_2026_01_05(tmp_path: Path):
    path = tmp_path / "trace.csv"
    path.write_text("cpu,net in\n1.5,2\n2.5,\n3.5,4e1\n")
    frame = read_bare_csv(path, 300)
    assert frame.columns == ["ts", "cpu", "net in"]
    assert frame.get_column("ts").to_list() == [
        datetime(2026, 1, 5) + timedelta(minutes=5 * i) for i in range(3)
    ]
    assert frame.get_column("cpu").to_list() == [1.5, 2.5, 3.5]
    assert frame.get_column("net in").to_list() == [2.0, None, 40.0]


def test_read_bare_csv_names_the_bad_column_and_line(tmp_path: Path):
    path = tmp_path / "trace.csv"
    path.write_text("cpu,mem\n1,2\n3,n/a\n")
    with pytest.raises(ValueError, match=r"column 'mem' is not numeric: line 3 holds 'n/a'"):
        read_bare_csv(path, 300)


def test_backtest_reports_every_column_against_baselines(trace):
    result = backtest_series(trace, 300, horizon_steps=12, test_days=1, config=CONFIG)
    assert set(result) == {"metrics", "runtime_s"}  # nothing shortened
    assert set(result["metrics"]) == {"cpu util %", "mem_used"}
    for scores in result["metrics"].values():
        assert set(scores) == {"lightgbm", "naive", "seasonal_naive_day"}  # no week in 5 days
        assert set(scores["lightgbm"]) == {"wmape", "coverage_80", "pinball"}
        assert 0.0 <= scores["lightgbm"]["coverage_80"] <= 1.0
        assert scores["lightgbm"]["wmape"] > 0
        assert scores["naive"]["wmape"] > 0
    assert result["runtime_s"] > 0


def test_baselines_are_scored_on_the_forecast_points(trace):
    forecasts = backtest_forecasts(trace, 300, horizon_steps=12, test_days=1, config=CONFIG)
    rows = forecasts.filter(pl.col("metric") == "mem_used")
    # the test day: 288 buckets in 24 windows of 12, each forecast once
    assert rows.height == 288
    assert rows.get_column("ts").n_unique() == 288
    assert rows.get_column("ts").min() == trace.get_column("ts")[-288]
    values = trace.get_column("mem_used").to_numpy()
    start = trace.get_column("ts")[0]
    origins = ((rows.get_column("origin") - start).dt.total_seconds() // 300).to_numpy()
    naive = naive_forecast(values, origins, rows.get_column("horizon").to_numpy())
    result = backtest_series(trace, 300, horizon_steps=12, test_days=1, config=CONFIG)
    expected = wmape(rows.get_column("actual").to_numpy(), naive)
    assert result["metrics"]["mem_used"]["naive"]["wmape"] == pytest.approx(expected)


def test_changing_values_after_an_origin_leaves_its_forecast_alone(trace):
    forecasts = backtest_forecasts(trace, 300, horizon_steps=12, test_days=1, config=CONFIG)
    origins = sorted(forecasts.get_column("origin").unique().to_list())
    cut = origins[5]  # mid-day: the day's model was fit before its first origin
    tampered = trace.with_columns(
        pl.when(pl.col("ts") > cut).then(pl.col(c) * 3 + 7).otherwise(pl.col(c)).alias(c)
        for c in ("cpu util %", "mem_used")
    )
    again = backtest_forecasts(tampered, 300, horizon_steps=12, test_days=1, config=CONFIG)
    columns = ["origin", "metric", "horizon", "p10", "p50", "p90"]
    early = pl.col("origin") <= cut
    assert again.filter(early).select(columns).equals(forecasts.filter(early).select(columns))
    late = pl.col("origin") > cut
    assert not again.filter(late).select(columns).equals(forecasts.filter(late).select(columns))


def test_too_long_a_test_window_is_shortened_and_said_so(trace):
    result = backtest_series(trace, 300, horizon_steps=12, test_days=7, config=CONFIG)
    assert result["test_days"] == 2  # half the 5 days, in whole days
    assert "shortened to 2 days" in result["notes"][0]


def test_backtest_clients_gives_one_row_per_client_and_metric(batch):
    config = ForecastConfig(
        n_estimators=5,
        tail_estimators=3,
        max_train_rows=300,
        max_eval_rows=300,
        metrics=("requests", "memory_mb"),
    )
    table = backtest_clients(batch.rows, batch.clients, batch.calendar, config, 12, test_days=1)
    assert table.height == 3 * 2
    assert table.columns[:3] == ["client_id", "metric", "lightgbm_wmape"]
    with_scores = table.filter(pl.col("lightgbm_wmape").is_not_null())
    assert with_scores.height == 6
    assert np.all(with_scores.get_column("naive_wmape").to_numpy() > 0)


def test_backtest_clients_without_a_config_uses_each_clients_bucket_width():
    """`prewarm backtest --from-warehouse` passes no config: a 10-minute client is backtested
    on a 10-minute grid (the default 5-minute grid would see every other bucket missing)."""
    ten_minutes = generate_synthetic(1, 5, END, freq_seconds=600, seed=3)
    usage = ten_minutes.rows.select("client_id", "ts", "requests")
    clients = ten_minutes.clients.with_columns(freq_seconds=pl.lit(600))
    table = backtest_clients(usage, clients, ten_minutes.calendar, None, 6, test_days=1)
    assert table.get_column("metric").to_list() == ["requests"]
    row = table.row(0, named=True)
    # On a 5-minute grid every other bucket is empty and naive misses by over 100 %.
    assert 0 < row["naive_wmape"] < 0.5
    assert row["lightgbm_wmape"] < row["naive_wmape"]
