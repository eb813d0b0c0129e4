"""Workers start at the priority their process had before it became batch work.

`prewarm up` runs its flows at niceness 10 (`flows.deployments.run_as_batch`), and a child
inherits the niceness of the thread that forks it: the process runtime's workers, spawned by
the cycle's apply step, would serve client requests at batch priority, behind the API and
everything else at 0, and an unprivileged process cannot give them their priority back
(lowering a niceness takes CAP_SYS_NICE). Linux keeps the niceness per thread, so a thread
started before the process lowers its own keeps the old one: workers are forked there. The
same holds for the scheduling policy (SCHED_IDLE with `PREWARM_BATCH_IDLE`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# The one spawning thread of this process, once `keep_spawn_priority` made it.
_spawner: ThreadPoolExecutor | None = None


def keep_spawn_priority() -> None:
    """From now on, start workers from a thread at the calling thread's present niceness
    and scheduling policy: call it before lowering either."""
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prewarm-spawn")
        _spawner.submit(lambda: None).result()  # the thread exists now, at this niceness


def at_spawn_priority(start: Callable[[], T]) -> T:
    """`start()` (what forks the worker) on the kept thread when there is one, else here.
    One thread: spawns wait for one another only for the fork and exec themselves."""
    return start() if _spawner is None else _spawner.submit(start).result()
