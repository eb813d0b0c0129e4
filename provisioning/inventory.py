"""Inventory: the hosts prewarm may place containers on, their capacity and their price.

Read from a TOML file (`inventory.toml` at the repository root is the example) into a polars
frame with one row per host; the lead stores it in the DuckDB table `inventory` (DDL below).
Without a file, `default_inventory()` describes this machine as one host.

File format:

    [host_defaults]              # optional: values every host inherits unless it sets them
    cost_core_minute = 0.0008

    [[hosts]]
    name = "node-a"              # required, unique
    cpu_cores = 16               # required, > 0
    memory_mb = 65536            # required, > 0
    net_mbps = 10000             # optional, >= 0 (Mbps); absent = not tracked (no limit)
    io_ops = 50000               # optional, >= 0 (I/O operations a second); absent = no limit
    cost_core_minute = 0.0008    # optional $ / core-minute; absent = the cost model's rate
    cost_memory_gib_minute = 0.0001  # optional $ / GiB-minute; absent = the cost model's
    engine = "tcp://10.0.0.5:2376"   # optional: the host's Docker Engine (see below)
    tls = { ca = "ca.pem", cert = "cert.pem", key = "key.pem" }  # with tcp:// only
    reserve_cpu_cores = 1        # optional, >= 0: kept back for the OS and other tenants
    reserve_memory_mb = 2048     # optional, >= 0

A host with `engine` has its members created on that Docker Engine: `unix:///path.sock`,
`tcp://host:port` (TLS when `tls` names the CA, client certificate and key; relative paths
are read next to the file) or `ssh://user@host`. A host without one is this machine's engine
(`DOCKER_HOST` or the default socket), so a single-machine inventory works unchanged. The
capacity planned on a host with an engine is the lower of `cpu_cores`/`memory_mb` and what
its engine reports (asked every cycle; `prewarm inventory discover` asks now), less the
reserve: the file may lower what an engine offers, never raise it. A host without one is
planned at the file's capacity less the reserve (name this machine's engine, e.g.
`unix:///var/run/docker.sock`, to have it checked too).

Sections other modules read (`[costs]`, `[planner]`) may share the file and are ignored here;
any other top-level key, and any unknown host key, is an error that names it. Validation
collects every problem before raising, so one run of `prewarm` shows all of them.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from core.errors import PrewarmError
from provisioning.toml_file import UnreadableToml, read_toml

INVENTORY_SCHEMA: dict[str, pl.DataType] = {
    "host": pl.String(),
    "cpu_cores": pl.Float64(),
    "memory_mb": pl.Float64(),
    "net_mbps": pl.Float64(),
    "io_ops": pl.Float64(),
    "cost_core_minute": pl.Float64(),
    "cost_memory_gib_minute": pl.Float64(),
    "reserve_cpu_cores": pl.Float64(),
    "reserve_memory_mb": pl.Float64(),
    "engine": pl.String(),  # null: this machine's engine
    "tls_ca": pl.String(),
    "tls_cert": pl.String(),
    "tls_key": pl.String(),
}

REQUIRED_KEYS: tuple[str, ...] = ("name", "cpu_cores", "memory_mb")
OPTIONAL_KEYS: tuple[str, ...] = (
    "net_mbps",
    "io_ops",
    "cost_core_minute",
    "cost_memory_gib_minute",
    "reserve_cpu_cores",
    "reserve_memory_mb",
)
ENGINE_KEYS: tuple[str, ...] = ("engine", "tls")  # per host only, never in host_defaults
ENGINE_SCHEMES: tuple[str, ...] = ("unix://", "tcp://", "ssh://")
TLS_KEYS: tuple[str, ...] = ("ca", "cert", "key")
# Capacities must be > 0 (a host with no cores or memory is a typo, not a host); the rest >= 0.
_POSITIVE = ("cpu_cores", "memory_mb")
_TOP_LEVEL = ("hosts", "host_defaults")
_OTHER_SECTIONS = ("costs", "planner")


class InventoryError(PrewarmError, ValueError):
    """An inventory is invalid; the message lists every problem with its host and key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid inventory {source}:\n{listing}")


def load_inventory(path: str | Path) -> pl.DataFrame:
    """Read a TOML inventory file into the inventory frame (INVENTORY_SCHEMA)."""
    try:
        document = read_toml(path)
    except UnreadableToml as error:
        raise InventoryError(str(error.path), [error.reason]) from None
    return inventory_from_dict(document, source=str(path), base_dir=Path(path).parent)


def inventory_from_dict(
    document: Mapping[str, Any], source: str = "<dict>", base_dir: Path | None = None
) -> pl.DataFrame:
    """Validate a parsed inventory document and return the inventory frame (`base_dir`:
    where relative TLS file paths are read from, the file's folder)."""
    problems: list[str] = []
    for key in document:
        if key not in _TOP_LEVEL + _OTHER_SECTIONS:
            problems.append(
                f"unknown top-level key {key!r} (known: {', '.join(_TOP_LEVEL + _OTHER_SECTIONS)})"
            )
    defaults = document.get("host_defaults", {})
    if not isinstance(defaults, Mapping):
        problems.append("host_defaults must be a table")
        defaults = {}
    for key in defaults:
        if key not in OPTIONAL_KEYS:
            problems.append(
                f"host_defaults: unknown key {key!r} (allowed: {', '.join(OPTIONAL_KEYS)})"
            )
    hosts = document.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        problems.append("no hosts: add at least one [[hosts]] table")
        hosts = []

    rows: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(hosts):
        where = f"hosts[{index}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: expected a table, got {type(raw).__name__}")
            continue
        merged = {**{k: v for k, v in defaults.items() if k in OPTIONAL_KEYS}, **raw}
        row, host_problems = _validate_host(merged, where, base_dir or Path.cwd())
        problems.extend(host_problems)
        name = row.get("host")
        if isinstance(name, str):
            if name in first_seen:
                problems.append(
                    f"{where} ({name}): duplicate host {name!r}"
                    f" (first at hosts[{first_seen[name]}])"
                )
            else:
                first_seen[name] = index
        if not host_problems:
            rows.append(row)
    if problems:
        raise InventoryError(source, problems)
    return _frame(rows)


def default_inventory() -> pl.DataFrame:
    """This machine as the only host: cores from os.cpu_count(), memory from the OS."""
    row = {
        "host": platform.node() or "localhost",
        "cpu_cores": float(os.cpu_count() or 1),
        "memory_mb": machine_memory_mb(),
        "net_mbps": None,
        "io_ops": None,
        "cost_core_minute": None,
        "cost_memory_gib_minute": None,
    }
    return _frame([row])


def machine_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Total memory of this machine in MiB: /proc/meminfo's MemTotal, else sysconf."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) / 1024.0  # the file counts kB (KiB)
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES")
    page_size = os.sysconf("SC_PAGE_SIZE")
    return float(pages * page_size) / (1024.0 * 1024.0)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        {column: [row.get(column) for row in rows] for column in INVENTORY_SCHEMA},
        schema=INVENTORY_SCHEMA,
    )


def _validate_host(
    raw: Mapping[str, Any], where: str, base_dir: Path
) -> tuple[dict[str, Any], list[str]]:
    """One host table -> (row, problems); every message names the host and the key."""
    problems: list[str] = []
    name = raw.get("name")
    label = f"{where} ({name})" if isinstance(name, str) and name else where
    known = REQUIRED_KEYS + OPTIONAL_KEYS + ENGINE_KEYS
    for key in raw:
        if key not in known:
            problems.append(f"{label}: unknown key {key!r} (known: {', '.join(known)})")
    for key in REQUIRED_KEYS:
        if key not in raw:
            problems.append(f"{label}: missing required key {key!r}")
    if "name" in raw and (not isinstance(name, str) or not name.strip()):
        problems.append(f"{label}: name must be a non-empty string, got {name!r}")

    row: dict[str, Any] = {"host": name if isinstance(name, str) else None}
    row.update(_engine(raw, label, base_dir, problems))
    for key in REQUIRED_KEYS[1:] + OPTIONAL_KEYS:
        value = raw.get(key)
        if value is None:
            row[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(
                f"{label}: {key} must be a number, got {type(value).__name__} {_short(value)}"
            )
            continue
        try:
            number = float(value)
        except OverflowError:  # TOML integers have no size limit
            problems.append(f"{label}: {key} is too large, got {_short(value)}")
            continue
        if not math.isfinite(number):
            problems.append(f"{label}: {key} must be finite, got {number}")
        elif key in _POSITIVE and number <= 0:
            problems.append(f"{label}: {key} must be > 0, got {number:g}")
        elif number < 0:
            problems.append(f"{label}: {key} must be >= 0, got {number:g}")
        row[key] = number
    return row, problems


def _engine(raw: Mapping[str, Any], label: str, base_dir: Path, problems: list[str]) -> dict:
    """The host's engine address and TLS files (absolute paths), problems appended."""
    engine, tls = raw.get("engine"), raw.get("tls")
    out: dict[str, Any] = {"engine": None, "tls_ca": None, "tls_cert": None, "tls_key": None}
    if engine is not None:
        if not isinstance(engine, str) or not engine.startswith(ENGINE_SCHEMES):
            problems.append(
                f"{label}: engine must start with {', '.join(ENGINE_SCHEMES)}, got {_short(engine)}"
            )
        else:
            out["engine"] = engine
    if tls is None:
        return out
    if not isinstance(engine, str) or not engine.startswith("tcp://"):
        problems.append(f"{label}: tls goes with a tcp:// engine only")
        return out
    if not isinstance(tls, Mapping) or sorted(tls) != sorted(TLS_KEYS):
        problems.append(f"{label}: tls must be a table of exactly {', '.join(TLS_KEYS)}")
        return out
    for key in TLS_KEYS:
        value = tls[key]
        if not isinstance(value, str) or not value:
            problems.append(f"{label}: tls.{key} must be a file path, got {_short(value)}")
            continue
        path = (base_dir / value).resolve()
        if not path.is_file():
            problems.append(f"{label}: tls.{key} file {str(path)!r} does not exist")
            continue
        out[f"tls_{key}"] = str(path)
    return out


def _short(value: Any) -> str:
    """A value for a message: its repr, cut short (a wrong type may be a whole nested table)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
