"""Errors that carry a message meant for the person running prewarm."""


class PrewarmError(Exception):
    """A failure explained in plain words; the CLI prints it without a traceback."""


class SourceError(PrewarmError):
    """An input could not be read: missing path, unparsable file, missing trace file."""


class IngestRejected(PrewarmError):
    """A batch failed validation as a whole; nothing from it was loaded."""


class WarehouseBusy(PrewarmError):
    """Another process held the warehouse's write lock for longer than we waited."""
