"""The few core records that flow through genaug."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Example:
    """One validated source image.

    `image` is always RGB. `mask` is an 8-bit "L" image the size of `image` (255 = subject) when the
    dataset gave one: a manifest `mask` column, or the image's own alpha channel.
    """

    id: str  # stable across machines: the path relative to the dataset root, or the manifest's `id`
    image: Image.Image
    label: str
    path: str
    mask: Image.Image | None = None
    # the colour a cut-out was composited onto when its alpha became `mask` (input.background): a soft edge's
    # pixels are part matte, which a method pasting the subject elsewhere takes out; None for any other mask
    matte: tuple[int, int, int] | None = None


@dataclass
class Synthetic:
    """One generated image and everything needed to say how it was made."""

    image: Image.Image
    label: str
    source_id: str
    params: dict[str, Any]  # what the method drew and applied (the engine records `seed` and `variant` beside it)
    scores: dict[str, float] = field(default_factory=dict)
    weight: float = 1.0


# The `Image.info` key under which a generated image carries why it must not be used as data (a component
# refused it, e.g. the safety checker flagged it). PIL copies `info` through resize / crop / copy; a method that
# builds a new image from a refused one passes the reason on (`refuse(new, refusal(old))`). The engine rejects
# every output carrying one; nothing writes it into a PNG.
REFUSAL = "genaug_refusal"


def refusal(image: Image.Image) -> str | None:
    """Why this generated image must not be written as data (None: it may)."""
    return image.info.get(REFUSAL)


def refuse(image: Image.Image, reason: str | None) -> Image.Image:
    """Mark `image` as refused for `reason` (no-op for None); returns it."""
    if reason:
        image.info[REFUSAL] = reason
    return image
