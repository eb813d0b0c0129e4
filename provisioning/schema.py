"""Schema-driven workload configuration: base <- client extensions <- anticipated -> container.

A client's workload (image, cpu and memory per container, env, ports, database index hints,
cache policy, routing rules) is the base workload (`Workload`'s defaults, or a base the
caller passes, e.g. built from the `clients` table) composed with the client's schema
extensions, plus an `anticipated` section prewarm writes from the predicted profile. The
composite renders into the config one container is created with.

Extension documents (JSON files, or dicts the lead stores in DuckDB):

    {"name": "big-cache",            # required: [a-z0-9][a-z0-9._-]*, unique per client
     "precedence": 10,               # optional int, default 0: who wins a conflict
     "description": "...",           # optional
     "workload": {"cache": {"ttl_seconds": 600}}}   # a partial Workload

Composition is deterministic, whatever order the extensions come in:

1. the base;
2. the extensions in ascending (precedence, name) order, each deep-merged onto the result
   (objects merge key by key; scalars and arrays replace);
3. the anticipated section (extensions may not set it).

Two extensions setting the same leaf (e.g. `cache.ttl_seconds`) to different values is a
conflict, raised with both names and values, unless their precedences differ: then the
higher precedence wins, as declared. Every extension is validated on its own before
composing, so a wrong type names the extension, the JSON path and the expected type, and an
unknown key is rejected with its path and the keys allowed there.

Every extension, and the composite, also goes through `provisioning/schema_checks.py`
(bounded sizes, no control characters, no loader/interpreter environment variables, cpu and
memory within the inventory, allowed images): what is refused there never reaches a runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import PrewarmError
from core.times import naive_utc
from core.vocabulary import METRICS
from provisioning.schema_checks import (
    MAX_FILE_BYTES,
    SchemaLimits,
    SchemaRejected,
    check_composite,
    check_document,
    check_json_text,
    check_workload,
    json_type,
)

EXAMPLES_DIR = Path(__file__).parent / "schemas" / "examples"
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


class IndexHint(_Strict):
    """An index the client's database should have before the window (created on warm-up)."""

    table: str = Field(min_length=1)
    columns: list[str] = Field(min_length=1)
    unique: bool = False


class Database(_Strict):
    index_hints: list[IndexHint] = Field(default_factory=list)


class Cache(_Strict):
    """The container's cache: its size, entry TTL and the keys to load before traffic."""

    size_mb: float = Field(default=64.0, ge=0)
    ttl_seconds: int = Field(default=300, ge=0)
    warm_keys: list[str] = Field(default_factory=list)


class Routing(_Strict):
    """How traffic reaches the pool: weights per route or backend, and session affinity."""

    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    affinity: Literal["none", "client", "session", "host"] = "none"


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


class Anticipated(_Strict):
    """What prewarm expects of the client's next window, from its predicted profile."""

    window_start: str
    window_end: str
    peak: dict[str, Peak] = Field(default_factory=dict)
    recommended_pool_size: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
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


# --- composition --------------------------------------------------------------------------


def base_workload() -> dict[str, Any]:
    """The default base workload as a plain dict."""
    return Workload().model_dump(mode="json")


def workload_json_schema() -> dict[str, Any]:
    """JSON Schema of a workload (what an extension's `workload` may set), for the API."""
    return Workload.model_json_schema()


def load_extension(path: str | Path) -> dict[str, Any]:
    """Read one extension document from a JSON file (validated when composed).

    Its size and nesting are checked before it is parsed (SchemaRejected), so neither a huge
    file nor a deeply nested one gets as far as `json.loads`.
    """
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SchemaRejected(source, "$", f"{size} bytes, more than {MAX_FILE_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SchemaError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise SchemaError(f"{path}: cannot be read: {error.strerror}") from None
    check_json_text(text, source)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SchemaError(
            f"{path}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise SchemaRejected(source, "$", f"not readable as JSON ({error})") from None
    if not isinstance(document, dict):
        raise SchemaError(f"{path}: an extension must be a JSON object, got {json_type(document)}")
    return document


def load_extensions(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read several extension documents (their order does not matter to composition)."""
    return [load_extension(path) for path in paths]


def validate_extension(
    document: Mapping[str, Any],
    base: Mapping[str, Any] | None = None,
    limits: SchemaLimits | None = None,
) -> Extension:
    """Check one extension document on its own; raise SchemaValidationError naming the path
    (shape, types) or SchemaRejected naming the field (unsafe: see `schema_checks`).

    `limits`: the deployment's images and largest host; without them those two are not checked.
    """
    label = document.get("name") if isinstance(document, Mapping) else None
    # The name is only echoed when it is short and printable (it is client input).
    printable = isinstance(label, str) and len(label) <= 64 and label.isprintable()
    source = f"extension {label!r}" if printable else "extension"
    check_document(document, source)
    try:
        extension = Extension.model_validate(dict(document))
    except ValidationError as error:
        raise SchemaValidationError(source, _issues(error, Extension, ())) from None
    if "anticipated" in extension.workload:
        raise SchemaValidationError(
            source,
            [
                (
                    "$.workload.anticipated",
                    "written by prewarm from the predicted profile; extensions may not set it",
                )
            ],
        )
    merged = _deep_merge(dict(base or base_workload()), extension.workload)
    try:
        Workload.model_validate(merged)
    except ValidationError as error:
        raise SchemaValidationError(source, _issues(error, Workload, ("workload",))) from None
    check_workload(extension.workload, source, "$.workload", limits)
    return extension


def compose_workload(
    client_id: str,
    extensions: Iterable[Mapping[str, Any]] = (),
    anticipated: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    *,
    limits: SchemaLimits | None = None,
) -> dict[str, Any]:
    """The composite: base <- extensions by (precedence, name) <- anticipated (a plain dict).

    The one place a composite is built: each extension and the result pass the safety checks
    (`schema_checks`; with `limits`, also the image allow-list and the largest host).
    """
    base_dict = _validated_base(base)
    parsed = [validate_extension(document, base_dict, limits) for document in extensions]
    _check_unique_names(parsed)
    ordered = sorted(parsed, key=lambda e: (e.precedence, e.name))
    _check_conflicts(ordered)
    merged: dict[str, Any] = base_dict
    for extension in ordered:
        merged = _deep_merge(merged, extension.workload)
    document: dict[str, Any] = {
        "client_id": client_id,
        "extensions": [e.name for e in ordered],
        **merged,
        "anticipated": dict(anticipated) if anticipated is not None else None,
    }
    try:
        composite = Composite.model_validate(document)
    except ValidationError as error:
        raise SchemaValidationError(
            f"composite of {client_id!r}", _issues(error, Composite, ())
        ) from None
    result = _ordered_dump(composite)
    check_composite(result, f"composite of {client_id!r}", limits)
    return result


def anticipated_from_profile(profile_row: Mapping[str, Any], pool_size: int) -> dict[str, Any]:
    """The anticipated section from one `profiles` row and the plan's pool size."""
    peak: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        p50, p90 = profile_row.get(f"{metric}_p50"), profile_row.get(f"{metric}_p90")
        if p50 is not None or p90 is not None:
            peak[metric] = {"p50": _float_or_none(p50), "p90": _float_or_none(p90)}
    section: dict[str, Any] = {
        "window_start": _iso(profile_row["window_start"]),
        "window_end": _iso(profile_row["window_end"]),
        "peak": peak,
        "recommended_pool_size": int(pool_size),
        "confidence": float(profile_row["confidence"]),
        "model_version": _str_or_none(profile_row.get("model_version")),
        "generated_at": _iso(profile_row["generated_at"])
        if profile_row.get("generated_at")
        else None,
    }
    try:
        return Anticipated.model_validate(section).model_dump(mode="json")
    except ValidationError as error:
        raise SchemaValidationError(
            "anticipated section", _issues(error, Anticipated, ())
        ) from None


def render_container_config(composite: Mapping[str, Any]) -> dict[str, Any]:
    """The config one container is created with: image, cpu, memory_mb, env, labels, port.

    env carries the client's own variables plus PREWARM_* ones: the cache, routing and
    database hints as JSON, and the anticipated window, peaks, pool size and confidence.
    Labels carry a hash of the static config (everything but `anticipated`), so a
    reconciler can tell a container built from an older configuration.
    """
    try:
        model = Composite.model_validate(dict(composite))
    except ValidationError as error:
        raise SchemaValidationError("composite", _issues(error, Composite, ())) from None
    data = model.model_dump(mode="json")
    # Again here, the last step before a runtime, whoever built the composite.
    check_composite(data, "composite")
    env = dict(model.env)
    env.update(
        {
            f"{ENV_PREFIX}CLIENT_ID": model.client_id,
            f"{ENV_PREFIX}EXTENSIONS": ",".join(model.extensions),
            f"{ENV_PREFIX}CPU": _compact(model.cpu),
            f"{ENV_PREFIX}MEMORY_MB": str(_memory_limit(model.memory_mb)),
            f"{ENV_PREFIX}PORT": str(model.ports[0]),
            f"{ENV_PREFIX}PORTS": ",".join(str(port) for port in model.ports),
            f"{ENV_PREFIX}CACHE": _compact(data["cache"]),
            f"{ENV_PREFIX}CACHE_SIZE_MB": _compact(model.cache.size_mb),
            f"{ENV_PREFIX}CACHE_TTL_SECONDS": str(model.cache.ttl_seconds),
            f"{ENV_PREFIX}CACHE_WARM_KEYS": _compact(model.cache.warm_keys),
            f"{ENV_PREFIX}ROUTING": _compact(data["routing"]),
            f"{ENV_PREFIX}DB_INDEX_HINTS": _compact(data["database"]["index_hints"]),
        }
    )
    labels = {
        "prewarm.config-hash": config_hash(data),
        "prewarm.extensions": ",".join(model.extensions),
    }
    anticipated = data["anticipated"]
    if anticipated is not None:
        env.update(
            {
                f"{ENV_PREFIX}ANTICIPATED": _compact(anticipated),
                f"{ENV_PREFIX}ANTICIPATED_WINDOW_START": anticipated["window_start"],
                f"{ENV_PREFIX}ANTICIPATED_WINDOW_END": anticipated["window_end"],
                f"{ENV_PREFIX}ANTICIPATED_POOL_SIZE": str(anticipated["recommended_pool_size"]),
                f"{ENV_PREFIX}ANTICIPATED_CONFIDENCE": _compact(anticipated["confidence"]),
                f"{ENV_PREFIX}ANTICIPATED_PEAK": _compact(anticipated["peak"]),
            }
        )
        labels["prewarm.anticipated-window"] = (
            f"{anticipated['window_start']}/{anticipated['window_end']}"
        )
    return {
        "image": model.image,
        "cpu": float(model.cpu),
        "memory_mb": _memory_limit(model.memory_mb),
        "env": env,
        "labels": labels,
        "port": model.ports[0],
    }


def config_hash(composite: Mapping[str, Any]) -> str:
    """A short hash of the static configuration (the composite without `anticipated`)."""
    static = {key: value for key, value in composite.items() if key != "anticipated"}
    canonical = json.dumps(static, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def show_composite(composite: Mapping[str, Any]) -> str:
    """The composite as pretty JSON (for `prewarm schema show CLIENT`)."""
    return json.dumps(composite, indent=2, ensure_ascii=False)


# --- helpers ------------------------------------------------------------------------------


def _validated_base(base: Mapping[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return base_workload()
    try:
        return Workload.model_validate(dict(base)).model_dump(mode="json")
    except ValidationError as error:
        raise SchemaValidationError("base workload", _issues(error, Workload, ())) from None


def _check_unique_names(extensions: list[Extension]) -> None:
    seen: set[str] = set()
    for extension in extensions:
        if extension.name in seen:
            raise SchemaError(f"two extensions are named {extension.name!r}; names must be unique")
        seen.add(extension.name)


def _check_conflicts(ordered: list[Extension]) -> None:
    """Equal-precedence extensions must agree on every leaf they both set."""
    setters: dict[tuple[str | int, ...], list[tuple[int, str, Any]]] = {}
    for extension in ordered:
        for path, value in _leaves(extension.workload, ()):
            setters.setdefault(path, []).append((extension.precedence, extension.name, value))
    for path, entries in setters.items():
        top = max(precedence for precedence, _, _ in entries)
        winners = [(name, value) for precedence, name, value in entries if precedence == top]
        if any(value != winners[0][1] for _, value in winners[1:]):
            raise SchemaConflictError(_json_path(path, prefix="$.workload"), winners, top)


def _leaves(
    document: Any, path: tuple[str | int, ...]
) -> Iterable[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of every leaf: objects are walked, scalars and arrays are leaves."""
    if isinstance(document, Mapping):
        for key, value in document.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, document


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _memory_limit(memory_mb: float) -> int:
    return int(math.ceil(memory_mb))


def _ordered_dump(composite: Composite) -> dict[str, Any]:
    """client_id and extensions first, then the workload fields, anticipated last."""
    data = composite.model_dump(mode="json")
    head = {"client_id": data.pop("client_id"), "extensions": data.pop("extensions")}
    anticipated = data.pop("anticipated")
    return {**head, **data, "anticipated": anticipated}


def _parse_time(value: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime (naive is read as UTC)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _iso(moment: Any) -> str:
    """UTC ISO-8601 with a Z; naive datetimes are UTC (the warehouse's convention)."""
    if isinstance(moment, str):
        try:
            moment = _parse_time(moment)
        except ValueError as error:
            raise SchemaError(str(error)) from None
    if not isinstance(moment, datetime):
        raise SchemaError(f"expected a datetime, got {type(moment).__name__} {moment!r}")
    return naive_utc(moment).isoformat(timespec="seconds") + "Z"


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
