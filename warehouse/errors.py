"""The warehouse layer's errors (the base, PrewarmError, lives in core.errors)."""

from core.errors import PrewarmError


class SourceError(PrewarmError):
    """An input could not be read: missing path, unparsable file, missing trace file."""


class IngestRejected(PrewarmError):
    """A batch failed validation as a whole; nothing from it was loaded."""


class WarehouseBusy(PrewarmError):
    """Another process held the warehouse's write lock for longer than we waited."""
