"""The runtime a pool lives on: chosen once, recorded with the pool, used by every command.

`PREWARM_RUNTIME=auto` means "Docker when a daemon answers, else processes". Resolved afresh
by every command, a daemon installed after the demo, or one that missed a ping during a
cycle, would start a second pool beside the first and orphan it on the next run. So the
first command that creates members resolves it once and records it in `pool_runtimes`
(`warehouse.pools.bind_pool_runtime`); every later command opens exactly that runtime. If
it does not answer, that command fails loudly: it never switches. Moving a pool is the
operator's explicit `prewarm pools --migrate-to docker|process`.
"""

from __future__ import annotations

import logging
from typing import cast

from core.errors import PrewarmError
from flows.settings import Settings
from provisioning.runtime.base import ContainerRuntime, RuntimeUnavailable
from provisioning.runtime.engines import engines_of, has_remote_engines
from provisioning.runtime.images import build_image
from provisioning.runtime.select import RuntimeKind, docker_unavailable_reason, select_runtime
from warehouse.inventory import read_inventory
from warehouse.pools import bind_pool_runtime, read_pool_runtime

log = logging.getLogger(__name__)


def open_pool_runtime(settings: Settings) -> ContainerRuntime:
    """The pool's recorded runtime; the first call resolves PREWARM_RUNTIME and records it."""
    path, pool = settings.warehouse_path, settings.pool
    bound = read_pool_runtime(path, pool)
    if bound is None:
        runtime, reason = _resolve(settings)
        bound = bind_pool_runtime(path, pool, runtime.name, reason)
        if bound == runtime.name:
            log.info("pool %r now lives on %s (%s)", pool, bound, reason)
            return runtime
    _check_choice(settings, bound)
    return open_runtime_named(bound, settings)


def bound_runtime(settings: Settings) -> str | None:
    """The runtime recorded for the pool, without choosing one."""
    return read_pool_runtime(settings.warehouse_path, settings.pool)


def open_runtime_named(name: str, settings: Settings, image: bool = True) -> ContainerRuntime:
    """Open `docker` or `process` as asked, with the worker image ready (unless `image` is
    False: only listing); raise when Docker does not answer (never fall back)."""
    if name not in ("docker", "process"):
        raise PrewarmError(f"Unknown runtime {name!r}: use docker or process.")
    if name == "docker" and (fleet := _fleet(settings)) is not None:
        # Each engine is probed, and given the image, by the fleet itself: one that does not
        # answer is a host down for the cycle, and a fleet whose hosts all name their
        # engines needs no Docker on this machine.
        return fleet
    if name == "docker":
        reason = docker_unavailable_reason(timeout_s=2.0)
        if reason is not None:
            raise RuntimeUnavailable(
                f"Pool {settings.pool!r} lives on docker, but {reason}. Nothing was changed; "
                "start the daemon, or move the pool with `prewarm pools --migrate-to process`."
            )
        try:
            if image:
                build_image()
        except Exception as error:
            raise PrewarmError(f"The Docker worker image could not be built: {error}") from error
    return select_runtime(cast(RuntimeKind, name), settings.data_dir)


def _fleet(settings: Settings) -> ContainerRuntime | None:
    """A runtime over every host's engine when the stored inventory names engines (a host
    without one is this machine's); None for a single local engine."""
    inventory = read_inventory(settings.warehouse_path)
    if inventory.height == 0 or not has_remote_engines(inventory):
        return None
    from provisioning.runtime.fleet import FleetRuntime

    return FleetRuntime(engines_of(inventory))


def _resolve(settings: Settings) -> tuple[ContainerRuntime, str]:
    """PREWARM_RUNTIME resolved now: auto is Docker when it answers and its image builds."""
    if settings.runtime != "auto":
        return open_runtime_named(settings.runtime, settings), f"PREWARM_RUNTIME={settings.runtime}"
    if (fleet := _fleet(settings)) is not None:
        return fleet, "auto: the inventory names Docker engines"
    reason = docker_unavailable_reason()
    if reason is None:
        try:
            build_image()
            return select_runtime("docker", settings.data_dir), "auto: the Docker daemon answered"
        except Exception as error:
            reason = f"the worker image could not be built ({error})"
    return select_runtime("process", settings.data_dir), f"auto: {reason}"


def _check_choice(settings: Settings, bound: str) -> None:
    if settings.runtime not in ("auto", bound):
        raise PrewarmError(
            f"Pool {settings.pool!r} lives on {bound}, but PREWARM_RUNTIME={settings.runtime}. "
            f"Nothing was changed. Move it with `prewarm pools --migrate-to {settings.runtime}`, "
            f"or unset PREWARM_RUNTIME."
        )
