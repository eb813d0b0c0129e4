"""A client's predicted profile as the API serves it (and `prewarm profile --json` prints it)."""

from __future__ import annotations

import math
from typing import Any

from api.models import Peak, Profile, ProfileWindow, ServiceNeed
from core.times import aware_utc
from core.vocabulary import METRICS
from provisioning.schema import anticipated_services


def profile_response(
    client_id: str, rows: list[dict[str, Any]], services: dict[str, Any]
) -> Profile:
    """The profile of the latest prediction run's `rows`, each window with the needs of the
    `services` the client's composite declares."""
    windows = [
        ProfileWindow(
            start=aware_utc(row["window_start"]),
            end=aware_utc(row["window_end"]),
            duration_minutes=float(row["duration_minutes"]),
            peaks={
                metric: Peak(
                    p50=_finite(row.get(f"{metric}_p50")),
                    p90=_finite(row.get(f"{metric}_p90")),
                    confidence=_finite(row.get(f"{metric}_confidence")),
                )
                for metric in METRICS
            },
            p_active=_finite(row.get("p_active")),
            confidence=float(row["confidence"]),
            model_name=str(row["model_name"]),
            model_version=str(row["model_version"]),
            services={
                name: ServiceNeed(**need)
                for name, need in anticipated_services(
                    services,
                    {
                        "concurrency": {
                            "p50": _finite(row.get("concurrency_p50")),
                            "p90": _finite(row.get("concurrency_p90")),
                        }
                    },
                ).items()
            },
        )
        for row in rows
    ]
    generated_at = aware_utc(rows[0]["generated_at"]) if rows else None
    return Profile(client_id=client_id, generated_at=generated_at, windows=windows)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
