"""`prewarm api` serves with the bounds its settings give (PREWARM_API_MAX_CLIENTS,
PREWARM_API_MAX_QUEUED_OUTCOMES), and refuses values outside them before serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
from fastapi import FastAPI

import api.server
from flows.cli import services


def _served_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> FastAPI:
    monkeypatch.setenv("PREWARM_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    served: dict[str, Any] = {}
    monkeypatch.setattr(api.server, "serve", lambda app, **_: served.update(app=app))
    services.api(host="127.0.0.1", port=None)
    return served["app"]


def test_the_api_command_bounds_views_and_queued_outcomes_by_its_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = _served_app(monkeypatch, tmp_path).state.prewarm
    assert (defaults.views._max_clients, defaults.recorder._max_queued) == (10_000, 10_000)
    bounded = _served_app(
        monkeypatch,
        tmp_path,
        PREWARM_API_MAX_CLIENTS="7",
        PREWARM_API_MAX_QUEUED_OUTCOMES="9",
    ).state.prewarm
    assert (bounded.views._max_clients, bounded.recorder._max_queued) == (7, 9)


@pytest.mark.parametrize(
    ("name", "value"),
    [("PREWARM_API_MAX_CLIENTS", "0"), ("PREWARM_API_MAX_QUEUED_OUTCOMES", "2000000")],
)
def test_bounds_outside_their_range_are_refused_before_serving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=name.removeprefix("PREWARM_").lower()):
        _served_app(monkeypatch, tmp_path, **{name: value})
