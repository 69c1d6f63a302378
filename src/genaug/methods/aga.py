"""AGA — automated generative data augmentation (arXiv 2409.00547): keep the subject, change the world.

1. Subject mask: the dataset's own (manifest `mask` column or alpha channel), else GroundingDINO → SAM
   (`genaug.components.segment`, cached); an image with no subject is rejected or, with
   `on_missing=whole_image`, used whole.
   GroundingDINO is prompted with `phrase` (default the label; a dataset-wide noun such as `phrase=dog`, or a
   per-class `phrases` map, finds fine-grained classes the label alone misses).
2. Background caption: an instruction × a background × a temporal phrase are sampled from their sets; the
   language model (`llm`, as in DIAGen: by default an endpoint from $GENAUG_LLM_URL or the local chat model,
   else templates with a warning) writes a caption of that empty scene. Without a model the caption is the
   template over the background and temporal phrases, and the instruction and caption variant — which
   then shape nothing — are not recorded. Words naming any class of the dataset (the label, its words and
   plurals, and `class_words`) are removed from the caption, which is recorded as used, with `prompt_source`.
3. Background image: SDXL text-to-image from the caption (SD 1.5 or any checkpoint selectable; the class
   names in the negative prompt), or — offline copy-paste mode — an image drawn from `backgrounds_dir`.
4. Subject: flipped, scaled, rotated and placed (`flip_p`, `scale`, `rotation`, `position`), then pasted
   with a feathered edge that only grows outward: every pixel under the mask keeps the source's value.
   The whole subject always stays in the frame: a transformed subject larger than the frame is shrunk to
   fit (`scale` records the scale applied, `scale_sampled` the one drawn), and `position=keep` moves the
   centre only as far as needed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps
from pydantic import Field

from ..components.diffusion import SDXL_MODEL, PipelineOptions
from ..components.llm import LLMOptions
from ..components.segment import MaskOptions
from ..core.config import ConfigError, config_dataclass, range_option
from ..data.images import Rejected, is_image_name
from .registry import register_method
from ..core.seeding import derive_seed
from ..core.records import Example, Synthetic, refusal, refuse
from .base import Method

INSTRUCTIONS = ("Write a one-sentence caption for a realistic photo of",
                "Describe in one sentence a photograph of",
                "Write a short, vivid description of a scenic photo of",
                "Write a caption for a wide-angle background photo of")
BACKGROUNDS = ("a forest clearing", "a sandy beach", "a busy city street", "a snowy mountain slope", "a green meadow",
               "a desert with dunes", "a lake shore", "a cosy living room", "a modern kitchen", "a wooden dock",
               "a rocky canyon", "a flower garden", "an empty parking lot", "a library", "a farm field")
TEMPORAL = ("at sunrise", "at noon", "at sunset", "at night", "in spring", "in summer", "in autumn", "in winter",
            "on a rainy day", "on a foggy morning", "after snowfall")
CAPTION_REQUEST = ("{instruction} {background} {temporal}. The scene is empty: do not mention any person, animal "
                   "or object in the foreground. Reply with the caption only, at most 40 words.")
TEMPLATE_CAPTION = "a photo of {background} {temporal}, empty scene, highly detailed"


def class_words(labels: list[str], extra: dict[str, list[str]] | None = None) -> list[str]:
    """Words that name a class: each label, its words (3+ letters), their plurals, and the user's synonyms."""
    words: set[str] = set()
    for label in labels:
        parts = [w for w in re.split(r"[\W_]+", label) if w]  # any script's letters: "café", "猫"
        words.add(" ".join(parts).lower())
        words.update(w.lower() for w in parts if len(w) >= 3)
        words.update(w.lower() for w in (extra or {}).get(label, []))
    plurals = {w + ("es" if w.endswith(("s", "x", "ch", "sh")) else "s") for w in words}
    plurals |= {w[:-1] + "ies" for w in words if w.endswith("y") and len(w) > 2 and w[-2] not in "aeiou"}
    return sorted(w for w in words | plurals if w)


_DETERMINER = r"(?:(?:a|an|the|one|two|three|four|five|some|several|many|few|\d+)\s+)?"
_DANGLING = re.compile(r"\b(?:with|and|or|of|near|beside|next to|a|an|the)\s*(?=[,.;:!?]|$)", re.IGNORECASE)


def scrub(caption: str, words: list[str]) -> tuple[str, list[str]]:
    """`caption` without any of `words` (whole words, any case, with their article or number), the
    punctuation and connectors left dangling tidied away; and the words removed."""
    removed = []
    for w in sorted(words, key=len, reverse=True):
        body = re.escape(w).replace(r"\ ", r"[\s_-]+")
        pattern = re.compile(r"(?<![\w-])" + _DETERMINER + body + r"(?![\w-])", re.IGNORECASE)
        if pattern.search(caption):
            removed.append(w)
            caption = pattern.sub(" ", caption)
    previous = None
    while previous != caption:
        previous = caption
        caption = " ".join(caption.split())
        caption = re.sub(r"\s+([,.;:!?])", r"\1", caption)
        caption = re.sub(r"([,;:])\s*(?=[,.;:!?])", "", caption)
        caption = _DANGLING.sub("", caption)
        caption = caption.strip(" ,;:")
    return caption, removed


def transformed_size(w: int, h: int, scale: float, angle: float) -> tuple[int, int]:
    """The size `paste_subject` gives a w x h subject box: resized as it resizes, rotated by PIL itself (whose
    expanded size rounds its own way), so a fit check here is exact."""
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    if angle == 0:
        return sw, sh
    return Image.new("1", (sw, sh)).rotate(angle, expand=True).size


def fit_scale(w: int, h: int, box_w: int, box_h: int, scale: float, angle: float) -> float | None:
    """The largest scale <= `scale` (6 decimals, as recorded) at which the box, rotated, fits in w x h; None
    when even a 1-pixel subject does not."""
    s = round(scale, 6)
    for _ in range(200):
        tw, th = transformed_size(box_w, box_h, s, angle)
        if tw <= w and th <= h:
            return s
        s = round(min(s * 0.995, s * min(w / tw, h / th)), 6)  # the ratio first, then small steps for rounding
        if s <= 0:
            break
    return None


def paste_subject(image: Image.Image, mask: Image.Image, background: Image.Image, flip: bool, scale: float,
                  angle: float, center: tuple[float, float], feather: float,
                  matte: tuple[int, int, int] | None = None) -> Image.Image:
    """The masked subject of `image`, mirrored (flip), scaled, rotated (degrees, counter-clockwise) and
    centred at `center` on `background` (same size as `image`). The edge is feathered outward only —
    alpha = max(mask, blurred mask), the halo coloured by the nearest subject pixel — so every pixel under
    the mask is the subject's own. `matte`: the colour a cut-out was composited onto to give `image` (its
    alpha is `mask`); a soft edge's colours are un-composited first, else they would carry that colour (a
    white fringe) onto the new background."""
    from scipy import ndimage

    if matte is not None:
        a = np.asarray(mask.convert("L"), np.float64)[..., None] / 255
        comp = np.asarray(image.convert("RGB"), np.float64)
        straight = np.where(a > 0, (comp - (1 - a) * np.asarray(matte, np.float64)) / np.maximum(a, 1e-6), comp)
        image = Image.fromarray(np.clip(np.round(straight), 0, 255).astype(np.uint8))
    subject = image.convert("RGBA")
    subject.putalpha(mask.convert("L"))
    subject = subject.crop(mask.getbbox())
    if flip:
        subject = ImageOps.mirror(subject)
    if scale != 1:
        subject = subject.resize((max(1, round(subject.width * scale)), max(1, round(subject.height * scale))),
                                 Image.LANCZOS)
    if angle:
        subject = subject.rotate(angle, resample=Image.BICUBIC, expand=True)
    pad = int(np.ceil(3 * feather))
    rgba = np.pad(np.asarray(subject), ((pad, pad), (pad, pad), (0, 0)))
    alpha = Image.fromarray(rgba[..., 3])
    if feather > 0:
        alpha = ImageChops.lighter(alpha, alpha.filter(ImageFilter.GaussianBlur(feather)))
    outside = rgba[..., 3] < 128
    if outside.any() and not outside.all():  # colour the halo with the nearest subject pixel, not black
        iy, ix = ndimage.distance_transform_edt(outside, return_distances=False, return_indices=True)
        rgb = np.where(outside[..., None], rgba[iy, ix, :3], rgba[..., :3])
    else:
        rgb = rgba[..., :3]
    x0 = int(round(center[0] - subject.width / 2)) - pad
    y0 = int(round(center[1] - subject.height / 2)) - pad
    out = background.convert("RGB").copy()
    out.paste(Image.fromarray(np.ascontiguousarray(rgb)), (x0, y0), alpha)
    return out


@register_method("aga")
class AGA(Method):
    description = "AGA (2024): subject kept (dataset mask or GroundingDINO+SAM), LLM-captioned SDXL background, affine paste"
    paper = "Rahat et al., Data Augmentation for Image Classification using Generative AI (arXiv 2409.00547)"
    version = "3"  # 2: the subject is shrunk to fit the frame; template captions record only what shaped them;
    # 3: a cut-out's soft edge is un-composited from input.background before pasting (no white fringe)
    default_batch_size = 4
    default_n = 10  # the paper's largest augmentation (10x), where it still found gains

    @config_dataclass
    class Config(PipelineOptions, MaskOptions, LLMOptions):
        model: str = SDXL_MODEL  # the background generator (text-to-image)
        revision: str | None = None
        backgrounds_dir: str | None = None  # copy-paste mode: backgrounds drawn from this folder, no diffusion
        steps: int = Field(30, ge=1)
        guidance_scale: float = Field(7.5, ge=0)
        # the fixed words first: CLIP reads 77 tokens, and a long class list (37 pet breeds) must not push them out
        negative_prompt: str = "person, people, animal, text, watermark, {classes}"
        instructions: tuple[str, ...] = INSTRUCTIONS
        backgrounds: tuple[str, ...] = BACKGROUNDS
        temporal: tuple[str, ...] = TEMPORAL
        caption_variants: int = Field(3, ge=1)  # captions written per (instruction, background, temporal)
        caption_request: str = CAPTION_REQUEST
        template_caption: str = TEMPLATE_CAPTION
        class_words: dict[str, list[str]] = Field(default_factory=dict)  # extra words / synonyms per class
        flip_p: float = Field(0.5, ge=0, le=1)
        rotation: range_option(ge=-180, le=180) = (-15.0, 15.0)  # degrees
        scale: range_option(gt=0) = (0.6, 1.0)  # of the subject's size
        position: Literal["random", "keep"] = "random"  # keep: the subject's centre stays where it was
        feather: float = Field(2.0, ge=0)  # Gaussian sigma (px) of the outward soft edge

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if not (c.instructions and c.backgrounds and c.temporal):
            raise ConfigError("aga: instructions, backgrounds and temporal must each have at least one entry")
        self.sd = self.background_files = self.llm = None
        if c.backgrounds_dir:
            root = Path(c.backgrounds_dir)
            if not root.is_dir():
                raise ConfigError(f"aga: backgrounds_dir {root} is not a directory")
            self.background_files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
            if not self.background_files:
                raise ConfigError(f"aga: no images in backgrounds_dir {root}")
            bad = []
            for f in self.background_files:  # checked now, not when a batch first draws it (mid-run)
                try:
                    with Image.open(f) as im:
                        im.verify()
                except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a damaged file
                    bad.append(f"{f.name} ({type(e).__name__})")
            if bad:
                raise ConfigError(f"aga: backgrounds_dir {root} holds {len(bad)} unreadable image(s): "
                                  f"{', '.join(bad[:5])}; remove or replace them")
        else:
            for key in ("{background}", "{temporal}"):  # a recorded phrase must shape the template caption
                if key not in c.template_caption:
                    raise ConfigError(f"aga: template_caption must contain {key}")
            for key in ("{instruction}", "{background}", "{temporal}"):
                if key not in c.caption_request:
                    raise ConfigError(f"aga: caption_request must contain {key}")
            self.sd = c.diffusion(c.model, c.revision, task="text2img")
            self.llm = c.language_model(c.device)
        self.warnings = [self.llm.warning] if self.llm is not None and self.llm.warning else []
        self.masker = c.masker(c.device)
        self.words: list[str] = []
        self.negative = ""

    def models(self) -> dict[str, dict[str, str]]:
        out = {}
        if self.sd is not None:
            out |= self.sd.models()
            if self.llm.kind != "template":
                out["llm"] = self.llm.describe()
        if self.config.masks == "auto":
            out |= self.masker.describe()
        return out

    def prepare(self, source) -> None:
        labels = sorted({rec.label for rec in source.records() if rec.error is None})
        if unknown := sorted(set(self.config.phrases) - set(labels)):
            raise ConfigError(f"aga: phrases name class(es) not in the dataset: {unknown}; its classes: {labels}")
        self.words = class_words(labels, self.config.class_words)
        self.negative = self.config.negative_prompt.replace("{classes}", ", ".join(labels))

    # ---- parameters ------------------------------------------------------------------------------
    def caption(self, instruction: str, background: str, temporal: str, variant: int) -> tuple[str, str, list[str]]:
        """(caption, source, removed class words) for one combination; LLM answers cached by the component."""
        c = self.config
        text, source = "", "template"
        if self.llm.kind != "template":
            request = (c.caption_request.replace("{instruction}", instruction).replace("{background}", background)
                       .replace("{temporal}", temporal))
            lines = self.llm.complete(request, seed=derive_seed(0, f"aga/{instruction}/{background}/{temporal}", variant))
            text, source = (lines[0], "llm") if lines else ("", "template")
        text, removed = scrub(text, self.words)
        if not text:
            source = "template"
            text, more = scrub(c.template_caption.replace("{background}", background).replace("{temporal}", temporal),
                               self.words)
            removed += more
        return text, source, removed

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        mask, info = c.subject(self.masker, example)
        if mask is None:
            if c.on_missing == "reject":
                raise Rejected(f"aga: no subject: {info.get('reason', 'no mask')}")
            info["mask_source"] = "whole_image"
            box = (0, 0) + example.image.size
        else:
            box = mask.getbbox()
        w, h = example.image.size
        bw, bh = box[2] - box[0], box[3] - box[1]
        flip = bool(rng.random() < c.flip_p)
        sampled = float(rng.uniform(*c.scale)) if c.scale[0] != c.scale[1] else float(c.scale[0])
        angle = round(float(rng.uniform(*c.rotation)) if c.rotation[0] != c.rotation[1] else float(c.rotation[0]), 6)
        scale = fit_scale(w, h, bw, bh, sampled, angle)  # never lose a subject pixel past the frame's edge
        if scale is None:
            raise Rejected(f"aga: the subject cannot fit a {w}x{h} frame at rotation {angle}")
        tw, th = transformed_size(bw, bh, scale, angle)
        if c.position == "keep":  # its own centre, moved only as far as the frame requires
            center = tuple(min(max((lo + hi) / 2, t / 2), size - t / 2)
                           for lo, hi, t, size in ((box[0], box[2], tw, w), (box[1], box[3], th, h)))
        else:
            center = tuple(float(rng.uniform(t / 2, size - t / 2)) if t < size else size / 2
                           for t, size in ((tw, w), (th, h)))
        shrunk = scale < round(sampled, 6)
        p: dict[str, Any] = {**{k: v for k, v in info.items() if k != "reason"}, "subject_box": list(box),
                             "flip": flip, "scale": scale, "scale_shrunk": shrunk,
                             **({"scale_sampled": round(sampled, 6)} if shrunk else {}), "rotation": angle,
                             "center": [round(center[0], 3), round(center[1], 3)], "feather": c.feather}
        if self.background_files is not None:
            i = int(rng.integers(len(self.background_files)))
            p["background_file"] = self.background_files[i].name
            p["background_index"] = i
        else:
            ins, bg, tmp = (str(x[rng.integers(len(x))]) for x in (c.instructions, c.backgrounds, c.temporal))
            variant = int(rng.integers(c.caption_variants))
            caption, source, removed = self.caption(ins, bg, tmp, variant)
            if source == "llm":  # a template caption is written from the background and temporal phrases alone
                p |= {"instruction": ins, "caption_variant": variant}
            p |= {"background": bg, "temporal": tmp, "caption": caption, "prompt_source": source,
                  "caption_removed": removed, "negative_prompt": self.negative, "guidance_scale": c.guidance_scale,
                  "steps": c.steps}
        return p

    # ---- generation ------------------------------------------------------------------------------
    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        if self.background_files is not None:
            backgrounds = [Image.open(self.background_files[p["background_index"]]).convert("RGB") for p in params]
        else:
            backgrounds = self.sd.text2img([p["caption"] for p in params], [p["seed"] for p in params],
                                           guidance_scale=c.guidance_scale, steps=c.steps,
                                           negative_prompt=self.negative)
        out = []
        for ex, p, bg in zip(batch, params, backgrounds):
            bg = ImageOps.fit(bg, ex.image.size, Image.BICUBIC)  # centre crop to the aspect, then resize
            mask = (Image.new("L", ex.image.size, 255) if p["mask_source"] == "whole_image"
                    else c.subject(self.masker, ex)[0])  # the mask sample_params found (cached)
            image = paste_subject(ex.image, mask, bg, p["flip"], p["scale"], p["rotation"], tuple(p["center"]),
                                  c.feather, matte=ex.matte if p["mask_source"] == "dataset" else None)
            image = refuse(image, refusal(bg))  # a flagged (black) background: the subject on it is no data
            out.append(Synthetic(image=image, label=ex.label, source_id=ex.id, params=self.recorded(p)))
        return out
