"""Forecasting features: one vectorised polars build serves training, calibration and prediction.

Forecasts are direct multi-horizon: a row is (client, metric, origin t, horizon step h). Its
features are known at t (values up to and including t), plus time and calendar features of the
target time t+h and h itself; its target is the value at t+h.

Values are divided by a per (client, metric) scale and expressed relative to the last known
value at t (the anchor), and the target is the change from the anchor in the same units. Trees
cannot extrapolate a level, but they can learn a change: a trend then no longer pushes features
out of the training range, and one global model can serve clients of very different sizes.

The strongest signal a few hours ahead is what the series did at the same time of day (or
week) before: the seasonal features look up the value one season before the target time
(several seasons back when the horizon is longer than a season, so nothing after t is used),
and its change over the same span, which is the seasonal naive forecast expressed as a change.
The profile averages that over up to three weeks of days, which is far less noisy. Cross-metric
features carry what the client's other metrics just did (memory follows requests, ...).

Everything is computed with window expressions over (client_id, metric), so any number of
clients is built at once. `FeatureSpec` records everything that shaped the columns, so
prediction rebuilds exactly the columns a model was trained on.

The regular grid the series are built on (`regular_grid`, `to_long`, `step_of`, `ts_of`) is
`models.series_grid`, re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

# the regular grid lives in `models.series_grid`; its names stay importable from here
from models.series_grid import regular_grid as regular_grid
from models.series_grid import step_of as step_of
from models.series_grid import to_long as to_long
from models.series_grid import ts_of as ts_of

DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS

CALENDAR_KINDS: tuple[str, ...] = ("holiday", "launch")
GLOBAL_REGION = "global"
CLIENT_FEATURES: tuple[str, ...] = (
    "tier",
    "region",
    "service",
    "container_cpu",
    "container_memory_mb",
)

_KEYS = ("client_id", "metric")
_MAX_PROFILE_DAYS = 21


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature build produces; equal specs give equal columns.

    Lags, windows, half-lives and seasons are in steps of `freq_seconds`. `rolling` lists
    (statistic, window) pairs; `slopes` are windows w whose mean is compared with the w
    before it. Seasons are the periods whose value at the target time is looked up;
    `profile_days` > 1 adds the mean over that many past days at the target's time of day.
    `cross_metrics` are metrics whose recent change is a feature of every metric's rows
    (named by position, since metric names can be anything). The vocabularies map client
    attributes to integer codes (position in the tuple; unknown values are missing).
    """

    freq_seconds: int
    horizon_steps: int
    lags: tuple[int, ...]
    rolling: tuple[tuple[str, int], ...]
    ewm_half_lives: tuple[int, ...]
    slopes: tuple[int, ...]
    seasons: tuple[int, ...]
    profile_days: int = 1
    cross_metrics: tuple[str, ...] = ()
    calendar_kinds: tuple[str, ...] = CALENDAR_KINDS
    tiers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    @property
    def shape(self) -> FeatureSpec:
        """This spec without its attribute vocabularies: specs of equal shape build the same
        series but for the client attribute codes (`client_codes`). Clients' own models
        differ in nothing else, so prediction builds their series once per shape."""
        return replace(self, tiers=(), regions=(), services=())

    @property
    def steps_per_day(self) -> int:
        return max(1, round(DAY_SECONDS / self.freq_seconds))

    @property
    def cross_window(self) -> tuple[int, int]:
        """(change window, mean window) of the cross-metric features: an hour and a day."""
        return max(1, round(3600 / self.freq_seconds)), self.steps_per_day

    @property
    def origin_features(self) -> tuple[str, ...]:
        """Features known at the origin, computed per step of the series."""
        names = ["level"]
        names += [f"lag_{k}" for k in self.lags]
        names += [f"{stat}_{w}" for stat, w in self.rolling]
        names += [f"ewm_{hl}" for hl in self.ewm_half_lives]
        names += [f"slope_{w}" for w in self.slopes]
        names += [f"{kind}_origin" for kind in self.calendar_kinds]
        change, mean = self.cross_window
        for i in range(len(self.cross_metrics)):
            names += [f"x{i}_lag_{change}", f"x{i}_mean_{mean}"]
        return tuple(names)

    @property
    def target_features(self) -> tuple[str, ...]:
        """Features of the target time (and of the pair origin, target)."""
        names = ["horizon", "hour", "dow", *self.calendar_kinds]
        for season in self.seasons:
            names += [f"season_{season}_gap", f"season_{season}_change"]
        if self.profile_days > 1:
            names += ["profile_gap", "profile_change"]
        return tuple(names)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Model input columns, in order."""
        return (*self.origin_features, *self.target_features, *CLIENT_FEATURES)

    @property
    def lookback_steps(self) -> int:
        """History before (and including) an origin that its features can reach."""
        reach = [*self.lags, *(w for _, w in self.rolling), *(2 * w for w in self.slopes), 1]
        reach += [4 * hl for hl in self.ewm_half_lives]  # older values weigh < 1/16
        reach += list(self.cross_window)
        for season in self.seasons:
            reach.append(season * _max_season_multiple(self.horizon_steps, season))
        if self.profile_days > 1:
            day = self.steps_per_day
            reach.append(day * (_max_season_multiple(self.horizon_steps, day) + self.profile_days))
        return max(reach) + 1


def make_feature_spec(
    freq_seconds: int,
    horizon_steps: int,
    train_steps: int,
    clients: pl.DataFrame | None = None,
    calendar: pl.DataFrame | None = None,
    cross_metrics: Sequence[str] = (),
) -> FeatureSpec:
    """Choose lags, windows and seasons that `train_steps` of history can support."""
    day = max(1, round(DAY_SECONDS / freq_seconds))
    week = 7 * day

    def steps(seconds: int, least: int = 1) -> int:
        return max(least, round(seconds / freq_seconds))

    hour = steps(3600, 2)
    # A seasonal feature is worth having when at least a day of training origins can see it.
    seasons = tuple(s for s in (day, week) if train_steps - s >= day)
    lags = sorted({1, hour, *seasons})
    rolling = (
        ("mean", hour),
        ("max", hour),
        ("min", hour),
        ("std", steps(6 * 3600, 2)),
        ("mean", max(2, day)),
        ("std", max(2, day)),
    )
    profile_days = min(_MAX_PROFILE_DAYS, train_steps // day - 1) if day in seasons else 1
    kinds = set(CALENDAR_KINDS)
    if calendar is not None and calendar.height:
        kinds |= set(calendar.get_column("kind").drop_nulls().unique().to_list())
    return FeatureSpec(
        freq_seconds=freq_seconds,
        horizon_steps=horizon_steps,
        lags=tuple(lags),
        rolling=tuple(dict.fromkeys(rolling)),
        ewm_half_lives=tuple(sorted({steps(900), hour})),
        slopes=tuple(sorted({hour, max(2, day)})),
        seasons=seasons,
        profile_days=max(1, profile_days),
        cross_metrics=tuple(cross_metrics) if len(cross_metrics) > 1 else (),
        calendar_kinds=tuple(sorted(kinds)),
        tiers=_vocabulary(clients, "tier"),
        regions=_vocabulary(clients, "region"),
        services=_vocabulary(clients, "service"),
    )


def _vocabulary(clients: pl.DataFrame | None, column: str) -> tuple[str, ...]:
    if clients is None or column not in clients.columns:
        return ()
    return tuple(sorted(clients.get_column(column).drop_nulls().unique().to_list()))


def _max_season_multiple(horizon_steps: int, season: int) -> int:
    """How many seasons back the farthest horizon must look to stay at or before the origin."""
    return max(1, math.ceil(horizon_steps / season))


# --- per-step series ----------------------------------------------------------------------


def build_series(
    long: pl.DataFrame,
    spec: FeatureSpec,
    scales: pl.DataFrame,
    calendar: pl.DataFrame | None = None,
    clients: pl.DataFrame | None = None,
    cross: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Origin features and seasonal look-ups at every step of a long frame.

    `long` comes from `to_long` (sorted, regular grid); `scales` has client_id, metric, scale.
    Every column at step t uses values at steps <= t only, so the frame serves both as the
    origin side (features at t) and the target side (look-ups at t+h) of a row. Cross-metric
    features come from `long` itself unless `cross` (from `cross_features`) is given, which
    lets a caller build one metric at a time.
    """
    z = pl.col("z")
    anchor = pl.col("anchor")
    frame = (
        long.join(scales, on=list(_KEYS), how="left")
        .with_columns((pl.col("value") / pl.col("scale")).alias("z"))
        .with_columns(z.forward_fill().over(_KEYS).alias("anchor"))
    )
    frame = frame.with_columns(*_origin_exprs(spec, z, anchor), *_season_lookups(spec))
    frame = _with_calendar_flags(frame, spec, calendar, clients)
    if spec.cross_metrics:
        cross = cross if cross is not None else cross_features(frame, spec)
        frame = frame.join(cross, on=["client_id", "step"], how="left")
    return frame.join(_client_codes(frame, spec, clients), on="client_id", how="left")


def _origin_exprs(spec: FeatureSpec, z: pl.Expr, anchor: pl.Expr) -> list[pl.Expr]:
    """Level, lags, rolling statistics, smoothed levels and slopes, relative to the anchor."""

    def over(expr: pl.Expr) -> pl.Expr:
        return expr.over(_KEYS)

    rolling = {
        "mean": lambda w: over(z.rolling_mean(w, min_samples=1)) - anchor,
        "max": lambda w: over(z.rolling_max(w, min_samples=1)) - anchor,
        "min": lambda w: over(z.rolling_min(w, min_samples=1)) - anchor,
        "std": lambda w: over(z.rolling_std(w, min_samples=2)),
    }
    exprs = [anchor.alias("level")]
    exprs += [(over(z.shift(k)) - anchor).alias(f"lag_{k}") for k in spec.lags]
    exprs += [rolling[stat](w).alias(f"{stat}_{w}") for stat, w in spec.rolling]
    exprs += [
        (over(z.ewm_mean(half_life=hl, ignore_nulls=True)) - anchor).alias(f"ewm_{hl}")
        for hl in spec.ewm_half_lives
    ]
    exprs += [
        (
            over(z.rolling_mean(w, min_samples=1)) - over(z.shift(w).rolling_mean(w, min_samples=1))
        ).alias(f"slope_{w}")
        for w in spec.slopes
    ]
    return exprs


def cross_features(series: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Per (client, step): each cross metric's last-hour change and distance to its daily mean.

    `series` needs client_id, metric, step and z (scaled values); the result has client_id,
    step and the spec's x<i>_ columns (null when the client lacks that metric).
    """
    change, mean = spec.cross_window
    z = pl.col("z")
    anchor = z.forward_fill().over(_KEYS)
    parts = (
        series.filter(pl.col("metric").is_in(spec.cross_metrics))
        .sort("client_id", "metric", "step")
        .select(
            "client_id",
            "metric",
            "step",
            (anchor - z.shift(change).over(_KEYS)).alias("lag"),
            (z.rolling_mean(mean, min_samples=1).over(_KEYS) - anchor).alias("mean"),
        )
    )
    keys = series.select("client_id", "step").unique()
    for i, metric in enumerate(spec.cross_metrics):
        one = parts.filter(pl.col("metric") == metric).select(
            "client_id",
            "step",
            pl.col("lag").alias(f"x{i}_lag_{change}"),
            pl.col("mean").alias(f"x{i}_mean_{mean}"),
        )
        keys = keys.join(one, on=["client_id", "step"], how="left")
    return keys


def _season_lookups(spec: FeatureSpec) -> list[pl.Expr]:
    """Value `m` seasons back (and the mean over past days), for every multiple m needed."""
    z = pl.col("z")
    exprs: list[pl.Expr] = []
    for season in spec.seasons:
        for m in range(1, _max_season_multiple(spec.horizon_steps, season) + 1):
            exprs.append(z.shift(m * season).over(_KEYS).alias(f"_s{season}_m{m}"))
    if spec.profile_days > 1:
        day = spec.steps_per_day
        for m in range(1, _max_season_multiple(spec.horizon_steps, day) + 1):
            back = [z.shift((m + k) * day).over(_KEYS) for k in range(spec.profile_days)]
            exprs.append(pl.mean_horizontal(back).alias(f"_p_m{m}"))
    return exprs


def _lookup_columns(spec: FeatureSpec) -> list[str]:
    cols = [
        f"_s{season}_m{m}"
        for season in spec.seasons
        for m in range(1, _max_season_multiple(spec.horizon_steps, season) + 1)
    ]
    if spec.profile_days > 1:
        day = spec.steps_per_day
        cols += [f"_p_m{m}" for m in range(1, _max_season_multiple(spec.horizon_steps, day) + 1)]
    return cols


# --- calendar and client attributes -------------------------------------------------------


def _with_calendar_flags(
    frame: pl.DataFrame,
    spec: FeatureSpec,
    calendar: pl.DataFrame | None,
    clients: pl.DataFrame | None,
) -> pl.DataFrame:
    """Add `_cal_<kind>` (0/1): an event of that kind is active in the client's region."""
    regions = _client_regions(frame, clients)
    keys = frame.select("client_id", "ts").unique().join(regions, on="client_id", how="left")
    flags = calendar_flags(keys.select("region", "ts").unique(), calendar, spec.calendar_kinds)
    per_client = keys.join(flags, on=["region", "ts"], how="left", nulls_equal=True).drop("region")
    return frame.join(per_client, on=["client_id", "ts"], how="left")


def calendar_flags(
    keys: pl.DataFrame, calendar: pl.DataFrame | None, kinds: Iterable[str]
) -> pl.DataFrame:
    """For distinct (region, ts): `_cal_<kind>` = 1.0 when an event of that kind covers ts.

    An event applies when its region is the key's region or 'global'; it covers
    start_ts <= ts < end_ts.
    """
    kinds = tuple(kinds)
    names = [f"_cal_{kind}" for kind in kinds]
    if calendar is None or calendar.height == 0:
        return keys.with_columns(pl.lit(0.0).alias(name) for name in names)
    events = calendar.select("region", "start_ts", "end_ts", "kind")
    regional = keys.join(events.filter(pl.col("region") != GLOBAL_REGION), on="region")
    everywhere = keys.join(
        events.filter(pl.col("region") == GLOBAL_REGION).drop("region"), how="cross"
    )
    active = (
        pl.concat([regional, everywhere], how="diagonal")
        .filter((pl.col("start_ts") <= pl.col("ts")) & (pl.col("ts") < pl.col("end_ts")))
        .group_by("region", "ts")
        .agg(
            (pl.col("kind") == kind).any().cast(pl.Float64).alias(name)
            for kind, name in zip(kinds, names, strict=True)
        )
    )
    return keys.join(active, on=["region", "ts"], how="left", nulls_equal=True).with_columns(
        pl.col(name).fill_null(0.0) for name in names
    )


def _client_regions(frame: pl.DataFrame, clients: pl.DataFrame | None) -> pl.DataFrame:
    ids = frame.select("client_id").unique()
    if clients is None or "region" not in clients.columns:
        return ids.with_columns(pl.lit(None, dtype=pl.String).alias("region"))
    return ids.join(clients.select("client_id", "region"), on="client_id", how="left")


def _client_codes(
    frame: pl.DataFrame, spec: FeatureSpec, clients: pl.DataFrame | None
) -> pl.DataFrame:
    """Client attributes as model inputs: vocabulary codes and container size."""
    return client_codes(frame.select("client_id").unique(), spec, clients)


def client_codes(
    ids: pl.DataFrame, spec: FeatureSpec, clients: pl.DataFrame | None
) -> pl.DataFrame:
    """client_id and `CLIENT_FEATURES` of the clients in `ids` under `spec`'s vocabularies
    (a series built with `spec.shape` takes them in place of its own)."""
    if clients is None:
        clients = pl.DataFrame(schema={"client_id": pl.String})
    vocabularies = {"tier": spec.tiers, "region": spec.regions, "service": spec.services}
    exprs: list[pl.Expr] = []
    for column, vocabulary in vocabularies.items():
        if column in clients.columns and vocabulary:
            codes = {value: float(i) for i, value in enumerate(vocabulary)}
            exprs.append(
                pl.col(column).replace_strict(codes, default=None, return_dtype=pl.Float64)
            )
        else:
            exprs.append(pl.lit(None, dtype=pl.Float64).alias(column))
    for column in ("container_cpu", "container_memory_mb"):
        if column in clients.columns:
            exprs.append(pl.col(column).cast(pl.Float64))
        else:
            exprs.append(pl.lit(None, dtype=pl.Float64).alias(column))
    attrs = clients.select("client_id", *exprs).unique(subset="client_id", keep="last")
    return ids.join(attrs, on="client_id", how="left").select("client_id", *CLIENT_FEATURES)


# --- rows ---------------------------------------------------------------------------------


def assemble_rows(series: pl.DataFrame, pairs: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Feature rows for (client, origin step, horizon) pairs, for every metric of the client.

    `pairs` has client_id, step (the origin), horizon and any extra columns to carry along.
    The result has client_id, metric, step, origin_ts, target_ts, scale, anchor, target
    (change from the anchor in scale units; null when unknown), the extra columns and the
    spec's feature columns (horizon among them), sorted so that fits are reproducible.
    """
    calendar_cols = [f"_cal_{kind}" for kind in spec.calendar_kinds]
    lookups = _lookup_columns(spec)
    origin_only = [f for f in spec.origin_features if not f.endswith("_origin")]
    origin = series.select(
        "client_id",
        "metric",
        "step",
        "ts",
        "scale",
        "anchor",
        *origin_only,
        *calendar_cols,
        *lookups,
        *CLIENT_FEATURES,
    ).rename({"ts": "origin_ts", **{f"_cal_{k}": f"{k}_origin" for k in spec.calendar_kinds}})
    target = series.select(
        "client_id",
        "metric",
        pl.col("step").alias("target_step"),
        pl.col("ts").alias("target_ts"),
        "z",
        *(pl.col(f"_cal_{k}").alias(k) for k in spec.calendar_kinds),
        *(pl.col(c).alias(f"{c}_t") for c in lookups),
    )
    extra = [c for c in pairs.columns if c not in ("client_id", "step", "horizon")]
    rows = (
        pairs.select("client_id", "step", pl.col("horizon").cast(pl.Int32), *extra)
        .join(origin, on=["client_id", "step"], how="inner")
        .with_columns((pl.col("step") + pl.col("horizon")).alias("target_step"))
        .join(target, on=["client_id", "metric", "target_step"], how="left")
    )
    return (
        rows.with_columns(
            *_target_time_features(spec),
            (pl.col("z") - pl.col("anchor")).alias("target"),
        )
        .select(
            "client_id",
            "metric",
            "step",
            "origin_ts",
            "target_ts",
            "scale",
            "anchor",
            "target",
            *extra,
            *spec.feature_names,
        )
        .sort("client_id", "metric", "step", "horizon", maintain_order=True)
    )


def _target_time_features(spec: FeatureSpec) -> list[pl.Expr]:
    """Time of the target and the seasonal look-ups that stay at or before the origin."""
    target_ts = pl.col("target_ts")
    horizon = pl.col("horizon")
    anchor = pl.col("anchor")
    exprs = [
        (target_ts.dt.hour() + target_ts.dt.minute() / 60.0).cast(pl.Float64).alias("hour"),
        target_ts.dt.weekday().cast(pl.Float64).alias("dow"),
    ]

    def pick(prefix: str, season: int) -> tuple[pl.Expr, pl.Expr]:
        """The look-up `m` seasons back at the target and at the origin, m = ceil(h / season)."""
        top = _max_season_multiple(spec.horizon_steps, season)
        at_target = pl.col(f"{prefix}_m{top}_t")
        at_origin = pl.col(f"{prefix}_m{top}")
        for m in range(top - 1, 0, -1):
            fits = horizon <= m * season
            at_target = pl.when(fits).then(pl.col(f"{prefix}_m{m}_t")).otherwise(at_target)
            at_origin = pl.when(fits).then(pl.col(f"{prefix}_m{m}")).otherwise(at_origin)
        return at_target, at_origin

    for season in spec.seasons:
        at_target, at_origin = pick(f"_s{season}", season)
        exprs += [
            (at_target - anchor).alias(f"season_{season}_gap"),
            (at_target - at_origin).alias(f"season_{season}_change"),
        ]
    if spec.profile_days > 1:
        at_target, at_origin = pick("_p", spec.steps_per_day)
        exprs += [
            (at_target - anchor).alias("profile_gap"),
            (at_target - at_origin).alias("profile_change"),
        ]
    return exprs


def feature_matrix(rows: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The model input of assembled rows (float32, nulls as NaN), in the spec's column order."""
    return rows.select(pl.col(name).cast(pl.Float32) for name in spec.feature_names).to_numpy()
