"""A quiet console: `prewarm demo` shows its bars and summary; Prefect's INFO lines and the
libraries' warnings, messages and download bars go to the run's log file instead."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from flows.logs import output_to_log

PREWARM = str(Path(sys.executable).with_name("prewarm"))


def test_stderr_of_the_block_and_its_children_goes_to_the_log(tmp_path, capfd):
    log_path = tmp_path / "logs" / "run.log"
    with output_to_log(log_path):
        print("library note", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-c", "import sys; print('worker note', file=sys.stderr)"], check=True
        )
        # Not sent to a Prefect API: this test runs outside any flow.
        logging.getLogger("prefect.flow_runs").warning(
            "a run warning", extra={"send_to_api": False}
        )
        print("a result")
    print("after the block", file=sys.stderr)
    out, err = capfd.readouterr()
    logged = log_path.read_text()
    assert "library note" in logged and "worker note" in logged
    assert "library note" not in err and "worker note" not in err
    assert "WARNING a run warning" in err
    assert "a result" in out
    assert "after the block" in err and "after the block" not in logged


def test_demo_prints_bars_and_summary_and_logs_the_rest(tmp_path):
    env = {
        **os.environ,
        "PREWARM_DATA_DIR": str(tmp_path / "data"),
        "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PREWARM_MLFLOW_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "PREWARM_RUNTIME": "process",
        "PREFECT_HOME": str(tmp_path / "data" / "prefect"),
        # the closing hint names the ports `prewarm up` will use
        "PREWARM_PREFECT_PORT": "4123",
        "PREWARM_MLFLOW_PORT": "5123",
        "PREWARM_API_PORT": "8123",
    }
    env.pop("PREFECT_API_URL", None)
    try:
        done = subprocess.run(
            [PREWARM, "demo", "--clients", "3", "--days", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        subprocess.run([PREWARM, "pools", "--release-all"], env=env, capture_output=True)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    lines = console.splitlines()
    # With --verbose (the console as it was, bar the download bars): 78 lines here, 19 now.
    assert len(lines) < 25, console
    for noise in ("CloudPickle", "Successfully registered", "Downloading artifacts", "INFO"):
        assert noise not in console
    assert "prewarm demo (" in console and "3 trained" in console
    assert "Prefect UI :4123, MLflow UI :5123, API :8123" in console
    logged = (tmp_path / "data" / "logs" / "demo.log").read_text()
    assert logged.count("Successfully registered model") == 3
    assert "CloudPickle" in logged
    assert "Beginning flow run" in logged and "prewarm-pipeline" in logged
