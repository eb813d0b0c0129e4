"""FastAPI's native OpenTelemetry: off unless the environment configures OpenTelemetry, so
a request does not ask for providers nobody set up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import opentelemetry.trace
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient


@pytest.fixture
def provider_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per time anything asks OpenTelemetry for the global tracer provider."""
    looked_up: list[int] = []
    original = opentelemetry.trace.get_tracer_provider

    def counted() -> Any:
        looked_up.append(1)
        return original()

    monkeypatch.setattr(opentelemetry.trace, "get_tracer_provider", counted)
    return looked_up


def test_without_opentelemetry_in_the_environment_requests_never_ask_for_it(
    make_app: Callable[..., FastAPI], provider_lookups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    with TestClient(make_app()) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
    assert provider_lookups == []


def test_an_otel_variable_leaves_fastapi_telemetry_as_fastapi_sets_it_up(
    make_app: Callable[..., FastAPI], provider_lookups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "prewarm-api")
    with TestClient(make_app()) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
    assert len(provider_lookups) >= 3  # asked on every request
