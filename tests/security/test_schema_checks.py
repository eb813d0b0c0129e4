"""The schema checks alone: each attack refused naming its field, env allow/deny lists,
bounded numbers and depth, and good extensions composed exactly as before (issue 12)."""

from __future__ import annotations

import pytest

from provisioning.schema import compose_workload
from provisioning.schema_checks import (
    MAX_DEPTH,
    SchemaRejected,
    check_json_text,
    env_name_problem,
)
from provisioning.schema_extensions import EXAMPLES_DIR, load_extensions
from provisioning.schema_render import render_container_config
from tests.security.schema_attacks import ATTACKS, LIMITS, extension


@pytest.mark.parametrize(
    ("document", "field", "problem"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_each_attack_is_refused_naming_the_field(document: dict, field: str, problem: str):
    with pytest.raises(SchemaRejected) as refused:
        compose_workload("acme", [document], limits=LIMITS)
    message = str(refused.value)
    assert message.startswith("extension 'evil' is refused: $")
    assert field in refused.value.field and problem in message
    assert len(message) < 400  # never the 200 KB value or the 31 MB document echoed back


def test_control_characters_tab_and_newline():
    with pytest.raises(SchemaRejected, match=r"key holds control character U\+000A"):
        compose_workload("acme", [extension("evil", {"routing": {"weights": {"a\nb": 1}}})])
    with pytest.raises(SchemaRejected, match=r"lone surrogate U\+D800"):
        compose_workload("acme", [extension("evil", {"env": {"A": "\ud800"}})])
    kept = compose_workload("acme", [extension("ok", {"env": {"MOTD": "line 1\n\tline 2"}})])
    assert kept["env"] == {"MOTD": "line 1\n\tline 2"}


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2.0**60])
def test_numbers_are_finite_and_bounded(value: float):
    with pytest.raises(SchemaRejected) as refused:
        compose_workload("acme", [extension("evil", {"cache": {"size_mb": value}})])
    assert refused.value.field == "$.workload.cache.size_mb"


def test_the_env_allow_and_deny_lists():
    for name in (
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "PERL5OPT",
        "RUBYOPT",
        "SHELLOPTS",
        "MALLOC_CHECK_",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "HOME",
        "IFS",
        "ENV",
        "TMPDIR",
        "NODE_OPTIONS",
        "NLSPATH",
        "LOCALPATH",
        "HOSTALIASES",
        "RES_OPTIONS",
        "PREWARM_MEMBER",
    ):
        assert env_name_problem(name) is not None, name
    for name in ("A", "CACHE_BACKEND", "PATHWAY", "HOMEPAGE", "LDAP_URL", "X" * 64):
        assert env_name_problem(name) is None, name
    for name in ("X" * 65, "1A", "_A", "A-B", "A B", ""):
        assert "pattern" in (env_name_problem(name) or ""), name


def test_a_base_from_the_clients_table_is_bounded_too():
    with pytest.raises(SchemaRejected) as refused:
        compose_workload("acme", [], base={"cpu": 1e5}, limits=LIMITS)
    assert str(refused.value).startswith("composite of 'acme' is refused: $.cpu: 100000 is more")


def test_render_refuses_a_composite_built_elsewhere():
    composite = compose_workload("acme", [])
    composite["env"] = {"LD_PRELOAD": "/tmp/x.so"}
    with pytest.raises(SchemaRejected, match=r"\$\.env\.LD_PRELOAD: denied"):
        render_container_config(composite)


def test_a_passed_composite_is_not_walked_again_and_refusals_are_never_remembered(monkeypatch):
    from provisioning import schema_checks

    walks = []
    walk = schema_checks.check_document
    monkeypatch.setattr(schema_checks, "check_document", lambda d, s: walks.append(1) or walk(d, s))
    composite = compose_workload("acme", [extension("ok", {"env": {"MOTD": "hi"}})], limits=LIMITS)
    walks.clear()
    schema_checks.check_composite(composite, "again", LIMITS)
    schema_checks.check_composite(dict(composite), "a copy", LIMITS)
    schema_checks.check_composite(composite, "rendered", None)  # no limits: a subset
    schema_checks.check_composite(dict(reversed(composite.items())), "reordered", None)
    assert walks == []  # passed before, under these limits: not walked again
    # Stricter limits are checked afresh, and refuse.
    strict = schema_checks.SchemaLimits(("other/image:1",), 16.0, 65536.0)
    for _ in range(2):
        with pytest.raises(SchemaRejected, match="not an allowed image"):
            schema_checks.check_composite(composite, "strict", strict)
    assert len(walks) == 2
    # A refused document is refused every time, with its message.
    bad = {**composite, "env": {"LD_PRELOAD": "/tmp/x.so"}}
    for _ in range(2):
        with pytest.raises(SchemaRejected, match=r"\$\.env\.LD_PRELOAD: denied"):
            schema_checks.check_composite(bad, "bad", LIMITS)
    # What JSON would write alike is told apart: a key 1 is not the key "1" that passed.
    passed = {**composite, "routing": {"weights": {"1": 1.0}}}
    schema_checks.check_composite(passed, "passed", LIMITS)
    with pytest.raises(SchemaRejected, match="a key is integer, not a string"):
        schema_checks.check_composite({**composite, "routing": {"weights": {1: 1.0}}}, "x", LIMITS)
    with pytest.raises(SchemaRejected, match=r"\$: a key is integer, not a string"):
        schema_checks.check_composite({**composite, 1: "x"}, "top", LIMITS)


def test_a_deep_document_is_refused_before_it_is_parsed():
    check_json_text("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f.json")  # at the limit: fine
    with pytest.raises(SchemaRejected, match=r"f.json is refused: \$: nested deeper than 8"):
        check_json_text('{"a": "[[[[[[[[[[", "b":' + "[" * 9 + "]" * 9 + "}", "f.json")
    with pytest.raises(SchemaRejected, match=r"f.json is refused: \$: nested deeper than 8"):
        check_json_text("[" * 100_000 + "]" * 100_000, "f.json")
    with pytest.raises(SchemaRejected, match=r"\$: 2000001 bytes, more than 1048576"):
        check_json_text("[" + "0," * 999_999 + "0]", "f.json")


def test_good_extensions_compose_exactly_as_before():
    composite = compose_workload(
        "acme", load_extensions(sorted(EXAMPLES_DIR.glob("*.json"))), limits=LIMITS
    )
    assert composite == compose_workload("acme", load_extensions(EXAMPLES_DIR.glob("*.json")))
    assert composite["extensions"] == [
        "canary-routing",
        "redis-cache",
        "reporting-db",
        "premium-latency",
    ]
    assert (composite["cpu"], composite["memory_mb"], composite["image"]) == (
        2.0,
        1024,
        "prewarm/worker:latest",
    )
    assert composite["env"] == {"CACHE_BACKEND": "local-lru", "REPORT_CONCURRENCY": "4"}
    config = render_container_config(composite)
    assert config["env"]["CACHE_BACKEND"] == "local-lru" and config["port"] == 8080


# --- the CLI: `prewarm schema add` in a subprocess ------------------------------------------
