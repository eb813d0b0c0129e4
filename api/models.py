"""Request and response bodies of the API, as pydantic models (they are the OpenAPI schema).

Request models are strict where a lenient parse would hide a client's mistake: a score of
"5" or true is not 5 (5.0 is: JSON Schema calls it an integer), unknown fields are
rejected, NaN and infinities are not numbers.
Datetimes must be ISO-8601 strings (a bare number is not read as a Unix time); one without
an offset is taken as UTC, the warehouse's convention.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

from core.times import aware_utc
from core.vocabulary import MetricName, TierName

Metric = MetricName
MAX_COMMENT_CHARS = 2000
# Feedback is about forecast windows around now: a date years away is a typo or a probe.
MAX_WINDOW_DISTANCE = timedelta(days=400)
_ISO_DATE_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_string(value: Any) -> Any:
    # Lax parsing would read 1714564800 or "1714564800" as a Unix time: ask for a date.
    if not isinstance(value, str) or not _ISO_DATE_START.match(value):
        raise ValueError("expected an ISO-8601 date-time string, e.g. 2024-05-01T12:00:00Z")
    return value


def _json_integer(value: Any) -> Any:
    # JSON Schema counts 4.0 as an integer (and clients' JSON encoders may write it so);
    # 4.5, "4" and true stay errors, reported by the strict int check that follows.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_string)]
Score = Annotated[int, BeforeValidator(_json_integer), Strict()]
Measurement = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]


class FeedbackIn(BaseModel):
    """A client's rating of one predicted window, with what it really used if it knows."""

    model_config = ConfigDict(extra="forbid")

    window_start: IsoDatetime = Field(description="Start of the window rated (ISO-8601).")
    window_end: IsoDatetime = Field(description="End of the window rated, after its start.")
    score: Score = Field(ge=1, le=5, description="Forecast accuracy: 1 (useless) .. 5 (spot on).")
    actual: dict[Metric, Measurement] | None = Field(
        default=None,
        description="Actual peak usage per metric (non-negative, finite), when known.",
    )
    comment: Annotated[str, Strict()] | None = Field(
        default=None, max_length=MAX_COMMENT_CHARS, description="Free text, at most 2000 chars."
    )

    @model_validator(mode="after")
    def _sane_window(self) -> FeedbackIn:
        self.window_start = aware_utc(self.window_start)
        self.window_end = aware_utc(self.window_end)
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        now = datetime.now(UTC)
        for name in ("window_start", "window_end"):
            if abs(getattr(self, name) - now) > MAX_WINDOW_DISTANCE:
                raise ValueError(
                    f"{name} must be within {MAX_WINDOW_DISTANCE.days} days of now (UTC)"
                )
        return self


class FeedbackOut(BaseModel):
    feedback_id: str = Field(description="Id of the stored feedback row.")


class Health(BaseModel):
    status: Literal["ok"]
    warehouse: bool = Field(description="Whether the warehouse could be opened just now.")


class Peak(BaseModel):
    p50: float | None
    p90: float | None
    confidence: float | None = Field(
        default=None, description="How sure, in [0, 1], of this resource in this window."
    )


class ServiceNeed(BaseModel):
    """What one of the client's declared services needs at the window's peak."""

    kind: str = Field(description="cache, db or queue.")
    version: str
    size_mb: float = Field(description="Declared size per request in flight x peak.")
    connections: int = Field(description="Declared connections per request in flight x peak.")


class ProfileWindow(BaseModel):
    """One predicted window of activity: when, how long, how much, how sure."""

    start: datetime
    end: datetime
    duration_minutes: float
    peaks: dict[str, Peak] = Field(description="Per-resource peak quantiles in the window.")
    p_active: float | None = Field(description="Max probability of at least one instance.")
    confidence: float
    model_name: str
    model_version: str
    services: dict[str, ServiceNeed] = Field(
        default_factory=dict,
        description="Each service the client's schema declares, sized for this window's peak.",
    )


class Profile(BaseModel):
    """A client's current predicted profile: the windows of its latest prediction run."""

    client_id: str
    generated_at: datetime | None = Field(description="When the run was made; null if never.")
    windows: list[ProfileWindow]


class Activated(BaseModel):
    """A warm member now serving the request."""

    member_id: str
    endpoint: str | None
    activation_ms: float = Field(description="From the call to the member's first answer.")
    tier_before: TierName | None = Field(
        description="The member's tier before: active (idle, served at once), shadow, cold."
    )


class ColdStarted(BaseModel):
    """No warm member was there: a new one was started for the request (a cold start)."""

    fallback: Literal["cold-start"]
    member_id: str
    endpoint: str | None
    activation_ms: float = Field(description="From the create call to the first answer.")
    detail: str


class Error(BaseModel):
    detail: str


class FieldError(BaseModel):
    field: str = Field(description="Where: e.g. body.score, path.client_id.")
    message: str
    type: str


class ValidationFailed(BaseModel):
    detail: str = Field(description="Every problem in one sentence, fields named.")
    errors: list[FieldError]


# The rule of warehouse.clients.attribute_problem, documented (Rust regex: $ is the end).
Attribute = Annotated[
    str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", max_length=64)
]


class AttributesIn(BaseModel):
    """Some of the client's attributes to set (null clears one); the others are kept."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    region: Attribute | None = Field(
        default=None, description="Region: calendar events of it apply."
    )
    tier: Attribute | None = Field(default=None, description="Tier: a forecasting feature.")
    service: Attribute | None = Field(default=None, description="Service: a forecasting feature.")


class ClientAttributes(BaseModel):
    client_id: str
    region: str | None
    tier: str | None
    service: str | None


class ExtensionStored(BaseModel):
    name: str = Field(description="The extension's name: POST it again to replace it.")
