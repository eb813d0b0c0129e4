"""The fleet as the planner sees it: every host's engine asked what it has, every cycle.

Each distinct engine an inventory host names is probed (`docker info`, a few seconds at
most); the answers are recorded in `host_status`, and the planner gets only healthy hosts,
each with the lower of the file's and the engine's capacity less its reserve. A host without
an engine of its own is planned at the file's capacity less its reserve, as before engines
existed: its members run here (processes, or this machine's engine), and the soak's
simulator, which replays the file, must see the same capacity as the live loop. To have
this machine's engine checked too, name it: `engine = "unix:///var/run/docker.sock"`.

A host whose engine does not answer is down for the cycle: the
plan places nothing there, its members are not listed, so apply re-places them on healthy
hosts in the same cycle (cold starts expected). When it answers again, its members (still
labelled) are listed again and kept or released by the same diff: never two owners.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import polars as pl

from flows.locks import warehouse_write
from flows.settings import Settings
from provisioning.runtime.engines import (
    HostProbe,
    engines_of,
    host_status,
    plannable,
    probe,
)
from warehouse.inventory import read_host_status, write_host_status

log = logging.getLogger(__name__)

MAX_PARALLEL_PROBES = 8  # engines asked at once; a fleet larger than this is asked in turns


def probe_fleet(inventory: pl.DataFrame, local_too: bool = True) -> dict[str, HostProbe]:
    """Ask each distinct engine once (in parallel, bounded); every host gets its answer.
    Without `local_too`, hosts on this machine's engine are not asked (nor reported)."""
    engines = {
        host: engine
        for host, engine in engines_of(inventory).items()
        if local_too or engine.address is not None
    }
    if not engines:
        return {}
    by_address: dict[str | None, list[str]] = {}
    for host, engine in engines.items():
        by_address.setdefault(engine.address, []).append(host)
    shared = {address: hosts for address, hosts in by_address.items() if len(hosts) > 1}
    for address, hosts in shared.items():
        log.warning(
            "hosts %s share one engine (%s): each is capped at its capacity, together they "
            "may over-commit it",
            ", ".join(hosts),
            address or "the local engine",
        )
    first = {address: engines[hosts[0]] for address, hosts in by_address.items()}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(first))) as pool:
        answers = dict(zip(first, pool.map(probe, first.values()), strict=True))
    return {
        host: replace(answers[address], host=host)
        for address, hosts in by_address.items()
        for host in hosts
    }


def fleet_inventory(settings: Settings, inventory: pl.DataFrame) -> pl.DataFrame:
    """The inventory to plan on: probed when it matters, recorded, down hosts left out."""
    probes = probe_fleet(inventory, local_too=False)
    status = host_status(inventory, probes)
    _log_changes(settings, status)
    with warehouse_write():
        write_host_status(settings.warehouse_path, status)
    usable = plannable(inventory, status)
    if usable.height == 0:
        log.error("no host is usable this cycle: %s", _reasons(status))
    return usable


def _log_changes(settings: Settings, status: pl.DataFrame) -> None:
    """One line per host that went down or came back since the last probe."""
    before = read_host_status(settings.warehouse_path)
    was = dict(zip(before.get_column("host"), before.get_column("healthy"), strict=True))
    for row in status.iter_rows(named=True):
        previous = was.get(row["host"], True)
        if previous and not row["healthy"]:
            log.warning(
                "host %s is down for this cycle (%s): its members count as lost and are "
                "re-placed on healthy hosts",
                row["host"],
                row["error"],
            )
        elif not previous and row["healthy"]:
            log.warning("host %s answers again: its members are adopted or released", row["host"])


def _reasons(status: pl.DataFrame) -> str:
    return "; ".join(
        f"{r['host']}: {r['error'] or 'no capacity left after the reserve'}"
        for r in status.iter_rows(named=True)
    )
