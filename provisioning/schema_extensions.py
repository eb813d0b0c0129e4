"""Schema extensions: reading them from JSON files, validating each one on its own.

Extension documents (JSON files, or dicts the lead stores in DuckDB):

    {"name": "big-cache",            # required: [a-z0-9][a-z0-9._-]*, unique per client
     "precedence": 10,               # optional int, default 0: who wins a conflict
     "description": "...",           # optional
     "workload": {"cache": {"ttl_seconds": 600}}}   # a partial Workload

Every extension is validated on its own before composing (`provisioning/schema.py`), so a
wrong type names the extension, the JSON path and the expected type, and an unknown key is
rejected with its path and the keys allowed there. Every extension also goes through
`provisioning/schema_checks.py` (bounded sizes, no control characters, no loader/interpreter
environment variables, cpu and memory within the inventory, allowed images).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from provisioning.schema_checks import (
    MAX_FILE_BYTES,
    SchemaLimits,
    SchemaRejected,
    check_document,
    check_json_text,
    check_workload,
    json_type,
)
from provisioning.schema_model import (
    Extension,
    SchemaError,
    SchemaValidationError,
    Workload,
    _issues,
    base_workload,
)

EXAMPLES_DIR = Path(__file__).parent / "schemas" / "examples"


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


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
