"""Progress bars for long steps: rich bars while a person watches the CLI, silence otherwise.

The CLI opens `progress_bars()`; library code receives a plain `(done, total)` callback from
`tracker()` and never knows whether anyone is looking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

_active: Progress | None = None


@contextmanager
def progress_bars() -> Iterator[None]:
    """Show bars for every tracker created inside this block."""
    global _active
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        _active = progress
        try:
            yield
        finally:
            _active = None


def tracker(description: str) -> Callable[[int, int], None] | None:
    """A `(done, total)` callback drawing one bar, or None when no bars are shown."""
    progress = _active
    if progress is None:
        return None
    task_id = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task_id, completed=done, total=total)

    return update
