"""The MLflow adapter (models.registry) on a real MLflow store (SQLite under tmp_path): compact
versions naming one shared exceedance model, versions registered before that format, and
retention (which versions keep their files, and that pruning deletes exactly the others)."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path

import mlflow
import polars as pl
import pytest
from mlflow import MlflowClient
from polars.testing import assert_frame_equal

from core.times import utc_now
from models.exceedance import ExceedanceConfig, fit_exceedance_model
from models.forecaster import ClientForecaster, ForecastConfig, fit_client_forecaster
from models.registry import (
    SHARED_GRACE,
    ForecasterPyfunc,
    ModelCard,
    RegistryUnavailable,
    StoredVersion,
    current_aliases,
    exceedance_run_of,
    load_exceedance,
    load_forecaster,
    load_forecaster_version,
    locate_versions,
    log_exceedance,
    prune_registry,
    register_forecaster,
    shared_runs_to_remove,
    versions_to_prune,
)
from models.registry import store as store_module
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
# Small and quick: these tests check the registry, not accuracy.
CONFIG = ForecastConfig(n_estimators=15, tail_estimators=8, max_train_rows=800, max_eval_rows=600)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(2, 4, END, seed=7)


@pytest.fixture(scope="module")
def fitted(batch) -> dict[str, ClientForecaster]:
    out = {}
    for cid in ("c0000", "c0001"):
        history = batch.rows.filter(pl.col("client_id") == cid)
        out[cid] = fit_client_forecaster(history, CONFIG, batch.calendar)
        EXAMPLES[cid] = history.tail(12)
    return out


@pytest.fixture(scope="module")
def exceedance(batch):
    usage = batch.rows.select("client_id", "ts", "concurrency").drop_nulls()
    config = ExceedanceConfig(freq_seconds=300, horizon_steps=12, max_level=4, max_rows=5_000)
    return fit_exceedance_model(usage, config)


@pytest.fixture
def store(tmp_path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"


def _register(forecaster, store, promote=True, run=None) -> str:
    """Register as training does: a signature from an example, a plot on the run."""
    uri, artifacts = store
    example = EXAMPLES[forecaster.client_id]
    card = ModelCard(
        plot_svg=b"<svg>a plot</svg>",
        input_example=example.to_pandas(),
        output_example=forecaster.predict(example).to_pandas(),
    )
    registration = register_forecaster(
        forecaster, forecaster.client_id, card, promote, "test", uri, artifacts, run
    )
    return registration.version


EXAMPLES: dict[str, pl.DataFrame] = {}


def _history(batch, cid: str) -> pl.DataFrame:
    return batch.rows.filter(pl.col("client_id") == cid)


def _files(artifacts: Path) -> set[str]:
    return {str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file()}


def test_versions_name_one_shared_exceedance_model_read_once(fitted, exceedance, batch, store):
    uri, artifacts = store
    shared = log_exceedance(exceedance, uri, artifacts)
    for forecaster in fitted.values():
        assert _register(forecaster, store, run=shared) == "1"
    files = _files(artifacts)
    assert sum(f.endswith("exceedance.json.gz") for f in files) == 1
    assert sum(f.endswith("forecaster.json.gz") for f in files) == 2
    assert not any(f.endswith(".pkl") and "forecaster" in f for f in files)
    # Each version pins what trained it (read once a process, so equal for both).
    pins = [
        (artifacts / f).read_text().split()
        for f in sorted(files)
        if f.startswith("models/") and f.endswith("/requirements.txt")
    ]
    assert len(pins) == 2 and pins[0] == pins[1]
    assert f"lightgbm=={metadata.version('lightgbm')}" in pins[0]
    assert exceedance_run_of("c0001", "1", uri) == shared
    a = load_forecaster_version("c0000", "1", uri)
    b, version = load_forecaster("c0001", uri)
    assert version == "1"
    assert a.exceedance is b.exceedance is load_exceedance(shared, uri)  # once per process
    for cid, loaded in (("c0000", a), ("c0001", b)):
        history = _history(batch, cid)
        assert_frame_equal(loaded.predict(history), fitted[cid].predict(history), check_exact=True)
    usage = _history(batch, "c0000").select("client_id", "ts", "concurrency")
    assert_frame_equal(
        a.predict_exceedance(usage), exceedance.predict(usage.drop_nulls()), check_exact=True
    )
    # What the README promises: the version as a pyfunc, forecast and exceedance outputs.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/forecaster-c0001@champion")
    history = _history(batch, "c0001")
    served = pyfunc.predict(history.to_pandas())
    assert len(served) == 6 * 12
    assert_frame_equal(pl.from_pandas(served), fitted["c0001"].predict(history), check_dtypes=False)
    p_exceed = pyfunc.predict(history.to_pandas(), params={"output": "exceedance"})
    assert sorted(set(p_exceed["level"])) == [1, 2, 3, 4]


def test_a_carried_exceedance_model_is_stored_apart_when_no_run_is_named(fitted, exceedance, store):
    uri, artifacts = store
    carrying = pickle.loads(pickle.dumps(fitted["c0000"]))
    carrying.exceedance = exceedance
    _register(carrying, store)
    run = exceedance_run_of("c0000", "1", uri)
    assert run is not None
    assert load_forecaster_version("c0000", "1", uri).exceedance is load_exceedance(run, uri)


def _register_the_old_way(forecaster, exceedance, store) -> None:
    """A version as registered before the compact format: the whole forecaster pickled (its
    exceedance model inside), in the same pyfunc class."""
    uri, artifacts = store
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    if client.get_experiment_by_name("prewarm-forecasters") is None:
        artifacts.mkdir(parents=True, exist_ok=True)
        client.create_experiment("prewarm-forecasters", artifact_location=artifacts.as_uri())
    mlflow.set_experiment("prewarm-forecasters")
    old = pickle.loads(pickle.dumps(forecaster))
    old.exceedance = exceedance
    pickled = artifacts.parent / "forecaster.pkl"
    pickled.write_bytes(pickle.dumps(old, protocol=pickle.HIGHEST_PROTOCOL))
    name = f"forecaster-{forecaster.client_id}"
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="forecaster",
            python_model=ForecasterPyfunc(),
            artifacts={"forecaster": str(pickled)},
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "champion", version)
    client.set_registered_model_alias(name, "challenger", version)


def test_a_version_registered_before_the_compact_format_still_loads(
    fitted, exceedance, batch, store
):
    uri, _ = store
    _register_the_old_way(fitted["c0000"], exceedance, store)
    history = _history(batch, "c0000")
    loaded, version = load_forecaster("c0000", uri)
    assert version == "1" and exceedance_run_of("c0000", "1", uri) is None
    assert_frame_equal(loaded.predict(history), fitted["c0000"].predict(history), check_exact=True)
    usage = history.select("client_id", "ts", "concurrency")
    assert_frame_equal(
        loaded.predict_exceedance(usage), exceedance.predict(usage.drop_nulls()), check_exact=True
    )
    # A new version next to it is compact; both load, and retention treats them alike.
    assert _register(fitted["c0000"], store, promote=False) == "2"
    assert (
        load_forecaster_version("c0000", "2", uri).predict(history).equals(loaded.predict(history))
    )
    report = prune_registry(uri, keep=0)
    assert report.pruned == [] and report.kept == 2  # v1 champion, v2 challenger


def test_retention_keeps_the_aliased_and_the_newest():
    versions = {"forecaster-a": [1, 2, 3, 4, 5, 6], "forecaster-b": [1, 2], "forecaster-c": [7]}
    aliases = {"forecaster-a": [1, 6], "forecaster-b": [2]}  # an old champion, a challenger
    assert versions_to_prune(versions, aliases, keep=2) == {"forecaster-a": [2, 3, 4]}
    assert versions_to_prune(versions, aliases, keep=0) == {
        "forecaster-a": [2, 3, 4, 5],
        "forecaster-b": [1],
        "forecaster-c": [7],  # no alias at all: nothing protects it
    }
    assert versions_to_prune(versions, aliases, keep=10) == {}
    with pytest.raises(ValueError, match="keep must be >= 0"):
        versions_to_prune(versions, aliases, keep=-1)


def test_shared_models_go_when_unnamed_and_a_day_old():
    now = datetime(2026, 1, 19, 12)
    started = {"old": now - SHARED_GRACE - timedelta(minutes=1), "new": now - timedelta(hours=1)}
    assert shared_runs_to_remove(started, named=set(), now=now) == ["old"]
    assert shared_runs_to_remove(started, named={"old"}, now=now) == []


def _version_dirs(uri: str, name: str, version: str) -> list[Path]:
    client = MlflowClient(uri, registry_uri=uri)
    found = client.get_model_version(name, version)
    location = client.get_model_version_download_uri(name, version)
    run_dir = client.get_run(found.run_id).info.artifact_uri
    return [Path(u.removeprefix("file://")).parent for u in (location, run_dir)]


def test_prune_deletes_exactly_the_old_unaliased_versions_and_their_files(
    fitted, exceedance, store
):
    uri, artifacts = store
    client = MlflowClient(uri, registry_uri=uri)
    first, second = (log_exceedance(exceedance, uri, artifacts) for _ in range(2))
    for number in range(1, 7):  # versions 2-4 name the second shared model
        run = second if 2 <= number <= 4 else first
        _register(fitted["c0000"], store, promote=number == 1, run=run)
    _register(fitted["c0001"], store, run=first)
    dirs = {v: _version_dirs(uri, "forecaster-c0000", v) for v in map(str, range(1, 7))}
    assert all(d.is_dir() for paths in dirs.values() for d in paths)
    second_dir = Path(client.get_run(second).info.artifact_uri.removeprefix("file://"))

    dry = prune_registry(uri, keep=2, dry_run=True)
    assert [(p.name, p.version) for p in dry.pruned] == [
        ("forecaster-c0000", "2"),
        ("forecaster-c0000", "3"),
        ("forecaster-c0000", "4"),
    ]
    assert all(p.size and p.size > 10_000 for p in dry.pruned)
    assert dry.shared_runs == []  # unnamed once 2-4 go, but not a day old yet
    assert all(d.is_dir() for paths in dirs.values() for d in paths)  # nothing deleted

    a_day_later = utc_now() + SHARED_GRACE + timedelta(hours=1)
    report = prune_registry(uri, keep=2, now=a_day_later)
    assert [p.version for p in report.pruned] == ["2", "3", "4"]
    assert report.kept == 4 and report.models == 2  # c0000: v1 champion, v5, v6; c0001: v1
    assert report.freed_bytes == dry.freed_bytes
    left = {str(v.version) for v in client.search_model_versions("name = 'forecaster-c0000'")}
    assert left == {"1", "5", "6"}
    assert current_aliases(uri)["c0000"] == {"champion": "1", "challenger": "6"}
    for version, paths in dirs.items():
        assert all(d.exists() == (version in left) for d in paths), version
    assert client.get_run(dirs_run(client, "1")).info.lifecycle_stage == "active"
    experiment = client.get_experiment_by_name("prewarm-forecasters").experiment_id
    assert len(client.search_logged_models([experiment])) == 4  # the versions left
    # The second shared model went with the last versions naming it; the first stays.
    assert report.shared_runs == [second] and not second_dir.exists()
    assert client.get_run(second).info.lifecycle_stage == "deleted"
    assert load_forecaster("c0000", uri)[0].exceedance is load_exceedance(first, uri)

    again = prune_registry(uri, keep=2, now=a_day_later)
    assert again.pruned == [] and again.shared_runs == [] and again.kept == 4


def dirs_run(client: MlflowClient, version: str) -> str:
    return client.get_model_version("forecaster-c0000", version).run_id


def test_aliases_are_read_in_one_query_as_the_api_gives_them(tmp_path):
    """The cycle reads every forecaster's aliases every 5 minutes: one query on MLflow's
    tables, the same answer as its API (models without aliases included, other models
    left out), and a registry file replaced on disk is read anew."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("forecaster-c1", "forecaster-c2", "someone-else"):
        client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version("forecaster-c1", source=str(tmp_path / "model"))
    client.create_model_version("someone-else", source=str(tmp_path / "model"))
    client.set_registered_model_alias("forecaster-c1", "champion", "1")
    client.set_registered_model_alias("forecaster-c1", "challenger", "3")
    client.set_registered_model_alias("someone-else", "champion", "1")

    expected = {"c1": {"champion": "1", "challenger": "3"}, "c2": {}}
    assert current_aliases(uri) == expected
    assert store_module._aliases_through_api(uri) == expected

    client.delete_registered_model_alias("forecaster-c1", "challenger")
    client.set_registered_model_alias("forecaster-c1", "champion", "2")
    assert current_aliases(uri) == {"c1": {"champion": "2"}, "c2": {}}

    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(tracking_uri=other, registry_uri=other).create_registered_model("forecaster-c9")
    (tmp_path / "other.db").replace(tmp_path / "mlflow.db")
    assert current_aliases(uri) == {"c9": {}}


def test_prune_refuses_a_registry_that_is_not_there_and_deletes_nothing(tmp_path):
    with pytest.raises(RegistryUnavailable, match="missing or corrupt \\(no such file\\)"):
        prune_registry(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}", keep=3)
    assert not (tmp_path / "nowhere").exists()
    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(RegistryUnavailable, match="is not an SQLite database"):
        prune_registry(f"sqlite:///{garbage}", keep=3)
    assert garbage.read_bytes() == b"not a database at all" * 100


def test_versions_are_located_in_one_query_and_load_as_through_mlflow(
    fitted, exceedance, batch, store
):
    uri, artifacts = store
    shared = log_exceedance(exceedance, uri, artifacts)
    for forecaster in fitted.values():
        _register(forecaster, store, run=shared)
    assert _register(fitted["c0000"], store, promote=False, run=shared) == "2"
    _register_the_old_way(fitted["c0001"], exceedance, store)  # c0001 version 2: a pickle
    client = MlflowClient(uri, registry_uri=uri)
    api_location = client.get_model_version_download_uri("forecaster-c0000", "2")

    located = locate_versions(uri, {"c0000": "2", "c0001": "2", "nobody": "1"})
    # The pickled version and a model that does not exist are left to MLflow's API.
    assert set(located) == {"c0000"}
    assert located["c0000"].path.as_uri() == f"{api_location}/artifacts/forecaster.json.gz"
    assert located["c0000"].exceedance_run_id == shared
    history = _history(batch, "c0000")
    loaded = load_forecaster_version("c0000", "2", uri, located["c0000"])
    assert_frame_equal(loaded.predict(history), fitted["c0000"].predict(history), check_exact=True)
    assert loaded.exceedance is load_exceedance(shared, uri)
    # Version 1 asked for is version 1's file; a deleted version is not found.
    assert locate_versions(uri, {"c0000": "1"})["c0000"].path != located["c0000"].path
    client.delete_model_version("forecaster-c0000", "1")
    assert locate_versions(uri, {"c0000": "1"}) == {}
    # A located file gone meanwhile: MLflow's API is asked instead (and says why).
    gone = StoredVersion(artifacts / "gone" / "forecaster.json.gz", shared)
    assert (
        load_forecaster_version("c0000", "2", uri, gone)
        .predict(history)
        .equals(loaded.predict(history))
    )
    # A tracking server is only asked through its API.
    assert locate_versions("http://127.0.0.1:9/", {"c0000": "2"}) == {}
