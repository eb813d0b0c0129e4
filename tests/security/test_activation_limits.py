"""The parts that bound activation, alone: the key cache, the mode gate, the token buckets
and the outcome recorder (the flood tests drive them together through a real server)."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from api.gate import ModeGate
from api.keys import KeyCache
from api.rate import TokenBuckets, retry_after
from api.recorder import ActivationRecorder
from tests.security.flood_world import FloodWorld, activation_events
from warehouse.activations import Activation, record_activations
from warehouse.errors import WarehouseBusy
from warehouse.live_keys import LiveKeys, read_live_keys


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_key_cache_reloads_at_most_twice_a_second_for_unknown_keys(
    world: FloodWorld,
) -> None:
    keys = read_live_keys(world.path)
    loads: list[float] = []
    clock = _Clock()

    def load() -> LiveKeys:
        loads.append(clock.now)
        return keys

    cache = KeyCache(load, max_age_s=2.0, miss_reload_s=0.5, clock=clock)
    assert cache.client_of(world.key_a, 1.0) == "a" and len(loads) == 1

    made_up = [f"pw_{secrets.token_hex(8)}_{'y' * 43}" for _ in range(100)]
    assert [cache.client_of(key, 1.0) for key in made_up] == [None] * 100
    assert len(loads) == 1  # the snapshot is younger than 0.5 s: refused from memory
    clock.now += 0.6
    assert [cache.client_of(key, 1.0) for key in made_up] == [None] * 100
    assert len(loads) == 2  # one reload for the first unknown key, then memory again
    assert cache.client_of(world.key_b, 1.0) == "b" and len(loads) == 2
    clock.now += 2.0
    assert cache.client_of(world.key_b, 1.0) == "b" and len(loads) == 3  # stale: reloaded


def test_concurrent_key_checks_share_one_reload(world: FloodWorld) -> None:
    keys = read_live_keys(world.path)
    loads = []

    def slow_load() -> LiveKeys:
        loads.append(1)
        time.sleep(0.2)
        return keys

    cache = KeyCache(slow_load)
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda _: cache.client_of(world.key_a, 2.0), range(8)))

    assert found == ["a"] * 8 and len(loads) == 1


def test_the_gate_lets_one_mode_in_together_and_bounds_the_other() -> None:
    gate = ModeGate()
    all_in = threading.Event()
    inside = threading.Barrier(3, action=all_in.set, timeout=5)

    def read() -> None:
        with gate.hold(False, time.monotonic() + 5):
            inside.wait()  # all three readers are in at once, or this times out
            time.sleep(1.5)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    assert all_in.wait(5)  # (not a sleep: on a busy machine threads start late)
    started = time.monotonic()
    with pytest.raises(WarehouseBusy), gate.hold(True, time.monotonic() + 0.05):
        pass
    # the writer gave up at its deadline, long before the readers' 1.5 s were over
    assert time.monotonic() - started < 1.0
    with gate.hold(True, time.monotonic() + 5):  # and gets in once the readers are done
        waited = time.monotonic() - started
    for reader in readers:
        reader.join()
    assert 1.0 < waited < 3.0


def test_token_buckets_refill_at_their_rate() -> None:
    clock = _Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)

    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0  # each key its own bucket
    clock.now += 0.5
    assert buckets.take("k") == 0.0 and buckets.take("k") == pytest.approx(0.5)
    assert retry_after(0.5) == "1" and retry_after(1.2) == "2"


def test_the_recorder_batches_and_retries_a_busy_warehouse(world: FloodWorld) -> None:
    batches: list[int] = []
    failures = [WarehouseBusy("locked"), WarehouseBusy("locked")]

    def write(batch: Any) -> None:
        if failures:
            raise failures.pop()
        batches.append(len(batch))
        record_activations(world.path, batch)

    recorder = ActivationRecorder(write, max_retry_s=0.1)
    done = [
        recorder.submit(Activation(client_id="a", runtime="process", ms=float(i), reason="r"))
        for i in range(50)
    ]

    assert recorder.flush(10.0)
    assert all(future.result() for future in done) and recorder.dropped == 0
    assert sum(batches) == 50 and len(batches) < 50  # written together, not one by one
    assert [e["ms"] for e in activation_events(world.path, "a")] == [float(i) for i in range(50)]
    recorder.close(1.0)


def test_the_recorder_drops_past_its_bound_and_says_so() -> None:
    release = threading.Event()
    recorder = ActivationRecorder(lambda batch: release.wait(5), max_queued=2, max_batch=1)
    outcome = Activation(client_id="a", runtime="process", ms=1.0, reason="r")

    first = recorder.submit(outcome)  # taken by the writer, which then blocks
    time.sleep(0.1)
    queued = [recorder.submit(outcome) for _ in range(2)]
    dropped = recorder.submit(outcome)

    assert dropped.result(timeout=1) is False and recorder.dropped == 1
    release.set()
    assert recorder.flush(5.0) and first.result() and all(f.result() for f in queued)
    recorder.close(1.0)
