"""Prediction's model cache is bounded (PREWARM_PREDICT_CACHE_CLIENTS): the first clients met
are kept, later ones load every run, a kept client's new version replaces its old one, and
the bound being reached is said once. The loader is a stand-in: what is under test is the
cache's admission, not MLflow."""

from __future__ import annotations

import logging

import pytest

from flows import predict
from flows.settings import Settings


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (client, version) pairs the stand-in loader was asked for; caches start empty."""
    asked: list[tuple[str, str]] = []

    def load(client_id: str, version: str, tracking_uri: str, stored: object = None) -> object:
        asked.append((client_id, version))
        return object()

    monkeypatch.setattr(predict, "load_forecaster_version", load)
    monkeypatch.setattr(predict, "_CACHE", {})
    monkeypatch.setattr(predict, "_FULL_SAID", predict.threading.Event())
    return asked


def test_the_first_clients_are_kept_and_later_ones_load_every_run(
    loads: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flows.predict"):
        for _ in range(3):  # three runs over the same four clients, bound 2
            got = {c: predict._forecaster(c, "champion", "1", "sqlite://", 2) for c in "abcd"}
    assert set(predict._CACHE) == {"a", "b"}
    assert loads.count(("a", "1")) == 1 and loads.count(("b", "1")) == 1
    assert loads.count(("c", "1")) == 3 and loads.count(("d", "1")) == 3
    assert got["a"] is predict._CACHE["a"][1]
    full = [r for r in caplog.records if "PREWARM_PREDICT_CACHE_CLIENTS" in r.getMessage()]
    assert len(full) == 1


def test_a_kept_clients_new_version_replaces_its_old_one(loads: list[tuple[str, str]]) -> None:
    predict._forecaster("a", "champion", "1", "sqlite://", 1)
    newer = predict._forecaster("a", "champion", "2", "sqlite://", 1)
    kept = predict._CACHE
    assert kept == {"a": ("2", newer)}
    assert predict._forecaster("a", "champion", "2", "sqlite://", 1) is newer
    assert loads == [("a", "1"), ("a", "2")]


@pytest.mark.parametrize("value", ["-1", "2000000", "lots"])
@pytest.mark.parametrize("name", ["predict_cache_clients", "predict_scored_clients"])
def test_the_bounds_are_range_checked(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"PREWARM_{name.upper()}", value)
    with pytest.raises(ValueError, match=name):
        Settings()
