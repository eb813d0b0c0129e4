"""The trace replay: loader, baseline policies, metrics and no look-ahead, on tiny traces.

Every expected number is worked out by hand in the comments. Traces are written as Azure
Functions CSVs to tmp dirs; with an average duration of 60,000 ms, need == invocations
(ceil(inv x 60000 / 60000) = inv), which keeps the arithmetic readable.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from simulation.metrics import replay_metrics, silent_warmup_floor, with_idle_ratio
from simulation.policies import (
    resolve_policies,
    warm_fixed_keepalive,
    warm_hybrid_histogram,
    warm_none,
    warm_oracle,
)
from simulation.prewarm_policy import PrewarmSettings, plan_warm, warm_prewarm
from simulation.replay import run_replay
from simulation.report import plot_replay, render_table
from simulation.trace import Trace, load_trace
from warehouse.sources.azure_functions import client_id_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "azure_tiny"


def write_trace(
    directory: Path,
    counts: dict[str, list[int]],
    memory_mb: dict[str, float] | None = None,
    duration_ms: float = 60_000.0,
) -> Path:
    """One app per function ('app-<name>'), owner 'o', minutes 0..T-1, files prefixed 7_."""
    directory.mkdir(parents=True, exist_ok=True)
    minutes = len(next(iter(counts.values())))
    memory_mb = memory_mb or {}
    header = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(minutes)))
    lines = [header]
    lines += [f"o,app-{n},{n},http," + ",".join(map(str, c)) for n, c in counts.items()]
    (directory / "7_invocations.csv").write_text("\n".join(lines) + "\n")
    durations = ["HashOwner,HashApp,HashFunction,Average,Count"]
    durations += [f"o,app-{n},{n},{duration_ms},1" for n in counts]
    (directory / "7_durations.csv").write_text("\n".join(durations) + "\n")
    memory = ["HashOwner,HashApp,AverageAllocatedMb"]
    memory += [f"o,app-{n},{memory_mb.get(n, 100.0)}" for n in counts]
    (directory / "7_memory.csv").write_text("\n".join(memory) + "\n")
    return directory


def row(trace: Trace, name: str, owner: str = "o", app: str | None = None) -> int:
    """The row of function `name` in a trace (rows are sorted by client id)."""
    client = client_id_for(owner, app or f"app-{name}", name)
    return int(np.flatnonzero(trace.client_ids == client)[0])


def sparse(minutes: int, calls: dict[int, int]) -> list[int]:
    """A count series of `minutes` zeros with calls[t] invocations at minute t."""
    series = [0] * minutes
    for t, n in calls.items():
        series[t] = n
    return series


def hybrid_row(tmp_path: Path, minutes: int, calls: dict[int, int]) -> tuple[np.ndarray, ...]:
    """(need, warm) of one function under the hybrid histogram policy."""
    trace = load_trace(write_trace(tmp_path / "t", {"f": sparse(minutes, calls)}))
    return trace.need[0], warm_hybrid_histogram(trace.need)[0]


# --- loader -------------------------------------------------------------------------------


def test_loader_on_the_fixture_matches_the_exact_need_and_memory_model() -> None:
    trace = load_trace(FIXTURE)  # files are named 500_invocations.csv etc.
    assert (trace.functions, trace.minutes) == (3, 10)
    assert trace.start == datetime(2019, 7, 15, 8, 0)  # minute column 480
    fn1, fn2, fn3 = (
        row(trace, f, f"owner{o}", f"app{o}") for f, o in (("fn1", 1), ("fn2", 1), ("fn3", 2))
    )
    # fn1, 1500 ms: need = ceil(inv / 40); 40 -> exactly 1, 41 -> 2, 100 -> ceil(2.5) = 3
    assert trace.need[fn1].tolist() == [1, 1, 0, 1, 2, 1, 1, 2, 3, 1]
    # fn2, 90000 ms: need = ceil(1.5 inv); 1 -> 2, 3 -> ceil(4.5) = 5, 10 -> 15
    assert trace.need[fn2].tolist() == [2, 3, 0, 6, 5, 2, 0, 15, 8, 3]
    # fn3, 20000 ms: need = ceil(inv / 3); 7 -> 3, 10 -> 4, 30 -> 10, 1 -> max(1, ceil(1/3)) = 1
    assert trace.need[fn3].tolist() == [1, 2, 3, 0, 1, 1, 3, 4, 10, 2]
    assert trace.invocations[fn1].tolist() == [10, 40, 0, 1, 80, 5, 39, 41, 100, 3]
    # memory per app: app1 has rows of 100 and 200 MB (mean 150), app2 one of 64 MB
    assert trace.memory_mb[[fn1, fn2, fn3]].tolist() == [150.0, 150.0, 64.0]
    assert trace.notes == ()  # the loader's concurrency equals the recomputed need


def test_loader_fills_missing_duration_and_memory_with_medians(tmp_path: Path) -> None:
    directory = write_trace(tmp_path, {"a": [1, 0], "b": [0, 3], "c": [2, 2]}, {"a": 100, "b": 300})
    # drop c's duration and memory rows: c gets the median duration and the median app memory
    for name in ("7_durations.csv", "7_memory.csv"):
        lines = (directory / name).read_text().splitlines()
        (directory / name).write_text("\n".join(lines[:3]) + "\n")
    trace = load_trace(directory)
    # median memory of apps a (100) and b (300) is 200; median duration 60000 -> need = inv
    assert trace.memory_mb[row(trace, "c")] == 200.0
    assert trace.need[row(trace, "c")].tolist() == [2, 2]


# --- baselines ----------------------------------------------------------------------------

# One function, 25 minutes: need 2 at minute 1, 1 at minute 4, 3 at minute 20.
KEEPALIVE_CALLS = {1: 2, 4: 1, 20: 3}


def test_fixed_keepalive_none_and_oracle_by_hand(tmp_path: Path) -> None:
    trace = load_trace(write_trace(tmp_path, {"f": sparse(25, KEEPALIVE_CALLS)}))
    need = trace.need
    # keep-alive 10: minute 1 keeps 2 warm for m = 2..11, minute 4 keeps 1 for 5..14,
    # minute 20 keeps 3 for 21..30
    ka10 = [0, 0] + [2] * 10 + [1] * 3 + [0] * 6 + [3] * 4
    assert warm_fixed_keepalive(need, 10)[0].tolist() == ka10
    # keep-alive 20: 2 for m = 2..21 (and 1 for 5..24), 3 from 21: max is 3 from m = 21
    ka20 = [0, 0] + [2] * 19 + [3] * 4
    assert warm_fixed_keepalive(need, 20)[0].tolist() == ka20
    assert warm_none(need)[0].tolist() == [0] * 25
    assert warm_oracle(need)[0].tolist() == need[0].tolist()


def test_baseline_metrics_through_run_replay(tmp_path: Path) -> None:
    write_trace(tmp_path, {"f": sparse(25, KEEPALIVE_CALLS)})
    policies = ["oracle,fixed_keepalive_20", "none", "fixed_keepalive_10"]
    full = run_replay(tmp_path, warmup=2, policies=policies)["policies"]
    assert list(full) == ["none", "fixed_keepalive_10", "fixed_keepalive_20", "oracle"]
    # minutes 2..24 count: invocations 1 (minute 4) + 3 (minute 20) = 4
    assert {m["total_invocations"] for m in full.values()} == {4.0}
    # none: both calls cold (1 + 3); oracle: nothing cold, nothing idle
    assert full["none"]["total_cold_starts"] == 4.0
    assert full["oracle"]["total_cold_starts"] == 0.0
    assert full["oracle"]["idle_mb_minutes"] == 0.0
    # keep-alive 10: minute 4 is warm (2 >= 1), minute 20 finds 0 warm -> 3 cold, 3/4 = 0.75
    ka10 = full["fixed_keepalive_10"]
    assert ka10["total_cold_starts"] == 3.0
    assert ka10["cold_start_per_invocation"] == 0.75
    # idle: m 2..11 hold 2 (20, less 1 used at m 4 = 19), m 12..14 hold 1 (3), m 21..24 hold 3
    # (12): 34 instance-minutes x 100 MB = 3400
    assert ka10["idle_mb_minutes"] == 3400.0
    # keep-alive 20: minute 20 finds 2 warm -> 1 cold; idle: m 2..20 hold 2 (38, less 1 at
    # m 4, less 2 at m 20) = 35, m 21..24 hold 3 (12): 47 x 100 = 4700 = 1.38235... x 3400
    ka20 = full["fixed_keepalive_20"]
    assert ka20["total_cold_starts"] == 1.0
    assert ka20["idle_mb_minutes"] == 4700.0
    assert ka20["idle_vs_fixed10"] == pytest.approx(4700 / 3400)
    assert ka10["idle_vs_fixed10"] == 1.0
    assert full["none"]["idle_vs_fixed10"] == 0.0


# --- hybrid histogram ---------------------------------------------------------------------


def test_hybrid_window_after_five_idle_times_with_exact_keepalive(tmp_path: Path) -> None:
    # calls every 50 minutes at 0..250, need 1 then 2 at minute 250; 320 minutes
    need, warm = hybrid_row(tmp_path, 320, {0: 1, 50: 1, 100: 1, 150: 1, 200: 1, 250: 2})
    # decisions at t = 0..200 have n = 0..4 < 5 idle times: fallback keep-alive 240, i.e.
    # the max need of the last 240 minutes, 1 for m = 1..250
    assert warm[0] == 0
    assert warm[1:251].tolist() == [1] * 250
    # at t = 250: n = 5 idle times, all 50: CV = sqrt(239) >= 2, p5 = p99 = 50;
    # pre-warm = floor(0.9 x 50) = 45, keep-alive = ceil(1.1 x 50) - 45 = 55 - 45 = 10, so
    # warm = need[250] = 2 for m = 250+45+1 = 296 .. 250+45+10 = 305, else 0.
    # (in floating point 1.1 x 50 = 55.00000000000001 would wrongly keep minute 306 too)
    assert warm[251:296].tolist() == [0] * 45
    assert warm[296:306].tolist() == [2] * 10
    assert warm[306:].tolist() == [0] * 14


def test_hybrid_window_with_distinct_percentiles(tmp_path: Path) -> None:
    # calls at 0, 3, 6, 9, 12, 19 (need 1, 1, 1, 1, 1, 4): idle times 3, 3, 3, 3, 7
    need, warm = hybrid_row(tmp_path, 30, {0: 1, 3: 1, 6: 1, 9: 1, 12: 1, 19: 4})
    # at t = 19, n = 5: CV^2 = 240 x (4^2 + 1^2) / 5^2 - 1 = 162.2 >= 4;
    # p5 = 3 (cumulative share 4/5 >= 0.05), p99 = 7 (3 reaches only 0.8, 7 reaches 1.0);
    # pre-warm = floor(2.7) = 2, keep-alive = ceil(7.7) - 2 = 8 - 2 = 6: m = 22..27
    assert warm[20:22].tolist() == [0, 0]
    assert warm[22:28].tolist() == [4] * 6
    assert warm[28:].tolist() == [0, 0]
    # before: n < 5 -> fallback, everything since minute 0 held (max need 1)
    assert warm[1:20].tolist() == [1] * 19


def test_hybrid_window_without_prewarm(tmp_path: Path) -> None:
    # calls every minute 0..5 (need 3 at minute 5): five idle times of 1
    need, warm = hybrid_row(tmp_path, 12, {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 3})
    # at t = 5: p5 = p99 = 1, pre-warm = floor(0.9) = 0, keep-alive = ceil(1.1) - 0 = 2:
    # warm = need[5] = 3 for m = 6, 7 (t+1 .. t+keep-alive), then 0
    assert warm[6:].tolist() == [3, 3, 0, 0, 0, 0]
    # m = 1..5 were decided by the fallback (n < 5): max need so far, 1
    assert warm[:6].tolist() == [0, 1, 1, 1, 1, 1]


def test_hybrid_fallback_with_fewer_than_five_idle_times(tmp_path: Path) -> None:
    # calls every 10 minutes 0..40: at t = 40 there are only 4 idle times (all 10), so
    # no window [50, 51] but the 240-minute keep-alive: 1 warm for every m = 41..59
    need, warm = hybrid_row(tmp_path, 60, {0: 1, 10: 1, 20: 1, 30: 1, 40: 1})
    assert warm[41:].tolist() == [1] * 19


def test_hybrid_fallback_when_most_idle_times_are_out_of_range(tmp_path: Path) -> None:
    calls = {0: 1, 250: 1, 500: 1, 750: 1, 760: 2, 770: 3, 780: 4}
    need, warm = hybrid_row(tmp_path, 800, calls)
    # idle times 250, 250, 250 (> 240: out of range), then 10, 10, 10.
    # at t = 770: n = 5 with 3 OOR > 5/2 -> fallback: warm = max need of the last 240
    # minutes, i.e. max(1, 2, 3) = 3 for m = 771..780 (need 1 at 750 is in range too)
    assert warm[771:781].tolist() == [3] * 10
    # at t = 780: n = 6 with 3 OOR, not > 6/2: CV^2 = 240 x 3^2 / 3^2 - 1 = 239 >= 4,
    # p5 = p99 = 10 -> pre-warm 9, keep-alive 2: warm = need[780] = 4 at m = 790, 791 only
    assert warm[781:790].tolist() == [0] * 9
    assert warm[790:792].tolist() == [4, 4]
    assert warm[792:].tolist() == [0] * 8
    # the 240-minute fallback after t = 0 and t = 250 expires before the next call:
    # m = 1..240 hold 1, m = 241..250 hold 0 (minute 0 left the window)
    assert warm[240:251].tolist() == [1] + [0] * 10


def test_hybrid_fallback_when_the_histogram_is_flat(tmp_path: Path) -> None:
    # idle times 1, 2, ..., 49 (each once): calls at the running sums 0, 1, 3, 6, ..., 1225
    calls = {int(t): 1 for t in np.concatenate([[0], np.cumsum(np.arange(1, 50))])}
    t48, t49 = 1176, 1225  # the calls closing the 48th and the 49th idle time
    assert {t48, t49} <= set(calls)
    need, warm = hybrid_row(tmp_path, 1260, calls)
    # at t48: 48 bins of count 1 among 240: CV^2 = 240 x 48 / 48^2 - 1 = 4, CV = 2 exactly,
    # not below 2 -> histogram: p5 = 3 (3/48 >= 0.05 first at 3), p99 = 48 (47.52 of 48);
    # pre-warm = floor(2.7) = 2, keep-alive = ceil(52.8) - 2 = 51: warm m = t48+3 ..
    # t48+53, cut at t49 = t48+49 where the next decision replaces it
    assert warm[t48 + 1 : t48 + 3].tolist() == [0, 0]
    assert warm[t48 + 3 : t49 + 1].tolist() == [1] * 47
    # at t49: 49 bins of 1: CV^2 = 240 x 49 / 49^2 - 1 = 3.898 < 4 -> fallback keep-alive
    assert warm[t49 + 1 :].tolist() == [1] * 34


# --- metrics ------------------------------------------------------------------------------


def test_metrics_percentile_zero_share_and_idle_ratio(tmp_path: Path) -> None:
    counts = {
        "a": [2, 0, 0, 0],
        "b": [1, 1, 0, 0],
        "c": [3, 0, 0, 0],
        "d": [5, 0, 0, 0],
        "e": [1, 1, 0, 0],
        "f": [0, 0, 3, 0],
        "g": [0, 0, 0, 0],  # never called: left out of the percentile and the share
    }
    trace = load_trace(write_trace(tmp_path, counts, {"c": 128.0, "g": 256.0}))
    warm = np.zeros_like(trace.need)
    warm[row(trace, "a")] = [2, 0, 0, 0]  # cold 0 of 2 -> 0 %
    warm[row(trace, "b")] = [1, 1, 0, 0]  # cold 0 of 2 -> 0 %
    warm[row(trace, "c")] = [5, 0, 0, 0]  # cold 0 of 3 -> 0 %, 2 idle x 128 MB = 256
    warm[row(trace, "d")] = [4, 0, 0, 0]  # cold 1 of 5 -> 20 %
    warm[row(trace, "e")] = [0, 1, 0, 0]  # cold 1 of 2 -> 50 %
    # f: nothing warm, cold 3 of 3 -> 100 %
    warm[row(trace, "g")] = [0, 2, 0, 0]  # 2 idle x 256 MB = 512
    metrics = replay_metrics(trace, warm, warmup=0)
    assert metrics["total_invocations"] == 17.0  # 2 + 2 + 3 + 5 + 2 + 3
    assert metrics["total_cold_starts"] == 5.0  # 1 + 1 + 3
    assert metrics["cold_start_per_invocation"] == pytest.approx(5 / 17)
    # cold % sorted: 0, 0, 0, 20, 50, 100; position 0.75 x (6 - 1) = 3.75 -> 20 + 0.75 x 30
    assert metrics["p75_function_cold_pct"] == pytest.approx(42.5)
    assert metrics["zero_cold_share"] == 0.5  # 3 of the 6 called functions
    assert metrics["idle_mb_minutes"] == 768.0  # 256 + 512
    assert metrics["scale_out_cold_starts"] == 1.0  # d: 4 warm, 5 needed; e's was from 0
    assert metrics["seen_cold_functions"] == 0  # no warmup: no function has a history
    # against a reference idle of 1536: 768 / 1536
    ratio = with_idle_ratio({"x": metrics}, 1536.0)["x"]["idle_vs_fixed10"]
    assert ratio == 0.5


def test_metrics_skip_the_warmup_minutes(tmp_path: Path) -> None:
    trace = load_trace(write_trace(tmp_path, {"a": [4, 0, 1, 0], "b": [0, 0, 0, 0]}))
    warm = np.zeros_like(trace.need)
    warm[row(trace, "b")] = [9, 9, 0, 1]  # idle 9 + 9 in the warm-up, 1 after: 100 MB
    metrics = replay_metrics(trace, warm, warmup=2)
    # only minutes 2 and 3: a has 1 invocation, cold; b idles 1 minute
    assert metrics["total_invocations"] == 1.0
    assert metrics["total_cold_starts"] == 1.0
    assert metrics["idle_mb_minutes"] == 100.0
    assert metrics["p75_function_cold_pct"] == 100.0
    assert metrics["zero_cold_share"] == 0.0
    assert metrics["seen_cold_functions"] == 1  # a was called in the warmup


def test_the_silent_warmup_floor(tmp_path: Path) -> None:
    # every invocation lasts a minute (write_trace's default): need = invocations
    counts = {
        "a": [1, 0, 0, 0, 2],  # seen in the warmup: no floor
        "b": [0, 0, 0, 0, 0],  # never called
        "c": [0, 0, 0, 9, 1],  # silent in the warmup: its first call after it needs 9
        "d": [0, 0, 1, 0, 1],  # silent in the warmup: its first call needs 1
    }
    floor = silent_warmup_floor(load_trace(write_trace(tmp_path, counts)), warmup=2)
    assert floor["silent_functions"] == 2
    assert floor["cold_starts"] == 10.0
    assert floor["cold_start_per_invocation"] == pytest.approx(10 / 14)  # 2 + 10 + 2 calls


# --- no look-ahead ------------------------------------------------------------------------


def _random_counts(rng: np.random.Generator, functions: int, minutes: int) -> dict[str, list]:
    rates = [0.05, 0.2, 0.5, 1.5, 4.0, 0.02][:functions]
    return {f"f{i}": rng.poisson(rate, minutes).tolist() for i, rate in enumerate(rates)}


def _mutated(counts: dict[str, list], start: int, rng: np.random.Generator) -> dict[str, list]:
    """The same trace up to minute start - 1, another future from there on."""
    return {
        name: series[:start] + rng.poisson(3.0, len(series) - start).tolist()
        for name, series in counts.items()
    }


@pytest.mark.parametrize(
    "policy",
    [
        warm_none,
        lambda need: warm_fixed_keepalive(need, 10),
        lambda need: warm_fixed_keepalive(need, 20),
        warm_hybrid_histogram,
    ],
    ids=["none", "fixed_keepalive_10", "fixed_keepalive_20", "hybrid_histogram"],
)
def test_baselines_decide_without_look_ahead(tmp_path: Path, policy) -> None:
    rng = np.random.default_rng(3)
    counts = _random_counts(rng, 5, 400)
    for m in (37, 250):
        original = load_trace(write_trace(tmp_path / f"a{m}", counts))
        changed = load_trace(write_trace(tmp_path / f"b{m}", _mutated(counts, m, rng)))
        assert (original.need[:, m:] != changed.need[:, m:]).any()
        # decisions up to minute m use minutes < m only: identical whatever follows
        assert np.array_equal(policy(original.need)[:, : m + 1], policy(changed.need)[:, : m + 1])


def test_prewarm_decides_without_look_ahead_and_keeps_a_pool(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    counts = _random_counts(rng, 6, 90)
    settings = PrewarmSettings(ratios=(3.0, 100.0), cadence_minutes=20, num_boost_round=20)
    original = load_trace(write_trace(tmp_path / "a", counts))
    warm = warm_prewarm(original, 30, settings)
    assert set(warm) == {"prewarm@3", "prewarm@100"}
    # a real pool: some minutes warm, and the higher ratio never holds less
    assert warm["prewarm@100"][:, 30:].sum() > 0
    assert (warm["prewarm@100"] >= warm["prewarm@3"]).all()
    assert not warm["prewarm@3"][:, :30].any()  # no model before the first retraining
    for m in (45, 70):  # inside a block (retrained at 30, 50, 70) and at a retraining
        changed = load_trace(write_trace(tmp_path / f"b{m}", _mutated(counts, m, rng)))
        other = warm_prewarm(changed, 30, settings)
        for name in warm:
            assert np.array_equal(warm[name][:, : m + 1], other[name][:, : m + 1]), (name, m)
        assert any((warm[n][:, m + 1 :] != other[n][:, m + 1 :]).any() for n in warm)


# --- prewarm's decision -------------------------------------------------------------------


def test_plan_warm_is_the_memory_aware_newsvendor_rule() -> None:
    trace = Trace(
        client_ids=np.array(["a", "b", "c"], dtype=object),
        start=datetime(2019, 7, 15),
        invocations=np.zeros((3, 3)),
        need=np.zeros((3, 3), dtype=np.int64),
        memory_mb=np.array([100.0, 200.0, 400.0]),
    )
    p = np.zeros((3, 3, 4))
    p[:, 1:, :] = [0.5, 0.3, 0.2, 0.1]  # P(need >= k), k = 1..4, at minutes 1 and 2
    # reference = median memory 200 MB; R = 3 -> per function R x 200 / mem = 6, 3, 1.5,
    # thresholds 1 / (1 + R_f) = 0.143, 0.25, 0.4: warm 3 (0.2 > 0.143), 2 (0.3 > 0.25),
    # 1 (0.5 > 0.4); minute 0 is before the first planned minute
    warm = plan_warm(trace, p, 3.0, first_minute=1, reference_mb=200.0)
    assert warm.tolist() == [[0, 3, 3], [0, 2, 2], [0, 1, 1]]


# --- interface ----------------------------------------------------------------------------


def test_resolve_policies() -> None:
    baselines, ratios = resolve_policies(["all"], default_ratios=(10.0, 1.0))
    assert baselines == [
        "none",
        "fixed_keepalive_10",
        "fixed_keepalive_20",
        "hybrid_histogram",
        "oracle",
    ]
    assert ratios == [1.0, 10.0]
    assert resolve_policies(["prewarm@100,none", "prewarm@0.5"]) == (["none"], [0.5, 100.0])
    with pytest.raises(ValueError, match="unknown policy"):
        resolve_policies(["keepalive"])
    with pytest.raises(ValueError, match="positive"):
        resolve_policies(["prewarm@-1"])


def test_table_and_plot(tmp_path: Path) -> None:
    write_trace(tmp_path / "t", {"f": sparse(25, KEEPALIVE_CALLS)})
    result = run_replay(tmp_path / "t", warmup=2, policies=["fixed_keepalive_10", "oracle"])
    assert result["settings"]["warmup"] == 2
    assert result["silent_warmup_floor"]["silent_functions"] == 0  # f is called at minute 1
    assert result["settings"]["runtime_s"] >= 0
    table = render_table(result)
    assert table[0][0] == "policy"
    assert [r[0] for r in table[1:]] == ["fixed_keepalive_10", "oracle"]
    assert table[1][2] == "3"  # cold starts
    # f was called in the warmup (minute 1), then cold at minute 20; never under the oracle
    seen_cold = table[0].index("seen fns cold")
    assert (table[1][seen_cold], table[2][seen_cold]) == ("1", "0")
    assert table[1][-1] == "1.000"
    # the curve: two prewarm points (plotted from a hand-made result)
    for name, x, y in (("prewarm@10", 5.0, 0.3), ("prewarm@100", 1.0, 0.6)):
        result["policies"][name] = {
            "p75_function_cold_pct": x,
            "cold_start_per_invocation": x / 100,
            "idle_vs_fixed10": y,
        }
    path = tmp_path / "img" / "replay.png"
    plot_replay(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
