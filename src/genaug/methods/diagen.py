"""DIAGen (Lingenberg et al., "DIAGen: Semantically Diverse Image Augmentation with Generative Models for
Few-Shot Learning", GCPR 2024), built on DA-Fusion:

1. a textual-inversion token per class (DA-Fusion's, shared cache);
2. Gaussian noise on the learned class embedding (`noise_stds` are standard deviations σ, as in DIAGen's
   aggregate_embeddings.py, `randn_like(v) * std`: 0.005 / 0.01 / 0.025, in embedding units, added to every
   text encoder's row). DIAGen's code draws K = len(noise_stds) noisy vectors per class once and gives each
   image one of them or the clean vector (`noise_mode="fixed"`, the default); `"per_image"` draws fresh noise
   for every image instead;
3. class prompts written by a language model in DIAGen's structure "a photo of a [adjective] <class>
   [location] [weather] [time of day]" (optional slots), the class name replaced by the token; prompts the
   model did not write (no model configured, or a bad completion) come from a deterministic template over
   the same slots, and every image records which source its prompt came from;
4. Stable Diffusion img2img at strength 0.7, guidance 15, M = 10 images per real image;
5. weighting (the `weight` stage, run by the pipeline after generation): a linear probe on the ImageNet ResNet-50
   (256 px, RandAugment; the offline MobileNetV2 where ResNet-50's weights cannot be had, recorded) trained on
   the real images, calibrated by temperature scaling on the validation split `weight_val` (DIAGen's) or, without
   one, on `weight_holdout` of the real images held out of training, scores each synthetic image; weight 1 if
   p >= 0.5 else 2p, normalised per source (see `genaug.scoring.weighting`), written to the manifest's `weight`.
"""
from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..components.llm import LLMOptions
from ..components.textual_inversion import token_vectors, vector_tokens
from ..core.config import ConfigError, config_dataclass, values_option
from .registry import register_method
from ..core.seeding import derive_seed
from ..core.records import Example, Synthetic
from .da_fusion import DAFusion

SLOTS = ("adjective", "location", "weather", "time")
ADJECTIVES = ("small", "large", "dark", "bright", "colorful", "worn", "new", "clean", "dusty", "shiny", "wet", "pale")
LOCATIONS = ("in a forest", "on a beach", "on a city street", "in a kitchen", "on a wooden table", "in a field",
             "in a garden", "on a snowy mountain", "in a living room", "by a lake", "in a desert", "in a parking lot")
WEATHER = ("in the rain", "in fog", "in snow", "in bright sunshine", "under a cloudy sky", "in a storm")
TIMES = ("at night", "at sunset", "at dawn", "at noon", "in the evening", "in the early morning")
SLOT_WORDS = {"adjective": "[adjective]", "location": "[location]", "weather": "[weather]", "time": "[time of day]"}
INSTRUCTION = (
    "Write {n} prompts for a text-to-image model, one per line, with no numbering and no other text. "
    "Each prompt has the structure: {structure}. The parts in brackets are optional: vary which of them you use "
    "and how many. Adjectives must be visual (colour, size, material, condition). Every prompt must contain "
    "\"{name}\" exactly once and no other object class.")


def noise_slots(stds: tuple[float, ...], clean: bool, seed: int, label: str) -> list[tuple[float, int | None]]:
    """DIAGen's fixed embedding-noise vectors of one class, as `[(std, noise seed)]`: the clean vector first
    (std 0, no seed) when `clean`, then one vector per std, each from its own seed (derived from `seed` and the
    class), so every image given slot j of a class gets the very same vector."""
    return ([(0.0, None)] if clean else []) + [
        (float(std), derive_seed(seed, f"diagen-noise/{label}", j)) for j, std in enumerate(stds)]


def add_embedding_noise(vectors: dict[str, torch.Tensor], std: float, seed: int) -> dict[str, torch.Tensor]:
    """DIAGen's embedding noise: every text encoder's row (every row of a multi-vector token, as
    aggregate_embeddings.py's `randn_like` on the stored tensor) plus N(0, std²) noise from one seeded generator."""
    g = torch.Generator().manual_seed(int(seed))
    return {name: v + std * torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.device, v.dtype)
            for name, v in sorted(vectors.items())}


def vector_rows(token: str, vectors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """`{tokenizer entry: {text_encoder_name: row}}` of a class token's `{text_encoder_name: (dim,) or
    (vectors, dim)}`: one entry per vector (`token, token_1, …`), so an override replaces every row."""
    per_encoder = {name: v.reshape(-1, v.shape[-1]) for name, v in vectors.items()}
    k = next(iter(per_encoder.values())).shape[0]
    return {sub: {name: v[i] for name, v in per_encoder.items()} for i, sub in enumerate(vector_tokens(token, k))}


def _word_pattern(name: str) -> re.Pattern:
    words = [re.escape(w) for w in re.split(r"[\s_-]+", name.strip()) if w]
    return re.compile(r"(?<![\w<])" + r"[\s_-]+".join(words) + r"(?![\w>])", re.IGNORECASE)


@register_method("diagen")
class DIAGen(DAFusion):
    description = ("DIAGen (Lingenberg et al. 2024): DA-Fusion + noise on the class embedding + LLM class prompts "
                   "+ classifier-confidence weights")
    paper = ("Lingenberg et al., DIAGen: Semantically Diverse Image Augmentation with Generative Models for "
             "Few-Shot Learning (GCPR 2024, arXiv 2408.14584)")
    version = "2"  # 2: DIAGen's fixed noisy vectors + the clean one; DA-Fusion's textual-inversion recipe
    default_n = 10

    @config_dataclass
    class Config(DAFusion.Config, LLMOptions):
        prompt: str = "a photo of a {token}"  # used as is for template prompts with no slot drawn
        strengths: values_option(gt=0, le=1) = (0.7,)  # DIAGen's t0
        guidance_scale: float = Field(15.0, ge=0)
        # standard deviations σ (not σ²) of the noise on the class embedding, DIAGen's --std-deviation; () = none
        noise_stds: values_option(ge=0, allow_empty=True) = (0.005, 0.01, 0.025)
        # fixed: DIAGen's code, one noisy vector per std drawn once per class (seeded by noise_seed), each image
        # given one of them or the clean vector (noise_clean); per_image: fresh noise for every image
        noise_mode: Literal["fixed", "per_image"] = "fixed"
        noise_clean: bool = True
        noise_seed: int = 0
        prompts_per_class: int = Field(10, ge=1)
        slots: tuple[str, ...] = SLOTS  # optional parts of the prompt structure
        adjectives: tuple[str, ...] = ADJECTIVES
        locations: tuple[str, ...] = LOCATIONS
        weather: tuple[str, ...] = WEATHER
        times_of_day: tuple[str, ...] = TIMES
        llm_instruction: str = INSTRUCTION
        prompt_seed: int = 0
        weighting: Literal["diagen", "confidence", "none"] = "diagen"
        weight_holdout: float = Field(0.2, gt=0, lt=1)  # used only without weight_val
        weight_val: str | None = None  # a validation split (DIAGen's): trains on all real images, calibrates here
        weight_backbone: Literal["resnet50", "mobilenet_v2"] = "resnet50"  # DIAGen's; mobilenet_v2 is the fallback
        weight_image_size: int | None = Field(None, ge=8)  # None: the backbone's (resnet50 256 px, mobilenet_v2 64)
        weight_epochs: int = Field(15, ge=1)
        weight_seed: int = 0

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if c.noise_mode == "fixed" and not c.noise_clean and not c.noise_stds:
            raise ConfigError("diagen: noise_mode=fixed with noise_clean=false needs noise_stds (no vector left)")
        if unknown := set(c.slots) - set(SLOTS):
            raise ConfigError(f"diagen: unknown slot(s) {sorted(unknown)}; choose from {SLOTS}")
        for key in ("{n}", "{name}"):
            if key not in c.llm_instruction:
                raise ConfigError(f"diagen: llm_instruction must contain {key}")
        self.llm = c.language_model(c.device)
        self.warnings = [self.llm.warning] if self.llm.warning else []  # llm=auto found no model: to the summary
        self.class_prompts: dict[str, list[tuple[str, str]]] = {}  # label -> [(prompt with {token}, source)]
        self.vectors: dict[str, dict[str, torch.Tensor]] = {}

    def models(self) -> dict[str, dict[str, str]]:
        out = super().models()
        if self.llm.kind != "template":
            out["llm"] = self.llm.describe()
        return out

    # ---- prompts ---------------------------------------------------------------------------------
    def template_prompt(self, label: str, i: int) -> str:
        """Prompt i of a class from the slot lists, each slot present with probability 1/2 (seeded)."""
        c = self.config
        rng = np.random.default_rng(derive_seed(c.prompt_seed, f"diagen-template/{label}", i))
        pick = {slot: (str(rng.choice(words)) if slot in c.slots and words and rng.random() < 0.5 else "")
                for slot, words in (("adjective", c.adjectives), ("location", c.locations),
                                    ("weather", c.weather), ("time", c.times_of_day))}
        subject = " ".join(x for x in (pick["adjective"], "{token}") if x)
        base = c.prompt.replace("{token}", subject)
        return " ".join(x for x in (base, pick["location"], pick["weather"], pick["time"]) if x)

    def write_prompts(self, label: str, other_labels: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """`prompts_per_class` prompts `[(text with {token}, "llm" | "template")]` for one class. A written
        prompt is kept when it names the class exactly once and no other class of the dataset."""
        c = self.config
        k = c.prompts_per_class
        found: list[tuple[str, str]] = []
        if self.llm.kind != "template":
            structure = "a photo of a " + " ".join(
                ("{name}" if part == "name" else SLOT_WORDS[part]) for part in
                ["adjective", "name", "location", "weather", "time"] if part == "name" or part in c.slots)
            name = " ".join(re.split(r"[_]+", label))
            instruction = (c.llm_instruction.replace("{structure}", structure).replace("{name}", name)
                           .replace("{n}", str(k + 5)))  # a few spare: some lines may lack the class name
            pattern, others = _word_pattern(label), [_word_pattern(o) for o in other_labels if o != label]
            for line in self.llm.complete(instruction, seed=derive_seed(c.prompt_seed, f"diagen-llm/{label}", 0)):
                own = [m.span() for m in pattern.finditer(line)]
                # another class named outside this one's own name ("dog" inside "hot dog" is not "dog")
                other = any(not any(a <= m.start() and m.end() <= b for a, b in own)
                            for o in others for m in o.finditer(line))
                if len(own) != 1 or "{" in line or "}" in line or other:
                    continue  # DIAGen keeps prompts that name the class; exactly once, so the token is the subject
                found.append((pattern.sub("{token}", line), "llm"))
                if len(found) == k:
                    break
        return found + [(self.template_prompt(label, i), "template") for i in range(len(found), k)]

    def prepare(self, source) -> None:
        super().prepare(source)  # DA-Fusion's tokens
        for label, token in self.tokens.items():
            self.vectors[label] = token_vectors(self.sd.pipe, token)
            self.class_prompts[label] = self.write_prompts(label, tuple(self.tokens))

    # ---- generation ------------------------------------------------------------------------------
    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        if example.label not in self.tokens:
            raise ConfigError(f"diagen: no token for class {example.label!r}; prepare(source) learns them")
        token = self.tokens[example.label]
        prompts = self.class_prompts[example.label]
        i = int(rng.integers(len(prompts)))
        template, source = prompts[i]
        p = {"prompt": template.replace("{token}", token), "prompt_source": source, "prompt_index": i,
             "token": token}
        if c.noise_mode == "fixed" and c.noise_stds:
            slots = noise_slots(c.noise_stds, c.noise_clean, c.noise_seed, example.label)
            # DIAGen cycles its vectors with a per-class counter; here an image's variants k = 0, 1, … cycle through
            # the slots from an offset of its own (from the source id, not from the order images are generated in),
            # so every image's M variants spread over the slots as evenly as M allows
            j = (variant + derive_seed(c.noise_seed, f"diagen-slot/{example.id}", 0)) % len(slots)
            std, seed = slots[j]
            p |= {"noise_slot": j, "noise_std": std} | ({"noise_seed": seed} if seed is not None else {})
        elif c.noise_mode == "per_image" and c.noise_stds:
            p |= {"noise_std": float(c.noise_stds[rng.integers(len(c.noise_stds))]),
                  "noise_seed": int(rng.integers(2**63 - 1))}
        return p | {"strength": float(c.strengths[rng.integers(len(c.strengths))]),
                    "guidance_scale": c.guidance_scale, "steps": c.steps}

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        embeds = []
        for ex, p in zip(batch, params):  # each image's class embedding (clean or noisy), encoded alone
            rows = self.vectors[ex.label]
            if p.get("noise_std"):
                rows = add_embedding_noise(rows, p["noise_std"], p["noise_seed"])
            embeds.append(self.sd.encode(p["prompt"], rows=vector_rows(p["token"], rows)))
        images: list = [None] * len(batch)
        for s in sorted({p["strength"] for p in params}):  # one pipeline call per strength
            idx = [i for i, p in enumerate(params) if p["strength"] == s]
            outs = self.sd.img2img([batch[i].image for i in idx], None, [params[i]["seed"] for i in idx], strength=s,
                                   guidance_scale=c.guidance_scale, steps=c.steps, embeds=[embeds[i] for i in idx])
            for i, im in zip(idx, outs):
                images[i] = im
        return [Synthetic(image=im, label=ex.label, source_id=ex.id, params=self.recorded(p))
                for im, ex, p in zip(images, batch, params)]

    # ---- weighting ------------------------------------------------------------------------------
    def stages(self) -> list[tuple[str, dict[str, Any]]]:
        c = self.config
        if c.weighting == "none":
            return []
        return [("weight", {"rule": c.weighting, "holdout": c.weight_holdout, "val": c.weight_val,
                            "backbone": c.weight_backbone,
                            "classifier": {"epochs": c.weight_epochs,
                                           **({"image_size": c.weight_image_size} if c.weight_image_size else {})},
                            "seed": c.weight_seed})]
