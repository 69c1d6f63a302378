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


@dataclass
class Synthetic:
    """One generated image and everything needed to say how it was made."""

    image: Image.Image
    label: str
    source_id: str
    params: dict[str, Any]  # what the method drew and applied (the engine records `seed` and `variant` beside it)
    scores: dict[str, float] = field(default_factory=dict)
    weight: float = 1.0
