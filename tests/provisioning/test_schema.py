"""Workload schemas: composition order and determinism, conflicts, type errors, rendering."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import pytest

from provisioning.schema import anticipated_from_profile, compose_workload
from provisioning.schema_extensions import (
    EXAMPLES_DIR,
    load_extension,
    load_extensions,
    validate_extension,
)
from provisioning.schema_model import (
    SchemaConflictError,
    SchemaError,
    SchemaValidationError,
    base_workload,
    workload_json_schema,
)
from provisioning.schema_render import config_hash, render_container_config, show_composite

PROFILE = {
    "client_id": "acme",
    "generated_at": datetime(2026, 1, 5, 11, 50),
    "window_start": datetime(2026, 1, 5, 12, 0),
    "window_end": datetime(2026, 1, 5, 13, 0),
    "duration_minutes": 60.0,
    "concurrency_p50": 3.0,
    "concurrency_p90": 5.0,
    "cpu_cores_p50": 1.5,
    "cpu_cores_p90": 2.5,
    "memory_mb_p50": None,
    "memory_mb_p90": None,
    "confidence": 0.7,
    "concurrency_confidence": 0.7,
    "cpu_cores_confidence": 0.55,
    "model_name": "forecaster-acme",
    "model_version": "3",
}


def _ext(name: str, workload: dict, precedence: int = 0) -> dict:
    return {"name": name, "precedence": precedence, "workload": workload}


def _examples() -> list[dict]:
    return load_extensions(sorted(EXAMPLES_DIR.glob("*.json")))


# --- composition --------------------------------------------------------------------------


def test_without_extensions_the_composite_is_the_base():
    composite = compose_workload("acme")
    assert composite == {
        "client_id": "acme",
        "extensions": [],
        **base_workload(),
        "anticipated": None,
        "size": None,  # set by the planner when the forecast moves it
    }
    assert composite["image"] == "prewarm/worker:latest"
    assert composite["ports"] == [8080]


def test_extensions_apply_by_precedence_then_name_and_merge_objects_key_by_key():
    composite = compose_workload(
        "acme",
        [
            _ext("zeta", {"env": {"A": "1"}, "cache": {"size_mb": 10}}),
            _ext("alpha", {"env": {"B": "2"}, "cache": {"warm_keys": ["k1"]}}),
            _ext("late", {"cache": {"size_mb": 99}}, precedence=5),
        ],
    )
    assert composite["extensions"] == ["alpha", "zeta", "late"]
    assert composite["env"] == {"A": "1", "B": "2"}
    # size_mb: zeta (0) sets 10, late (5) sets 99 -> the higher precedence wins
    assert composite["cache"] == {
        "policy": "lru",
        "size_mb": 99.0,
        "ttl_seconds": 300,
        "warm_keys": ["k1"],
    }


def test_composition_is_deterministic_whatever_the_input_order():
    examples = _examples()
    anticipated = anticipated_from_profile(PROFILE, 4)
    expected = compose_workload("acme", examples, anticipated)
    shuffler = random.Random(7)
    for _ in range(5):
        shuffled = examples[:]
        shuffler.shuffle(shuffled)
        assert compose_workload("acme", shuffled, anticipated) == expected
    assert expected["extensions"] == [
        "canary-routing",
        "redis-cache",
        "reporting-db",
        "premium-latency",
    ]
    # premium-latency (precedence 10) overrides redis-cache's TTL and reporting-db's cpu
    assert expected["cache"]["ttl_seconds"] == 60
    assert expected["cpu"] == 2.0


def test_anticipated_comes_last_and_extensions_may_not_set_it():
    composite = compose_workload("acme", [], anticipated_from_profile(PROFILE, 4))
    assert list(composite)[-1] == "anticipated"
    with pytest.raises(SchemaValidationError) as error:
        compose_workload("acme", [_ext("sneaky", {"anticipated": {"confidence": 1}})])
    assert str(error.value) == (
        "extension 'sneaky' is invalid:\n"
        "  $.workload.anticipated: written by prewarm from the predicted profile; "
        "extensions may not set it"
    )


def test_a_base_from_the_clients_table_is_respected():
    composite = compose_workload(
        "acme", [_ext("a", {"cache": {"ttl_seconds": 5}})], base={"cpu": 2, "memory_mb": 4096}
    )
    assert (composite["cpu"], composite["memory_mb"]) == (2.0, 4096.0)
    with pytest.raises(SchemaValidationError, match=r"base workload is invalid:\n  \$\.cpu"):
        compose_workload("acme", base={"cpu": "two"})


# --- conflicts and errors -----------------------------------------------------------------


def test_equal_precedence_disagreement_is_a_conflict_naming_the_field():
    with pytest.raises(SchemaConflictError) as error:
        compose_workload(
            "acme",
            [_ext("a", {"cache": {"ttl_seconds": 600}}), _ext("b", {"cache": {"ttl_seconds": 60}})],
        )
    assert str(error.value) == (
        "conflict at $.workload.cache.ttl_seconds: extension 'a' sets 600, extension 'b' sets 60 "
        "(same precedence 0); give the one that should win a higher 'precedence'"
    )
    assert error.value.path == "$.workload.cache.ttl_seconds"


def test_agreement_and_declared_precedence_are_not_conflicts():
    same = compose_workload(
        "acme", [_ext("a", {"env": {"X": "1"}}), _ext("b", {"env": {"X": "1", "Y": "2"}})]
    )
    assert same["env"] == {"X": "1", "Y": "2"}
    declared = compose_workload(
        "acme",
        [
            _ext("a", {"cache": {"ttl_seconds": 600}}),
            _ext("b", {"cache": {"ttl_seconds": 60}}, precedence=1),
        ],
    )
    assert declared["cache"]["ttl_seconds"] == 60


def test_lists_are_leaves_so_different_lists_conflict():
    with pytest.raises(SchemaConflictError, match=r"conflict at \$\.workload\.ports"):
        compose_workload("acme", [_ext("a", {"ports": [80]}), _ext("b", {"ports": [81]})])


@pytest.mark.parametrize(
    ("workload", "issue"),
    [
        (
            {"cache": {"ttl_seconds": "600"}},
            '$.workload.cache.ttl_seconds: expected integer, got string "600"',
        ),
        (
            {"cache": {"ttl_seconds": 1.5}},
            "$.workload.cache.ttl_seconds: expected integer, got number 1.5",
        ),
        ({"cpu": True}, "$.workload.cpu: expected number, got boolean true"),
        ({"env": {"A": 1}}, "$.workload.env.A: expected string, got integer 1"),
        ({"routing": "everywhere"}, '$.workload.routing: expected object, got string "everywhere"'),
        (
            {"cache": {"warm_keys": "k"}},
            '$.workload.cache.warm_keys: expected array, got string "k"',
        ),
        ({"ports": [8080, "http"]}, '$.workload.ports[1]: expected integer, got string "http"'),
        (
            {"cache": {"ttl": 5}},
            "$.workload.cache.ttl: unknown key"
            " (allowed here: policy, size_mb, ttl_seconds, warm_keys)",
        ),
        (
            {"database": {"index_hints": [{"table": "t", "cols": ["a"]}]}},
            "$.workload.database.index_hints[0].columns: missing required key\n"
            "  $.workload.database.index_hints[0].cols: unknown key"
            " (allowed here: table, columns, unique)",
        ),
        (
            {"gpu": 1},
            "$.workload.gpu: unknown key (allowed here:"
            " image, cpu, memory_mb, env, ports, database, cache, routing, services, sizing)",
        ),
        (
            {"routing": {"affinity": "sticky"}},
            "$.workload.routing.affinity: input should be 'none', 'client', 'session' or 'host'",
        ),
        (
            {"routing": {"weights": {"a": -1}}},
            "$.workload.routing.weights.a: input should be greater than or equal to 0",
        ),
        (
            {"env": {"PREWARM_X": "1"}},
            "$.workload.env: key 'PREWARM_X' uses the reserved prefix PREWARM_ (prewarm's)",
        ),
        (
            {"ports": []},
            "$.workload.ports: at least one port is needed (the first is the one probed)",
        ),
    ],
)
def test_invalid_extensions_name_the_json_path_and_the_expected_type(workload: dict, issue: str):
    with pytest.raises(SchemaValidationError) as error:
        compose_workload("acme", [_ext("bad", workload)])
    assert error.value.source == "extension 'bad'"
    assert str(error.value) == f"extension 'bad' is invalid:\n  {issue}"


def test_envelope_errors_and_duplicate_names():
    with pytest.raises(SchemaValidationError) as error:
        validate_extension({"name": "Big Cache", "workload": {}, "owner": "me"})
    assert error.value.issues == [
        ("$.name", "string should match pattern '^[a-z0-9][a-z0-9._-]*$'"),
        ("$.owner", "unknown key (allowed here: name, precedence, description, workload)"),
    ]
    with pytest.raises(SchemaValidationError, match=r"\$\.workload: missing required key"):
        validate_extension({"name": "x"})
    with pytest.raises(SchemaError, match="two extensions are named 'a'"):
        compose_workload("acme", [_ext("a", {}), _ext("a", {"cpu": 1})])


def test_loading_extension_files(tmp_path: Path):
    assert load_extension(EXAMPLES_DIR / "redis-cache.json")["name"] == "redis-cache"
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",\n "workload": }')
    with pytest.raises(SchemaError, match=r"broken.json: not valid JSON at line 2 column 14"):
        load_extension(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(SchemaError, match="an extension must be a JSON object, got array"):
        load_extension(listed)


def test_every_shipped_example_is_valid_on_its_own():
    for document in _examples():
        assert validate_extension(document).name == document["name"]


# --- anticipated and rendering ------------------------------------------------------------


def test_anticipated_from_a_profile_row():
    assert anticipated_from_profile(PROFILE, 4) == {
        "window_start": "2026-01-05T12:00:00Z",
        "window_end": "2026-01-05T13:00:00Z",
        "peak": {
            "concurrency": {"p50": 3.0, "p90": 5.0, "confidence": 0.7},
            "cpu_cores": {"p50": 1.5, "p90": 2.5, "confidence": 0.55},
        },
        "recommended_pool_size": 4,
        "confidence": 0.7,
        "model_version": "3",
        "generated_at": "2026-01-05T11:50:00Z",
        "source": "plan",
        "services": {},  # sized when composed with the client's declared services
    }
    backwards = {**PROFILE, "window_end": PROFILE["window_start"]}
    with pytest.raises(SchemaValidationError, match="window_end must be after window_start"):
        anticipated_from_profile(backwards, 1)
    with pytest.raises(SchemaValidationError, match=r"\$\.recommended_pool_size: input should"):
        anticipated_from_profile(PROFILE, -1)


def test_render_container_config():
    composite = compose_workload("acme", _examples(), anticipated_from_profile(PROFILE, 4))
    config = render_container_config(composite)
    assert set(config) == {"image", "cpu", "memory_mb", "env", "labels", "port"}
    assert (config["image"], config["cpu"], config["memory_mb"], config["port"]) == (
        "prewarm/worker:latest",
        2.0,
        1024,
        8080,
    )
    env = config["env"]
    assert env["CACHE_BACKEND"] == "local-lru"  # the client's own variables stay
    assert env["PREWARM_CLIENT_ID"] == "acme"
    assert env["PREWARM_PORTS"] == "8080,9090"
    assert env["PREWARM_CACHE_TTL_SECONDS"] == "60"
    assert json.loads(env["PREWARM_CACHE"])["warm_keys"] == [
        "config:global",
        "catalog:top-100",
        "session:index",
    ]
    assert json.loads(env["PREWARM_ROUTING"]) == {
        "affinity": "session",
        "weights": {"node-a": 0.9, "spot-c": 0.1},
    }
    assert json.loads(env["PREWARM_DB_INDEX_HINTS"])[1] == {
        "table": "invoices",
        "columns": ["invoice_no"],
        "unique": True,
    }
    assert env["PREWARM_ANTICIPATED_WINDOW_START"] == "2026-01-05T12:00:00Z"
    assert env["PREWARM_ANTICIPATED_POOL_SIZE"] == "4"
    assert env["PREWARM_ANTICIPATED_CONFIDENCE"] == "0.7"
    assert json.loads(env["PREWARM_ANTICIPATED_PEAK"])["cpu_cores"] == {
        "p50": 1.5,
        "p90": 2.5,
        "confidence": 0.55,
    }
    assert config["labels"] == {
        "prewarm.config-hash": config_hash(composite),
        "prewarm.extensions": "canary-routing,redis-cache,reporting-db,premium-latency",
        "prewarm.anticipated-window": "2026-01-05T12:00:00Z/2026-01-05T13:00:00Z",
    }


def test_the_config_hash_ignores_the_anticipated_section():
    static = compose_workload("acme", _examples())
    with_window = compose_workload("acme", _examples(), anticipated_from_profile(PROFILE, 4))
    assert config_hash(static) == config_hash(with_window)
    changed = compose_workload("acme", [*_examples(), _ext("more", {"image": "other:1"})])
    assert config_hash(changed) != config_hash(static)


def test_a_forecast_size_is_what_the_container_gets_and_a_new_one_replaces_members():
    declared = compose_workload("acme", _examples(), anticipated_from_profile(PROFILE, 4))

    def sized(memory_mb: float, pool_size: int = 4) -> dict:
        composite = compose_workload(
            "acme", _examples(), anticipated_from_profile(PROFILE, pool_size)
        )
        return {**composite, "size": {"cpu": 0.75, "memory_mb": memory_mb}}

    config = render_container_config(sized(384.0))
    assert (config["cpu"], config["memory_mb"]) == (0.75, 384)  # not the declared 2.0, 1024
    assert config["env"]["PREWARM_MEMORY_MB"] == "384"
    served = json.loads(config["env"]["PREWARM_CONFIG"])
    assert served["memory_mb"] == 1024.0 and served["size"]["memory_mb"] == 384.0
    assert config_hash(sized(384.0)) != config_hash(declared)
    assert config_hash(sized(768.0)) != config_hash(sized(384.0))
    # A new window or pool size is not a new member; a new size is.
    assert config_hash(sized(384.0, pool_size=9)) == config_hash(sized(384.0))


def test_show_is_pretty_json_in_composition_order():
    composite = compose_workload("acme", _examples())
    text = show_composite(composite)
    assert json.loads(text) == composite
    assert text.splitlines()[1] == '  "client_id": "acme",'
    assert list(json.loads(text))[:3] == ["client_id", "extensions", "image"]


def test_workload_json_schema_for_clients():
    schema = workload_json_schema()
    assert schema["additionalProperties"] is False
    assert {
        "image",
        "cpu",
        "memory_mb",
        "env",
        "ports",
        "database",
        "cache",
        "routing",
        "services",
        "sizing",
    } == set(schema["properties"])
