"""The soak's traffic: every replayed minute, each function's need sent through the real
activation path, on the trace's clock.

Run by `prewarm soak` as its own process (`python -m flows.soak_traffic CONFIG.json`), so
requests are served while the cycles run, as they are under `prewarm up`. Each request
goes through `api.activation.activate_or_cold_start`, the code behind
`POST /v1/clients/{id}/activate`: an idle warm member is claimed (leased), else a member is
cold-started. A request holds its member (leased: busy) until its replayed minute ends,
then lets it go, the way the trace's need counts instances busy for the minute.

One JSON line per minute goes to the output file: when the minute started (and how late),
each function's warm members at its start, cold starts, failures, and the members cold
starts created (the soak counts a controller releasing one of those too soon).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from api.activation import activate_or_cold_start
from provisioning.runtime.base import LABEL_MANAGED, PrewarmRuntimeError
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.select import select_runtime
from simulation.trace import load_trace

log = logging.getLogger("prewarm.soak.traffic")

# A request lets its member go when its minute ends; the lease only bounds how long a
# member stays busy should this process die mid-minute.
LEASE_MINUTES = 2.0


def run(config: dict[str, Any]) -> None:
    """Serve every replayed minute's need, on time, and write the minute ledger."""
    trace = load_trace(Path(config["trace"]))
    runtime = select_runtime(config["runtime"], Path(config["data_dir"]))
    leases = LeaseBook(Path(config["lease_book"]))
    scope = dict(config["scope"])
    selector = {LABEL_MANAGED: "1", **scope}
    configs: dict[str, dict] = config["configs"]
    host = config.get("host")
    minute_s = 60.0 / float(config["speed"])
    lease_s = LEASE_MINUTES * minute_s
    first, minutes = int(config["first_minute"]), int(config["minutes"])
    wall_start = float(config["wall_start"])
    ids = [str(c) for c in trace.client_ids]
    claimed: list[str] = []
    with open(config["out"], "w") as out:
        for offset in range(minutes):
            m = first + offset
            due = wall_start + offset * minute_s
            time.sleep(max(0.0, due - time.time()))
            # The previous minute's requests are done: their members are idle again.
            for member_id in claimed:
                leases.end(member_id)
            claimed = []
            began = time.time()
            listed = runtime.list(selector)
            by_client: dict[str, list] = defaultdict(list)
            for member in listed:
                by_client[member.client_id].append(member)
            warm = {
                cid: sum(m_.tier in ("active", "shadow") for m_ in members)
                for cid, members in by_client.items()
            }
            cold: dict[str, int] = {}
            created: list[list[Any]] = []
            failures = 0
            for f, client_id in enumerate(ids):
                need = int(trace.need[f, m])

                def cold_start_inputs(c: str = client_id) -> tuple[dict, Any]:
                    return (configs[c], host)

                for _ in range(need):
                    try:
                        outcome = activate_or_cold_start(
                            runtime,
                            client_id,
                            scope,
                            cold_start_inputs,
                            leases,
                            lease_s,
                            members=by_client.get(client_id, []),
                        )
                    except PrewarmRuntimeError as error:
                        failures += 1
                        cold[client_id] = cold.get(client_id, 0) + 1
                        log.warning("minute %d: activation for %s failed: %s", m, client_id, error)
                        continue
                    claimed.append(outcome.member.id)
                    if outcome.cold_start or outcome.tier_before == "cold":
                        cold[client_id] = cold.get(client_id, 0) + 1
                    if outcome.cold_start:
                        created.append([outcome.member.id, client_id, time.time()])
            line = {
                "minute": m,
                "due": due,
                "began": began,
                "late_s": began - due,
                "seconds": time.time() - began,
                "warm": warm,
                "cold": cold,
                "created": created,
                "failures": failures,
                "members": len(listed),
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
        time.sleep(max(0.0, wall_start + minutes * minute_s - time.time()))
        for member_id in claimed:
            leases.end(member_id)


def main() -> None:
    """Entry point: the config file's path is the only argument."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    run(json.loads(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()
