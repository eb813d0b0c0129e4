"""The shared exceedance classifier: fitting it, scoring it, and the features it sees.

`fit_exceedance_model` trains ONE LightGBM binary classifier over all clients on rows
(client, origin t, horizon h, level k) labelled 1[need[t+h] >= k]; `ExceedanceModel` scores
it after each client's last bucket (`predict`) or at many origins at once (`score_origins`),
undoing the negative down-sampling and forcing p_exceed non-increasing in level.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

import lightgbm as lgb
import numpy as np
import polars as pl

from models.exceedance.config import ExceedanceConfig
from models.exceedance.features import FEATURES, _features, _training_rows
from models.exceedance.grid import (
    _build_grid,
    _client_memory_array,
    _expand,
    _Grid,
    _memory_map,
    _origin_positions,
    _output_shape,
    _row_keys,
)

# the package's logger, as when the model was one module
log = logging.getLogger(__package__)

_SCORE_CHUNK_ROWS = 1_000_000

OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "origin": pl.Datetime("us"),
    "ts": pl.Datetime("us"),
    "horizon": pl.Int32(),
    "level": pl.Int32(),
    "p_exceed": pl.Float64(),
}


class ExceedanceModel:
    """A shared booster plus the config and client attributes it was trained with.

    Picklable: the booster is kept as LightGBM's model string and rebuilt on demand, so a
    model scores the same before and after a round trip.
    """

    def __init__(
        self,
        config: ExceedanceConfig,
        booster_string: str,
        client_memory: dict[str, float] | None = None,
        training_rows: int = 0,
    ) -> None:
        self.config = config
        self.booster_string = booster_string
        self.client_memory = dict(client_memory or {})
        self.training_rows = training_rows
        self._booster: lgb.Booster | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_booster"] = None
        state.pop("_fingerprint", None)
        return state

    def fingerprint(self) -> str:
        """Identity of the model's booster: equal for copies loaded apart (each client's
        forecaster carries one), hashed once per object: a cycle asks for every client's."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = self.__dict__["_fingerprint"] = hashlib.sha256(
                self.booster_string.encode()
            ).hexdigest()
        return cached

    @property
    def booster(self) -> lgb.Booster:
        """The LightGBM booster, rebuilt from its model string on first use."""
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.booster_string)
        return self._booster

    def _columns(self) -> list[int] | slice:
        """Where the booster's features are in FEATURES.

        A model registered before features were added was trained on fewer columns, in
        their order then; it must keep scoring until the next training replaces it.
        """
        names = self.booster.feature_name()
        if names == list(FEATURES):
            return slice(None)
        unknown = sorted(set(names) - set(FEATURES))
        if unknown:
            raise ValueError(
                f"this exceedance model needs features this version does not compute: "
                f"{', '.join(unknown)}; retrain it (prewarm train)"
            )
        return [FEATURES.index(name) for name in names]

    def predict(
        self,
        history: pl.DataFrame,
        horizon_steps: int | None = None,
        levels: int | None = None,
        clients: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """P(need >= k), h = 1..horizon_steps, k = 1..levels, after each client's last bucket."""
        grid = _build_grid(history, self.config.freq_seconds)
        origins = grid.starts + grid.lengths - 1
        return self._score(grid, origins, horizon_steps, levels, clients)

    def score_origins(
        self,
        usage: pl.DataFrame,
        origins: pl.DataFrame,
        horizon_steps: int | None = None,
        levels: int | None = None,
        clients: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Score many (client_id, origin) pairs at once, each from usage at or before its origin.

        Meant for backtests and replays: features for all origins come from one pass over
        `usage`. An origin off its client's grid raises ValueError; an origin outside the
        client's observed span (or of an unknown client) has no history and gets no rows.
        """
        grid = _build_grid(usage, self.config.freq_seconds)
        return self._score(grid, _origin_positions(grid, origins), horizon_steps, levels, clients)

    def _score(
        self,
        grid: _Grid,
        origins: np.ndarray,
        horizon_steps: int | None,
        levels: int | None,
        clients: pl.DataFrame | None,
    ) -> pl.DataFrame:
        n_h, n_k = _output_shape(self.config, horizon_steps, levels)
        memory = _client_memory_array(grid, {**self.client_memory, **_memory_map(clients)})
        # bounded chunks keep the feature matrix (~250 bytes a row) small on long replays
        per_chunk = max(1, _SCORE_CHUNK_ROWS // (n_h * n_k))
        chunks = [
            self._probabilities(grid, origins[i : i + per_chunk], n_h, n_k, memory)
            for i in range(0, origins.size, per_chunk)
        ]
        p = np.concatenate(chunks) if chunks else np.empty(0)
        keys = _row_keys(grid, *_expand(origins, n_h, n_k))
        return keys.with_columns(p_exceed=pl.Series(p, dtype=pl.Float64)).cast(
            pl.Schema(OUTPUT_SCHEMA)
        )

    def _probabilities(
        self, grid: _Grid, origins: np.ndarray, n_h: int, n_k: int, memory: np.ndarray
    ) -> np.ndarray:
        """Calibrated, level-monotone P for rows ordered origin, horizon, level."""
        x = _features(grid, self.config, *_expand(origins, n_h, n_k), memory)
        x = x[:, self._columns()]
        # A dense matrix without pred_contrib predicts a dense array (LightGBM types predict
        # as any of its return kinds, sparse ones included).
        raw = cast(np.ndarray, self.booster.predict(x, num_threads=self.config.num_threads))
        q = self.config.negative_keep
        p = np.clip(q * raw / (q * raw + 1.0 - raw), 0.0, 1.0)
        return np.minimum.accumulate(p.reshape(-1, n_k), axis=1).ravel()


def origin_features(
    usage: pl.DataFrame,
    origins: pl.DataFrame,
    config: ExceedanceConfig,
    horizon_steps: int | None = None,
    levels: int | None = None,
    clients: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The model's inputs at (client_id, origin) pairs, one row per horizon and level.

    Columns: client_id, origin, ts, horizon, level, then FEATURES (NaN where unknown, e.g.
    gap statistics before a second active bucket). For inspection, tests and notebooks.
    """
    grid = _build_grid(usage, config.freq_seconds)
    n_h, n_k = _output_shape(config, horizon_steps, levels)
    origin, horizon, level = _expand(_origin_positions(grid, origins), n_h, n_k)
    memory = _client_memory_array(grid, _memory_map(clients))
    x = _features(grid, config, origin, horizon, level, memory)
    values = pl.DataFrame(x, schema=dict.fromkeys(FEATURES, pl.Float64), orient="row")
    return pl.concat(
        [_row_keys(grid, origin, horizon, level), values.drop("level", "horizon")],
        how="horizontal",
    )


def fit_exceedance_model(
    usage: pl.DataFrame, config: ExceedanceConfig, clients: pl.DataFrame | None = None
) -> ExceedanceModel:
    """Train one shared P(need[t+h] >= k) classifier over all clients in `usage`.

    `clients` (client_id, container_memory_mb) is optional; its memory becomes a feature
    and is remembered for scoring.
    """
    grid = _build_grid(usage, config.freq_seconds)
    rng = np.random.default_rng(config.seed)
    origin, horizon, level = _training_rows(grid, config, rng)
    label = (grid.need[origin + horizon] >= level).astype(np.float64)
    if config.negative_keep < 1.0:
        keep = (label == 1.0) | (rng.random(label.size) < config.negative_keep)
        origin, horizon, level, label = origin[keep], horizon[keep], level[keep], label[keep]
    if label.size > config.max_rows:
        keep = np.sort(rng.choice(label.size, config.max_rows, replace=False))
        origin, horizon, level, label = origin[keep], horizon[keep], level[keep], label[keep]
    if label.size == 0:
        raise ValueError("no training rows: every client needs at least two buckets")

    client_memory = _memory_map(clients)
    x = _features(grid, config, origin, horizon, level, _client_memory_array(grid, client_memory))
    params = {
        "objective": "binary",
        "verbose": -1,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        **config.lgb_params,
        "num_threads": config.num_threads,
    }
    dataset = lgb.Dataset(x, label=label, feature_name=list(FEATURES), free_raw_data=True)
    booster = lgb.train(params, dataset, num_boost_round=config.num_boost_round)
    log.info(
        "trained exceedance model on %d rows (%d positive) from %d clients",
        label.size,
        int(label.sum()),
        grid.client_ids.size,
    )
    return ExceedanceModel(config, booster.model_to_string(), client_memory, label.size)
