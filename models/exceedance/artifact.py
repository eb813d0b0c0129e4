"""The shared exceedance model as one compact file (`models.compact`): its booster in
LightGBM's own model text, its config and the client attributes it remembers."""

from __future__ import annotations

from dataclasses import asdict

from models.compact import compact_model_text, pack, unpack
from models.exceedance.config import ExceedanceConfig
from models.exceedance.model import ExceedanceModel

FORMAT = "prewarm.exceedance/1"


def exceedance_to_bytes(model: ExceedanceModel) -> bytes:
    """The file of a fitted exceedance model."""
    return pack(
        {
            "config": asdict(model.config),
            "booster": compact_model_text(model.booster_string),
            "client_memory": model.client_memory,
            "training_rows": model.training_rows,
        },
        FORMAT,
    )


def exceedance_from_bytes(data: bytes) -> ExceedanceModel:
    """The exceedance model `exceedance_to_bytes` stored."""
    doc = unpack(data, FORMAT)
    return ExceedanceModel(
        ExceedanceConfig(**doc["config"]),
        doc["booster"],
        doc["client_memory"],
        doc["training_rows"],
    )
