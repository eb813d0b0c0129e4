"""The small warehouse the activation tests share: clients a (planned 1 member), b and f
(forecast-only), a key each; a fixture copies it per test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warehouse.db import connect, fetch_frame

PLANNED_FOR_A = 1  # members the applied plan gives client a


@dataclass(frozen=True)
class FloodWorld:
    """The test warehouse: clients a (planned 1 member), b, f (forecast-only), a key each."""

    path: Path
    key_a: str
    key_b: str
    key_f: str


def activation_events(path: Path, client_id: str) -> list[dict[str, Any]]:
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            "SELECT * FROM pool_events WHERE client_id = ? AND action = 'activate'"
            " ORDER BY happened_at",
            [client_id],
        ).to_dicts()
