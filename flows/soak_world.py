"""The soak's own world: what `prewarm soak` was asked for, and the work directory it owns.

A fresh warehouse, MLflow registry and pool under the work directory (the operator's data is
never touched), the PREWARM_* settings pointing at them, and the cost model and inventory
files of prewarm@R (see `flows.soak`).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from provisioning.costs import CostModel

MARKER = ".prewarm-soak"  # a work directory the soak made (and may wipe on the next run)
SOAK_HOST = "soak"


@dataclass(frozen=True)
class SoakOptions:
    """What `prewarm soak` was asked for."""

    trace: Path
    workdir: Path
    warmup: int = 240
    minutes: int = 120
    speed: float = 60.0
    runtime: str = "process"
    ratio: float = 700.0
    cycle: str = "5min"
    delay: str = "10min"
    keep: bool = False


def soak_pool(workdir: Path) -> str:
    """The pool name of a work directory's soak (its members never mix with another's)."""
    return "soak-" + hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]


def prepare_workdir(workdir: Path) -> None:
    """An empty work directory, or a previous soak's (its pool released, then wiped);
    anything else is refused."""
    from core.errors import PrewarmError

    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise PrewarmError(
                f"{workdir} is not empty and was not made by `prewarm soak`: refusing to touch "
                "it. Give an empty or new --workdir."
            )
        _release_previous(workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by prewarm soak; wiped by the next soak here\n")


def _release_previous(workdir: Path) -> None:
    """Release whatever a previous soak here left running (kept, or interrupted)."""
    from provisioning.apply import release_all
    from provisioning.runtime.docker_runtime import DockerRuntime
    from provisioning.runtime.process_runtime import ProcessRuntime
    from provisioning.runtime.select import PROCESS_STATE_FILE, docker_unavailable_reason

    scope = {"prewarm.pool": soak_pool(workdir)}
    state = workdir / "data" / PROCESS_STATE_FILE
    if state.exists():
        runtime = ProcessRuntime(state)
        release_all(runtime, scope)
        runtime.sweep_strays()
    if docker_unavailable_reason() is None:
        release_all(DockerRuntime(), scope)


def soak_settings(options: SoakOptions, pool: str) -> dict[str, str]:
    """The PREWARM_* values of the soak's world (see `flows.settings.export_settings`)."""
    work = options.workdir.resolve()
    return {
        "data_dir": str(work / "data"),
        "duckdb_path": str(work / "data" / "warehouse.duckdb"),
        "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "mlflow_artifacts_dir": str(work / "artifacts"),
        "freq": "1min",
        # A cycle looks at most lead + cycle + delay ahead (about 20 minutes); a 4-hour
        # warmup of 1-minute buckets fits a 15-minute horizon, not an hour's.
        "horizon": "15min",
        "runtime": options.runtime,
        "pool": pool,
        "costs_path": str(work / "costs.toml"),
        "inventory_path": str(work / "inventory.toml"),
        "cycle": options.cycle,
        "scale_down_delay": options.delay,
    }


def write_soak_files(options: SoakOptions, reference_mb: float) -> None:
    """The cost model of prewarm@R and a host the pool never fills."""
    penalty = options.ratio * reference_mb / 1024.0
    # A warming step is priced against a cold start as the default cost model prices it
    # (2%): the planner's hysteresis band is that ratio, what keeps plans from flapping.
    default = CostModel()
    action = penalty * default.scaling_action / default.default_cold_start_penalty
    (options.workdir / "costs.toml").write_text(
        "# prewarm replay's cost model at ratio R (see flows/soak.py)\n"
        "[costs]\n"
        "core_minute = 0.0\nmemory_gib_minute = 1.0\ndisk_gib_minute = 0.0\n"
        f"default_cold_start_penalty = {penalty!r}\nscaling_action = {action!r}\n\n"
        '[planner]\nwarm_tiers = ["active"]\n'
    )
    (options.workdir / "inventory.toml").write_text(
        "# declared large, like the replay's unbounded host: the soak measures the loop\n"
        f'[[hosts]]\nname = "{SOAK_HOST}"\ncpu_cores = 100000\nmemory_mb = 1000000000\n'
    )
