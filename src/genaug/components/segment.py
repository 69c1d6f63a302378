"""Subject isolation: a mask of the labelled subject of an image.

Dataset masks come first: an `Example.mask` (a manifest `mask` column, or the image's own alpha channel)
is used as is and needs no model. Otherwise GroundingDINO finds the subject from a text phrase (the class
name by default; `phrase=dog` a dataset-wide noun; `phrases` a phrase per class), its best box above the
thresholds prompts SAM, and SAM's mask is the subject. Masks from models are cached on disk
(`GENAUG_CACHE/masks/`) by a hash of (image, phrase, models, revisions, thresholds); an image where
nothing is found is cached as such. Defaults: GroundingDINO tiny and SAM ViT-B at pinned revisions;
`--models DIR` reads `DIR/grounding-dino` and `DIR/sam`.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from pydantic import Field

from ..core.config import config_dataclass
from ..core.devices import resolve_device
from ..core.files import atomic_path
from ..data.cache import Cache, content_key
from .hub import load_pretrained, local_override, model_key

GDINO_MODEL = "IDEA-Research/grounding-dino-tiny"
GDINO_REVISION = "a2bb814dd30d776dcf7e30523b00659f4f141c71"
SAM_MODEL = "facebook/sam-vit-base"
SAM_REVISION = "70c1a07f894ebb5b307fd9eaaee97b9dfc16068f"


def dilate(mask: np.ndarray, pixels: int, kind: str = "radius") -> np.ndarray:
    """Grow a boolean mask. `radius`: every pixel within `pixels` (Euclidean) of the mask; `window`: a
    `pixels`-wide square maximum filter, as DA-Fusion's `maximum_filter(size=16)` (±8 px)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if pixels <= 0 or not mask.any():
        return mask.copy()
    if kind == "radius":
        return ndimage.distance_transform_edt(~mask) <= pixels
    if kind == "window":
        return ndimage.maximum_filter(mask, size=pixels)
    raise ValueError(f"dilation kind must be radius or window, got {kind!r}")


def to_bool(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask.convert("L")) >= 128


class SubjectMasks:
    """`masks(example)` → `(mask "L" image or None, info)`; info says where the mask came from."""

    def __init__(self, detector: str = GDINO_MODEL, detector_revision: str | None = None,
                 segmenter: str = SAM_MODEL, segmenter_revision: str | None = None, phrase: str = "{label}",
                 box_threshold: float = 0.35, text_threshold: float = 0.25, device=None,
                 phrases: dict[str, str] | None = None):
        self.detector_id = local_override("grounding-dino", detector)
        self.detector_revision = detector_revision or (GDINO_REVISION if self.detector_id == GDINO_MODEL else None)
        self.segmenter_id = local_override("sam", segmenter)
        self.segmenter_revision = segmenter_revision or (SAM_REVISION if self.segmenter_id == SAM_MODEL else None)
        self.phrase, self.box_threshold, self.text_threshold = phrase, box_threshold, text_threshold
        self.phrases = dict(phrases or {})
        self.device = resolve_device(device)
        self._models = None  # loaded on the first image without a dataset mask
        self.model_keys = (model_key(self.detector_id, self.detector_revision),
                           model_key(self.segmenter_id, self.segmenter_revision))
        self.cache = Cache("masks")

    def describe(self) -> dict[str, dict[str, str]]:
        return {"detector": {"id": self.detector_id, "revision": self.detector_revision or "local"},
                "segmenter": {"id": self.segmenter_id, "revision": self.segmenter_revision or "local"}}

    def _load(self):
        if self._models is None:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

            gd = load_pretrained(AutoModelForZeroShotObjectDetection, self.detector_id, self.detector_revision,
                                 role="GroundingDINO").to(self.device).eval()
            gp = load_pretrained(AutoProcessor, self.detector_id, self.detector_revision, role="GroundingDINO processor",
                                 weights=False)
            sam = load_pretrained(SamModel, self.segmenter_id, self.segmenter_revision, role="SAM").to(self.device).eval()
            sp = load_pretrained(SamProcessor, self.segmenter_id, self.segmenter_revision, role="SAM processor",
                                 weights=False)
            self._models = (gd, gp, sam, sp)
        return self._models

    def __call__(self, image: Image.Image, label: str, dataset_mask: Image.Image | None = None
                 ) -> tuple[Image.Image | None, dict[str, Any]]:
        if dataset_mask is not None:
            return dataset_mask, {"mask_source": "dataset"}
        phrase = self.phrases.get(label, self.phrase).format(label=" ".join(label.replace("_", " ").split()))
        key = content_key(image, phrase, *self.model_keys, self.box_threshold, self.text_threshold)

        def segment() -> dict[str, Any]:  # the PNG is in place before its JSON, which marks the entry complete
            mask, info = self._segment(image, phrase)
            if mask is not None:
                with atomic_path(self.cache.path(key, ".png")) as tmp:
                    mask.save(tmp)
            return info

        info = self.cache.get_or_put(key, segment)
        if info["mask_source"] != "model":
            return None, info
        with Image.open(self.cache.path(key, ".png")) as png:
            return png.convert("L"), info

    @torch.no_grad()
    def _segment(self, image: Image.Image, phrase: str) -> tuple[Image.Image | None, dict[str, Any]]:
        gd, gp, sam, sp = self._load()
        rgb = image.convert("RGB")
        text = phrase.lower().strip().rstrip(".") + "."  # GroundingDINO's phrase format: lower case, period
        inputs = gp(images=rgb, text=text, return_tensors="pt").to(self.device)
        det = gp.post_process_grounded_object_detection(gd(**inputs), inputs.input_ids, threshold=self.box_threshold,
                                                        text_threshold=self.text_threshold,
                                                        target_sizes=[rgb.size[::-1]])[0]
        if len(det["scores"]) == 0:
            return None, {"mask_source": "none", "phrase": phrase,
                          "reason": f"GroundingDINO found no {phrase!r} above box_threshold {self.box_threshold}"}
        best = int(det["scores"].argmax())
        w, h = rgb.size
        x0, y0, x1, y1 = (float(v) for v in det["boxes"][best].tolist())
        box = [max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)]
        enc = sp(images=rgb, input_boxes=[[box]], return_tensors="pt").to(self.device)
        out = sam(pixel_values=enc["pixel_values"], input_boxes=enc["input_boxes"], multimask_output=False)
        masks = sp.image_processor.post_process_masks(out.pred_masks.cpu(), enc["original_sizes"].cpu(),
                                                      enc["reshaped_input_sizes"].cpu())[0]
        mask = masks[0, 0].numpy().astype(bool)
        info = {"mask_source": "model", "phrase": phrase, "box": [round(v, 2) for v in box],
                "box_score": round(float(det["scores"][best]), 4)}
        if not mask.any():
            return None, {**info, "mask_source": "none", "reason": "SAM returned an empty mask"}
        return Image.fromarray(mask.astype(np.uint8) * 255, "L"), info


@config_dataclass
class MaskOptions:
    """Where a method's subject masks come from (a base of the methods' Configs)."""

    masks: Literal["auto", "dataset"] = "auto"  # dataset: never run a segmentation model
    detector: str = GDINO_MODEL
    detector_revision: str | None = None
    segmenter: str = SAM_MODEL
    segmenter_revision: str | None = None
    phrase: str = "{label}"  # GroundingDINO's text: a template over {label}, or a noun for every class ("dog")
    phrases: dict[str, str] = Field(default_factory=dict)  # label -> its own phrase (a superclass), before `phrase`
    box_threshold: float = Field(0.35, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    on_missing: Literal["reject", "whole_image"] = "reject"  # an image without a subject

    def masker(self, device=None) -> SubjectMasks:
        return SubjectMasks(self.detector, self.detector_revision, self.segmenter, self.segmenter_revision,
                            self.phrase, self.box_threshold, self.text_threshold, device, self.phrases)

    def subject(self, masker: SubjectMasks, example) -> tuple[Image.Image | None, dict[str, Any]]:
        """The example's subject mask (None when there is none, with the reason in the info)."""
        if self.masks == "dataset":
            if example.mask is None:
                return None, {"mask_source": "none", "reason": "the dataset gives no mask for this image (masks=dataset)"}
            mask, info = example.mask, {"mask_source": "dataset"}
        else:
            mask, info = masker(example.image, example.label, example.mask)
        if mask is not None and mask.getbbox() is None:
            return None, {**info, "mask_source": "none", "reason": "the mask is empty"}
        return mask, info
