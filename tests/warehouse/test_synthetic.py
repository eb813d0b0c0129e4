"""The synthetic generator: deterministic, on the contract, and realistic where it matters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from core.vocabulary import METRICS
from warehouse.sources.base import CALENDAR_COLUMNS, CLIENT_COLUMNS, USAGE_SCHEMA
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2024, 3, 15)
DAYS = 14
FREQ = 300
BUCKETS_PER_DAY = 86_400 // FREQ


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(20, DAYS, END, freq_seconds=FREQ, seed=7)


def _archetypes(clients: pl.DataFrame) -> dict[str, str]:
    return {
        row["client_id"]: json.loads(row["attributes"])["archetype"]
        for row in clients.iter_rows(named=True)
    }


def _series(rows: pl.DataFrame, client_id: str, column: str = "requests") -> np.ndarray:
    return rows.filter(pl.col("client_id") == client_id)[column].to_numpy()


def _clients_of(batch, archetype: str) -> list[str]:
    return [cid for cid, kind in _archetypes(batch.clients).items() if kind == archetype]


def _autocorrelation(values: np.ndarray, lag: int) -> float:
    centred = values - values.mean()
    return float((centred[lag:] * centred[:-lag]).sum() / (centred * centred).sum())


def test_same_arguments_give_equal_frames_and_another_seed_differs(batch):
    again = generate_synthetic(20, DAYS, END, freq_seconds=FREQ, seed=7)
    other = generate_synthetic(20, DAYS, END, freq_seconds=FREQ, seed=8)

    assert again.rows.equals(batch.rows)
    assert again.clients.equals(batch.clients)
    assert again.calendar.equals(batch.calendar)
    assert again.content_hash == batch.content_hash
    assert not other.rows.equals(batch.rows)
    assert other.content_hash != batch.content_hash


def test_batch_describes_itself(batch):
    assert batch.source == "synthetic"
    assert batch.kind == "series"
    assert batch.raw is None
    assert batch.freq_seconds == FREQ
    assert batch.location == (
        "synthetic clients=20 days=14 seed=7 freq=300s end=2024-03-15T00:00:00"
    )
    assert batch.value_columns == list(METRICS)


def test_rows_have_the_usage_schema_on_the_frequency_grid():
    # An end off the grid is floored to it: same rows and hash as the floored end.
    ragged_end = datetime(2024, 3, 15, 12, 7, 31, 250)
    batch = generate_synthetic(20, DAYS, ragged_end, freq_seconds=FREQ)
    floored = datetime(2024, 3, 15, 12, 5)
    rows = batch.rows

    assert rows.schema == pl.Schema(USAGE_SCHEMA)
    epoch_s = rows["ts"].dt.epoch("s")
    assert (epoch_s % FREQ == 0).all()
    assert rows["ts"].min() == floored - timedelta(days=DAYS)
    assert rows["ts"].max() == floored - timedelta(seconds=FREQ)
    assert not rows.select("client_id", "ts").is_duplicated().any()
    assert rows.equals(rows.sort("client_id", "ts"))
    values = rows.select(METRICS).to_numpy()
    assert np.isfinite(values).all()
    assert (values >= 0).all()
    assert batch.content_hash == generate_synthetic(20, DAYS, floored).content_hash


def test_resources_are_zero_exactly_when_idle_and_concurrency_covers_calls(batch):
    rows = batch.rows
    idle = rows.filter(pl.col("requests") == 0)
    busy = rows.filter(pl.col("requests") > 0)

    assert idle.height > 0 and busy.height > 0
    assert (idle.select(METRICS).to_numpy() == 0).all()
    assert (busy["concurrency"] >= 1).all()
    assert (busy["memory_mb"] > 0).all()
    assert (rows["requests"] == rows["requests"].round()).all()
    assert (rows["concurrency"] == rows["concurrency"].round()).all()


def test_row_count_covers_each_client_from_its_join(batch):
    window_start = END - timedelta(days=DAYS)
    expected = {}
    for row in batch.clients.iter_rows(named=True):
        joined_at = json.loads(row["attributes"])["joined_at"]
        first = datetime.fromisoformat(joined_at) if joined_at else window_start
        expected[row["client_id"]] = int((END - first).total_seconds()) // FREQ

    counts = dict(batch.rows.group_by("client_id").len().iter_rows())

    assert counts == expected
    assert batch.rows.height == sum(expected.values())


def test_clients_frame_has_one_valid_row_per_client(batch):
    clients = batch.clients
    attributes = [json.loads(text) for text in clients["attributes"]]
    tz_by_region = {"us-east": -5, "us-west": -8, "eu-west": 1, "ap-south": 5.5, "ap-east": 8}

    assert clients.schema == pl.Schema(CLIENT_COLUMNS)
    assert clients["client_id"].to_list() == [f"c{i:04d}" for i in range(20)]
    assert set(clients["client_id"]) == set(batch.rows["client_id"])
    assert set(clients["tier"]) <= {"free", "standard", "premium"}
    assert set(clients["container_cpu"]) <= {0.25, 0.5, 1.0, 2.0}
    assert clients["container_memory_mb"].is_between(128, 4096).all()
    for region, attrs in zip(clients["region"], attributes, strict=True):
        assert attrs["tz_offset_h"] == tz_by_region[region]
    # Every block of 20 clients holds the 60/15/15/10 % mix exactly.
    kinds = [attrs["archetype"] for attrs in attributes]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "regular": 12,
        "bursty": 3,
        "sparse": 3,
        "late": 2,
    }


def test_more_clients_keep_the_first_clients_and_widen_ids():
    few = generate_synthetic(20, 1, END, freq_seconds=3600)
    many = generate_synthetic(10_001, 1, END, freq_seconds=86_400)

    kept = ["tier", "region", "service", "container_cpu", "container_memory_mb"]
    assert many.clients.head(20).select(kept).equals(few.clients.select(kept))
    assert set(many.rows["client_id"]) == set(many.clients["client_id"])
    assert many.clients["client_id"][-1] == "c10000"
    assert many.clients["client_id"][0] == "c00000"


def test_regular_clients_repeat_daily(batch):
    regular = _clients_of(batch, "regular")

    correlations = [_autocorrelation(_series(batch.rows, cid), BUCKETS_PER_DAY) for cid in regular]

    assert len(regular) == 12
    assert min(correlations) > 0.6


def test_daily_peak_follows_the_region_time_zone(batch):
    for row in batch.clients.iter_rows(named=True):
        attributes = json.loads(row["attributes"])
        if attributes["archetype"] != "regular":
            continue
        hourly = (
            batch.rows.filter(pl.col("client_id") == row["client_id"])
            .group_by(pl.col("ts").dt.hour().alias("hour"))
            .agg(pl.col("requests").mean())
            .sort("requests")
        )
        busiest_utc_hour = hourly["hour"][-1]
        expected = (attributes["peak_hour_local"] - attributes["tz_offset_h"]) % 24
        gap = abs(busiest_utc_hour + 0.5 - expected)
        assert min(gap, 24 - gap) <= 2.5, row["client_id"]


def test_sparse_clients_are_mostly_idle_but_not_silent(batch):
    for cid in _clients_of(batch, "sparse"):
        requests = _series(batch.rows, cid)
        assert (requests == 0).mean() > 0.7
        assert (requests > 0).sum() >= 10


def test_bursty_clients_spike_more_than_regular_ones(batch):
    def peak_to_median(cid: str) -> float:
        requests = _series(batch.rows, cid)
        return float(np.quantile(requests, 0.999) / max(np.median(requests), 1.0))

    bursty = [peak_to_median(cid) for cid in _clients_of(batch, "bursty")]
    regular = [peak_to_median(cid) for cid in _clients_of(batch, "regular")]

    assert np.median(bursty) > np.median(regular)


def test_late_joiners_start_part_way_through_the_window(batch):
    window_start = END - timedelta(days=DAYS)
    full = DAYS * BUCKETS_PER_DAY
    late = _clients_of(batch, "late")

    assert late
    for cid in late:
        first = batch.rows.filter(pl.col("client_id") == cid)["ts"].min()
        assert first >= window_start + timedelta(days=DAYS * 0.3)
        assert len(_series(batch.rows, cid)) < 0.7 * full + 1


def test_cpu_follows_requests_for_regular_clients(batch):
    for cid in _clients_of(batch, "regular"):
        requests = _series(batch.rows, cid)
        cpu = _series(batch.rows, cid, "cpu_cores")
        assert np.corrcoef(requests, cpu)[0, 1] > 0.9


def _same_hours_ratio(batch, region: str, start: datetime, end: datetime, back: timedelta):
    """Mean requests of a region's clients in [start, end) over the same hours `back` earlier."""
    ids = batch.clients.filter(pl.col("region") == region)["client_id"]
    rows = batch.rows.filter(pl.col("client_id").is_in(ids.implode()))
    # Only clients present in both periods, so a late joiner cannot fake a change.
    present = (
        rows.group_by("client_id").agg(pl.col("ts").min()).filter(pl.col("ts") <= start - back)
    )
    rows = rows.filter(pl.col("client_id").is_in(present["client_id"].implode()))
    during = rows.filter(pl.col("ts").is_between(start, end, closed="left"))["requests"].mean()
    before = rows.filter(pl.col("ts").is_between(start - back, end - back, closed="left"))
    return during / before["requests"].mean()


def _event_for_most_clients(batch, kind: str, earliest: datetime, latest: datetime) -> dict:
    window_end = batch.rows["ts"].max() + timedelta(seconds=batch.freq_seconds)
    events = batch.calendar.filter(
        (pl.col("kind") == kind)
        & (pl.col("start_ts") >= earliest)
        & (pl.col("end_ts") <= min(latest, window_end))
    )
    sizes = dict(batch.clients.group_by("region").len().iter_rows())
    return max(events.iter_rows(named=True), key=lambda event: sizes.get(event["region"], 0))


def test_a_holiday_dips_demand_of_its_region():
    batch = generate_synthetic(20, 21, END, freq_seconds=FREQ)
    week = timedelta(days=7)
    holiday = _event_for_most_clients(batch, "holiday", END - timedelta(days=14), END)

    ratio = _same_hours_ratio(
        batch, holiday["region"], holiday["start_ts"], holiday["end_ts"], week
    )

    assert ratio < 0.75


def test_a_launch_lifts_demand_of_its_region():
    # Compared two weeks back: one week back from a launch is its region's holiday.
    batch = generate_synthetic(20, 28, END, freq_seconds=FREQ)
    fortnight = timedelta(days=14)
    launch = _event_for_most_clients(batch, "launch", END - fortnight, END)

    ratio = _same_hours_ratio(
        batch, launch["region"], launch["start_ts"], launch["end_ts"], fortnight
    )

    assert ratio > 1.2


def test_calendar_has_holidays_and_launches_including_after_end(batch):
    calendar = batch.calendar
    regions = set(batch.clients["region"])

    assert calendar.schema == pl.Schema(CALENDAR_COLUMNS)
    assert set(calendar["kind"]) == {"holiday", "launch"}
    assert regions <= set(calendar.filter(pl.col("kind") == "holiday")["region"])
    assert (calendar["end_ts"] > calendar["start_ts"]).all()
    assert calendar["start_ts"].max() >= END
    assert calendar["start_ts"].max() < END + timedelta(days=3)
    assert calendar["end_ts"].min() > END - timedelta(days=DAYS)
    assert not calendar.select("region", "start_ts", "name").is_duplicated().any()


def test_overlapping_windows_agree_on_their_overlap(batch):
    later = generate_synthetic(20, DAYS, END + timedelta(days=1), freq_seconds=FREQ, seed=7)

    joined = batch.rows.join(later.rows, on=["client_id", "ts"], suffix="_later")

    assert joined.height >= 18 * (DAYS - 1) * BUCKETS_PER_DAY
    for metric in METRICS:
        assert (joined[metric] == joined[f"{metric}_later"]).all(), metric


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 14, END), ">= 1"),
        ((20, 0, END), ">= 1"),
        ((20, 14, END, 0), ">= 1"),
        ((20, 1, END, 2 * 86_400), "does not fit"),
        ((20, 14, datetime(2024, 3, 15, tzinfo=UTC)), "naive"),
    ],
)
def test_rejects_impossible_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(*args)
