"""The workload schema: what a client's container runs, its extensions and the composite.

`Workload` is what one container of a client runs (image, cpu and memory per container, env,
ports, database index hints, cache policy, routing rules); every field has a default, the
base workload. `Extension` is a client's schema extension document, `Anticipated` the
section prewarm writes from the predicted profile, `Composite` the composed configuration of
one client (see `provisioning/schema.py`). The models are strict: "600" is not an integer,
an unknown key is refused.

A document breaking them raises `SchemaValidationError`, whose issues name the JSON path and
the problem in plain words: the expected type, or the keys allowed where an unknown one was.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import PrewarmError
from core.vocabulary import METRICS
from provisioning.schema_checks import json_type

ENV_PREFIX = "PREWARM_"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXTENSION_NAME = r"^[a-z0-9][a-z0-9._-]*$"


class SchemaError(PrewarmError, ValueError):
    """A workload schema, extension or composite is invalid."""


class SchemaValidationError(SchemaError):
    """A document breaks the schema; `issues` holds (JSON path, problem) pairs."""

    def __init__(self, source: str, issues: list[tuple[str, str]]) -> None:
        self.source = source
        self.issues = issues
        listing = "\n".join(f"  {path}: {problem}" for path, problem in issues)
        super().__init__(f"{source} is invalid:\n{listing}")


class SchemaConflictError(SchemaError):
    """Two extensions of equal precedence set one field to different values."""

    def __init__(self, path: str, setters: list[tuple[str, Any]], precedence: int) -> None:
        self.path = path
        self.setters = setters
        described = ", ".join(f"extension {name!r} sets {_show(value)}" for name, value in setters)
        super().__init__(
            f"conflict at {path}: {described} (same precedence {precedence}); "
            "give the one that should win a higher 'precedence'"
        )


# --- the schema ---------------------------------------------------------------------------


class _Strict(BaseModel):
    # Strict: "600" is not an integer and true is not 1; configuration typos surface here.
    model_config = ConfigDict(extra="forbid", strict=True)


# Table and column names reach SQL on the member (quoted, but never trusted): plain names only.
_SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
MAX_INDEX_HINTS = 32
MAX_INDEX_COLUMNS = 16


class IndexHint(_Strict):
    """An index the client's database should have before the window: each member creates
    it in its own SQLite file at warm-up (`provisioning/runtime/worker/store.py`)."""

    table: str = Field(pattern=_SQL_NAME)
    columns: list[Annotated[str, Field(pattern=_SQL_NAME)]] = Field(
        min_length=1, max_length=MAX_INDEX_COLUMNS
    )
    unique: bool = False

    @field_validator("table")
    @classmethod
    def _not_sqlites(cls, table: str) -> str:
        if table.lower().startswith("sqlite_"):
            raise ValueError(f"table {table!r}: names starting sqlite_ are SQLite's own")
        return table

    @field_validator("columns")
    @classmethod
    def _distinct(cls, columns: list[str]) -> list[str]:
        # SQL names ignore case: "Id" and "id" are one column.
        if len({column.lower() for column in columns}) != len(columns):
            raise ValueError(f"columns repeat: {columns}")
        return columns


class Database(_Strict):
    index_hints: list[IndexHint] = Field(default_factory=list, max_length=MAX_INDEX_HINTS)


# A key longer than the member's cache takes (`worker/cache.py`, MAX_KEY_BYTES) is refused.
MAX_CACHE_KEY_BYTES = 250
MAX_WARM_KEYS = 1024


class Cache(_Strict):
    """The container's cache: its eviction policy, size, entry TTL and the keys to load
    before traffic (served by each member: `provisioning/runtime/worker/cache.py`)."""

    policy: Literal["lru", "lfu", "ttl"] = "lru"
    size_mb: float = Field(default=64.0, ge=0)
    ttl_seconds: int = Field(default=300, ge=0)
    warm_keys: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=MAX_WARM_KEYS
    )

    @field_validator("warm_keys")
    @classmethod
    def _short_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            size = len(key.encode("utf-8", "surrogatepass"))
            if size > MAX_CACHE_KEY_BYTES:
                raise ValueError(f"warm key of {size} bytes, more than {MAX_CACHE_KEY_BYTES}")
        return keys


class Routing(_Strict):
    """Which of the client's warm members serves a request (`provisioning.routing`).

    `weights`: per backend, a backend being a host (a member's `prewarm.host`): among the
    idle members of the warmest tier, one is picked at random in proportion to its host's
    weight; hosts not named weigh nothing while a named one has an idle member, and with no
    positive weight on any member's host the usual order serves (a request is never refused
    for its weights). `affinity`, with the request's `X-Prewarm-Affinity` key: `session`
    keeps a key on one member (shared with the key's other requests), `client` all the
    client's requests on one member, `host` a key on one host; `none` ignores the key."""

    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    affinity: Literal["none", "client", "session", "host"] = "none"


MAX_SERVICES = 16
_SERVICE_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Service(_Strict):
    """A service the client's workload needs beside its containers (a cache, a database, a
    queue): its version and what it takes per concurrent request, which the anticipated
    section scales by the predicted peak."""

    kind: Literal["cache", "db", "queue"]
    version: str = Field(default="", max_length=32, pattern=r"^([A-Za-z0-9][A-Za-z0-9._+-]*)?$")
    size_mb: float = Field(default=64.0, ge=0, le=1_048_576, description="per request in flight")
    connections: int = Field(default=1, ge=0, le=10_000, description="per request in flight")


class ServiceNeed(_Strict):
    """What one declared service will need in the anticipated window."""

    kind: Literal["cache", "db", "queue"]
    version: str = ""
    size_mb: float = Field(ge=0)
    connections: int = Field(ge=0)


class Sizing(_Strict):
    """How far a forecast may move a member's size from the declared `cpu` and `memory_mb`
    (unset bounds: a quarter to four times the declared size; never past the largest host;
    see `provisioning.member_size`)."""

    from_forecast: bool = True
    min_cpu: float | None = Field(default=None, gt=0)
    max_cpu: float | None = Field(default=None, gt=0)
    min_memory_mb: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Sizing:
        for low, high in (("min_cpu", "max_cpu"), ("min_memory_mb", "max_memory_mb")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} {a} is above {high} {b}")
        return self


class MemberSize(_Strict):
    """The size each member gets in the anticipated window (its container's limits)."""

    cpu: float = Field(gt=0)
    memory_mb: float = Field(gt=0)


class Workload(_Strict):
    """What one container of a client runs; every field has a default (the base workload)."""

    image: str = Field(default="prewarm/worker:latest", min_length=1)
    cpu: float = Field(default=0.5, gt=0)
    memory_mb: float = Field(default=512.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=lambda: [8080])
    database: Database = Field(default_factory=Database)
    cache: Cache = Field(default_factory=Cache)
    routing: Routing = Field(default_factory=Routing)
    services: dict[Annotated[str, Field(pattern=_SERVICE_NAME)], Service] = Field(
        default_factory=dict, description="named services the workload needs beside it"
    )
    # None: the default bounds. Optional so a composite without it hashes as before it existed.
    sizing: Sizing | None = None

    @field_validator("services")
    @classmethod
    def _few_services(cls, services: dict[str, Service]) -> dict[str, Service]:
        if len(services) > MAX_SERVICES:
            raise ValueError(f"{len(services)} services, more than {MAX_SERVICES}")
        return services

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"key {key!r} is not a valid environment variable name")
            if key.startswith(ENV_PREFIX):
                raise ValueError(f"key {key!r} uses the reserved prefix {ENV_PREFIX} (prewarm's)")
        return env

    @field_validator("ports")
    @classmethod
    def _some_port(cls, ports: list[int]) -> list[int]:
        if not ports:
            raise ValueError("at least one port is needed (the first is the one probed)")
        if len(set(ports)) != len(ports):
            raise ValueError(f"ports repeat: {ports}")
        return ports


class Peak(_Strict):
    p50: float | None = None
    p90: float | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)


class Anticipated(_Strict):
    """What prewarm expects of the client's next window, from its predicted profile."""

    window_start: str
    window_end: str
    peak: dict[str, Peak] = Field(default_factory=dict)
    recommended_pool_size: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    # Each declared service's need at the window's peak (see `anticipated_services`).
    services: dict[str, ServiceNeed] = Field(default_factory=dict)
    model_version: str | None = None
    generated_at: str | None = None
    source: Literal["plan", "profile"] = "plan"  # who sized the pool (see api/composite.py)

    @field_validator("window_start", "window_end", "generated_at")
    @classmethod
    def _iso_time(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_time(value)
        return value

    @field_validator("peak")
    @classmethod
    def _known_metrics(cls, peak: dict[str, Peak]) -> dict[str, Peak]:
        unknown = sorted(set(peak) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown resource(s) {unknown}; known: {list(METRICS)}")
        return peak

    @model_validator(mode="after")
    def _ordered(self) -> Anticipated:
        if _parse_time(self.window_end) <= _parse_time(self.window_start):
            raise ValueError("window_end must be after window_start")
        return self


class Extension(_Strict):
    """A client's schema extension document (its workload is checked against `Workload`)."""

    name: str = Field(pattern=_EXTENSION_NAME)
    precedence: int = 0
    description: str = ""
    workload: dict[str, Any]


class Composite(Workload):
    """The composed configuration of one client."""

    client_id: str = Field(min_length=1)
    extensions: list[str] = Field(default_factory=list)
    anticipated: Anticipated | None = None
    # Each member's size as the forecast moved it (`provisioning.member_size`): what the
    # container is created with; absent, the declared `cpu` and `memory_mb`.
    size: MemberSize | None = None


def base_workload() -> dict[str, Any]:
    """The default base workload as a plain dict."""
    return Workload().model_dump(mode="json")


def workload_json_schema() -> dict[str, Any]:
    """JSON Schema of a workload (what an extension's `workload` may set), for the API."""
    return Workload.model_json_schema()


# --- errors in plain words ---------------------------------------------------------------


_EXPECTED = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
}


def _issues(
    error: ValidationError, model: type[BaseModel], prefix: tuple[str | int, ...]
) -> list[tuple[str, str]]:
    """Pydantic errors as (JSON path, problem) with the expected type in plain words."""
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = _json_path((*prefix, *loc))
        kind = item["type"]
        if kind in _EXPECTED:
            value = item["input"]
            got = "null" if value is None else f"{json_type(value)} {_show(value)}"
            problem = f"expected {_EXPECTED[kind]}, got {got}"
        elif kind == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            problem = "unknown key" + (f" (allowed here: {', '.join(known)})" if known else "")
        elif kind == "missing":
            problem = "missing required key"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            problem = message[:1].lower() + message[1:]
        issues.append((path, problem))
    return issues


def _known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names allowed at `loc` inside `model`, when that place is a model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # an array item: _inner_model already stepped into the item type
        if not _is_model(current) or part not in current.model_fields:
            return []
        current = _inner_model(current.model_fields[part].annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _inner_model(annotation: Any) -> Any:
    """The model inside `X | None` or `list[X]`; None for dicts (their keys are free)."""
    if _is_model(annotation) or get_origin(annotation) is dict:
        return annotation if _is_model(annotation) else None
    models = [arg for arg in get_args(annotation) if _is_model(arg)]
    return models[0] if models else None


def _json_path(loc: tuple[str | int, ...], prefix: str = "$") -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_time(value: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime (naive is read as UTC)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
