"""The one settings object (prefix PREWARM_), and the environment it implies for libraries.

This is the only module that reads or writes `os.environ`.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import PrewarmError
from core.vocabulary import ModeName

_FREQ_UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}


def parse_freq(text: str) -> int:
    """Turn a frequency such as '5min', '1min', '300s' or '1h' into seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]+)\s*", text.lower())
    if not match or match.group(2) not in _FREQ_UNITS:
        raise ValueError(
            f"frequency {text!r} is not understood; use e.g. '1min', '5min', '300s' or '1h'"
        )
    seconds = int(match.group(1)) * _FREQ_UNITS[match.group(2)]
    if seconds <= 0 or 86400 % seconds:
        raise ValueError(
            f"frequency {text!r} must divide a day evenly (e.g. 1min, 5min, 15min, 1h)"
        )
    return seconds


def parse_freq_any(text: str) -> int:
    """Seconds in a duration such as '1h' or '48h' (need not divide a day)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]+)\s*", text.lower())
    if not match or match.group(2) not in _FREQ_UNITS:
        raise ValueError(f"duration {text!r} is not understood; use e.g. '1h', '6h' or '90min'")
    return int(match.group(1)) * _FREQ_UNITS[match.group(2)]


class Settings(BaseSettings):
    """Everything prewarm can be configured with; every field reads PREWARM_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PREWARM_", extra="ignore")

    data_dir: Path = Path("data")
    duckdb_path: Path | None = Field(
        default=None, description="DuckDB warehouse file; default <data_dir>/warehouse.duckdb"
    )
    mlflow_tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    mlflow_artifacts_dir: Path = Path("mlruns/artifacts")
    freq: str = Field(default="5min", description="series frequency of usage, e.g. 5min")
    quarantine_max_share: float = Field(
        default=0.05, ge=0.0, le=1.0, description="reject a batch when more rows than this fail"
    )
    trace_day: date = Field(
        default=date(2019, 7, 15), description="day the Azure Functions trace minutes refer to"
    )
    synthetic_clients: int = Field(default=50, ge=1)
    synthetic_days: int = Field(default=14, ge=1)
    synthetic_seed: int = 7
    horizon: str = Field(
        default="1h",
        description="how far forecasts reach at every bucket, what the planner reads: 10min .. 48h",
    )
    profile_horizon: str = Field(
        default="24h",
        description="how far predicted profiles reach (at most 48h); past the horizon their "
        "forecasts are every PREWARM_PROFILE_STEP, the windows found between them",
    )
    profile_step: str = Field(
        default="30min", description="the step of a profile's forecasts past the horizon"
    )
    train_history_days: float = Field(default=28.0, gt=0, description="history a fit sees")
    predict_history_days: float = Field(
        default=8.0, gt=0, description="history a prediction reads (lags reach one week)"
    )
    model_max_age_hours: float = Field(
        default=24.0, gt=0, description="retrain a model whose data is older than this"
    )
    drift_min_windows: int = Field(
        default=24, ge=1, description="scored buckets needed before judging drift"
    )
    drift_min_coverage: float = Field(
        default=0.5, ge=0, le=1, description="drift when the 80% band covers less than this"
    )
    drift_max_relative_pinball: float = Field(
        default=0.5, gt=0, description="drift when mean pinball / mean level exceeds this"
    )
    train_workers: int = Field(default=2, ge=1, description="clients fitted at once")
    registry_keep: int = Field(
        default=3,
        ge=0,
        description="a forecaster's newest versions kept besides its champion and challenger"
        " (every training prunes the older ones)",
    )
    dask_address: str | None = Field(
        default=None, description="run train-forecasters tasks on this Dask scheduler"
    )
    services: Literal["embedded", "external"] = Field(
        default="embedded",
        description="prewarm up: start Prefect and MLflow here (embedded, SQLite files) or use "
        "shared ones (external: PREWARM_PREFECT_API_URL, an http(s) PREWARM_MLFLOW_TRACKING_URI)",
    )
    prefect_api_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="a shared Prefect server's API, e.g. http://prefect.internal:4200/api: "
        "every run reports there",
    )
    runtime: Literal["auto", "docker", "process"] = Field(
        default="auto", description="where pools run: Docker when a daemon answers, else processes"
    )
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="prewarm up: Prefect")
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="prewarm up: MLflow UI")
    api_port: int = Field(default=8000, ge=1, le=65535, description="prewarm up / api: the API")
    batch_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="prewarm up: the niceness its flows (cycle, training, ingest) run at, so "
        "the client API gets the CPU first on a shared host (0: the API's own priority)",
    )
    batch_idle: bool = Field(
        default=False,
        description="prewarm up: run its flows under Linux's SCHED_IDLE as well: they get a "
        "core only when no other task wants it. The API's p99 beside a cycle improves, but a "
        "host kept busy (members without CPU limits) leaves the cycle almost nothing: only "
        "where members are CPU-limited",
    )
    pool: str = Field(
        default="default",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="name of this prewarm's pool: it only ever touches members labelled with it",
    )
    inventory_path: Path | None = Field(
        default=None, description="TOML inventory of hosts; default: this machine as one host"
    )
    costs_path: Path | None = Field(
        default=None, description="TOML with a [costs] section overriding the cost model"
    )
    new_client_mode: ModeName = Field(
        default="provision", description="mode a client starts in when first ingested"
    )
    exceedance_levels: int = Field(
        default=16, ge=1, description="instance levels k modelled (caps warm instances)"
    )
    cycle: str = Field(
        default="5min", description="prewarm-cycle interval: ingest, predict, plan, apply, score"
    )
    scale_down_delay: str = Field(
        default="10min", description="a member is released only after unneeded this long"
    )
    apply_parallel: int = Field(
        default=4, ge=1, le=32, description="runtime calls an apply runs at once (per phase)"
    )
    retrain_cooldown: str = Field(
        default="6h", description="a client is retrained for drift or feedback at most this often"
    )
    activation_lease: str = Field(
        default="60s",
        description="a member activated for a request is busy (never released) this long",
    )
    prediction_retention: str = Field(
        default="2d", description="prediction runs older than this are pruned (latest kept)"
    )
    history_retention: str = Field(
        default="7d",
        description="plans, scores, member observations and pool events recorded longer ago "
        "than this are pruned (the newest applied plan and each client's newest score kept)",
    )
    cycle_history_cycles: int = Field(
        default=5, ge=1, description="recent cycles whose durations predict the next one's"
    )
    burst_max: int = Field(
        default=4, ge=0, description="members a client may activate beyond what its plan gives it"
    )
    activate_rate: float = Field(
        default=10.0, gt=0, description="activations a second per API key (then 429)"
    )
    activate_burst: int = Field(
        default=20, ge=1, description="activations one API key may make at once"
    )
    api_max_clients: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="client views the API keeps in memory (least recently used dropped first)",
    )
    predict_clients_per_cycle: int = Field(
        default=2_000,
        ge=1,
        le=1_000_000,
        description="clients a cycle predicts at most (~20 ms of CPU each); past it the"
        " oldest forecasts are refreshed first and every client within ceil(clients / this)"
        " cycles",
    )
    predict_cache_clients: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="clients whose loaded models a process keeps between predictions"
        " (~0.3 MB each; the rest load theirs every run, ~25 ms each)",
    )
    predict_scored_clients: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="clients whose scored recent origins a process keeps between predictions"
        " (~0.23 MB each; the rest score every recent origin each run, ~3x the CPU)",
    )
    api_max_queued_outcomes: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="activation outcomes the API holds unwritten (then refused and counted)",
    )
    allowed_images: str = Field(
        default="prewarm/worker:latest",  # the worker image prewarm builds (runtime/images.py)
        pattern=r"^\s*[^,\s]+(\s*,\s*[^,\s]+)*\s*$",
        description="comma-separated images a client schema may run (refused otherwise)",
    )

    @field_validator("freq")
    @classmethod
    def _check_freq(cls, value: str) -> str:
        parse_freq(value)
        return value

    @field_validator("horizon")
    @classmethod
    def _check_horizon(cls, value: str) -> str:
        seconds = parse_freq_any(value)
        if not 600 <= seconds <= 48 * 3600:
            raise ValueError(f"horizon {value!r} must be between 10min and 48h")
        return value

    @field_validator("profile_horizon")
    @classmethod
    def _check_profile_horizon(cls, value: str) -> str:
        if parse_freq_any(value) > 48 * 3600:
            raise ValueError(f"profile horizon {value!r} must be at most 48h")
        return value

    @field_validator(
        "cycle",
        "scale_down_delay",
        "retrain_cooldown",
        "activation_lease",
        "prediction_retention",
        "history_retention",
        "profile_step",
    )
    @classmethod
    def _check_duration(cls, value: str) -> str:
        if parse_freq_any(value) <= 0:
            raise ValueError(f"duration {value!r} must be positive")
        return value

    @model_validator(mode="after")
    def _default_paths(self) -> Settings:
        if self.duckdb_path is None:
            self.duckdb_path = self.data_dir / "warehouse.duckdb"
        return self

    @model_validator(mode="after")
    def _external_services_named(self) -> Settings:
        if self.prefect_api_url:
            self.prefect_api_url = self.prefect_api_url.rstrip("/")
        if self.services == "external":
            if not self.prefect_api_url:
                raise ValueError(
                    "services=external needs PREWARM_PREFECT_API_URL (the shared Prefect "
                    "server's API, e.g. http://prefect.internal:4200/api)"
                )
            if not self.mlflow_tracking_uri.startswith(("http://", "https://")):
                raise ValueError(
                    "services=external needs PREWARM_MLFLOW_TRACKING_URI to name the shared MLflow "
                    f"tracking server (http:// or https://), not {self.mlflow_tracking_uri!r}"
                )
        return self

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file (always set after validation)."""
        assert self.duckdb_path is not None
        return self.duckdb_path

    @property
    def freq_seconds(self) -> int:
        return parse_freq(self.freq)

    @property
    def horizon_steps(self) -> int:
        """The forecast horizon in buckets of the series frequency."""
        return max(1, parse_freq_any(self.horizon) // self.freq_seconds)

    @property
    def cycle_seconds(self) -> int:
        return parse_freq_any(self.cycle)

    @property
    def scale_down_delay_seconds(self) -> int:
        return parse_freq_any(self.scale_down_delay)

    @property
    def retrain_cooldown_seconds(self) -> int:
        return parse_freq_any(self.retrain_cooldown)

    @property
    def prediction_retention_seconds(self) -> int:
        return parse_freq_any(self.prediction_retention)

    @property
    def history_retention_seconds(self) -> int:
        return parse_freq_any(self.history_retention)

    @property
    def activation_lease_seconds(self) -> int:
        return parse_freq_any(self.activation_lease)

    @property
    def allowed_image_list(self) -> tuple[str, ...]:
        """PREWARM_ALLOWED_IMAGES as a tuple of image names."""
        return tuple(image.strip() for image in self.allowed_images.split(","))

    @property
    def pool_scope(self) -> dict[str, str]:
        """The labels that mark this prewarm's members (another pool's are never touched)."""
        return {"prewarm.pool": self.pool}

    @property
    def prefect_home(self) -> Path:
        return self.data_dir / "prefect"


def configure_environment(settings: Settings, prefect_api_url: str | None = None) -> None:
    """Point Prefect and Great Expectations at our state, quietly and offline; with
    `prefect_api_url` (a running `prewarm up`) or PREWARM_PREFECT_API_URL (a shared server),
    runs go to that server unless the operator set PREFECT_API_URL themselves.

    Called once by the CLI before any flow module (and so Prefect) is imported.
    """
    if prefect_api_url or settings.prefect_api_url:
        os.environ.setdefault("PREFECT_API_URL", prefect_api_url or settings.prefect_api_url or "")
    _ensure_data_dir(settings.data_dir)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home.resolve()))
    # This machine may have no internet: never try to send telemetry.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A one-off CLI run starts a temporary Prefect API; on a busy 2-core machine (another
    # run starting at the same time) the default 20 s is not always enough.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Loading a model draws a download bar per client: noise in any log, and models load in
    # flows, never while someone waits on one download.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server that stopped answering: MLflow's defaults (7 retries, 120 s each)
    # hold a cycle for many minutes; these give up within about a minute and say why.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _ensure_data_dir(path: Path) -> None:
    """Create the data directory, or say in one line why it cannot hold prewarm's state."""
    fix = "set PREWARM_DATA_DIR to a writable directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PrewarmError(
            f"The data directory {path} is a file, not a directory: {fix}."
        ) from None
    except OSError as error:
        raise PrewarmError(
            f"The data directory {path} cannot be created ({error.strerror}): {fix}."
        ) from None
    # Tried, not asked: root passes every mode check, a read-only mount refuses it anyway.
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PrewarmError(
            f"The data directory {path} is not writable ({error.strerror}); prewarm keeps its "
            f"warehouse and state there: make it writable or {fix}."
        ) from None


def export_settings(values: dict[str, str]) -> None:
    """Set PREWARM_<NAME> for everything this process runs from now on (a soak runs its own
    warehouse, registry and pool, never the operator's)."""
    for name, value in values.items():
        os.environ[f"PREWARM_{name.upper()}"] = value


def child_environment(**extra: str) -> dict[str, str]:
    """The environment a child process of prewarm starts with: ours, plus `extra`."""
    return {**os.environ, **extra}
