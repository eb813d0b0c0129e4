"""The base of every error meant for the person running prewarm."""


class PrewarmError(Exception):
    """A failure explained in plain words; the CLI prints it without a traceback."""
