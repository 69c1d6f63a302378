"""One library logger, quiet by default; `GENAUG_VERBOSITY=info|debug|warning|error` changes that."""
from __future__ import annotations

import logging
import os

_ROOT = "genaug"
_configured = False


def get_logger(name: str = _ROOT) -> logging.Logger:
    global _configured
    if not _configured:
        _configured = True
        root = logging.getLogger(_ROOT)
        level = os.environ.get("GENAUG_VERBOSITY", "warning").upper()
        root.setLevel(getattr(logging, level, logging.WARNING))
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("genaug %(levelname)s: %(message)s"))
            root.addHandler(handler)
        root.propagate = False
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")
