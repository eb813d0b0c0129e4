"""Safety checks on client schemas: what a client may hand to a runtime, and how much of it.

`provisioning/schema_extensions.py` checks that an extension has the right shape and types;
this module decides whether it is safe to run. A client's extension becomes the environment,
image and limits of a container (or, on the process runtime, of a process on the host), so:

- environment names follow an allow-list pattern, and the variables that change what the
  loader, a shell or an interpreter runs before the worker's own code (`LD_PRELOAD`,
  `PYTHONPATH`, `BASH_ENV`, ...) are refused, as are those prewarm sets for the worker
  (`PORT`, `PREWARM_*`);
- no control characters (NUL above all: it cannot be passed to exec) in keys, nor in values
  except tab and newline; no lone surrogates (they cannot be encoded into an environment);
- everything is bounded: the document, each string, the env entries, the nesting depth
  (checked without recursion, so a 100k-deep document is a clear refusal, not a traceback),
  and every number (finite, within 2**53);
- cpu and memory fit the largest host of the inventory; the image is on the allow-list.

`compose_workload` (the one place a composite is built) calls these on every extension and
on the composite, so the CLI, the API and the flows all refuse the same documents.
`SchemaRejected` names the source, the field (a JSON path) and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import polars as pl

from core.errors import PrewarmError
from provisioning.inventory import default_inventory

# The worker image prewarm builds (`provisioning/runtime/images.py`, WORKER_IMAGE): named
# here too so this module does not import the Docker SDK.
DEFAULT_ALLOWED_IMAGES: tuple[str, ...] = ("prewarm/worker:latest",)

MAX_DOCUMENT_BYTES = 64 * 1024  # serialised; also keeps every env value far below exec's
# 128 KiB per-string limit (E2BIG), the PREWARM_* JSON copies of sections included
# A file may be pretty-printed: it is read up to this size, then its parsed document is
# held to MAX_DOCUMENT_BYTES (so the field at fault, e.g. a long env value, can be named).
MAX_FILE_BYTES = 16 * MAX_DOCUMENT_BYTES
MAX_STRING_CHARS = 4096
MAX_ENV_ENTRIES = 64
MAX_DEPTH = 8  # the deepest real field (database.index_hints[i].columns[j]) is at 6
MAX_NUMBER = 2.0**53  # beyond it JSON numbers stop being exact in most parsers

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# Variables read by the dynamic loader, libc, shells or interpreters before (or instead of)
# the worker's own code: setting one lets a schema run its own code in the worker.
_DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "PERL5", "RUBY", "SHELL", "MALLOC_")
_DENIED_ENV_NAMES = frozenset(
    {
        "PATH",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "HOME",
        "IFS",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "TMPDIR",
        "LOCALPATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RES_OPTIONS",
        "PERLLIB",
        "JAVA_TOOL_OPTIONS",
    }
)
# Set by prewarm for the worker (the Docker runtime's PORT, the process runtime's
# PREWARM_MEMBER/CLIENT/PLAN, the rendered PREWARM_* config): a client must not override them.
_RESERVED_ENV_PREFIX = "PREWARM_"
_RESERVED_ENV_NAMES = frozenset({"PORT"})

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Control characters (Unicode category Cc: C0, DEL, C1), tab and newline allowed in values;
# lone surrogates, which no environment or file can encode.
_BAD_IN_VALUES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_IN_KEYS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class SchemaRejected(PrewarmError):
    """A schema is not safe to hand to a runtime; `field` is the JSON path of the problem."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source} is refused: {field}: {problem}")


@dataclass(frozen=True)
class SchemaLimits:
    """What the deployment allows: its images, and its largest host's cores and memory."""

    allowed_images: tuple[str, ...]
    max_cpu: float
    max_memory_mb: float


def limits_from_inventory(
    inventory: pl.DataFrame, allowed_images: Iterable[str] | None = None
) -> SchemaLimits:
    """Limits from the inventory (this machine when it is empty) and the image allow-list."""
    if inventory.height == 0:
        inventory = default_inventory()
    images = tuple(allowed_images) if allowed_images is not None else DEFAULT_ALLOWED_IMAGES
    return SchemaLimits(
        allowed_images=images,
        # polars types max() as any scalar; those of these numeric columns are numbers.
        max_cpu=float(cast(float, inventory["cpu_cores"].max())),
        max_memory_mb=float(cast(float, inventory["memory_mb"].max())),
    )


# --- raw documents (before they are parsed or validated) -----------------------------------


def check_json_text(text: str, source: str) -> None:
    """Size (up to MAX_FILE_BYTES) and nesting of JSON text, checked before `json.loads`
    could recurse into it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise SchemaRejected(source, "$", f"{size} bytes, more than {MAX_FILE_BYTES}")
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise SchemaRejected(source, "$", _too_deep())
        elif char in "]}":
            depth -= 1


def check_document(document: Any, source: str) -> None:
    """A parsed document: an object, bounded, not too deep, clean strings and numbers.

    Walked with an explicit stack (no recursion), stopping at the first problem, so the
    field is named; a running size estimate stops the walk of a huge document early, and
    the exact serialised size is checked at the end.
    """
    if not isinstance(document, Mapping):
        raise SchemaRejected(source, "$", f"expected a JSON object, got {json_type(document)}")
    estimate = 0  # at most the serialised size, in characters

    def grow(amount: int) -> None:
        nonlocal estimate
        estimate += amount
        if estimate > MAX_DOCUMENT_BYTES:
            raise SchemaRejected(source, "$", f"larger than {_kib(MAX_DOCUMENT_BYTES)}")

    stack: list[tuple[str, Any, int]] = [("$", document, 1)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise SchemaRejected(source, path, _too_deep())
            grow(2)
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if not isinstance(key, str):
                        problem = f"a key is {json_type(key)}, not a string"
                        raise SchemaRejected(source, path, problem)
                    key_path = f"{path}.{_segment(key)}"
                    _check_string(key, source, key_path, key=True)
                    grow(len(key) + 4)  # quotes, colon, comma
                    stack.append((key_path, item, depth + 1))
            else:
                for index, item in enumerate(value):
                    grow(1)  # the comma
                    stack.append((f"{path}[{index}]", item, depth + 1))
        elif isinstance(value, str):
            _check_string(value, source, path, key=False)
            grow(len(value) + 2)
        elif isinstance(value, bool) or value is None:
            grow(4)
        elif isinstance(value, int | float):
            _check_number(value, source, path)
            grow(1)
        else:
            raise SchemaRejected(source, path, f"{json_type(value)} is not a JSON value")
    # Walked, so at most MAX_DEPTH deep: serialising cannot recurse too far.
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise SchemaRejected(
            source, "$", f"{_kib(size)} serialised is larger than {_kib(MAX_DOCUMENT_BYTES)}"
        )


# --- validated workloads (an extension's part, or the whole composite) ---------------------


def check_workload(
    workload: Mapping[str, Any], source: str, prefix: str, limits: SchemaLimits | None
) -> None:
    """Env names and count, cpu, memory and image of a (partial) workload whose types are valid.

    `prefix` is where the workload sits in its document ('$.workload' in an extension, '$'
    in a composite). Without `limits`, the image and host-size checks are skipped (a
    caller without settings or inventory); everything else is always checked.
    """
    env = workload.get("env") or {}
    if len(env) > MAX_ENV_ENTRIES:
        raise SchemaRejected(
            source, f"{prefix}.env", f"{len(env)} entries, more than {MAX_ENV_ENTRIES}"
        )
    for name in env:
        problem = env_name_problem(name)
        if problem is not None:
            raise SchemaRejected(source, f"{prefix}.env.{_segment(name)}", problem)
    for field, ceiling, unit in (
        ("cpu", limits.max_cpu if limits else None, "cores"),
        ("memory_mb", limits.max_memory_mb if limits else None, "MB"),
    ):
        if field not in workload:
            continue
        value = float(workload[field])
        if not math.isfinite(value) or value <= 0:
            raise SchemaRejected(source, f"{prefix}.{field}", "must be a finite number above 0")
        if ceiling is not None and value > ceiling:
            raise SchemaRejected(
                source,
                f"{prefix}.{field}",
                f"{value:g} is more than the largest host of the inventory has"
                f" ({ceiling:g} {unit})",
            )
    image = workload.get("image")
    if limits is not None and image is not None and image not in limits.allowed_images:
        raise SchemaRejected(
            source,
            f"{prefix}.image",
            f"{_quoted(image)} is not an allowed image"
            f" (allowed: {', '.join(limits.allowed_images)}; see PREWARM_ALLOWED_IMAGES)",
        )


def check_composite(
    composite: Mapping[str, Any], source: str, limits: SchemaLimits | None = None
) -> None:
    """The composed document: the raw-document bounds and the workload checks, at '$'.

    A composite that passed under the same limits passes again without a second walk: a
    cycle checks every client's composite three times (static, composed with its
    anticipated section, rendered), and the static ones stay the same cycle after cycle
    (measured at 1,000 clients: 1.3 s of a 3.6-s plan). Only passes are remembered, by the
    digest of the composite's `repr` (which tells 1 from "1" and 1.0, a tuple from a list,
    unlike JSON) and the limits, at most _PASSED_MAX of them, the least recently seen
    forgotten first.
    """
    key = _composite_key(composite, limits)
    with _PASSED_LOCK:
        if key is not None and key in _PASSED:
            _PASSED.move_to_end(key)
            return
    check_document(composite, source)
    check_workload(composite, source, "$", limits)
    if key is None:
        return
    # Without limits the checks are a subset: what passed with them passes without (the
    # render's own check of a composite the plan composed).
    without = _composite_key(composite, None) if limits is not None else None
    with _PASSED_LOCK:
        for passed in (key, without):
            if passed is not None:
                _PASSED[passed] = None
        while len(_PASSED) > _PASSED_MAX:
            _PASSED.popitem(last=False)


_PASSED: OrderedDict[bytes, None] = OrderedDict()
_PASSED_MAX = 100_000  # 2 composites a client a cycle change; ~17 MB when full (measured)
_PASSED_LOCK = threading.Lock()


def _composite_key(composite: Mapping[str, Any], limits: SchemaLimits | None) -> bytes | None:
    """The digest a passed composite is remembered by: its top-level keys sorted (the plan
    composes them in one order, the render dumps them in another); None for a document with
    a key that is not a string or too deep to `repr` (checked in full: the walk names what
    is wrong)."""
    try:
        items = sorted(composite.items())
        text = f"{type(composite).__name__}|{limits!r}|{items!r}"
    except (TypeError, RecursionError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def env_name_problem(name: str) -> str | None:
    """Why `name` may not be set by a client schema, or None when it may."""
    if not ENV_NAME.fullmatch(name):
        return f"not an allowed name (pattern {ENV_NAME.pattern})"
    if name in _RESERVED_ENV_NAMES or name.startswith(_RESERVED_ENV_PREFIX):
        return "reserved: prewarm sets it for the worker"
    if name in _DENIED_ENV_NAMES or name.startswith(_DENIED_ENV_PREFIXES):
        return "denied: it changes what the loader, a shell or an interpreter runs in the worker"
    return None


# --- helpers -------------------------------------------------------------------------------


def _check_string(text: str, source: str, path: str, *, key: bool) -> None:
    what = "key" if key else "value"
    if len(text) > MAX_STRING_CHARS:
        raise SchemaRejected(
            source, path, f"{what} of {len(text)} characters, more than {MAX_STRING_CHARS}"
        )
    bad = (_BAD_IN_KEYS if key else _BAD_IN_VALUES).search(text)
    if bad is not None:
        kind = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "control character"
        raise SchemaRejected(
            source, path, f"{what} holds {kind} U+{ord(bad.group()):04X} at {bad.start()}"
        )


def _check_number(value: float, source: str, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaRejected(source, path, f"{value} is not a finite number")
    if abs(value) > MAX_NUMBER:
        raise SchemaRejected(source, path, f"magnitude above 2**53 ({MAX_NUMBER:.0f})")


def _segment(key: str) -> str:
    """A key as a path segment; odd or long keys quoted and cut so messages stay readable."""
    if _PLAIN_KEY.match(key):
        return key
    shown = json.dumps(key[:32]) if len(key) <= 32 else json.dumps(key[:32])[:-1] + '..."'
    return f"[{shown}]"


def _quoted(text: str) -> str:
    return json.dumps(text[:64]) if len(text) <= 64 else json.dumps(text[:64])[:-1] + '..."'


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels"


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size >= 10 * 1024 else f"{size} bytes"


def json_type(value: Any) -> str:
    """A value's JSON type name, for messages ("object", "integer", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
