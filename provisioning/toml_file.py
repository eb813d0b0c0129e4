"""Read an operator's TOML file (inventory, costs): any reason it cannot be read is one line."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from core.errors import PrewarmError

# Inventories and cost files are a few KiB; reading more would only let a wrong path (a
# log, /dev/zero) fill memory before failing.
MAX_BYTES = 1 << 20


class UnreadableToml(PrewarmError):
    """A TOML file that cannot be read or parsed; `reason` says why without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed document of a TOML file, or UnreadableToml saying why not."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UnreadableToml(path, "file not found") from None
    except IsADirectoryError:
        raise UnreadableToml(path, "is a directory, not a TOML file") from None
    except OSError as error:
        raise UnreadableToml(path, f"cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_BYTES:
        raise UnreadableToml(path, f"larger than {MAX_BYTES // 1024} KiB: not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise UnreadableToml(
            path, f"not UTF-8 text (byte 0x{byte:02x} at offset {error.start}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UnreadableToml(path, f"not valid TOML: {error}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UnreadableToml(path, "not valid TOML here: values nested too deeply") from None
