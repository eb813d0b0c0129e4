"""Composites and rendered configs kept while their inputs are equal (`config_memo`), and the
plan step's configs built through it: the same configs as built afresh, rebuilt exactly for
the clients whose inputs changed."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from flows import provision
from models.profile import _empty_profiles
from provisioning.config_memo import ConfigMemo, inputs_key
from provisioning.schema import anticipated_from_profile, compose_workload
from provisioning.schema_checks import SchemaLimits
from provisioning.schema_model import SchemaValidationError
from provisioning.schema_render import render_container_config

LIMITS = SchemaLimits(allowed_images=("prewarm/worker:latest",), max_cpu=8.0, max_memory_mb=16384.0)
FIRST = datetime(2026, 1, 5, 12, 0)


def test_a_value_is_reused_while_its_key_is_equal_and_rebuilt_when_it_changes():
    memo = ConfigMemo()
    built: list[str] = []

    def build(value: str):
        return lambda: built.append(value) or {"v": value}

    first = memo.get("a", "k1", build("one"))
    assert memo.get("a", "k1", build("two")) is first
    assert memo.get("a", "k2", build("three")) == {"v": "three"}
    assert memo.get("a", "k2", build("four")) == {"v": "three"}
    assert built == ["one", "three"]
    assert (memo.hits, memo.builds, len(memo)) == (2, 2, 1)


def test_keys_are_equal_for_equal_documents_whatever_their_key_order():
    assert inputs_key({"a": 1, "b": [1, 2]}, None) == inputs_key({"b": [1, 2], "a": 1}, None)
    assert inputs_key({"a": 1}) != inputs_key({"a": 1.5})
    assert inputs_key(FIRST) != inputs_key(FIRST + timedelta(minutes=5))


def test_past_its_bound_a_memo_keeps_no_new_client_but_still_updates_the_ones_it_keeps():
    memo = ConfigMemo(max_clients=2)
    memo.get("a", 1, lambda: "a1")
    memo.get("b", 1, lambda: "b1")
    assert memo.get("c", 1, lambda: "c1") == "c1"
    assert memo.get("c", 1, lambda: "c2") == "c2"  # not kept: built again
    assert memo.get("a", 2, lambda: "a2") == "a2"
    assert memo.get("a", 2, lambda: "a3") == "a2"
    assert len(memo) == 2


def test_a_build_that_raises_is_not_kept():
    memo = ConfigMemo()

    def refuse():
        raise SchemaValidationError("composite", [("$.cpu", "too big")])

    for _ in range(2):
        with pytest.raises(SchemaValidationError):
            memo.get("a", "k", refuse)
    assert (memo.builds, len(memo)) == (0, 0)


def _profiles(rows: list[dict]) -> pl.DataFrame:
    empty = _empty_profiles()
    return pl.DataFrame(rows, schema=empty.schema)


def _window(client_id: str, p90: float, start: datetime = FIRST) -> dict:
    return {
        "client_id": client_id,
        "generated_at": start - timedelta(minutes=10),
        "origin": start - timedelta(minutes=10),
        "window_start": start,
        "window_end": start + timedelta(hours=1),
        "duration_minutes": 60.0,
        "concurrency_p50": p90 / 2,
        "concurrency_p90": p90,
        "confidence": 0.6,
        "concurrency_confidence": 0.6,
        "model_name": f"forecaster-{client_id}",
        "model_version": "1",
    }


def _fresh(client_id, extensions, profile, pool_size, size=None) -> dict:
    """A client's config built without any memo, as the plan step built it before."""
    static = compose_workload(client_id, extensions, None, {"cpu": 0.5}, limits=LIMITS)
    dropped = ("client_id", "extensions", "anticipated", "size")
    base = {k: v for k, v in static.items() if k not in dropped}
    anticipated = anticipated_from_profile(profile, pool_size) if profile else None
    full = compose_workload(client_id, extensions, anticipated, base, limits=LIMITS)
    if size is not None:
        full = {**full, "size": {"cpu": size[0], "memory_mb": size[1]}}
    return render_container_config(full)


@pytest.fixture
def memos(monkeypatch):
    static, rendered = ConfigMemo(), ConfigMemo()
    monkeypatch.setattr(provision, "_STATIC", static)
    monkeypatch.setattr(provision, "_RENDERED", rendered)
    return static, rendered


def test_the_plan_steps_configs_equal_fresh_ones_and_only_changed_clients_are_rebuilt(memos):
    static, rendered = memos
    cache = {"name": "cache", "precedence": 1, "workload": {"cache": {"ttl_seconds": 900}}}
    extensions = {"b": [cache]}
    clients = pl.DataFrame({"client_id": ["a", "b", "c"], "container_cpu": [0.5] * 3})
    targets = pl.DataFrame(
        {"client_id": ["a", "b", "c"], "active": [1, 0, 0], "shadow": [1, 2, 0], "cold": [0] * 3}
    )
    profiles = _profiles([_window("a", 4.0), _window("b", 2.0)])
    sizes = {"a": (1.0, 512.0)}

    def plan_configs(profiles: pl.DataFrame, targets: pl.DataFrame) -> dict[str, dict]:
        composites = provision._static_composites(clients, extensions, LIMITS)
        return provision._final_configs(
            composites, extensions, profiles, targets, FIRST, LIMITS, sizes
        )

    first = plan_configs(profiles, targets)
    expected = {
        "a": _fresh("a", [], profiles.row(0, named=True), 2, (1.0, 512.0)),
        "b": _fresh("b", [cache], profiles.row(1, named=True), 2),
        "c": _fresh("c", [], None, 0),
    }
    assert first == expected
    assert (static.builds, rendered.builds) == (3, 3)

    assert plan_configs(profiles, targets) == expected
    assert (static.builds, rendered.builds, rendered.hits) == (3, 3, 3)

    # b re-predicted (a higher peak), a's pool grows: those two rebuilt; c's pool grows
    # too, but without a window its config does not state a pool size: reused.
    newer = _profiles([_window("a", 4.0), _window("b", 6.0)])
    grown = targets.with_columns(pl.col("shadow") + pl.col("client_id").is_in(["a", "c"]))
    again = plan_configs(newer, grown)
    assert (static.builds, rendered.builds) == (3, 5)
    assert again["a"] == _fresh("a", [], newer.row(0, named=True), 3, (1.0, 512.0))
    assert again["b"] == _fresh("b", [cache], newer.row(1, named=True), 2)
    assert again["c"] is first["c"]
    assert again["a"] != first["a"] and again["b"] != first["b"]


def test_a_refused_schema_is_refused_on_every_plan(memos, caplog):
    static, _ = memos
    clients = pl.DataFrame({"client_id": ["a", "huge"], "container_cpu": [0.5, 64.0]})
    for _ in range(2):
        composites = provision._static_composites(clients, {}, LIMITS)
        assert list(composites) == ["a"]
    refusals = [r for r in caplog.records if "client huge gets no members" in r.getMessage()]
    assert len(refusals) == 2
    assert (static.builds, static.hits, len(static)) == (1, 1, 1)
