"""How fitted models are stored: gzip-compressed JSON documents holding LightGBM's own model
text, stripped of what prediction never reads. Nothing is pickled, so a stored model does not
depend on where its classes live, and no stored file can run code when it is read.

A booster's text keeps its header (feature names and infos, objective) and per tree the
fields prediction walks: split features, thresholds, decision types, children, leaf values
and shrinkage. It drops what only training, feature contributions (SHAP) and importance
reports read: split gains, internal values, weights and counts, leaf weights and counts, the
feature importances and the parameter list (measured: 45 % of the text). Every number kept
is written by LightGBM with full precision, so a booster loaded back predicts bit for bit
what the fitted one did.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import numpy as np

_END_OF_TREES = "end of trees"
# Optional to LightGBM's parser; `tree_sizes` is dropped because the trees it measures shrink.
_DROPPED = (
    "split_gain=",
    "internal_value=",
    "internal_weight=",
    "internal_count=",
    "leaf_weight=",
    "leaf_count=",
    "tree_sizes=",
)


def compact_model_text(text: str) -> str:
    """A LightGBM model text with only what prediction reads (see the module docstring)."""
    trees, found, _ = text.partition(_END_OF_TREES)
    if not found:
        raise ValueError("not a LightGBM model text: no 'end of trees' line")
    kept = [line for line in trees.split("\n") if not line.startswith(_DROPPED)]
    return "\n".join(kept) + _END_OF_TREES + "\n"


def pack(document: dict[str, Any], kind: str) -> bytes:
    """A document as gzip-compressed JSON, tagged with its `kind` (format and version)."""
    text = json.dumps({"format": kind, **document}, default=_plain, separators=(",", ":"))
    # mtime 0: the same model always gives the same bytes.
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def unpack(data: bytes, kind: str) -> dict[str, Any]:
    """The document `pack` made; a ValueError when the bytes hold another kind."""
    document = json.loads(gzip.decompress(data))
    if not isinstance(document, dict) or document.get("format") != kind:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"expected a {kind!r} document, found {found!r}")
    return document


def as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen configs hold (nested ones too)."""
    if isinstance(value, list):
        return tuple(as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: as_tuples(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """numpy scalars (a holdout score, a horizon scale) as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in a model file")
