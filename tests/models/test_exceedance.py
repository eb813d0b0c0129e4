"""The shared exceedance model: hand-checked features, no look-ahead, sane probabilities."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from models.exceedance import (
    FEATURES,
    ExceedanceConfig,
    ExceedanceModel,
    critical_probability,
    expected_cold_starts,
    expected_idle,
    fit_exceedance_model,
    origin_features,
    warm_count,
    warm_counts,
)
from warehouse.sources.synthetic import generate_synthetic

T0 = datetime(2024, 3, 4)  # a Monday, 00:00 UTC
#       minute: 0  1  2  3  4  5  6  7  8  9
NEED_A = [0, 1, 0, 0, 2, 0, 0, 0, 1, 1]


def _usage(series: dict[str, list[float]], freq: timedelta = timedelta(minutes=1)) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"client_id": cid, "ts": T0 + i * freq, "concurrency": float(v)}
            for cid, values in series.items()
            for i, v in enumerate(values)
        ],
        schema={"client_id": pl.String, "ts": pl.Datetime("us"), "concurrency": pl.Float64},
    )


def _origins(pairs: list[tuple[str, int]], freq: timedelta = timedelta(minutes=1)) -> pl.DataFrame:
    return pl.DataFrame(
        {"client_id": [c for c, _ in pairs], "origin": [T0 + i * freq for _, i in pairs]},
        schema={"client_id": pl.String, "origin": pl.Datetime("us")},
    )


def _row(features: pl.DataFrame, origin_minute: int, horizon: int, level: int) -> dict:
    rows = features.filter(
        pl.col("origin") == T0 + timedelta(minutes=origin_minute),
        pl.col("horizon") == horizon,
        pl.col("level") == level,
    )
    assert rows.height == 1
    return rows.row(0, named=True)


@pytest.fixture(scope="module")
def synthetic() -> pl.DataFrame:
    batch = generate_synthetic(6, 3, datetime(2024, 3, 15), freq_seconds=300, seed=3)
    return batch.rows.select("client_id", "ts", "concurrency")


@pytest.fixture(scope="module")
def small_config() -> ExceedanceConfig:
    return ExceedanceConfig(
        freq_seconds=300, horizon_steps=3, max_level=4, num_boost_round=30, negative_keep=0.5
    )


@pytest.fixture(scope="module")
def model(synthetic, small_config):
    return fit_exceedance_model(synthetic, small_config)


# --- features ---------------------------------------------------------------------------------


def test_features_match_a_hand_count():
    config = ExceedanceConfig(freq_seconds=60, horizon_steps=2, max_level=3)
    features = origin_features(_usage({"a": NEED_A}), _origins([("a", 9), ("a", 4)]), config)
    assert features.columns == ["client_id", "origin", "ts", "horizon", "level", *FEATURES[2:]]

    at_end = _row(features, 9, 1, 1)
    # active at minutes 1, 4, 8, 9: idle gaps 2 (1->4), 3 (4->8), 0 (8->9)
    assert at_end["rate_all"] == pytest.approx(0.4)
    assert at_end["rate_short"] == pytest.approx(0.4)  # 10-minute window = whole history
    assert at_end["idle_run"] == 0.0
    assert at_end["gap_count"] == 3.0
    assert at_end["gap_mean"] == pytest.approx(5 / 3)
    assert at_end["gap_last"] == 0.0
    assert at_end["gap_p05"] == 0.0
    assert at_end["gap_p50"] == 2.0
    assert at_end["gap_max"] == 3.0
    assert at_end["gap_hazard"] == pytest.approx(1 / 3)  # one gap of 0 among three >= 0
    assert at_end["need_last"] == 1.0
    assert at_end["need_max_all"] == 2.0
    assert at_end["need_max_long"] == 2.0  # the 4-hour window is the whole history here
    assert at_end["history_steps"] == 10.0
    assert at_end["hour"] == 0.0
    assert at_end["weekday"] == 0.0  # Monday

    level_2 = _row(features, 9, 1, 2)
    assert level_2["rate_all"] == pytest.approx(0.1)
    assert level_2["since_level"] == 5.0  # need 2 last seen at minute 4
    assert level_2["level_over_last"] == 1.0
    assert np.isnan(_row(features, 9, 1, 3)["since_level"])  # never reached

    # at minute 4 only one gap (2) has closed; with 0 idle buckets since, none ends at 0
    early = _row(features, 4, 1, 1)
    assert early["gap_count"] == 1.0
    assert early["gap_hazard"] == 0.0
    assert early["rate_all"] == pytest.approx(2 / 5)
    assert early["ts"] == T0 + timedelta(minutes=5)
    # two steps ahead from minute 4: a call by minute 6 would close a gap of at most 1
    assert _row(features, 4, 2, 1)["gap_hazard"] == 0.0


def test_the_long_window_remembers_a_peak_for_four_hours():
    # a need of 3 at minute 10, 1 every other minute: the hybrid policy's 4-hour keep-alive
    # would still hold 3 instances two hours later, which the 1-hour window has forgotten
    need = [1.0] * 300
    need[10] = 3.0
    config = ExceedanceConfig(freq_seconds=60, horizon_steps=1, max_level=3)
    features = origin_features(_usage({"a": need}), _origins([("a", 150), ("a", 260)]), config)
    two_hours_on = _row(features, 150, 1, 3)
    assert two_hours_on["need_max_mid"] == 1.0
    assert two_hours_on["need_max_long"] == 3.0
    assert two_hours_on["level_over_max_long"] == 0.0
    past_it = _row(features, 260, 1, 3)  # minute 10 is 250 minutes back: out of the window
    assert past_it["need_max_long"] == 1.0
    assert past_it["level_over_max_long"] == 2.0


def test_a_model_trained_on_fewer_features_still_scores(synthetic, model):
    # a model registered before features were added: its booster names fewer columns
    older = [name for name in FEATURES if name not in {"gap_p05", "need_max_long"}]
    rows = origin_features(synthetic, _origins_of(synthetic), model.config)
    x = rows.select(older).to_numpy()
    label = (rows["need_max_all"].to_numpy() >= rows["level"].to_numpy()).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, label=label, feature_name=older),
        num_boost_round=5,
    )
    old_model = ExceedanceModel(model.config, booster.model_to_string())

    scored = old_model.score_origins(synthetic, _origins_of(synthetic))
    raw = booster.predict(x)
    keep = model.config.negative_keep
    expected = np.minimum.accumulate(
        np.clip(keep * raw / (keep * raw + 1 - raw), 0, 1).reshape(-1, model.config.max_level),
        axis=1,
    ).ravel()
    assert scored.height == rows.height
    assert np.allclose(scored["p_exceed"].to_numpy(), expected)

    renamed = booster.model_to_string().replace("gap_hazard", "gap_hazard_v9")
    with pytest.raises(ValueError, match="gap_hazard_v9.*retrain"):
        ExceedanceModel(model.config, renamed).score_origins(synthetic, _origins_of(synthetic))


def _origins_of(usage: pl.DataFrame) -> pl.DataFrame:
    """Each client's tenth and last buckets as origins."""
    return (
        usage.sort("client_id", "ts")
        .group_by("client_id", maintain_order=True)
        .agg(pl.col("ts").gather([9, -1]).alias("origin"))
        .explode("origin")
    )


def test_idle_run_and_hazard_while_idle():
    config = ExceedanceConfig(freq_seconds=60, horizon_steps=2, max_level=1)
    # a timer every third minute: gaps of 2, the current run 2 idle buckets long at minute 8
    need = [1, 0, 0, 1, 0, 0, 1, 0, 0]
    features = origin_features(_usage({"t": need}), _origins([("t", 8), ("t", 7)]), config)
    due = _row(features, 8, 1, 1)
    assert due["idle_run"] == 2.0
    assert due["gap_hazard"] == 1.0
    assert due["gap_p90"] == 2.0
    not_due = _row(features, 7, 1, 1)
    assert not_due["idle_run"] == 1.0
    assert not_due["gap_hazard"] == 0.0
    assert _row(features, 7, 2, 1)["gap_hazard"] == 1.0


def test_windows_are_wall_clock_and_holes_read_as_idle():
    config = ExceedanceConfig(freq_seconds=300, horizon_steps=1, max_level=1)
    assert (config.short_steps, config.mid_steps, config.day_steps) == (2, 12, 288)
    five = timedelta(minutes=5)
    usage = _usage({"a": [1, 1, 1, 1]}, five).filter(pl.col("ts") != T0 + 2 * five)
    features = origin_features(usage, _origins([("a", 3)], five), config)
    row = features.row(0, named=True)
    assert row["rate_short"] == pytest.approx(0.5)  # buckets 2 (a hole) and 3
    assert row["rate_all"] == pytest.approx(0.75)
    assert row["gap_last"] == 1.0


def test_a_client_never_active_has_no_gap_statistics():
    config = ExceedanceConfig(freq_seconds=60, horizon_steps=1, max_level=1)
    row = origin_features(_usage({"z": [0, 0, 0]}), _origins([("z", 2)]), config).row(0, named=True)
    assert row["gap_count"] == 0.0
    assert np.isnan(row["idle_run"]) and np.isnan(row["gap_hazard"])
    assert row["rate_all"] == 0.0


# --- model ------------------------------------------------------------------------------------


def test_scores_do_not_look_ahead(synthetic, model):
    origin = synthetic["ts"].unique().sort()[400]
    origins = synthetic.filter(pl.col("ts") == origin).select("client_id", origin=pl.col("ts"))
    changed = synthetic.with_columns(
        concurrency=pl.when(pl.col("ts") > origin)
        .then(pl.col("concurrency") * 7 + 3)
        .otherwise(pl.col("concurrency"))
    )
    before = model.score_origins(synthetic, origins)
    after = model.score_origins(changed, origins)
    assert before.height == origins.height * 3 * 4 > 0
    assert before.equals(after)


def test_probabilities_are_bounded_and_fall_with_level(synthetic, model):
    scored = model.score_origins(synthetic, synthetic.select("client_id", origin=pl.col("ts")))
    p = scored["p_exceed"]
    assert p.min() >= 0.0 and p.max() <= 1.0
    rises = scored.with_columns(
        step=pl.col("p_exceed").diff().over("client_id", "origin", "horizon")
    ).filter(pl.col("level") > 1, pl.col("step") > 0)
    assert rises.is_empty()


def test_predict_gives_every_client_every_horizon_and_level(synthetic, model):
    predicted = model.predict(synthetic)
    last = synthetic.group_by("client_id").agg(pl.col("ts").max().alias("last"))
    joined = predicted.join(last, on="client_id")
    assert predicted.schema == {
        "client_id": pl.String,
        "origin": pl.Datetime("us"),
        "ts": pl.Datetime("us"),
        "horizon": pl.Int32,
        "level": pl.Int32,
        "p_exceed": pl.Float64,
    }
    assert predicted.height == synthetic["client_id"].n_unique() * 3 * 4
    assert (joined["origin"] == joined["last"]).all()
    assert joined.select(
        (pl.col("ts") - pl.col("origin") == pl.duration(minutes=5 * pl.col("horizon"))).all()
    ).item()
    assert predicted.filter(pl.col("horizon") == 1).height == synthetic["client_id"].n_unique() * 4
    two = model.predict(synthetic, horizon_steps=2, levels=2)
    assert sorted(two["level"].unique().to_list()) == [1, 2]
    with pytest.raises(ValueError, match="horizon_steps"):
        model.predict(synthetic, horizon_steps=4)


def test_long_horizons_at_five_minutes_land_on_the_right_time():
    # 12 steps x 300 s in microseconds overflows 32 bits: times must stay exact
    five = timedelta(minutes=5)
    usage = _usage({"a": [1, 0] * 30, "b": [0, 0, 3] * 20}, five)
    config = ExceedanceConfig(300, horizon_steps=12, max_level=3, num_boost_round=5)
    predicted = fit_exceedance_model(usage, config).predict(usage)
    far = predicted.filter(pl.col("horizon") == 12)
    assert (far["ts"] == far["origin"] + 12 * five).all()


def test_a_client_always_at_three_gets_its_level_right():
    rng = np.random.default_rng(0)
    sparse = (rng.random((3, 300)) < 0.1).astype(float)
    series = {"steady": [3.0] * 300, **{f"s{i}": list(sparse[i]) for i in range(3)}}
    usage = _usage(series)
    model = fit_exceedance_model(usage, ExceedanceConfig(60, max_level=6, num_boost_round=50))
    steady = model.predict(usage).filter(pl.col("client_id") == "steady").sort("level")
    p = dict(zip(steady["level"].to_list(), steady["p_exceed"].to_list(), strict=True))
    assert min(p[1], p[2], p[3]) > 0.9
    assert max(p[4], p[5], p[6]) < 0.1


def test_score_origins_skips_origins_without_history_and_rejects_off_grid(synthetic, model):
    some = synthetic["client_id"].min()
    first = synthetic.filter(pl.col("client_id") == some)["ts"].min()
    origins = pl.DataFrame(
        {
            "client_id": [some, some, "unknown"],
            "origin": [first + timedelta(minutes=5), first - timedelta(days=1), first],
        }
    )
    scored = model.score_origins(synthetic, origins)
    assert scored["origin"].unique().to_list() == [first + timedelta(minutes=5)]
    off_grid = origins.with_columns(pl.col("origin") + timedelta(minutes=1))
    with pytest.raises(ValueError, match="grid"):
        model.score_origins(synthetic, off_grid)


def test_pickle_round_trip_predicts_identically(synthetic, model):
    again = pickle.loads(pickle.dumps(model))
    assert again.predict(synthetic).equals(model.predict(synthetic))


def test_copies_share_a_fingerprint_and_other_boosters_do_not(model):
    first = model.fingerprint()
    copy = pickle.loads(pickle.dumps(model))
    assert "_fingerprint" not in copy.__dict__  # not stored: a cache, not the model
    assert copy.fingerprint() == first and len(first) == 64
    other = ExceedanceModel(model.config, model.booster_string.replace("tree", "tree ", 1))
    assert other.fingerprint() != first


def test_bad_usage_is_refused():
    config = ExceedanceConfig(60)
    usage = _usage({"a": [1, 0, 1]})
    with pytest.raises(ValueError, match="duplicate"):
        fit_exceedance_model(pl.concat([usage, usage.head(1)]), config)
    with pytest.raises(ValueError, match=">= 0"):
        fit_exceedance_model(usage.with_columns(concurrency=pl.lit(-1.0)), config)
    with pytest.raises(ValueError, match="grid"):
        fit_exceedance_model(usage, ExceedanceConfig(300))
    with pytest.raises(ValueError, match="must be"):
        ExceedanceConfig(60, horizon_steps=0)


# --- the newsvendor arithmetic ------------------------------------------------------------------

P = [0.9, 0.5, 0.2, 0.05]  # P(need >= 1..4)


@pytest.mark.parametrize(
    ("cost_ratio", "warm"),
    [
        (0.0, 0),  # threshold 1: nothing is certain
        (1.0, 2),  # threshold 0.5: level 2 sits exactly on it and is kept
        (3.0, 2),  # threshold 0.25
        (4.0, 3),  # threshold 0.2, again exactly on a level
        (100.0, 4),  # threshold 1/101
    ],
)
def test_warm_count_is_the_largest_level_above_the_critical_ratio(cost_ratio, warm):
    assert warm_count(P, cost_ratio) == warm


def test_critical_probability_and_expectations():
    assert critical_probability(4.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        critical_probability(-1.0)
    assert warm_count([0.1, 0.6], 1.0) == 2  # largest qualifying level, even if not monotone
    assert expected_cold_starts(P, 2) == pytest.approx(0.25)
    assert expected_cold_starts(P, 0) == pytest.approx(1.65)
    assert expected_idle(P, 2) == pytest.approx(0.1 + 0.5)
    assert expected_idle(P, 0) == 0.0


def test_warm_counts_on_a_frame_with_per_client_ratios():
    origin = T0
    frame = pl.DataFrame(
        {
            "client_id": ["a"] * 4 + ["b"] * 4,
            "origin": [origin] * 8,
            "ts": [origin + timedelta(minutes=1)] * 8,
            "horizon": [1] * 8,
            "level": [1, 2, 3, 4] * 2,
            "p_exceed": P + [0.3, 0.01, 0.0, 0.0],
        }
    )
    flat = warm_counts(frame, 4.0)
    assert dict(zip(flat["client_id"], flat["warm"], strict=True)) == {"a": 3, "b": 1}
    ratio = pl.when(pl.col("client_id") == "a").then(1.0).otherwise(200.0)
    per_client = warm_counts(frame, ratio)
    assert dict(zip(per_client["client_id"], per_client["warm"], strict=True)) == {"a": 2, "b": 2}
    assert per_client["warm"].dtype == pl.Int32
