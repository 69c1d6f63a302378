"""Reading one source image the way every method expects it: fully decoded, upright, RGB.

A file that cannot be used raises `Rejected` with a reason a person can act on; the engine lists it in
`rejected.jsonl` and carries on.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.config import config_dataclass

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@config_dataclass
class InputConfig:
    """How source images are checked (`input.<key>=value` on the command line).

    Size rule: an image is used when its shorter side is at least `min_side` pixels and its longer side
    is at most `max_aspect` times the shorter one; otherwise it is rejected (not resized), because a
    1x1 icon or a 1000x10 strip is almost always a broken or non-photographic file.
    """

    min_side: int = 8
    max_aspect: float = 10.0
    # None = Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS); a number can only tighten it.
    max_pixels: int | None = None


class Rejected(Exception):
    """An input that cannot be used; `str(e)` is the reason."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _open_decoded(path: Path, cfg: InputConfig) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise Rejected("file not found") from None
    if size == 0:
        raise Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x its pixel limit and raises beyond; we reject both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            limit = cfg.max_pixels or Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                raise Rejected(
                    f"too many pixels: {im.width}x{im.height} > {limit} (decompression-bomb guard; "
                    "option input.max_pixels can only lower Pillow's limit)"
                )
            im.load()  # decode every byte now: truncated data fails here, not inside a method
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected(f"decompression-bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise Rejected("not a recognised image format (the bytes do not decode as any image)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports damaged data with these
        raise Rejected(f"truncated or corrupt image data: {e}") from None
    return im


def _to_rgb_and_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in _16BIT_MODES or mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise Rejected(f"32-bit integer image with values outside 0..65535 (mode {mode}); convert it to 8 or 16 bit")
        im = Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8), mode="L")  # 16 -> 8 bit, full range kept
    elif mode == "F":
        raise Rejected("floating-point image (mode F) has no standard 8-bit mapping; convert it to 8 or 16 bit")
    alpha = None
    if im.mode in _ALPHA_MODES:
        a = im.getchannel("A")
        if a.getextrema() != (255, 255):  # an all-opaque alpha carries no mask
            alpha = a
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise Rejected(f"unsupported image mode {mode}: {e}") from None
    return rgb, alpha


def _check_size(w: int, h: int, cfg: InputConfig) -> None:
    short, long = min(w, h), max(w, h)
    if short < cfg.min_side:
        raise Rejected(f"too small: {w}x{h} (shorter side below input.min_side={cfg.min_side} px)")
    if long > cfg.max_aspect * short:
        raise Rejected(f"extreme aspect ratio: {w}x{h} ({long / short:.1f}:1 > input.max_aspect={cfg.max_aspect:g})")


def load_image(path: str | Path, cfg: InputConfig) -> tuple[Image.Image, Image.Image | None]:
    """Return `(rgb, alpha_or_None)`, EXIF orientation applied, or raise `Rejected`."""
    im = _open_decoded(Path(path), cfg)
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated GIF / multi-page TIFF: the first frame is the image
    im = ImageOps.exif_transpose(im)
    rgb, alpha = _to_rgb_and_alpha(im)
    _check_size(*rgb.size, cfg)
    return rgb, alpha


def load_mask(path: str | Path, size: tuple[int, int], cfg: InputConfig) -> Image.Image:
    """A dataset mask: any image mode, read as 8-bit grey (255 = subject), the size of its image."""
    try:
        im = ImageOps.exif_transpose(_open_decoded(Path(path), cfg))
    except Rejected as e:
        raise Rejected(f"mask {path}: {e}") from None
    mask = im.getchannel("A") if im.mode in _ALPHA_MODES else im.convert("L")
    if mask.size != size:
        raise Rejected(f"mask {path} is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}")
    return mask
