"""The schema's settings a member applies: the cache's policy and bounds, and index hints
held to plain SQL names, since they reach SQL on the member."""

from __future__ import annotations

import pytest

from provisioning.schema import compose_workload
from provisioning.schema_model import SchemaValidationError
from provisioning.schema_render import config_hash, render_container_config


def _compose(workload: dict) -> dict:
    return compose_workload("acme", [{"name": "x", "workload": workload}])


def test_the_cache_policy_defaults_to_lru_and_reaches_the_container():
    assert _compose({})["cache"]["policy"] == "lru"
    config = render_container_config(_compose({"cache": {"policy": "lfu", "size_mb": 1}}))
    assert config["env"]["PREWARM_CACHE_POLICY"] == "lfu"
    assert '"policy":"lfu"' in config["env"]["PREWARM_CACHE"]


def test_a_member_built_before_the_policy_existed_keeps_its_hash():
    composite = _compose({})
    before = {**composite, "cache": {k: v for k, v in composite["cache"].items() if k != "policy"}}
    assert config_hash(composite) == config_hash(before)
    lfu = _compose({"cache": {"policy": "lfu"}})
    assert config_hash(lfu) != config_hash(composite)


def test_index_hints_with_plain_names_are_kept():
    hints = [
        {"table": "orders", "columns": ["customer_id", "created_at"]},
        {"table": "_t1", "columns": ["A" * 63], "unique": True},
    ]
    assert _compose({"database": {"index_hints": hints}})["database"]["index_hints"] == [
        {**hints[0], "unique": False},
        hints[1],
    ]


@pytest.mark.parametrize(
    ("workload", "issue"),
    [
        (
            {"cache": {"policy": "random"}},
            "$.workload.cache.policy: input should be 'lru', 'lfu' or 'ttl'",
        ),
        (
            {"cache": {"warm_keys": ["k" * 251]}},
            "$.workload.cache.warm_keys: warm key of 251 bytes, more than 250",
        ),
        (
            {"cache": {"warm_keys": ["é" * 126]}},  # 126 characters, 252 bytes
            "$.workload.cache.warm_keys: warm key of 252 bytes, more than 250",
        ),
        (
            {"cache": {"warm_keys": [""]}},
            "$.workload.cache.warm_keys[0]: string should have at least 1 character",
        ),
        (
            {"cache": {"warm_keys": [f"k{i}" for i in range(1025)]}},
            "$.workload.cache.warm_keys: list should have at most 1024 items after validation,"
            " not 1025",
        ),
        (
            {"database": {"index_hints": [{"table": "orders; DROP TABLE x", "columns": ["a"]}]}},
            "$.workload.database.index_hints[0].table:"
            " string should match pattern '^[A-Za-z_][A-Za-z0-9_]{0,62}$'",
        ),
        (
            {"database": {"index_hints": [{"table": "t", "columns": ['a" ) --']}]}},
            "$.workload.database.index_hints[0].columns[0]:"
            " string should match pattern '^[A-Za-z_][A-Za-z0-9_]{0,62}$'",
        ),
        (
            {"database": {"index_hints": [{"table": "t", "columns": ["a" * 64]}]}},
            "$.workload.database.index_hints[0].columns[0]:"
            " string should match pattern '^[A-Za-z_][A-Za-z0-9_]{0,62}$'",
        ),
        (
            {"database": {"index_hints": [{"table": "SQLite_master", "columns": ["a"]}]}},
            "$.workload.database.index_hints[0].table:"
            " table 'SQLite_master': names starting sqlite_ are SQLite's own",
        ),
        (
            {"database": {"index_hints": [{"table": "t", "columns": ["Id", "id"]}]}},
            "$.workload.database.index_hints[0].columns: columns repeat: ['Id', 'id']",
        ),
        (
            {
                "database": {
                    "index_hints": [{"table": "t", "columns": [f"c{i}" for i in range(17)]}]
                }
            },
            "$.workload.database.index_hints[0].columns:"
            " list should have at most 16 items after validation, not 17",
        ),
        (
            {"database": {"index_hints": [{"table": "t", "columns": ["a"]}] * 33}},
            "$.workload.database.index_hints:"
            " list should have at most 32 items after validation, not 33",
        ),
    ],
)
def test_unsafe_or_unbounded_settings_are_refused_naming_the_path(workload: dict, issue: str):
    with pytest.raises(SchemaValidationError) as error:
        _compose(workload)
    assert str(error.value) == f"extension 'x' is invalid:\n  {issue}"
