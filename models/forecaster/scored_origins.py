"""Recent origins already scored, remembered between prediction runs of one process.

Each run recalibrates a client's horizon on its model's errors at the recent origins of the
last `recalibration_days` (`_recent_origins`): about 72 origins of 12 steps, 94 % of the rows
a run scores, every second step on a grid fixed in absolute steps, of which a five-minute
cycle adds one every other cycle. `ScoredOrigins` keeps each origin's
errors once scored (`RecentErrors`: how far each target fell outside the calibrated
interval, which depends on the model alone), so a run builds features, scores boosters and
calibrates only at the origins it has not seen (measured: 40 % of a run's CPU at 100
clients for the features and boosters; calibrating every remembered row again each run was
another 8 % at 1,000 clients).

What changes against scoring every origin each run: a remembered origin keeps the outcome it
had when first scored. Its features came from the history window of that run; the window of
a later run starts later, which moves rolling sums and smoothed levels in their last bits
(tests/models/test_scored_origins.py bounds the difference). Rows that arrive late for a
bucket already scored, or a calendar event added for it, reach only origins scored after
them; remembered ones age out of the window within `recalibration_days`. A new model
version starts afresh: outcomes are kept per model, told apart by the registry version a
forecaster was loaded from (`registered_version`), so a client whose model was loaded again
(one past prediction's model cache) keeps them, and the entry does not keep the model in
memory; a forecaster that was not loaded from the registry is told apart by identity.
Clients whose scale is measured on the history at each run (a global-model client that
joined after training) are never remembered: their scaled outcomes would drift with it.

Bounded: a client keeps the origins from its window's start on (one window's worth on the
grid: measured, 72 origins of 12 rows per metric, four numbers a row, two of them int32
steps, 124 KB a client at six metrics; 133 origins and ~230 KB when the grid moved with each
run's step and both phases were kept), one entry per client, replaced with its
model, for at most `max_clients` clients: the first ones seen are kept and later ones are
scored in full every run (cycles predict clients in the same order, so evicting the least
recent would miss on every client once the cache is too small).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.forecaster.calibration import Outcomes, RecentErrors

if TYPE_CHECKING:
    from models.forecaster.client_model import ClientForecaster


@dataclass
class _Remembered:
    """One client's scored recent origins under one model: a registry version, or (for a
    forecaster not loaded from the registry, `version` None) the forecaster itself."""

    version: str | None
    forecaster: ClientForecaster | None
    origins: set[int] = field(default_factory=set)
    errors: dict[str, RecentErrors] = field(default_factory=dict)  # per metric

    def scored_with(self, forecaster: ClientForecaster) -> bool:
        """Whether these outcomes are `forecaster`'s model's."""
        if forecaster.registered_version is None:
            return self.forecaster is forecaster
        return self.version == forecaster.registered_version


class ScoredOrigins:
    """Outcomes of recent origins per client, for `forecast_latest(..., scored=...)`."""

    def __init__(self, max_clients: int = 1_000_000) -> None:
        self.max_clients = max_clients
        self._clients: dict[str, _Remembered] = {}
        self._lock = threading.Lock()  # runs may overlap in one process (served flows)

    def __len__(self) -> int:
        return len(self._clients)

    def unscored(self, forecaster: ClientForecaster, origins: list[int]) -> list[int]:
        """The `origins` not yet scored with this forecaster."""
        with self._lock:
            entry = self._clients.get(forecaster.client_id)
        if entry is None or not entry.scored_with(forecaster):
            return origins
        return [o for o in origins if o not in entry.origins]

    def errors(
        self, forecaster: ClientForecaster, metric: str, fresh: Outcomes, wanted: list[int]
    ) -> RecentErrors:
        """The recalibration's errors at the `wanted` origins of one metric: those
        remembered and those of the `fresh` outcomes just scored (remembered from now on)."""
        new = RecentErrors.of(forecaster.models[metric], fresh)
        entry = self._entry(forecaster)
        if entry is None:  # full: scored in full every run
            return _where(new, np.isin(new.step, wanted))
        first = min(wanted, default=0)
        kept = entry.errors.get(metric)
        if kept is not None:
            # An origin scored again (a run that failed before `mark`) keeps its fresh rows.
            stale = (kept.step < first) | np.isin(kept.step, new.step)
            new = _joined(_where(kept, ~stale), new)
        entry.errors[metric] = _compact(new)
        return _where(new, np.isin(new.step, wanted))

    def mark(self, forecaster: ClientForecaster, wanted: list[int]) -> None:
        """Mark the `wanted` origins scored, once a run has scored those it had not (with
        or without rows: a missing target stays missing), and forget those before the
        window's start, the first of them."""
        entry = self._entry(forecaster)
        if entry is not None:
            first = min(wanted, default=0)
            entry.origins = {o for o in entry.origins if o >= first} | set(wanted)

    def _entry(self, forecaster: ClientForecaster) -> _Remembered | None:
        """The client's entry for this forecaster (a new one replaces another model's);
        None when the client has none and `max_clients` are kept already."""
        with self._lock:
            entry = self._clients.get(forecaster.client_id)
            if entry is None and len(self._clients) >= self.max_clients:
                return None
            if entry is None or not entry.scored_with(forecaster):
                version = forecaster.registered_version
                kept = forecaster if version is None else None
                entry = self._clients[forecaster.client_id] = _Remembered(version, kept)
            return entry


def _compact(errors: RecentErrors) -> RecentErrors:
    """`errors` with their steps as int32 when they fit (a quarter of what is kept: bucket
    steps since 1970 fit until 2038 even at one-second buckets); the values are the same."""
    if errors.known_at.size and int(errors.known_at.max()) >= 2**31:
        return errors
    e = errors
    return RecentErrors(e.step.astype(np.int32), e.known_at.astype(np.int32), e.low, e.high)


def _where(errors: RecentErrors, mask: np.ndarray) -> RecentErrors:
    e = errors
    return RecentErrors(e.step[mask], e.known_at[mask], e.low[mask], e.high[mask])


def _joined(a: RecentErrors, b: RecentErrors) -> RecentErrors:
    return RecentErrors(
        np.concatenate([a.step, b.step]),
        np.concatenate([a.known_at, b.known_at]),
        np.concatenate([a.low, b.low]),
        np.concatenate([a.high, b.high]),
    )
