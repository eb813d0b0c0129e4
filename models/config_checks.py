"""Checks shared by the model configurations (`ForecastConfig`, `ExceedanceConfig`)."""

from __future__ import annotations


def check_freq_seconds(freq_seconds: int) -> None:
    """A ValueError unless the grid step is at least one second."""
    if freq_seconds < 1:
        raise ValueError(f"freq_seconds must be >= 1, got {freq_seconds}")


def check_at_least_one(**values: int) -> None:
    """A ValueError naming all of `values` ("a, b and c must be >= 1") when any is below 1."""
    if min(values.values()) < 1:
        *head, last = values
        names = f"{', '.join(head)} and {last}" if head else last
        raise ValueError(f"{names} must be >= 1")
