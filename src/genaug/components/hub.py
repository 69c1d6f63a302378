"""Loading pretrained models: a hub id (with a pinned revision) or a local directory, through the
library's own `from_pretrained`. Safetensors only; remote code off unless the user turns it on.

When a model cannot be had, the error names the model, where it was looked for and how to fix it —
without a wall of traceback and without a long network hang when the hub cannot be reached.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core.config import ConfigError
from ..core.log import get_logger

log = get_logger(__name__)


_MODELS_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("genaug_models_dir", default=None)


@contextlib.contextmanager
def models_dir(path: str | Path | None):
    """Within this block, every component whose model is given as a hub id loads from `path/<component>`
    when that folder exists (`--models DIR`; `genaug tiny-models DIR` writes such a folder)."""
    if path is not None and not Path(path).is_dir():
        raise ConfigError(f"--models {path} is not a directory")
    token = _MODELS_DIR.set(Path(path) if path else None)
    try:
        yield
    finally:
        _MODELS_DIR.reset(token)


def component_dir(component: str) -> Path | None:
    """`DIR/<component>` of the active models directory, when it exists."""
    root = _MODELS_DIR.get()
    return root / component if root is not None and (root / component).is_dir() else None


def local_override(component: str, model: str) -> str:
    """`DIR/<component>` when a models directory is active and holds that component, unless `model` is
    already a local directory; else `model` unchanged."""
    local = component_dir(component)
    return model if local is None or Path(model).expanduser().is_dir() else str(local)


class ModelNotAvailable(ConfigError):
    """A pretrained model could not be loaded; the message says how to get it."""


def offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing may be downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(model: str, revision: str | None = None) -> tuple[str, dict[str, Any], str]:
    """`(what to pass to from_pretrained, extra kwargs, where it was looked for)`."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotAvailable(f"{model} is a file; a model is a directory written by save_pretrained")
        return str(path), {}, f"local directory {path}"
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise ModelNotAvailable(f"model directory not found: {model}")
    from huggingface_hub import snapshot_download

    try:  # already in the local cache (HF_HOME): load it from there, no network at all
        local = snapshot_download(model, revision=revision, local_files_only=True)
        return local, {}, f"the Hugging Face cache ({local})"
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    where = f"the Hugging Face cache (HF_HOME) and the hub, as {model!r} at revision {revision or 'main'}"
    if offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached from this machine"
        raise ModelNotAvailable(
            f"model {model!r} (revision {revision or 'main'}) is not in the local cache and {why}. "
            f"Fix: download it on a machine with network access (e.g. `huggingface-cli download {model}`) and "
            f"pass its directory instead of the hub id, or point --models at a folder of local models.")
    return model, {"revision": revision} if revision else {}, where


@contextlib.contextmanager
def _quiet_loading():
    """transformers and diffusers draw a bar per model loaded; genaug shows its own progress instead."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled(), df_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    df_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            hf_logging.enable_progress_bar()
        if was[1]:
            df_logging.enable_progress_bar()


def load_pretrained(cls, model: str, revision: str | None = None, role: str = "model", weights: bool = True,
                    trust_remote_code: bool = False, **kwargs):
    """`cls.from_pretrained(model)` for a hub id or a local directory, with a clear error when missing.

    `weights=True` (models, not processors / tokenizers) loads safetensors only: pickled weights can run code.
    """
    source, extra, where = resolve(model, revision)
    if weights:
        extra["use_safetensors"] = True
    if trust_remote_code:
        extra["trust_remote_code"] = True
    try:
        with _quiet_loading():
            return cls.from_pretrained(source, **extra, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailable(f"{role}: could not load {model!r} from {where}: {first}") from None



def absent_components(model: str) -> dict[str, None]:
    """Components a saved diffusers pipeline left out on purpose (a safety checker, SD3's T5 encoder):
    diffusers wants them passed as None explicitly. Only a local directory can be read before loading."""
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return {}
    return {k: None for k, v in json.loads(index.read_text()).items() if isinstance(v, list) and v[0] is None}
