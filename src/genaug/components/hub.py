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
from pathlib import Path
from typing import Any

from ..core.config import ConfigError
from ..core.files import folder_stamp
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


def model_key(model: str, revision: str | None = None) -> str:
    """What a cached result computed with `model` is keyed by: a hub id at its revision; a local directory by
    what it holds (its files' names, sizes and modification times, `folder_stamp`), not by where it is — so
    weights re-saved into the same folder are a new key, never a stale hit, and the same folder under
    another `--models` path is the same key."""
    path = Path(model).expanduser()
    return f"local:{folder_stamp(path)}" if path.is_dir() else f"{model}@{revision or 'main'}"


class ModelNotAvailable(ConfigError):
    """A pretrained model could not be loaded; the message says how to get it."""


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, as huggingface_hub reads it: nothing may be downloaded."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in constants.ENV_VARS_TRUE_VALUES


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One HEAD request to the hub's endpoint (`HF_ENDPOINT`), through the proxies the environment names, as a
    download would go: any HTTP answer means reachable; no answer within `timeout` s means not."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        opener = urllib.request.build_opener()  # reads the proxy variables now (urlopen's opener keeps its first)
        opener.open(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered, if only with an error status
    except (OSError, ValueError):
        return False
    return True


_CACHED = "the Hugging Face cache"


def resolve(model: str, revision: str | None = None, cache: bool = True) -> tuple[str, dict[str, Any], str]:
    """`(what to pass to from_pretrained, extra kwargs, where it was looked for)`: a local directory, the
    Hugging Face cache (unless `cache=False`), or the hub when it can be reached."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotAvailable(f"{model} is a file; a model is a directory written by save_pretrained")
        return str(path), {}, f"local directory {path}"
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise ModelNotAvailable(f"model directory not found: {model}")
    if cache:
        from huggingface_hub import snapshot_download

        try:  # already in the local cache (HF_HOME): load it from there, no network at all
            local = snapshot_download(model, revision=revision, local_files_only=True)
            return local, {}, f"{_CACHED} ({local})"
        except Exception:  # noqa: BLE001 - any failure here just means "not cached"
            pass
    where = f"the hub, as {model!r} at revision {revision or 'main'} (not, or not whole, in {_CACHED})"
    if offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached from this machine"
        state = "is not in the local cache" if cache else "is only partly in the local cache"
        rev = f" --revision {revision}" if revision else ""
        parent, local = Path(model).parent, ""
        if parent != Path(".") and parent.is_dir():  # "models/blip" may be a mistyped folder, not a hub id
            held = ", ".join(sorted(q.name for q in parent.iterdir()))
            local = f" Nor is it a directory: {parent}/ holds {held[:200] or 'nothing'}."
        raise ModelNotAvailable(
            f"model {model!r} (revision {revision or 'main'}) {state} and {why}.{local} "
            f"Fix: download it on a machine with network access (`hf download {model}{rev} --local-dir DIR`) and "
            f"pass that directory, DIR, instead of the hub id, or point --models at a folder of local models.")
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
    options = {**({"use_safetensors": True} if weights else {}),
               **({"trust_remote_code": True} if trust_remote_code else {}), **kwargs}
    source, extra, where = resolve(model, revision)
    try:
        with _quiet_loading():
            return cls.from_pretrained(source, **extra, **options)
    except (OSError, ValueError) as e:
        error = e
    if where.startswith(_CACHED):  # a partly downloaded cache entry (another object of the model was fetched
        try:                       # alone): the hub completes it when it can be reached
            source, extra, where = resolve(model, revision, cache=False)
        except ModelNotAvailable as e:
            raise ModelNotAvailable(f"{role}: {e}") from None
        try:
            with _quiet_loading():
                return cls.from_pretrained(source, **extra, **options)
        except (OSError, ValueError) as e:
            error = e
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ModelNotAvailable(f"{role}: could not load {model!r} from {where}: {first}") from None



def absent_components(model: str) -> dict[str, None]:
    """Components a saved diffusers pipeline left out on purpose (a safety checker, SD3's T5 encoder):
    diffusers wants them passed as None explicitly. Only a local directory can be read before loading."""
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return {}
    return {k: None for k, v in json.loads(index.read_text()).items() if isinstance(v, list) and v[0] is None}
