"""train-forecasters and predict-profiles end to end: real DuckDB, real MLflow (SQLite), real
LightGBM, on a small seeded synthetic warehouse plus a one-day client."""

from __future__ import annotations

import copy
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import polars as pl
import pytest
from mlflow import MlflowClient

from flows.ingest import ingest_usage
from flows.predict import predict_profiles
from flows.settings import Settings
from flows.train import train_flow
from models.profile import busy_thresholds, idle_floors
from models.registry import load_forecaster_version
from warehouse.db import connect, fetch_frame, fetch_value
from warehouse.usage import read_recent_usage

END = datetime(2026, 1, 19)


@pytest.fixture(scope="module")
def trained_once(prefect_harness, tmp_path_factory) -> Path:
    """Three synthetic clients x 14 days and a one-day events client, trained once for the
    module (a training costs ~20 s); tests get copies (`trained`)."""
    root = tmp_path_factory.mktemp("trained")
    events = root / "newbie.csv"
    start = END - timedelta(days=1)
    lines = ["client_id,ts,requests,concurrency"]
    for i in range(288):
        ts = start + timedelta(minutes=5 * i)
        lines.append(f"newbie,{ts:%Y-%m-%dT%H:%M:%S}Z,{(i % 12) + 1},{1 + (i % 3)}")
    events.write_text("\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as env:
        _point_at(env, root, root / "artifacts")
        ingest_usage(source="synthetic", clients=3, days=14, seed=11, end=END)
        ingest_usage(source="events", path=events)
        summary = train_flow(Settings())(client_ids=None)
    assert not summary.failures, summary.failures
    return root


def _point_at(env: pytest.MonkeyPatch, root: Path, artifacts: Path) -> None:
    env.setenv("PREWARM_DATA_DIR", str(root / "data"))
    env.setenv("PREWARM_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    env.setenv("PREWARM_MLFLOW_ARTIFACTS_DIR", str(artifacts))


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of the trained warehouse and registry, free to change."""
    shutil.copytree(
        trained_once / "data", tmp_path / "data", ignore=shutil.ignore_patterns("prefect")
    )
    shutil.copyfile(trained_once / "mlflow.db", tmp_path / "mlflow.db")
    # The registry records where each version's files are (the template's artifacts); new
    # versions get files of their own there (run ids), so copies never collide.
    _point_at(monkeypatch, tmp_path, trained_once / "artifacts")
    return Settings()


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def test_every_client_gets_a_registered_forecaster_with_champion_or_reason(trained):
    client = _client(trained)
    models = {m.name: m for m in client.search_registered_models()}
    assert set(models) == {
        "forecaster-c0000",
        "forecaster-c0001",
        "forecaster-c0002",
        "forecaster-newbie",
    }
    for name, model in models.items():
        assert str(model.aliases.get("challenger")) == "1", name
        version = client.get_model_version(name, "1")
        if "champion" in model.aliases:
            assert version.tags["promotion"].startswith("promoted")
        else:
            assert version.tags["promotion"].startswith("held back")
        assert version.tags["data_window"].count("..") == 1
    newbie = client.get_model_version("forecaster-newbie", "1")
    assert newbie.tags["model_kind"] == "global"
    assert "too little history" in newbie.tags["fallback"]
    assert client.get_model_version("forecaster-c0000", "1").tags["model_kind"] == "per-client"


def test_registered_run_has_metrics_params_plot_and_signature(trained):
    client = _client(trained)
    version = client.get_model_version("forecaster-c0000", "1")
    run = client.get_run(version.run_id)
    assert "requests.wmape" in run.data.metrics
    assert "window.baseline_wmape" in run.data.metrics
    assert run.data.params["horizon_steps"] == "12"
    assert run.data.params["profile_steps"] == "288"  # a day: the profile's reach
    assert "reach.requests.wmape" in run.data.metrics  # judged on the same holdout
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert artifacts == {"plots/holdout_forecast.svg"}
    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    mlflow.set_registry_uri(trained.mlflow_tracking_uri)
    info = mlflow.models.get_model_info("models:/forecaster-c0000/1")
    assert info.signature is not None
    assert "ts" in info.signature.inputs.input_names()
    # MLflow 3's model page shows the metrics bound to the logged model, not the run's.
    linked = {m.key: m.value for m in client.get_logged_model(info.model_id).metrics}
    assert linked["requests.wmape"] == run.data.metrics["requests.wmape"]
    assert "window.baseline_wmape" in linked


def test_pyfunc_round_trip_gives_identical_forecasts(trained):
    history = read_recent_usage(trained.warehouse_path, 8, ["c0001"])
    mlflow.set_tracking_uri(trained.mlflow_tracking_uri)
    mlflow.set_registry_uri(trained.mlflow_tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/forecaster-c0001@challenger")
    served = pyfunc.predict(history.to_pandas())
    direct = pyfunc.unwrap_python_model().forecaster.predict(history).to_pandas()
    assert len(served) == 6 * 12  # six metrics x twelve 5-minute steps
    pd.testing.assert_frame_equal(served.reset_index(drop=True), direct.reset_index(drop=True))
    assert (served["p10"] <= served["p50"]).all() and (served["p50"] <= served["p90"]).all()
    exceedance = pyfunc.predict(history.to_pandas(), params={"output": "exceedance"})
    assert set(exceedance["level"]) == set(range(1, 17))
    # Registration skips MLflow's per-version serving check of the input example; this is it.
    example = pyfunc.input_example
    assert len(example) == 12 and set(example["client_id"]) == {"c0001"}
    from_example = pyfunc.predict(example)
    assert len(from_example) == 6 * 12
    assert from_example["ts"].min() > example["ts"].max()


def test_a_version_is_a_compact_file_naming_the_shared_exceedance_model(trained_once, trained):
    """Clients trained for real at the defaults (six metrics, a day's reach): each version's
    files, plot included, stay under 300 KB; the exceedance model all of them use is stored
    once, in a run of its own, and read once per process."""
    client = _client(trained)
    artifacts = trained_once / "artifacts"
    shared_runs = set()
    for model in client.search_registered_models():
        version = client.get_model_version(model.name, "1")
        folders = [
            client.get_model_version_download_uri(model.name, "1"),
            client.get_run(version.run_id).info.artifact_uri,
        ]
        files = [f for u in folders for f in Path(u.removeprefix("file://")).rglob("*")]
        assert sum(f.stat().st_size for f in files if f.is_file()) < 300_000, model.name
        names = {f.name for f in files}
        assert "forecaster.json.gz" in names
        assert not names & {"forecaster.pkl", "exceedance.json.gz"}
        shared_runs.add(version.tags["exceedance_run_id"])
    (shared,) = shared_runs  # every client has concurrency: one model, named by all
    assert (artifacts / shared / "artifacts" / "exceedance" / "exceedance.json.gz").is_file()
    loaded = [
        load_forecaster_version(cid, "1", trained.mlflow_tracking_uri)
        for cid in ("c0000", "c0001", "newbie")
    ]
    assert loaded[0].exceedance is loaded[1].exceedance is loaded[2].exceedance


def test_promotion_gate_keeps_a_worse_challenger_out(trained, monkeypatch):
    client = _client(trained)
    champion_before = str(client.get_registered_model("forecaster-c0002").aliases.get("champion"))
    assert champion_before == "1", "the seeded client's first model should have been promoted"

    import flows.train_client as train_module

    real_fit = train_module.fit_client_forecaster

    def sabotaged_fit(*args, **kwargs):
        forecaster = real_fit(*args, **kwargs)
        worse = copy.copy(forecaster)
        worse.bias = {metric: 1_000.0 for metric in forecaster.metrics}  # far off every actual
        return worse

    monkeypatch.setattr(train_module, "fit_client_forecaster", sabotaged_fit)
    summary = train_flow(trained)(client_ids=["c0002"])
    (registration,) = summary.registrations
    assert registration.version == "2" and not registration.promoted
    model = client.get_registered_model("forecaster-c0002")
    assert str(model.aliases["champion"]) == "1"
    assert str(model.aliases["challenger"]) == "2"
    reason = client.get_model_version("forecaster-c0002", "2").tags["promotion"]
    assert "does not beat" in reason


def test_predict_writes_forecasts_exceedance_and_profiles(trained):
    summary = predict_profiles()
    assert summary.clients == 4 and not summary.without_model
    path = trained.warehouse_path
    with connect(path, read_only=True) as con:
        per_client = dict(
            con.execute("SELECT client_id, count(*) FROM forecasts GROUP BY 1").fetchall()
        )
        crossing = fetch_value(con, "SELECT count(*) FROM forecasts WHERE p10 > p50 OR p50 > p90")
        exceed = fetch_value(con, "SELECT count(DISTINCT level) FROM forecast_exceedance")
        profiles = fetch_value(con, "SELECT count(*) FROM profiles")
        confidence = con.execute(
            "SELECT min(confidence), max(confidence) FROM profiles"
        ).fetchall()[0]
        last_ts = fetch_value(con, "SELECT max(ts) FROM usage WHERE client_id = 'c0000'")
        first_forecast = fetch_value(con, "SELECT min(ts) FROM forecasts WHERE client_id = 'c0000'")
    # Every metric over the hour; past it, every half hour to a day, the demand metric's.
    assert per_client["c0000"] == 6 * 12 + 46
    assert per_client["newbie"] == 2 * 12 + 46  # requests and concurrency only
    assert crossing == 0
    assert exceed == 16
    assert profiles >= 1
    assert 0.0 <= confidence[0] <= confidence[1] <= 1.0
    assert first_forecast == last_ts + timedelta(minutes=5)


def test_training_on_a_dask_cluster(trained, monkeypatch):
    from dask.distributed import LocalCluster

    # Threads in one process: the workers share this test's Prefect harness settings.
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        monkeypatch.setenv("PREWARM_DASK_ADDRESS", cluster.scheduler_address)
        settings = Settings()
        summary = train_flow(settings)(client_ids=["c0000", "c0001"])
    assert sorted(r.client_id for r in summary.registrations) == ["c0000", "c0001"]
    assert {r.version for r in summary.registrations} == {"2"}


def test_model_runs_table_records_each_training(trained):
    with connect(trained.warehouse_path, read_only=True) as con:
        rows = con.execute(
            "SELECT client_id, model_version, alias, fallback FROM model_runs ORDER BY client_id"
        ).fetchall()
    assert [r[0] for r in rows] == ["c0000", "c0001", "c0002", "newbie"]
    assert rows[3][3] is not None and rows[0][3] is None


def test_prewarm_profile_prints_windows_and_a_chart_of_the_forecast(run_cli, trained):
    predict_profiles()
    with connect(trained.warehouse_path, read_only=True) as con:
        windows = con.execute(
            "SELECT window_start, window_end FROM profiles WHERE client_id = 'c0001'"
        ).fetchall()
        steps = con.execute(
            "SELECT ts FROM forecasts WHERE client_id = 'c0001' AND metric = 'requests' ORDER BY ts"
        ).fetchall()
    code, out, _ = run_cli("profile", "c0001")
    assert code == 0, out
    assert f"{len(windows)} demand window(s)" in out
    assert "requests forecast" in out  # the demand metric its windows were found on
    chart = [line for line in out.splitlines() if line[:2].isdigit() and "/" in line[20:]]
    assert len(chart) == 24  # a day ahead, an hour a line
    first, last = steps[0][0], steps[-1][0]
    assert last - first >= timedelta(hours=23)
    starts = [first + timedelta(hours=i) for i in range(24)]
    assert [line[:11] for line in chart] == [f"{t:%m-%d %H:%M}" for t in starts]
    marked = [line.endswith("◀") for line in chart]
    hour = timedelta(hours=1)
    inside = [any(s < t + hour and t < e for s, e in windows) for t in starts]
    assert marked == inside and any(inside)

    code, out, _ = run_cli("profile", "c0001", "--json")
    document = json.loads(out)
    assert document["client_id"] == "c0001" and len(document["windows"]) == len(windows)

    code, _, err = run_cli("profile", "nobody")
    assert code == 1 and "No prediction for 'nobody' yet" in err


def test_profiles_reach_a_day_ahead_with_windows_where_demand_turns_busy(trained):
    predict_profiles()
    path = trained.warehouse_path
    with connect(path, read_only=True) as con:
        forecasts = fetch_frame(
            con, "SELECT client_id, origin, ts, p50 FROM forecasts WHERE metric = 'requests'"
        )
        profiles = fetch_frame(con, "SELECT * FROM profiles ORDER BY client_id, window_start")
    ahead = forecasts.group_by("client_id").agg(pl.col("ts").max() - pl.col("origin").min())
    assert ahead.get_column("ts").min() >= timedelta(hours=24)  # every client, newbie too
    windows = {
        cid: [(w["window_start"], w["duration_minutes"]) for w in rows.to_dicts()]
        for (cid,), rows in profiles.partition_by("client_id", as_dict=True).items()
    }
    # Two regular clients of one region, busy at their own times and for their own spans.
    assert windows["c0001"] and windows["c0002"] and windows["c0001"] != windows["c0002"]
    origin = forecasts.get_column("origin").min()
    assert any(start >= origin + timedelta(hours=1) for start, _ in windows["c0001"])
    # Each window's edges: the forecast steps either side are either side of the client's
    # busy threshold (its idle floor, a little above; see models.profile).
    usage = read_recent_usage(path, trained.predict_history_days)
    thresholds = busy_thresholds(idle_floors(usage, 300)).filter(
        (pl.col("metric") == "requests") & (pl.col("floor") > 0)  # P(active) is not on trial
    )
    checked = 0
    for cid, threshold in thresholds.select("client_id", "threshold").iter_rows():
        steps = forecasts.filter(pl.col("client_id") == cid)
        busy = dict(steps.select("ts", pl.col("p50") > threshold).iter_rows())
        for window in profiles.filter(pl.col("client_id") == cid).to_dicts():
            start, end = window["window_start"], window["window_end"]
            before, after = [t for t in busy if t < start], [t for t in busy if t >= end]
            assert not before or busy[max(before)] is False
            assert busy[min(t for t in busy if t >= start)] is True
            assert busy[max(t for t in busy if t < end)] is True
            assert not after or busy[min(after)] is False
            checked += 1
    assert checked >= 2


def test_over_the_budget_a_cycle_predicts_new_clients_new_models_then_the_oldest(
    trained, monkeypatch
):
    from flows.predict_budget import clients_to_predict
    from warehouse.predictions import read_latest_runs

    monkeypatch.setenv("PREWARM_PREDICT_CLIENTS_PER_CYCLE", "3")
    settings = Settings()

    def predict_one_cycle() -> list[str]:
        choice = clients_to_predict(settings)
        assert choice.with_model == 4 and choice.clients is not None
        assert predict_profiles(choice.clients).clients == len(choice.clients) == 3
        return choice.clients

    # Nobody has a forecast: by client id. Then the one still without, then the oldest.
    assert predict_one_cycle() == ["c0000", "c0001", "c0002"]
    assert predict_one_cycle() == ["newbie", "c0000", "c0001"]
    # c0000 gets a new champion (a version over the same files): it goes first though its
    # forecast is among the newest; then c0002, the oldest.
    mlflow_client = _client(settings)
    name = "forecaster-c0000"
    old = mlflow_client.get_model_version(name, "1")
    new = mlflow_client.create_model_version(name, old.source, old.run_id, tags=old.tags)
    mlflow_client.set_registered_model_alias(name, "champion", new.version)
    assert predict_one_cycle() == ["c0000", "c0002", "c0001"]
    latest = dict(
        read_latest_runs(settings.warehouse_path).select("client_id", "model_version").iter_rows()
    )
    assert latest == {"c0000": str(new.version), "c0001": "1", "c0002": "1", "newbie": "1"}
    # Up to the budget, everyone.
    monkeypatch.setenv("PREWARM_PREDICT_CLIENTS_PER_CYCLE", "4")
    assert clients_to_predict(Settings()).clients is None


def test_past_the_model_cache_a_client_keeps_its_scored_origins(trained, monkeypatch):
    """No model kept (PREWARM_PREDICT_CACHE_CLIENTS=0): each run loads every model again from
    the registry, and still scores only the recent origins it has not scored with that
    version (kept per version, without the model)."""
    from flows import predict
    from models.forecaster.scored_origins import ScoredOrigins

    monkeypatch.setenv("PREWARM_PREDICT_CACHE_CLIENTS", "0")
    monkeypatch.setattr(predict, "_CACHE", {})
    monkeypatch.setattr(predict, "_SCORED", ScoredOrigins())
    champion = _client(trained).get_model_version_by_alias("forecaster-c0000", "champion")
    unscored: list[int] = []
    original = ScoredOrigins.unscored

    def counted(self, forecaster, origins):
        fresh = original(self, forecaster, origins)
        if forecaster.client_id == "c0000":
            unscored.append(len(fresh))
        return fresh

    monkeypatch.setattr(ScoredOrigins, "unscored", counted)
    predict_profiles()
    predict_profiles()
    assert predict._CACHE == {}
    entry = predict._SCORED._clients["c0000"]
    assert entry.version == str(champion.version) and entry.forecaster is None
    # The first run scores every recent origin; the second, on the same history, none.
    assert unscored[0] > 50 and unscored[1] == 0


def test_clients_predicted_a_chunk_at_a_time_predict_as_all_at_once(trained, monkeypatch):
    """A run loads and predicts CLIENTS_PER_LOAD clients at a time (the models past the cache
    dropped after their chunk): one client a chunk writes what one chunk of all writes."""
    from flows import predict
    from models.forecaster.scored_origins import ScoredOrigins

    runs = []
    for per_load in (1, 1000):
        monkeypatch.setattr(predict, "CLIENTS_PER_LOAD", per_load)
        monkeypatch.setattr(predict, "_CACHE", {})
        monkeypatch.setattr(predict, "_SCORED", ScoredOrigins())  # both score every origin
        assert predict_profiles().clients == 4
    with connect(trained.warehouse_path, read_only=True) as con:
        stamps = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT generated_at FROM forecasts ORDER BY 1"
            ).fetchall()
        ]
        assert len(stamps) == 2
        for table, key in (
            ("forecasts", "client_id, metric, ts"),
            ("forecast_exceedance", "client_id, ts, level"),
            ("profiles", "client_id, window_start"),
        ):
            runs = [
                fetch_frame(
                    con,
                    f"SELECT * EXCLUDE (generated_at) FROM {table} WHERE generated_at = ?"
                    f" ORDER BY {key}",
                    [stamp],
                )
                for stamp in stamps
            ]
            assert runs[0].height > 0, table
            assert runs[0].equals(runs[1]), table
