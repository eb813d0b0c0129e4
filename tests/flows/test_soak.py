"""`prewarm soak` on a small generated Azure-format trace: the live loop on real runtimes
against its simulation, and the report's promises (no orphans, no contradicting action,
no lost invocation, the pool released afterwards)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from provisioning.runtime.select import docker_unavailable_reason

MINUTES = 256  # 240 of warmup (the shortest a 15-minute horizon trains on) + 16 live


def write_trace(folder: Path, functions: int = 6, minutes: int = MINUTES, seed: int = 5) -> Path:
    """A seeded Azure Functions 2019 trace: a steady function, bursty ones, a sparse one."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    header = ",".join(str(480 + m) for m in range(minutes))
    rows = []
    for f in range(functions):
        if f == 0:
            calls = rng.poisson(30, minutes)  # always busy
        elif f == functions - 1:
            calls = (rng.random(minutes) < 0.05) * rng.poisson(3, minutes)  # sparse
        else:
            calls = rng.poisson(4 + 4 * np.sin(np.arange(minutes) / (10 + f)) ** 2)
        rows.append(f"owner{f % 2},app{f},fn{f},http," + ",".join(str(int(c)) for c in calls))
    (folder / "invocations.csv").write_text(
        f"HashOwner,HashApp,HashFunction,Trigger,{header}\n" + "\n".join(rows) + "\n"
    )
    (folder / "durations.csv").write_text(
        "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum\n"
        + "\n".join(
            f"owner{f % 2},app{f},fn{f},{2000 + 9000 * f},100,100,90000" for f in range(functions)
        )
        + "\n"
    )
    (folder / "memory.csv").write_text(
        "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1\n"
        + "\n".join(f"fn{f},owner{f % 2},app{f},10,{64 + 32 * f},60" for f in range(functions))
        + "\n"
    )
    return folder


@pytest.fixture
def soak_environment():
    """`prewarm soak` points the process at its own world (PREWARM_*): put ours back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("runtime", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_short_soak_keeps_its_promises(run_cli, soak_environment, tmp_path, runtime):
    if runtime == "docker" and (reason := docker_unavailable_reason(timeout_s=2.0)):
        pytest.skip(f"needs a Docker daemon: {reason}")
    trace = write_trace(tmp_path / "trace")
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    code, stdout, stderr = run_cli(
        "soak",
        "--trace",
        str(trace),
        "--warmup",
        "240",
        "--minutes",
        "16",
        "--speed",
        "60",
        "--runtime",
        runtime,
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert code == 0, stdout + stderr
    report = json.loads(out.read_text())
    live, simulated = report["live"], report["simulated"]
    expected_keys = {
        "invocations",
        "cold_starts",
        "cold_start_per_invocation",
        "zero_cold_share",
        "idle_mb_minutes",
        "idle_vs_fixed10",
    }
    assert set(live) == set(simulated) == expected_keys
    # Every replayed invocation went through the activation path, none lost.
    calls = _trace_calls(trace, 240, 16)
    assert live["invocations"] == simulated["invocations"] == calls
    assert report["orphans"] == 0 and report["details"]["left_after_release"] == 0
    assert report["contradicting_actions"] == 0
    assert report["details"]["activation_failures"] == 0
    assert report["cycles"] >= 3  # the first, then one every 5 replayed minutes
    assert report["lag_s"]["p50"] is not None and report["lag_s"]["p50"] <= 300
    # The live loop holds what its simulation holds (same decisions, real timing).
    assert live["idle_mb_minutes"] <= 1.25 * simulated["idle_mb_minutes"]
    assert simulated["idle_mb_minutes"] <= 1.25 * live["idle_mb_minutes"]
    assert live["cold_starts"] <= simulated["cold_starts"] + 3
    assert report["mlflow_versions"] >= 6  # one per function at warmup, bounded below too
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _trace_calls(trace: Path, first: int, minutes: int) -> float:
    total = 0.0
    for line in (trace / "invocations.csv").read_text().splitlines()[1:]:
        values = [int(v) for v in line.split(",")[4:]]
        total += sum(values[first : first + minutes])
    return total


def test_a_non_soak_workdir_is_refused_untouched(run_cli, soak_environment, tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    code, _, stderr = run_cli(
        "soak", "--trace", str(write_trace(tmp_path / "trace")), "--workdir", str(work)
    )
    assert code == 1
    assert "was not made by `prewarm soak`" in stderr
    assert (work / "precious.txt").read_text() == "keep me"
