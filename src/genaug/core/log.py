"""One library logger, quiet by default; `GENAUG_VERBOSITY=info|debug|warning|error` changes that. Progress
bars follow tqdm's rule (drawn when stderr is a terminal) unless a caller or `set_progress` decides."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

_ROOT = "genaug"
_configured = False
_progress: bool | None = None


def get_logger(name: str = _ROOT) -> logging.Logger:
    global _configured
    if not _configured:
        _configured = True
        root = logging.getLogger(_ROOT)
        set_verbosity()
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("genaug %(levelname)s: %(message)s"))
            root.addHandler(handler)
        root.propagate = False
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def set_verbosity(level: str | None = None) -> None:
    """The library logger's level: `level` (debug, info, warning, error), else GENAUG_VERBOSITY's, else warning."""
    level = (level or os.environ.get("GENAUG_VERBOSITY", "warning")).upper()
    get_logger().setLevel(getattr(logging, level, logging.WARNING))


def set_progress(progress: bool | None) -> None:
    """The default of every bar genaug draws: False turns all of them off (`genaug --no-progress`), even the
    ones deep inside a call that takes no `progress`; None restores tqdm's rule."""
    global _progress
    _progress = progress


def bar_disabled(progress: bool | None = None) -> bool | None:
    """tqdm's `disable=` for one bar: the caller's explicit `progress` wins, then `set_progress`'s default."""
    progress = _progress if progress is None else progress
    return None if progress is None else not progress


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def dropping(logger: str, text: str) -> Iterator[None]:
    """Drop the records of one (third-party) logger whose message contains `text`, only while the block
    runs: a note genaug knows is noise, silenced where it is caused, never process-wide."""
    target, f = logging.getLogger(logger), _Drop(text)
    target.addFilter(f)
    try:
        yield
    finally:
        target.removeFilter(f)
