"""Retention end to end: `prewarm registry prune` and the pruning every training run does,
on a real warehouse and MLflow store (SQLite), with predict-profiles after it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.ingest import ingest_usage
from flows.predict import predict_profiles
from flows.settings import Settings
from flows.train import train_flow
from models.forecaster import forecaster_from_bytes
from models.registry import (
    ModelCard,
    exceedance_run_of,
    locate_versions,
    register_forecaster,
)
from warehouse.db import connect

END = datetime(2026, 1, 19)


def _versions(client: MlflowClient, name: str) -> set[str]:
    return {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}


def _folders(client: MlflowClient, name: str, version: str) -> list[Path]:
    """The logged model's and the run's folders of one version."""
    run_id = client.get_model_version(name, version).run_id
    uris = [
        client.get_model_version_download_uri(name, version),
        client.get_run(run_id).info.artifact_uri,
    ]
    return [Path(u.removeprefix("file://")).parent for u in uris]


def test_training_prunes_old_versions_and_predict_still_serves_every_client(
    run_cli, data_dir, monkeypatch
):
    ingest_usage(source="synthetic", clients=2, days=5, seed=11, end=END)
    settings = Settings()
    summary = train_flow(settings)(client_ids=None)
    assert not summary.failures and len(summary.registrations) == 2
    assert summary.pruned is not None and summary.pruned.pruned == []
    uri = settings.mlflow_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    # Four more versions of c0000 naming the same shared model; v1 is the champion and v2
    # gets an alias of someone's own: old, and never pruned while an alias points at them.
    # Read as boosters from its file: a version loaded for prediction is not stored again.
    first = forecaster_from_bytes(locate_versions(uri, {"c0000": "1"})["c0000"].path.read_bytes())
    for _ in range(4):
        register_forecaster(
            first,
            "c0000",
            ModelCard(plot_svg=b"<svg>a plot</svg>"),
            False,
            "held back: test",
            uri,
            settings.mlflow_artifacts_dir,
            exceedance_run_of("c0000", "1", uri),
        )
    client.set_registered_model_alias("forecaster-c0000", "champion", "1")
    client.set_registered_model_alias("forecaster-c0000", "pinned", "2")
    folders = {v: _folders(client, "forecaster-c0000", v) for v in ("1", "2", "3", "4", "5")}

    code, out, _ = run_cli("registry", "prune", "--keep", "1", "--dry-run")
    assert code == 0, out
    assert "forecaster-c0000 │ 3, 4" in out and "Would prune 2 versions of 1 forecasters" in out
    assert "Nothing was deleted (--dry-run)." in out
    assert _versions(client, "forecaster-c0000") == {"1", "2", "3", "4", "5"}

    # The next training prunes down to the aliased versions and the newest one
    # (PREWARM_REGISTRY_KEEP): v1 too unless the gate promotes the new version past it.
    monkeypatch.setenv("PREWARM_REGISTRY_KEEP", "1")
    summary = train_flow(Settings())(client_ids=["c0000"])
    (registration,) = summary.registrations
    assert registration.version == "6"
    champion = "6" if registration.promoted else "1"
    kept = {champion, "2", "6"}
    assert summary.pruned is not None
    assert [(p.name, p.version) for p in summary.pruned.pruned] == [
        ("forecaster-c0000", v) for v in ("1", "3", "4", "5") if v not in kept
    ]
    assert _versions(client, "forecaster-c0000") == kept
    aliases = client.get_registered_model("forecaster-c0000").aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {
        "champion": champion,
        "challenger": "6",
        "pinned": "2",
    }
    for version, paths in folders.items():
        assert all(p.exists() == (version in kept) for p in paths), version

    predicted = predict_profiles()
    assert predicted.clients == 2 and not predicted.without_model
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = dict(con.execute("SELECT client_id, count(*) FROM forecasts GROUP BY 1").fetchall())
        versions = con.execute(
            "SELECT DISTINCT model_version FROM forecasts WHERE client_id = 'c0000'"
        ).fetchall()
    assert rows == {"c0000": 6 * 12 + 46, "c0001": 6 * 12 + 46}
    assert versions == [(champion,)]

    code, out, _ = run_cli("registry", "prune", "--keep", "1")
    assert code == 0, out
    assert "Pruned 0 versions of 0 forecasters" in out  # the training already did
    assert f"{len(kept) + 1} versions of 2 forecasters stay" in out


@pytest.mark.parametrize("broken", ["missing", "not sqlite"])
def test_prune_on_a_bad_registry_says_so_and_deletes_nothing(
    run_cli, monkeypatch, tmp_path, broken
):
    registry = tmp_path / "elsewhere" / "mlflow.db"
    if broken == "not sqlite":
        registry.parent.mkdir()
        registry.write_text("this is not a registry\n")
    monkeypatch.setenv("PREWARM_MLFLOW_TRACKING_URI", f"sqlite:///{registry}")
    code, out, err = run_cli("registry", "prune")
    assert code == 1 and out == ""
    assert err.startswith(f"error: The MLflow registry at {registry} is missing or corrupt")
    assert "Traceback" not in err
    if broken == "missing":
        assert not registry.parent.exists()  # MLflow was not let create one
    else:
        assert registry.read_text() == "this is not a registry\n"
