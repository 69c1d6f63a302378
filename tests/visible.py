"""What a user looks at in a generated image or its record, as assertions: shared by the real-weight tests
(tests/test_real_models.py) and the fast tiny-model tests that check these checks (tests/test_visible.py).
Written independently of genaug's own blank / class-word code, so a bug there cannot hide here."""
from __future__ import annotations

import re

import numpy as np
from PIL import Image


def pixels(image) -> np.ndarray:
    """An image (PIL, an RGB array or a path) as an RGB uint8 array."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray((image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB"))


def assert_not_blank(image, min_std: float = 3.0, max_share: float = 0.9) -> None:
    """Not one flat colour (a safety checker's black, a NaN decode's grey): the pixel values spread, and no
    single colour covers most of the image."""
    a = pixels(image)
    std = float(a.reshape(-1, 3).std(0).max())
    assert std >= min_std, f"the image is blank: pixel std {std:.2f} < {min_std}"
    _, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
    share = counts.max() / counts.sum()
    assert share <= max_share, f"the image is blank: one colour covers {share:.0%} of it"


def assert_differs(made, source, min_mean_abs: float = 4.0, where: np.ndarray | None = None) -> None:
    """The image is not (nearly) its source: the mean absolute pixel difference (0-255), over `where` (a bool
    mask) when given, is at least `min_mean_abs`. The source is resized to the image's size first."""
    a = pixels(made).astype(float)
    b = pixels(Image.fromarray(pixels(source)).resize(a.shape[1::-1], Image.BICUBIC)).astype(float)
    diff = np.abs(a - b).mean(-1)
    d = float(diff[where].mean() if where is not None else diff.mean())
    assert d >= min_mean_abs, f"the image is nearly its source: mean |difference| {d:.2f} < {min_mean_abs}"


def assert_pixels_kept(made, source, region: np.ndarray) -> None:
    """Every pixel of `region` (bool, the image's size) is the source's own, exactly."""
    a, b = pixels(made), pixels(source)
    assert a.shape == b.shape, f"the image is {a.shape}, its source {b.shape}"
    assert region.any(), "the region to keep is empty"
    changed = (a[region] != b[region]).any(-1)
    assert not changed.any(), f"{int(changed.sum())} of the {int(region.sum())} kept pixels changed"


def class_word_pattern(labels) -> re.Pattern:
    """Whole words naming a class: each label (any separator), its words of 3+ letters, with s / es / ies."""
    words = set()
    for label in labels:
        parts = [w.lower() for w in re.split(r"[^0-9A-Za-z]+", label) if w]
        words.add(r"[\s_-]+".join(map(re.escape, parts)))
        words.update(re.escape(w) for w in parts if len(w) >= 3)
    alternatives = []
    for w in sorted(words, key=len, reverse=True):
        alternatives.append(w + r"(?:s|es)?")
        if w.endswith("y"):
            alternatives.append(w[:-1] + "ies")
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(alternatives) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def assert_no_class_words(text: str, labels) -> None:
    """`text` (a caption or prompt the method promises is class-free) names no class."""
    found = class_word_pattern(labels).findall(text)
    assert not found, f"class words {found} leak into {text!r}"


def check_output(out, source_root, *, kept=None, class_free: str | None = None, labels=None,
                 min_mean_abs: float = 4.0) -> list[dict]:
    """Every image of a genaug output folder as a user sees it: not blank, not (nearly) its source — where
    the method changes it, outside the kept region —, with `kept(row, source, alpha)` (a bool region or None)
    the source's own pixels there, and the record's `class_free` param (a caption) naming no class of
    `labels` (default: the labels in the folder). Returns the rows."""
    import json
    from pathlib import Path

    from genaug.data.images import InputConfig, load_image

    out, source_root = Path(out), Path(source_root)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows, f"{out} holds no image"
    labels = labels or sorted({r["label"] for r in rows})
    for r in rows:
        made = pixels(out / r["file_name"])
        source, alpha = load_image(source_root / r["source_id"], InputConfig())
        assert_not_blank(made)
        region = kept(r, source, alpha) if kept is not None else None
        if region is not None:
            assert_pixels_kept(made, source, region)
        assert_differs(made, source, min_mean_abs, where=None if region is None else ~region)
        if class_free is not None:
            assert_no_class_words(r["params"][class_free], labels)
    return rows


def dataset_subject(row, source, alpha) -> np.ndarray:
    """The subject as the dataset's alpha gives it (opaque pixels)."""
    assert alpha is not None, f"{row['source_id']} has no alpha mask"
    return np.asarray(alpha.convert("L")) == 255
