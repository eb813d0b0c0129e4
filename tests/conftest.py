"""Shared fixtures: an isolated data directory per test, one Prefect harness per session."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API for the whole session (starting one costs ~20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every PREWARM_ path at a fresh temporary directory."""
    data = tmp_path / "data"
    monkeypatch.setenv("PREWARM_DATA_DIR", str(data))
    monkeypatch.setenv("PREWARM_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PREWARM_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return data


@pytest.fixture
def warehouse_path(data_dir: Path) -> Path:
    return data_dir / "warehouse.duckdb"


@pytest.fixture
def run_cli(
    prefect_harness: None,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[int, str, str]]:
    """Run `prewarm ARGS...` in-process; return (exit code, stdout, stderr)."""
    from prefect.logging.configuration import setup_logging

    from flows.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["prewarm", *args])
        monkeypatch.setenv("COLUMNS", "200")
        code = 0
        # Prefect's console handler keeps the stream it was built with; rebuild it on this
        # test's captured stderr so run logs land in what the test reads.
        setup_logging(incremental=False)
        capsys.readouterr()
        try:
            main()
        except SystemExit as stop:
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
