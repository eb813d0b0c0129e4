"""The registry's store: the client, the experiment, the lock, and the checks that refuse a
registry file that is not one before MLflow opens it (it would create or migrate one)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.dbmodels.models import (
    SqlModelVersion,
    SqlModelVersionTag,
    SqlRegisteredModel,
    SqlRegisteredModelAlias,
)
from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME
from sqlalchemy.exc import SQLAlchemyError

from core.errors import PrewarmError

EXPERIMENT = "prewarm-forecasters"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREFIX = "forecaster-"
# MLflow's fluent API keeps global state (tracking URI, active run), so every registry call
# runs under this lock: training may run in threads, registration is serialised.
LOCK = threading.RLock()


def model_name(client_id: str) -> str:
    """The registered model name of a client's forecaster."""
    return f"{PREFIX}{client_id}"


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """A client of the tracking store that is also the registry."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def use_registry(tracking_uri: str) -> None:
    """Point MLflow's fluent API (pyfunc loads, runs) at this store (call under LOCK)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def experiment_id(client: MlflowClient, artifacts_dir: Path) -> str:
    """The forecasters' experiment id, created (with its artifact location) if missing."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    if is_server(client.tracking_uri):
        # A tracking server keeps the artifacts where it was told to (its shared path, served
        # to every worker over HTTP); a local directory here would be this machine's alone.
        return str(client.create_experiment(EXPERIMENT))
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    return str(
        client.create_experiment(EXPERIMENT, artifact_location=artifacts_dir.resolve().as_uri())
    )


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def all_pages(search: Callable[[str | None], Any]) -> list[Any]:
    """Every item of a paged MLflow search (`search(page_token)` returns one page)."""
    items: list[Any] = []
    token = None
    while True:
        page = search(token)
        items += list(page)
        token = page.token
        if not token:
            return items


class RegistryUnavailable(PrewarmError):
    """The MLflow registry cannot be read, or has lost the forecasters the warehouse records."""

    def __init__(self, where: Path | str, problem: str) -> None:
        if isinstance(where, str) and is_server(where):
            super().__init__(
                f"The MLflow tracking server at {where} cannot be read ({problem}). Check that it "
                "runs and answers /health, or that PREWARM_MLFLOW_TRACKING_URI names it."
            )
            return
        recover = "run `prewarm train` to retrain every client"
        if isinstance(where, Path) and where.exists():
            recover = "move it aside and " + recover
        super().__init__(
            f"The MLflow registry at {where} is missing or corrupt ({problem}). Restore it "
            f"from a backup, or {recover}."
        )


_SQLITE_MAGIC = b"SQLite format 3\x00"
_NOT_SQLITE = "is not an SQLite database"


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


def _sqlite_file_problem(path: Path) -> str | None:
    """What is wrong with the registry file on its face (its header), or None."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"
    if not header:
        return "the file is empty"
    return None if header == _SQLITE_MAGIC else _NOT_SQLITE


@contextmanager
def readable_registry(tracking_uri: str, models_expected: bool = False) -> Iterator[Path | None]:
    """Refuse a registry file that is not SQLite (or is gone while `models_expected`) before
    MLflow opens it (it would create or migrate one), and turn a database error inside the
    block into RegistryUnavailable; yields the file (None for a non-SQLite store)."""
    path = _sqlite_file(tracking_uri)
    if path is not None:
        problem = _sqlite_file_problem(path)
        # A missing or empty file is a new project (MLflow creates its tables), unless
        # models were trained: then it is a lost registry, and is left untouched.
        if problem == _NOT_SQLITE or (problem and models_expected):
            raise RegistryUnavailable(path, problem)
    try:
        yield path
    except (MlflowException, SQLAlchemyError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise RegistryUnavailable(path or tracking_uri, f"cannot be read: {detail}") from None


def ensure_experiment(tracking_uri: str, artifacts_dir: Path) -> str:
    """The forecasters' experiment id, created (with its artifact location) if missing."""
    with LOCK:
        ensure_sqlite_dir(tracking_uri)
        with readable_registry(tracking_uri):
            return experiment_id(mlflow_client(tracking_uri), artifacts_dir)


def ensure_sqlite_dir(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def current_aliases(tracking_uri: str, models_expected: bool = False) -> dict[str, dict[str, str]]:
    """For every registered forecaster: client id -> {alias: version}.

    Raises RegistryUnavailable when the registry cannot be read, and, with `models_expected`
    (the warehouse records trained models), when it is missing or holds no forecaster: an
    empty answer would silently leave every client without a forecast.
    """
    with LOCK, readable_registry(tracking_uri, models_expected) as path:
        if is_server(tracking_uri) or (path is not None and _sqlite_file_problem(path)):
            # A server is only reachable through its API; a new SQLite file gets MLflow's
            # tables from the API's first call.
            aliases = _aliases_through_api(tracking_uri)
        else:
            aliases = _aliases_in_database(tracking_uri)
    if models_expected and not aliases:
        raise RegistryUnavailable(path or tracking_uri, "holds no registered forecaster")
    return aliases


def serving_version(aliases: dict[str, str]) -> tuple[str, str] | None:
    """(alias, version) a client's predictions come from, given its {alias: version}: its
    champion, else its challenger (a client's first model before any promotion); None
    without either."""
    for alias in (CHAMPION, CHALLENGER):
        if alias in aliases:
            return alias, aliases[alias]
    return None


def _aliases_through_api(tracking_uri: str) -> dict[str, dict[str, str]]:
    client = mlflow_client(tracking_uri)
    models = all_pages(
        lambda token: client.search_registered_models(max_results=1000, page_token=token)
    )
    return {
        m.name.removeprefix(PREFIX): {alias: str(v) for alias, v in (m.aliases or {}).items()}
        for m in models
        if m.name.startswith(PREFIX)
    }


def _aliases_in_database(tracking_uri: str) -> dict[str, dict[str, str]]:
    """`_aliases_through_api`'s answer in one query on MLflow's own mapped tables.

    The cycle asks every 5 minutes whether a model changed; the API loads each registered
    model with its tags and latest versions through the ORM: 1.3-1.7 s at 1,000 clients,
    linear in them, where this query takes ~10 ms. Only the default workspace holds models
    (prewarm runs MLflow single-tenant).
    """
    models, aliases = SqlRegisteredModel, SqlRegisteredModelAlias
    query: Any = (
        sa.select(models.name, aliases.alias, aliases.version)
        .outerjoin(aliases, (aliases.name == models.name) & (aliases.workspace == models.workspace))
        .where(models.workspace == DEFAULT_WORKSPACE_NAME)
    )
    with _registry_connection(tracking_uri) as connection:
        rows = connection.execute(query).all()
    found: dict[str, dict[str, str]] = {}
    for name, alias, version in rows:
        if name.startswith(PREFIX):
            mine = found.setdefault(name.removeprefix(PREFIX), {})
            if alias is not None:
                mine[alias] = str(version)
    return found


@dataclass(frozen=True)
class VersionRow:
    """A model version as MLflow's `get_model_version` and `get_model_version_download_uri`
    would give it: where its files are, and the tags asked for."""

    location: str
    tags: dict[str, str]


def versions_in_database(
    tracking_uri: str, wanted: dict[str, str], tag_keys: tuple[str, ...]
) -> dict[str, VersionRow] | None:
    """For `wanted` (registered model name -> version), each live version found, read in a
    query per 500 names on MLflow's own mapped tables; None when the registry is not an
    SQLite file that exists (ask the API then).

    MLflow's API takes two ORM lookups (~15 ms) to say where one version's files are, and
    prediction asks for every model it loads: thousands a cycle past the model cache.
    """
    path = _sqlite_file(tracking_uri)
    if path is None or _sqlite_file_problem(path):
        return None
    versions, tags = SqlModelVersion, SqlModelVersionTag
    names = list(wanted)
    found: dict[str, VersionRow] = {}
    with LOCK, readable_registry(tracking_uri), _registry_connection(tracking_uri) as connection:
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            query: Any = (
                sa.select(
                    versions.name,
                    versions.version,
                    sa.func.coalesce(versions.storage_location, versions.source),
                    tags.key,
                    tags.value,
                )
                .outerjoin(
                    tags,
                    (tags.name == versions.name)
                    & (tags.version == versions.version)
                    & (tags.workspace == versions.workspace)
                    & tags.key.in_(tag_keys),
                )
                .where(
                    versions.workspace == DEFAULT_WORKSPACE_NAME,
                    versions.name.in_(chunk),
                    versions.current_stage != STAGE_DELETED_INTERNAL,
                )
            )
            for name, version, location, key, value in connection.execute(query):
                if str(version) != wanted[name] or location is None:
                    continue
                row = found.setdefault(name, VersionRow(location, {}))
                if key is not None:
                    row.tags[key] = value
    return found


@contextmanager
def _registry_connection(tracking_uri: str) -> Iterator[sa.Connection]:
    """A connection to the registry's database, its engine disposed after: NullPool, a
    connection per call, so a registry file replaced on disk is read anew."""
    engine = sa.create_engine(tracking_uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def local_path(location: str) -> Path | None:
    """The folder of an artifact location on this machine (a file: URI or a plain path);
    None for any other store."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(location)
    return None
