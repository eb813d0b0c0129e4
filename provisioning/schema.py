"""Schema-driven workload configuration: base <- client extensions <- anticipated -> container.

A client's workload (image, cpu and memory per container, env, ports, database index hints,
cache policy, routing rules) is the base workload (`Workload`'s defaults, or a base the
caller passes, e.g. built from the `clients` table) composed with the client's schema
extensions, plus an `anticipated` section prewarm writes from the predicted profile. The
composite renders into the config one container is created with.

Extension documents are read and validated one by one in `provisioning/schema_extensions.py`;
the models are in `provisioning/schema_model.py`, rendering into a container config in
`provisioning/schema_render.py`.

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

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from core.times import naive_utc
from core.vocabulary import METRICS
from provisioning.schema_checks import SchemaLimits, check_composite
from provisioning.schema_extensions import _deep_merge, validate_extension
from provisioning.schema_model import (
    Anticipated,
    Composite,
    Extension,
    SchemaConflictError,
    SchemaError,
    SchemaValidationError,
    Workload,
    _issues,
    _json_path,
    _parse_time,
    base_workload,
)


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
    if anticipated is not None:
        needs = anticipated_services(merged.get("services") or {}, anticipated.get("peak") or {})
        anticipated = {**anticipated, "services": needs}
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


def anticipated_services(
    services: Mapping[str, Mapping[str, Any]], peak: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each declared service's need in a window: its size and connections per request in
    flight times the window's peak concurrency (p90, else p50; at least one request)."""
    concurrency = peak.get("concurrency") or {}
    in_flight = max(1.0, float(concurrency.get("p90") or concurrency.get("p50") or 0.0))
    return {
        name: {
            "kind": service["kind"],
            "version": service.get("version", ""),
            "size_mb": round(float(service.get("size_mb", 64.0)) * in_flight, 3),
            "connections": math.ceil(int(service.get("connections", 1)) * in_flight),
        }
        for name, service in services.items()
    }


def anticipated_from_profile(profile_row: Mapping[str, Any], pool_size: int) -> dict[str, Any]:
    """The anticipated section from one `profiles` row and the plan's pool size."""
    peak: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        p50, p90 = profile_row.get(f"{metric}_p50"), profile_row.get(f"{metric}_p90")
        if p50 is not None or p90 is not None:
            peak[metric] = {"p50": _float_or_none(p50), "p90": _float_or_none(p90)}
            if profile_row.get(f"{metric}_confidence") is not None:
                peak[metric]["confidence"] = _float_or_none(profile_row[f"{metric}_confidence"])
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


def _ordered_dump(composite: Composite) -> dict[str, Any]:
    """client_id and extensions first, then the workload fields, anticipated last."""
    data = composite.model_dump(mode="json")
    head = {"client_id": data.pop("client_id"), "extensions": data.pop("extensions")}
    anticipated = data.pop("anticipated")
    return {**head, **data, "anticipated": anticipated}


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
