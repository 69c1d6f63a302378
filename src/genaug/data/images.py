"""Reading one source image the way every method expects it: fully decoded, upright, RGB.

An image with transparency (a cut-out) is composited onto `input.background` (white unless stated): the
colour stored under transparent pixels is arbitrary (near-black in most cut-out files, white in some) and
no method or classifier should see it. Its alpha is kept beside the RGB image, as the mask methods use.

A file that cannot be used raises `Rejected` with a reason a person can act on; the engine lists it in
`rejected.jsonl` and carries on.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError
from pydantic import field_validator

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
    # What transparent pixels become in the RGB image: a colour name, "#rrggbb" or [r, g, b].
    background: str | list[int] = "white"

    @field_validator("background", mode="before")
    @classmethod
    def _colour(cls, v):
        if v is None:  # what `input.background=#00ff00` parses to: in YAML, `#` starts a comment
            raise ValueError("no colour given; quote a #rrggbb value (input.background='\"#00ff00\"') or use [r, g, b]")
        if isinstance(v, (str, list, tuple)):
            background_rgb(v)  # raises ValueError, reported as a one-line config error
        return v


# How images genaug wrote, or files a record names, are read back: any size is accepted (the checks above are
# for the user's sources). Never mutated.
ANY_SIZE = InputConfig(min_side=1, max_aspect=1e9)


def background_rgb(colour: str | list[int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        try:
            return ImageColor.getrgb(colour)[:3]
        except ValueError:
            raise ValueError("not a colour: use a name (white), #rrggbb or [r, g, b]") from None
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError("[r, g, b] needs three values in 0..255")
    return tuple(int(c) for c in colour)


class Rejected(Exception):
    """An input that cannot be used; `str(e)` is the reason."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _open_decoded(path: Path | bytes, cfg: InputConfig) -> Image.Image:
    """`path` is a file, or the encoded bytes of one (an image stored in a Hugging Face dataset's Arrow)."""
    if isinstance(path, bytes):
        if not path:
            raise Rejected("empty image data (0 bytes)")
    else:
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
            im = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
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


def _to_rgb_and_alpha(im: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    mode = im.mode
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in im.info):  # a palette's or a tRNS colour key
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
        if a.getextrema() != (255, 255):  # an all-opaque alpha carries no mask (and nothing to composite)
            alpha = a
    try:
        if alpha is not None:
            rgba = im.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
        else:
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


def load_image(path: str | Path | bytes, cfg: InputConfig) -> tuple[Image.Image, Image.Image | None]:
    """Return `(rgb, alpha_or_None)`, EXIF orientation applied, transparency composited onto
    `cfg.background`, or raise `Rejected`. `path` may be the encoded bytes of an image file."""
    im = _open_decoded(path if isinstance(path, bytes) else Path(path), cfg)
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated GIF / multi-page TIFF: the first frame is the image
        im = ImageOps.exif_transpose(im)
        rgb, alpha = _to_rgb_and_alpha(im, background_rgb(cfg.background))
    except Rejected:
        raise
    except Exception as e:  # noqa: BLE001 - damaged metadata (EXIF, frame table) fails in many ways: one input
        raise Rejected(f"damaged image data ({type(e).__name__}: {e})") from None
    _check_size(*rgb.size, cfg)
    return rgb, alpha


def load_mask(path: str | Path | bytes, size: tuple[int, int], cfg: InputConfig) -> Image.Image:
    """A dataset mask: any image mode, read as 8-bit grey (255 = subject), the size of its image; with an alpha
    channel that is not all opaque, that channel."""
    name = "mask" if isinstance(path, bytes) else f"mask {path}"
    try:
        im = _open_decoded(path if isinstance(path, bytes) else Path(path), cfg)
    except Rejected as e:
        raise Rejected(f"{name}: {e}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - as in load_image
        raise Rejected(f"{name}: damaged image data ({type(e).__name__}: {e})") from None
    # the alpha channel is the mask when it says something; an all-opaque one (an editor's RGBA export of a
    # black-and-white mask) does not: the grey levels do
    alpha = im.getchannel("A") if im.mode in _ALPHA_MODES else None
    mask = alpha if alpha is not None and alpha.getextrema() != (255, 255) else im.convert("L")
    top = mask.getextrema()[1]
    if 0 < top < 128:  # a 0/1 mask, or a trimap (Oxford Pets' 1/2/3): read as "no subject" it would mislead
        raise Rejected(f"{name} has no value of 128 or more (its largest is {top}): genaug reads 255 as the subject "
                       "and 0 as the rest; multiply a 0/1 mask by 255, convert a trimap")
    if mask.size != size:
        raise Rejected(f"{name} is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}")
    return mask
