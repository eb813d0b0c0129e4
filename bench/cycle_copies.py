"""A bench/cycle.py cache of many clients whose forecasters are copies of a smaller cache's
trained ones (`python bench/cycle.py --clients 10000 --models-from 1000`).

Training costs ~2.1 s of a core per client (1,000 clients: 36 minutes on 2 cores), so a
cache of 10,000 trained clients would take hours. The cycle does not need each model to be
fitted on its own client: it needs each client to have a registered version of its own that
it loads and scores its own history with. So the warehouse of N clients is ingested from the
synthetic feed exactly as for a trained cache, and each client's registered version is
written from a trained forecaster of the smaller cache, without training:

- A client the small cache has too (the synthetic ids of a smaller population are the first
  ids of a larger one, with the same attributes and history: checked here row for row)
  gets that cache's forecaster file byte for byte: it was trained on this very history
  ("trained").
- Any other client gets the forecaster of a small-cache client of the same archetype (the
  generator's regular / bursty / sparse / late joiner), taken in turn ("copied"), with the
  new client's id and attributes (`client`, as training sets them) and each metric's scale
  multiplied by the ratio of the two clients' mean absolute usage, so its forecasts sit at
  its own level. Its boosters, calibration and holdout report are the other client's. The
  choice depends only on the client's index, so N3000 and N10000 copy the same models into
  their shared first 3,000 clients.

Each version is a real one in the new registry: a forecaster file (a copy's written by
`forecaster_to_bytes`) under <cache>/artifacts/copies/<id>/artifacts/, named by absolute file
URIs (a run's copy of mlflow.db reads them in place), registered through MlflowClient
(`create_registered_model`, `create_model_version` with the source version's tags plus
`bench_model_from`, the source's aliases: champion and challenger) instead of
`register_forecaster`'s full model logging (~0.2 s a client). The small cache's shared
exceedance model is logged once into the new registry (`log_exceedance`) and every version
names that run. The warehouse gets the `model_runs` rows training would have written (a
copy's `reason` says whose it is). Then every version is loaded back with the project's
loader (`current_aliases`, `load_forecaster_version`): its client id and attributes must be
the client's, its exceedance model attached. Measured (2 cores, shared): N3000 from N1000 in
8 minutes, ~0.11 s a client to copy and register and ~0.04 s to load back.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl

from warehouse.db import connect, fetch_frame

PROGRESS_EVERY = 500


def copy_models(settings: Any, source: Path) -> dict[str, Any]:
    """Register a forecaster for every client of the warehouse `settings` names, from the
    trained cache at `source` (see the module docstring); what was done, for ready.json."""
    from flows.train import _client_dicts
    from models.features import CLIENT_FEATURES
    from models.forecaster import forecaster_from_bytes, forecaster_to_bytes
    from models.forecaster.artifact import FORMAT
    from models.registry import (
        CHALLENGER,
        CHAMPION,
        current_aliases,
        ensure_experiment,
        load_exceedance,
        log_exceedance,
        model_name,
    )
    from models.registry.pyfunc import FORECASTER_FILE
    from models.registry.shared import EXCEEDANCE_RUN_TAG
    from models.registry.store import mlflow_client
    from models.registry.versions import FORMAT_TAG
    from warehouse.clients import read_clients

    started = time.perf_counter()
    small_meta = _meta(source)
    small_uri = f"sqlite:///{source / 'mlflow.db'}"
    small_warehouse = source / "data" / "warehouse.duckdb"
    big_uri = settings.mlflow_tracking_uri
    big_warehouse = settings.warehouse_path
    artifacts = Path(settings.mlflow_artifacts_dir).resolve()

    big = _client_dicts(read_clients(big_warehouse))
    small = _client_dicts(read_clients(small_warehouse))
    small_aliases = current_aliases(small_uri, models_expected=True)
    served = {
        cid: version
        for cid, known in small_aliases.items()
        if (version := known.get(CHAMPION) or known.get(CHALLENGER)) is not None
    }
    identical = _identical_clients(big_warehouse, small_warehouse, big, small)
    sources = _sources(sorted(big), big, small, served, identical)
    levels = _mean_abs(big_warehouse)
    small_levels = _mean_abs(small_warehouse)
    small_runs = _model_runs(small_warehouse)
    print(
        f"  {len(identical):,} of {len(big):,} clients are N{small_meta['clients']}'s, with the "
        f"same attributes and history: their forecasters are kept; "
        f"{len(big) - len(identical):,} get copies",
        flush=True,
    )

    ensure_experiment(big_uri, artifacts)
    registry = mlflow_client(big_uri)
    small_registry = mlflow_client(small_uri)
    exceedance_runs: dict[str, str] = {}  # small registry's run -> the new registry's
    by_source: dict[str, list[str]] = defaultdict(list)
    for cid, src in sources.items():
        by_source[src].append(cid)
    runs, done, copy_started = [], 0, time.perf_counter()
    for src in sorted(by_source):
        version = served[src]
        found = small_registry.get_model_version(model_name(src), version)
        tags = dict(found.tags or {})
        old_run = tags.get(EXCEEDANCE_RUN_TAG)
        if old_run and old_run not in exceedance_runs:
            exceedance_runs[old_run] = log_exceedance(
                load_exceedance(old_run, small_uri), big_uri, artifacts
            )
        if tags.get(FORMAT_TAG) != FORMAT:
            raise RuntimeError(f"{model_name(src)} v{version} is not a {FORMAT} forecaster file")
        stored = _stored_file(small_uri, model_name(src), version)
        # Read as the loader does (`load_forecaster_version`), once per source.
        forecaster = forecaster_from_bytes(stored) if set(by_source[src]) - identical else None
        aliases = sorted(small_aliases[src], key=lambda alias: alias != CHALLENGER)
        for cid in by_source[src]:
            if cid in identical or forecaster is None:
                data = stored  # the forecaster trained on this very client, as it was stored
            else:
                ratios = _ratios(levels.get(cid, {}), small_levels.get(src, {}))
                data = forecaster_to_bytes(_retargeted(forecaster, cid, big[cid], ratios))
            directory = artifacts / "copies" / cid
            (directory / "artifacts").mkdir(parents=True, exist_ok=True)
            (directory / "artifacts" / FORECASTER_FILE).write_bytes(data)
            version_tags = {
                **tags,
                "client_id": cid,
                "tier": str(big[cid].get("tier") or "unset"),
                "region": str(big[cid].get("region") or "unset"),
                FORMAT_TAG: FORMAT,
                "bench_model_from": f"N{small_meta['clients']}/{src}",
            }
            if old_run:
                version_tags[EXCEEDANCE_RUN_TAG] = exceedance_runs[old_run]
            if cid not in identical:
                version_tags["promotion"] = f"bench copy of {src}'s ({tags.get('promotion')})"
            name = model_name(cid)
            registry.create_registered_model(name)
            created = registry.create_model_version(
                name, source=directory.as_uri(), tags=version_tags
            )
            for alias in aliases:  # the source's aliases (champion and challenger)
                registry.set_registered_model_alias(name, alias, created.version)
            runs.append(_model_run(small_runs, src, cid, str(created.version), identical))
            done += 1
            if done % PROGRESS_EVERY == 0 or done == len(sources):
                _progress("registered", done, len(sources), copy_started)
    copy_s = time.perf_counter() - copy_started
    _write_model_runs(big_warehouse, runs)

    verify_started = time.perf_counter()
    checked = _verify(big_uri, big, bool(exceedance_runs), CLIENT_FEATURES)
    verify_s = time.perf_counter() - verify_started
    copied = len(big) - len(identical)
    return {
        "registered": checked,
        "failed": 0,
        "models_from": small_meta["clients"],
        "trained": len(identical),
        "copied": copied,
        "models_from_built_at": small_meta.get("built_at"),
        "exceedance_runs": exceedance_runs,
        "copy_s": round(copy_s, 1),
        "copy_ms_per_client": round(1000 * copy_s / max(len(sources), 1), 1),
        "verify_s": round(verify_s, 1),
        "models_s": round(time.perf_counter() - started, 1),
    }


def _meta(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "ready.json").read_text()))


def _identical_clients(
    big_warehouse: Path,
    small_warehouse: Path,
    big: dict[str, dict[str, Any]],
    small: dict[str, dict[str, Any]],
) -> set[str]:
    """The small cache's clients that the big warehouse holds with the same attributes and
    the same usage rows (every bucket, every metric)."""
    shared = [cid for cid in small if cid in big]
    same = {cid for cid in shared if _attributes_equal(big[cid], small[cid])}
    columns = "client_id, ts, requests, concurrency, cpu_cores, memory_mb, net_mbps, io_ops"
    with connect(big_warehouse, read_only=True) as con:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH '{small_warehouse}' AS small (READ_ONLY)")
        differing = con.execute(
            f"""
            WITH mine AS (
                SELECT {columns} FROM usage
                WHERE client_id IN (SELECT DISTINCT client_id FROM small.usage)
            ),
            theirs AS (SELECT {columns} FROM small.usage)
            SELECT DISTINCT client_id FROM (
                (SELECT * FROM mine EXCEPT ALL SELECT * FROM theirs)
                UNION ALL
                (SELECT * FROM theirs EXCEPT ALL SELECT * FROM mine)
            )
            """
        ).fetchall()
    return same - {row[0] for row in differing}


def _attributes_equal(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """The generator's attributes, compared without the warehouse's bookkeeping columns."""
    ignored = {"updated_at", "first_ts", "mode", "source"}
    return {k: v for k, v in one.items() if k not in ignored} == {
        k: v for k, v in other.items() if k not in ignored
    }


def _sources(
    ids: list[str],
    big: dict[str, dict[str, Any]],
    small: dict[str, dict[str, Any]],
    served: dict[str, str],
    identical: set[str],
) -> dict[str, str]:
    """Each client's source in the small cache: itself when identical, else the small
    clients of its archetype in turn (all of them when none shares it), in client order."""
    candidates = sorted(cid for cid in small if cid in served)
    by_kind: dict[Any, list[str]] = defaultdict(list)
    for cid in candidates:
        by_kind[small[cid].get("archetype")].append(cid)
    turns: dict[Any, int] = defaultdict(int)
    sources = {}
    for cid in ids:
        if cid in identical and cid in served:
            sources[cid] = cid
            continue
        kind = big[cid].get("archetype")
        pool = by_kind.get(kind) or candidates
        sources[cid] = pool[turns[kind] % len(pool)]
        turns[kind] += 1
    return sources


def _mean_abs(warehouse: Path) -> dict[str, dict[str, float]]:
    """Per client, each metric's mean absolute value over its stored usage."""
    from warehouse.sources.base import METRICS

    averages = ", ".join(f"avg(abs({m})) AS {m}" for m in METRICS)
    with connect(warehouse, read_only=True) as con:
        frame = fetch_frame(con, f"SELECT client_id, {averages} FROM usage GROUP BY 1")
    return {
        row.pop("client_id"): {k: v for k, v in row.items() if v is not None}
        for row in frame.to_dicts()
    }


def _ratios(mine: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    """Per metric, the new client's level over the source's (1 when either is 0)."""
    return {
        m: mine[m] / theirs[m] if mine.get(m) and theirs.get(m) else 1.0
        for m in set(mine) | set(theirs)
    }


def _retargeted(forecaster: Any, cid: str, client: dict[str, Any], ratios: dict[str, float]) -> Any:
    """The forecaster as the new client's: its id, its attributes, scales at its level."""

    def rescaled(models: dict[str, Any] | None) -> dict[str, Any] | None:
        if models is None:
            return None
        return {
            metric: model
            if model.scale is None
            else dataclasses.replace(model, scale=model.scale * ratios.get(metric, 1.0))
            for metric, model in models.items()
        }

    return dataclasses.replace(
        forecaster,
        client_id=cid,
        client=client,
        models=rescaled(forecaster.models),
        reach=rescaled(forecaster.reach),
        exceedance=None,
    )


def _stored_file(tracking_uri: str, name: str, version: str) -> bytes:
    """A version's forecaster file, fetched as `load_forecaster_version` fetches it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from models.registry.pyfunc import FORECASTER_FILE
    from models.registry.store import mlflow_client

    location = mlflow_client(tracking_uri).get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = get_artifact_repository(location).download_artifacts(
            f"artifacts/{FORECASTER_FILE}", tmp
        )
        return Path(local).read_bytes()


def _model_runs(warehouse: Path) -> dict[str, dict[str, Any]]:
    """Each client's newest `model_runs` row."""
    with connect(warehouse, read_only=True) as con:
        frame = fetch_frame(
            con,
            "SELECT * FROM model_runs"
            " QUALIFY row_number() OVER (PARTITION BY client_id ORDER BY trained_at DESC) = 1",
        )
    return {row["client_id"]: row for row in frame.to_dicts()}


def _model_run(
    small_runs: dict[str, dict[str, Any]], src: str, cid: str, version: str, identical: set[str]
) -> dict[str, Any]:
    row = dict(small_runs[src])
    row.update(client_id=cid, model_name=f"forecaster-{cid}", model_version=version)
    if cid not in identical:
        row["reason"] = f"bench copy of {src}'s forecaster ({row.get('reason')})"
    return row


def _write_model_runs(warehouse: Path, runs: list[dict[str, Any]]) -> None:
    """The rows training writes (`flows.train._model_runs`); `trained_until` each client's
    newest bucket, as there."""
    from warehouse.predictions import write_model_runs

    with connect(warehouse, read_only=True) as con:
        newest = dict(con.execute("SELECT client_id, max(ts) FROM usage GROUP BY 1").fetchall())
        schema = fetch_frame(con, "SELECT * FROM model_runs LIMIT 0").schema
    for row in runs:
        row["trained_until"] = newest.get(row["client_id"], row["trained_until"])
    write_model_runs(warehouse, pl.DataFrame(runs, schema=schema))


def _verify(
    tracking_uri: str,
    big: dict[str, dict[str, Any]],
    with_exceedance: bool,
    features: tuple[str, ...],
) -> int:
    """Load every client's serving version with the project's loader: its client id and
    attributes must be the client's (and its shared exceedance model attached)."""
    from models.registry import CHALLENGER, CHAMPION, current_aliases, load_forecaster_version

    aliases = current_aliases(tracking_uri, models_expected=True)
    missing = sorted(set(big) - set(aliases))
    if missing:
        raise RuntimeError(f"{len(missing)} clients have no registered model: {missing[:5]}")
    started, wrong = time.perf_counter(), []
    for done, cid in enumerate(sorted(big), start=1):
        known = aliases[cid]
        loaded = load_forecaster_version(
            cid, known.get(CHAMPION) or known[CHALLENGER], tracking_uri
        )
        attributes = {k: big[cid].get(k) for k in features}
        if (
            loaded.client_id != cid
            or loaded.client != attributes
            or (with_exceedance and loaded.exceedance is None)
        ):
            wrong.append(cid)
        if done % PROGRESS_EVERY == 0 or done == len(big):
            _progress("loaded back", done, len(big), started)
    if wrong:
        raise RuntimeError(f"{len(wrong)} loaded versions are not their client's: {wrong[:5]}")
    return len(big)


def _progress(what: str, done: int, total: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    print(
        f"  {what} {done:,}/{total:,} in {elapsed:.0f} s ({1000 * elapsed / done:.0f} ms each)",
        flush=True,
    )
