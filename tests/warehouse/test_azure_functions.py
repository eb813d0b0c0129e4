"""The Azure Functions 2019 trace reader on a hand-written 3-function, 10-minute fixture."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from warehouse.errors import SourceError
from warehouse.sources.azure_functions import instances_needed, load_azure_functions

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "azure_tiny"

# blake2b(digest_size=6) of "owner/app/function", computed once with hashlib and pinned here:
# a change would orphan every stored client.
FN1 = "e74919d6401e"  # owner1/app1/fn1, http, Average 1500 ms
FN2 = "637d01cbbc9e"  # owner1/app1/fn2, timer, Average 90000 ms (longer than a minute)
FN3 = "c34965da7ef6"  # owner2/app2/fn3, queue, Average 20000 ms

# app1 memory = mean(100, 200) = 150 MB (two memory.csv rows); app2 = 64 MB.
EXPECTED = {
    FN1: {
        "requests": [10, 40, 0, 1, 80, 5, 39, 41, 100, 3],
        # inv * 1500 / 60000 = inv / 40 -> .25 1.0 0 .025 2.0 .125 .975 1.025 2.5 .075
        "concurrency": [1, 1, 0, 1, 2, 1, 1, 2, 3, 1],
        # need * 150
        "memory_mb": [150, 150, 0, 150, 300, 150, 150, 300, 450, 150],
    },
    FN2: {
        "requests": [1, 2, 0, 4, 3, 1, 0, 10, 5, 2],
        # inv * 90000 / 60000 = inv * 1.5 -> 1.5 3.0 0 6.0 4.5 1.5 0 15.0 7.5 3.0
        "concurrency": [2, 3, 0, 6, 5, 2, 0, 15, 8, 3],
        # need * 150
        "memory_mb": [300, 450, 0, 900, 750, 300, 0, 2250, 1200, 450],
    },
    FN3: {
        "requests": [3, 6, 7, 0, 1, 2, 9, 10, 30, 4],
        # inv * 20000 / 60000 = inv / 3 -> 1 2 2.33 0 .33 .67 3 3.33 10 1.33
        "concurrency": [1, 2, 3, 0, 1, 1, 3, 4, 10, 2],
        # need * 64
        "memory_mb": [64, 128, 192, 0, 64, 64, 192, 256, 640, 128],
    },
}


def _series(rows: pl.DataFrame, client_id: str, column: str) -> list[float]:
    return rows.filter(pl.col("client_id") == client_id).sort("ts")[column].to_list()


def _copy_tiny(tmp_path: Path) -> Path:
    target = tmp_path / "trace"
    shutil.copytree(TINY, target)
    return target


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reads_requests_concurrency_and_memory_per_minute():
    batch = load_azure_functions(TINY)

    assert batch.source == "azure-functions"
    assert batch.kind == "series"
    assert batch.freq_seconds == 60
    assert batch.location == str(TINY)
    assert batch.read_error is None
    assert batch.rows.schema == pl.Schema(
        {
            "client_id": pl.String(),
            "ts": pl.Datetime("us"),
            "requests": pl.Float64(),
            "concurrency": pl.Float64(),
            "memory_mb": pl.Float64(),
        }
    )
    assert batch.rows.height == 30
    for client_id, expected in EXPECTED.items():
        for column, values in expected.items():
            assert _series(batch.rows, client_id, column) == [float(v) for v in values], (
                client_id,
                column,
            )


def test_instances_needed_by_hand():
    """The one need formula (loader and replay): 0 if inv == 0 else max(1, ceil(inv x ms / 60k))."""
    cases = [  # (invocations, avg ms, instances)
        (0, 1000.0, 0),  # no invocation, no instance, whatever the duration
        (1, 10.0, 1),  # 10 ms of a minute busy: ceil(0.000167) = 1
        (60, 1000.0, 1),  # 60 s: exactly one instance busy all minute
        (61, 1000.0, 2),  # 61000 / 60000 -> ceil 2
        (120, 1000.0, 2),  # exact multiple stays exact
        # 420000 / 60000 is exactly 7; dividing first, 100 x 0.07 is 7.000000000000001 -> 8
        (100, 4200.0, 7),
        (3, 90_000.0, 5),  # 4.5 -> 5
    ]
    frame = pl.DataFrame(
        {"inv": [float(i) for i, _, _ in cases], "ms": [ms for _, ms, _ in cases]},
        schema={"inv": pl.Float64, "ms": pl.Float64},
    )
    need = frame.select(instances_needed(pl.col("inv"), pl.col("ms")))
    assert need.dtypes == [pl.Float64]
    assert need.to_series().to_list() == [float(n) for _, _, n in cases]


def test_minute_columns_become_timestamps_of_the_given_day():
    default = load_azure_functions(TINY)
    ts = _series(default.rows, FN1, "ts")
    # minute 480 is 08:00, minute 489 is 08:09
    assert ts[0] == datetime(2019, 7, 15, 8, 0)
    assert ts[-1] == datetime(2019, 7, 15, 8, 9)
    assert ts == [datetime(2019, 7, 15, 8, m) for m in range(10)]

    other_day = load_azure_functions(TINY, day=date(2021, 2, 3))
    assert _series(other_day.rows, FN3, "ts")[0] == datetime(2021, 2, 3, 8, 0)
    assert other_day.content_hash != default.content_hash


def test_client_ids_are_stable_short_hashes_of_owner_app_function():
    first = load_azure_functions(TINY)
    second = load_azure_functions(TINY)

    assert hashlib.blake2b(b"owner1/app1/fn2", digest_size=6).hexdigest() == FN2
    assert first.clients["client_id"].to_list() == [FN1, FN2, FN3]
    assert second.clients["client_id"].to_list() == [FN1, FN2, FN3]
    assert first.rows["client_id"].unique(maintain_order=True).to_list() == [FN1, FN2, FN3]
    assert first.content_hash == second.content_hash


def test_clients_carry_trigger_app_memory_and_originals():
    clients = load_azure_functions(TINY).clients
    by_id = {row["client_id"]: row for row in clients.iter_rows(named=True)}

    assert by_id[FN1]["service"] == "http"
    assert by_id[FN2]["service"] == "timer"
    assert by_id[FN3]["service"] == "queue"
    assert by_id[FN2]["container_memory_mb"] == 150.0  # mean(100, 200)
    assert by_id[FN3]["container_memory_mb"] == 64.0
    assert by_id[FN1]["tier"] is None
    assert by_id[FN1]["region"] is None
    assert by_id[FN1]["container_cpu"] is None
    assert json.loads(by_id[FN2]["attributes"]) == {
        "owner": "owner1",
        "app": "app1",
        "function": "fn2",
        "trigger": "timer",
        "avg_duration_ms": 90000.0,
        "app_memory_mb": 150.0,
        "duration_imputed": False,
        "memory_imputed": False,
    }


def test_raw_is_the_original_text_row_for_row():
    batch = load_azure_functions(TINY)

    assert batch.raw is not None
    assert batch.raw.height == batch.rows.height
    assert set(batch.raw.dtypes) == {pl.String()}
    assert batch.raw.row(0) == ("owner1", "app1", "fn1", "http", "480", "10")
    # row 18 = fn2 (second function), minute 488
    assert batch.raw.row(18) == ("owner1", "app1", "fn2", "timer", "488", "5")
    assert batch.rows.row(18)[1:] == (datetime(2019, 7, 15, 8, 8), 5.0, 8.0, 1200.0)


def test_missing_duration_uses_the_median_of_all_functions(tmp_path):
    trace = _copy_tiny(tmp_path)
    _rewrite(trace / "500_durations.csv", "owner1,app1,fn2,90000,84,60000,120000\n", "")

    batch = load_azure_functions(trace)

    # median(1500, 20000) = 10750 ms; need = ceil(inv * 10750 / 60000)
    # inv 1 2 0 4 3 1 0 10 5 2 -> .18 .36 0 .72 .54 .18 0 1.79 .90 .36
    assert _series(batch.rows, FN2, "concurrency") == [1, 1, 0, 1, 1, 1, 0, 2, 1, 1]
    assert _series(batch.rows, FN2, "memory_mb") == [150, 150, 0, 150, 150, 150, 0, 300, 150, 150]
    attributes = json.loads(batch.clients.filter(pl.col("client_id") == FN2)["attributes"].item())
    assert attributes["avg_duration_ms"] == 10750.0
    assert attributes["duration_imputed"] is True
    assert attributes["memory_imputed"] is False
    assert any("durations" in note for note in batch.notes)


def test_missing_app_memory_uses_the_median_over_apps(tmp_path):
    trace = _copy_tiny(tmp_path)
    # app2 gone, an app that has no invocations added: per-app means are app1 150, app9 300
    _rewrite(
        trace / "500_memory.csv", "fn3,owner2,app2,300,64,60\n", "fn9,owner9,app9,10,300,290\n"
    )

    batch = load_azure_functions(trace)

    # median over apps (150, 300) = 225, not the median over rows (100, 200, 300) = 200
    # fn3 need 1 2 3 0 1 1 3 4 10 2 -> * 225
    assert _series(batch.rows, FN3, "memory_mb") == [
        225,
        450,
        675,
        0,
        225,
        225,
        675,
        900,
        2250,
        450,
    ]
    fn3 = batch.clients.filter(pl.col("client_id") == FN3)
    assert fn3["container_memory_mb"].item() == 225.0
    attributes = json.loads(fn3["attributes"].item())
    assert attributes["memory_imputed"] is True
    assert attributes["duration_imputed"] is False


def test_bad_cells_survive_as_null_or_negative_with_raw_text(tmp_path):
    trace = _copy_tiny(tmp_path)
    _rewrite(
        trace / "500_invocations.csv",
        "owner1,app1,fn1,http,10,40,0,1,",
        "owner1,app1,fn1,http,10,abc,,-4,",
    )

    batch = load_azure_functions(trace)

    assert batch.rows.height == 30  # nothing dropped
    fn1 = batch.rows.filter(pl.col("client_id") == FN1).sort("ts")
    assert fn1["requests"].to_list()[:4] == [10.0, None, None, -4.0]
    assert fn1["concurrency"].to_list()[:4] == [1.0, None, None, None]
    assert fn1["memory_mb"].to_list()[:4] == [150.0, None, None, None]
    assert batch.raw is not None
    assert batch.raw["invocations"].to_list()[:4] == ["10", "abc", "", "-4"]
    assert batch.raw["minute"].to_list()[:4] == ["480", "481", "482", "483"]
    # the other functions are untouched
    assert _series(batch.rows, FN2, "concurrency") == EXPECTED[FN2]["concurrency"]


def test_missing_file_is_named(tmp_path):
    trace = _copy_tiny(tmp_path)
    (trace / "500_memory.csv").unlink()

    with pytest.raises(SourceError) as error:
        load_azure_functions(trace)

    message = str(error.value)
    assert str(trace) in message
    assert "no file ending in 'memory.csv'" in message
    assert "invocations" not in message.split(";")[0]


def test_ambiguous_file_is_named(tmp_path):
    trace = _copy_tiny(tmp_path)
    shutil.copy(trace / "500_invocations.csv", trace / "invocations.csv")

    with pytest.raises(SourceError) as error:
        load_azure_functions(trace)

    message = str(error.value)
    assert str(trace) in message
    assert "2 files ending in 'invocations.csv' (500_invocations.csv, invocations.csv)" in message


def test_missing_directory_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        load_azure_functions(tmp_path / "nowhere")


def test_file_without_identity_columns_is_a_read_error_not_a_crash(tmp_path):
    trace = _copy_tiny(tmp_path)
    _rewrite(trace / "500_durations.csv", "HashFunction,Average", "Function,Average")

    batch = load_azure_functions(trace)

    assert batch.read_error == "500_durations.csv lacks column(s) HashFunction"
    assert batch.rows.height == 0
