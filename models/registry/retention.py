"""Retention: which forecaster versions keep their files, and deleting the others.

Per registered forecaster, every version an alias points at (champion, challenger or any
other) and the newest `keep` versions stay; older versions are deleted from the registry with
their run and their files (the logged model's directory, the run's plot). Prediction only
ever loads an alias, so pruning never breaks `predict`.

A shared exceedance model (`models.registry.shared`) goes once no remaining version names it
and its run is older than `SHARED_GRACE`: a training still registering may be about to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from core.times import utc_now
from models.registry.shared import EXCEEDANCE_KIND, EXCEEDANCE_RUN_TAG, KIND_TAG
from models.registry.store import (
    EXPERIMENT,
    LOCK,
    PREFIX,
    all_pages,
    current_aliases,
    local_path,
    mlflow_client,
    readable_registry,
    use_registry,
)

log = logging.getLogger("models.registry")

SHARED_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class PrunedVersion:
    """A version deleted (or, in a dry run, to be deleted) and the bytes its files held."""

    name: str
    version: str
    size: int | None  # None when its files are not on this machine (a tracking server's)


@dataclass
class PruneReport:
    """What one prune did, or would do (`dry_run`)."""

    dry_run: bool
    keep: int
    models: int = 0  # registered forecasters looked at
    kept: int = 0  # their versions that stay
    pruned: list[PrunedVersion] = field(default_factory=list)
    shared_runs: list[str] = field(default_factory=list)  # shared exceedance runs removed
    failures: dict[str, str] = field(default_factory=dict)  # what could not go -> why

    @property
    def freed_bytes(self) -> int:
        """Bytes of the pruned versions' files (those on this machine)."""
        return sum(p.size or 0 for p in self.pruned)


def versions_to_prune(
    versions: Mapping[str, Collection[int]], aliased: Mapping[str, Collection[int]], keep: int
) -> dict[str, list[int]]:
    """Per model, its versions neither aliased nor among its newest `keep` (oldest first)."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    out = {}
    for name, numbers in versions.items():
        newest = sorted(numbers, reverse=True)[:keep]
        protected = {*newest, *aliased.get(name, ())}
        if doomed := sorted(set(numbers) - protected):
            out[name] = doomed
    return out


def shared_runs_to_remove(
    started: Mapping[str, datetime], named: Collection[str], now: datetime
) -> list[str]:
    """The shared-model runs (run id -> start) no version names, older than SHARED_GRACE."""
    return sorted(
        run_id
        for run_id, start in started.items()
        if run_id not in named and start < now - SHARED_GRACE
    )


def prune_registry(
    tracking_uri: str,
    keep: int,
    clients: Collection[str] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Delete every `forecaster-*` version (of `clients` only, when given) that is neither
    aliased nor among its model's newest `keep`, with its run and files; then the shared
    exceedance models no version names any more. `dry_run` deletes nothing.

    Raises RegistryUnavailable (nothing deleted) when the registry is missing or unreadable.
    """
    report = PruneReport(dry_run=dry_run, keep=keep)
    with LOCK, readable_registry(tracking_uri, models_expected=True):
        client = mlflow_client(tracking_uri)
        found = all_pages(
            lambda token: client.search_model_versions(
                f"name LIKE '{PREFIX}%'", max_results=10_000, page_token=token
            )
        )
        aliases = current_aliases(tracking_uri)
        shared = _shared_runs(client)
    versions = {(v.name, int(v.version)): v for v in found}
    numbers: dict[str, list[int]] = {}
    for name, number in versions:
        numbers.setdefault(name, []).append(number)
    report.models = len(numbers)
    wanted = None if clients is None else {f"{PREFIX}{c}" for c in clients}
    doomed = versions_to_prune(
        {n: v for n, v in numbers.items() if wanted is None or n in wanted},
        {f"{PREFIX}{c}": [int(v) for v in a.values()] for c, a in aliases.items()},
        keep,
    )
    gone: set[tuple[str, int]] = set()
    for name, olds in doomed.items():
        listed = [versions[(name, number)] for number in olds]
        gone |= _prune_model(client, name, listed, dry_run, report)
    report.kept = len(versions) - len(gone)
    named = {
        v.tags.get(EXCEEDANCE_RUN_TAG) for key, v in versions.items() if key not in gone and v.tags
    }
    now = now or utc_now()
    for run_id in shared_runs_to_remove({r: s for r, (s, _) in shared.items()}, named, now):
        try:
            if not dry_run:
                _remove_run(client, run_id, shared[run_id][1])
        except (MlflowException, OSError) as error:
            _failed(report, f"shared model run {run_id}", error)
            continue
        report.shared_runs.append(run_id)
    return report


def _prune_model(
    client: MlflowClient, name: str, olds: list[ModelVersion], dry_run: bool, report: PruneReport
) -> set[tuple[str, int]]:
    """Delete these versions of one model (as listed); the ones deleted (all of them in a
    dry run)."""
    try:
        with LOCK:
            # Read again just before deleting: an alias may have moved since the listing.
            aliased = {int(v) for v in client.get_registered_model(name).aliases.values()}
    except MlflowException as error:
        _failed(report, name, error)
        return set()
    gone = set()
    for old in olds:
        version = str(old.version)
        if int(version) in aliased:
            continue
        try:
            size = _delete_version(client, old, dry_run)
        except (MlflowException, OSError) as error:
            _failed(report, f"{name}/{version}", error)
            continue
        report.pruned.append(PrunedVersion(name, version, size))
        gone.add((name, int(version)))
    return gone


def _failed(report: PruneReport, what: str, error: Exception) -> None:
    """One thing that could not be pruned: reported and logged, the rest goes on."""
    report.failures[what] = (str(error).strip().splitlines() or [type(error).__name__])[0]
    log.warning("could not prune %s: %s", what, error)


def _delete_version(client: MlflowClient, found: ModelVersion, dry_run: bool) -> int | None:
    """Delete one version, its logged model and run, and their files; their size."""
    name, version = found.name, str(found.version)
    with LOCK:
        locations = [client.get_model_version_download_uri(name, version)]
        if found.run_id:
            locations.append(client.get_run(found.run_id).info.artifact_uri)
    size = _size(locations)
    if dry_run:
        return size
    model_id = found.model_id or _logged_model_id(found.source or "")
    with LOCK:
        client.delete_model_version(name, version)
        if model_id:
            client.delete_logged_model(model_id)
        if found.run_id:
            client.delete_run(found.run_id)
        for location in locations:
            _remove_files(client, location)
    return size


def _logged_model_id(source: str) -> str | None:
    """The logged model a version was registered from (its source `models:/m-...`; the
    version's own `model_id` is not always filled in)."""
    model_id = source.removeprefix("models:/")
    return model_id if source.startswith("models:/m-") and "/" not in model_id else None


def _shared_runs(client: MlflowClient) -> dict[str, tuple[datetime, str]]:
    """Shared exceedance runs: run id -> (start, UTC; artifact URI)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    runs = all_pages(
        lambda token: client.search_runs(
            [experiment.experiment_id],
            f"tags.`{KIND_TAG}` = '{EXCEEDANCE_KIND}'",
            max_results=1000,
            page_token=token,
        )
    )
    return {
        r.info.run_id: (
            datetime(1970, 1, 1) + timedelta(milliseconds=r.info.start_time),
            r.info.artifact_uri,
        )
        for r in runs
    }


def _remove_run(client: MlflowClient, run_id: str, artifact_uri: str) -> None:
    with LOCK:
        client.delete_run(run_id)
        _remove_files(client, artifact_uri)


def _remove_files(client: MlflowClient, location: str) -> None:
    """Delete an artifact directory (and, on this machine, the folder left empty above it);
    call under LOCK."""
    use_registry(client.tracking_uri)  # a tracking server's artifact URIs resolve against it
    get_artifact_repository(location).delete_artifacts()
    local = local_path(location)
    if local is not None and local.parent.is_dir() and not any(local.parent.iterdir()):
        local.parent.rmdir()


def _size(locations: Iterable[str]) -> int | None:
    """Bytes of the files under these artifact locations (None if one is not local)."""
    total = 0
    for location in locations:
        local = local_path(location)
        if local is None:
            return None
        for folder, _, files in os.walk(local):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total
