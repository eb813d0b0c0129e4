"""`prewarm ingest --source events --attributes FILE`: an event log's clients get their
region, tier and service from a sidecar; a bad sidecar is refused whole, naming the line,
and nothing of its event log loads."""

from __future__ import annotations

from pathlib import Path

from warehouse.db import connect, fetch_frame

EVENTS = "client_id,ts,requests\n" + "".join(
    f"{c},2026-01-01T00:{m:02d}:00Z,{m + 1}\n" for c in ("shop", "blog") for m in (0, 5, 10)
)


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _clients(warehouse: Path) -> dict[str, dict]:
    with connect(warehouse, read_only=True) as con:
        rows = fetch_frame(con, "SELECT client_id, region, tier, service FROM clients").to_dicts()
    return {r.pop("client_id"): r for r in rows}


def _ingest(run_cli, tmp_path, sidecar_text: str, name: str = "attrs.csv"):
    return run_cli(
        "ingest",
        "--source",
        "events",
        "--path",
        _file(tmp_path, "calls.csv", EVENTS),
        "--attributes",
        _file(tmp_path, name, sidecar_text),
    )


def test_event_log_clients_take_their_attributes_from_the_sidecar(
    run_cli, tmp_path, warehouse_path
):
    sidecar = (
        "client_id,region,tier,service\nshop,eu,premium,api\nblog,us,,web\nghost,eu,free,api\n"
    )
    code, out, _ = _ingest(run_cli, tmp_path, sidecar)
    assert code == 0, out
    assert "1 attribute row(s) name clients without events here: ignored" in out
    assert _clients(warehouse_path) == {
        "shop": {"region": "eu", "tier": "premium", "service": "api"},
        "blog": {"region": "us", "tier": None, "service": "web"},
    }
    # The same calls with a corrected sidecar are new content: they load, and update.
    code, out, _ = _ingest(run_cli, tmp_path, "client_id,tier\nblog,free\n", "attrs2.csv")
    assert code == 0 and "Loaded" in out
    assert _clients(warehouse_path)["blog"] == {"region": "us", "tier": "free", "service": "web"}


def test_a_bad_sidecar_is_refused_whole_and_nothing_loads(run_cli, tmp_path, warehouse_path):
    sidecar = "client_id,region\nshop,eu\nblog,../../etc\n"
    code, out, err = _ingest(run_cli, tmp_path, sidecar)
    assert code == 1
    assert "line 3: region '../../etc' is not 1-64 letters, digits or ._- starting" in err
    assert "Traceback" not in out + err
    assert not warehouse_path.exists() or _clients(warehouse_path) == {}


def test_a_sidecar_without_attribute_columns_or_with_a_client_twice_is_refused(
    run_cli, tmp_path, warehouse_path
):
    code, _, err = _ingest(run_cli, tmp_path, "client_id,colour\nshop,red\n")
    assert code == 1 and "needs a client_id column and at least one of region, tier, service" in err
    code, _, err = _ingest(run_cli, tmp_path, "client_id,tier\nshop,a\nshop,b\n", "twice.csv")
    assert code == 1 and "names a client twice: shop" in err


def test_attributes_belong_to_an_event_log_only(run_cli, tmp_path):
    code, _, err = run_cli(
        "ingest", "--clients", "2", "--days", "1", "--attributes", _file(tmp_path, "a.csv", "x")
    )
    assert code == 1 and "use it with --source events" in err
