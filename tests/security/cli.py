"""The real `prewarm` CLI run as a new user would, in a home of its own under a test's
tmp_path: its data directory and registry there, no Prefect or prewarm setting inherited."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PREWARM = str(Path(sys.executable).with_name("prewarm"))


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without PREFECT_*/PREWARM_*, pointed at tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREWARM_"))}
    env.update(
        PREWARM_DATA_DIR=str(tmp_path / "data"),
        PREWARM_MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        PREWARM_MLFLOW_ARTIFACTS_DIR=str(tmp_path / "mlruns" / "artifacts"),
        COLUMNS="200",  # rich wraps at the terminal width: keep messages on one line
        **extra,
    )
    return env
