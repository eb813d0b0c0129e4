"""Tail forecasts for warm pools: P(need >= k) per client, horizon and instance level k.

Why: most serverless clients are sparse, so quantile forecasts of concurrency are zero even
when a call in the next minute is likely, and a point forecast says nothing about scale-out.
The planner keeps instance k warm when P(need >= k) x cold-start penalty >= (1 - P) x idle
cost, so it needs the probability of each instance level, not a quantile.

How: ONE LightGBM binary classifier shared by all clients, trained on rows
(client, origin t, horizon h, level k) with label 1[need[t+h] >= k]. Per-client regressors
starve on sparse series (a median Azure function is active ~40 of 480 minutes); a shared
model learns how idle-gap histories and exceedance rates translate into probabilities, and
each client contributes only its own state (features computed from its own history).
Every feature at origin t uses need at or before t only, so scoring many origins at once
(`score_origins`, for backtests and minute-by-minute replays) has no look-ahead.

Conventions:
- usage is long (client_id, ts, concurrency); each client's series runs on its own regular
  grid from its first to its last row; a missing bucket inside that span is read as need 0
  (series sources write idle buckets as zeros, so a hole means nothing was recorded).
- negatives may be down-sampled for training; the odds are corrected at scoring
  (p = q p' / (q p' + 1 - p')), so probabilities stay calibrated.
- p_exceed is forced non-increasing in level (a running minimum over levels 1..K) because
  P(need >= k) cannot grow with k, while a booster is free to break that.
- levels are absolute instance counts 1..K, so no pool larger than K is ever advised: pick
  K above the largest need to serve warm (on the Azure sample, K = 8 left one function that
  needs up to 12 instances with 441 of the replay's 499 cold starts; K = 16 left 72).
- `newsvendor` (`warm_count` / `warm_counts`) holds the rule shared by planner and replay:
  keep the largest k with P(need >= k) >= 1 / (1 + R), R = cold penalty / idle cost.
- no per-client calibration: a per-client logit temperature and shift fitted on two hours
  of a function's own scores doubled level-1 log loss on the Azure sample; shrunk hard
  towards identity it gained ~3%, within seed-to-seed noise, so it is not worth the state.

Layout: `config` (ExceedanceConfig), `grid` (usage densified per client), `features` (the
model's inputs and training rows), `model` (fit and score), `newsvendor` (warm-pool
decisions), `artifact` (the model as a compact file, stored once per training run). Every
name below is importable from `models.exceedance`; pickled models record
`models.exceedance.ExceedanceModel` (written before the split) and still load through it.
"""

from models.exceedance.artifact import exceedance_from_bytes, exceedance_to_bytes
from models.exceedance.config import ExceedanceConfig
from models.exceedance.features import FEATURES
from models.exceedance.model import (
    OUTPUT_SCHEMA,
    ExceedanceModel,
    fit_exceedance_model,
    origin_features,
)
from models.exceedance.newsvendor import (
    critical_probability,
    expected_cold_starts,
    expected_idle,
    warm_count,
    warm_counts,
)

__all__ = [
    "FEATURES",
    "OUTPUT_SCHEMA",
    "ExceedanceConfig",
    "ExceedanceModel",
    "critical_probability",
    "exceedance_from_bytes",
    "exceedance_to_bytes",
    "expected_cold_starts",
    "expected_idle",
    "fit_exceedance_model",
    "origin_features",
    "warm_count",
    "warm_counts",
]
