"""Classical augmentation baselines, all from `torchvision.transforms.v2` (none written by hand).

As offline generators (`genaug augment`), each output image is drawn with torch's RNG seeded by its own
variant seed, so it is reproducible in any batch and order; what was applied (ops and magnitudes, crop
and erase boxes) is recorded in the manifest. Training applies the same classes online
(`genaug.train.transforms`); CutMix and MixUp mix pairs of images inside a training batch, so they live
there, not in the method registry.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torchvision.transforms import v2

from ..core.config import config_dataclass, range_option
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method

Interpolation = Literal["nearest", "bilinear", "bicubic"]


class _RecordOps:
    """Mixin for torchvision's AutoAugment family: records every (op, signed magnitude) it applies."""

    applied: list[dict[str, Any]]

    def _apply_image_or_video_transform(self, image, transform_id, magnitude, interpolation, fill):
        self.applied.append({"op": transform_id, "magnitude": round(float(magnitude), 6)})
        return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)


class _SeededTorchvision(Method):
    """Runs one torchvision transform per image under torch's RNG seeded by the image's own seed."""

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        out = []
        for ex, p in zip(batch, params, strict=True):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(p["seed"])
                image, applied = self.apply(ex.image)
            out.append(Synthetic(image=image, label=ex.label, source_id=ex.id, params=self.recorded(p, **applied)))
        return out

    @abstractmethod
    def apply(self, image) -> tuple[Any, dict[str, Any]]:
        """Transform one PIL image under the already-seeded RNG; return it and what was applied."""


class _PolicyMethod(_SeededTorchvision):
    policy_cls: ClassVar[type]

    def __init__(self, config, components=None):
        super().__init__(config, components)
        recording = type(f"Recording{self.policy_cls.__name__}", (_RecordOps, self.policy_cls), {})
        self.transform = recording(**self.transform_kwargs())

    def transform_kwargs(self) -> dict[str, Any]:
        kw = {k: getattr(self.config, k) for k in self.config.__dataclass_fields__}
        kw["interpolation"] = v2.InterpolationMode(kw["interpolation"])
        return kw

    def apply(self, image):
        self.transform.applied = []
        image = self.transform(image)
        return image, {"ops": self.transform.applied}


@register_method("randaugment")
class RandAugment(_PolicyMethod):
    description = "RandAugment (Cubuk et al. 2020): N random ops at magnitude M; torchvision v2, N=2, M=9"
    paper = ("Cubuk et al., RandAugment: Practical automated data augmentation with a reduced search space (CVPR "
             "Workshops 2020, arXiv 1909.13719)")
    policy_cls = v2.RandAugment

    @config_dataclass
    class Config:
        num_ops: int = Field(2, ge=1)
        magnitude: int = Field(9, ge=0)
        num_magnitude_bins: int = Field(31, ge=2)
        interpolation: Interpolation = "nearest"


@register_method("trivialaugment")
class TrivialAugment(_PolicyMethod):
    description = "TrivialAugment Wide (Müller & Hutter 2021): one random op at a random magnitude; torchvision v2"
    paper = ("Müller & Hutter, TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation (ICCV 2021, "
             "arXiv 2103.10158)")
    policy_cls = v2.TrivialAugmentWide

    @config_dataclass
    class Config:
        num_magnitude_bins: int = Field(31, ge=2)
        interpolation: Interpolation = "nearest"


@register_method("autoaugment")
class AutoAugment(_PolicyMethod):
    description = "AutoAugment (Cubuk et al. 2019): a learned policy (imagenet, cifar10 or svhn); torchvision v2"
    paper = "Cubuk et al., AutoAugment: Learning Augmentation Strategies from Data (CVPR 2019, arXiv 1805.09501)"
    policy_cls = v2.AutoAugment

    @config_dataclass
    class Config:
        policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"
        interpolation: Interpolation = "nearest"

    def transform_kwargs(self):
        kw = super().transform_kwargs()
        kw["policy"] = v2.AutoAugmentPolicy(kw["policy"])
        return kw


@register_method("augmix")
class AugMix(_PolicyMethod):
    description = "AugMix (Hendrycks et al. 2020): a Dirichlet mix of augmentation chains; torchvision v2"
    paper = ("Hendrycks et al., AugMix: A Simple Data Processing Method to Improve Robustness and Uncertainty "
             "(ICLR 2020, arXiv 1912.02781)")
    policy_cls = v2.AugMix

    @config_dataclass
    class Config:
        severity: int = Field(3, ge=1, le=10)
        mixture_width: int = Field(3, ge=1)
        chain_depth: int = -1  # -1: a random depth in [1, 3] per chain
        alpha: float = Field(1.0, gt=0)
        all_ops: bool = True
        interpolation: Interpolation = "bilinear"


def _box(top, left, height, width) -> dict[str, int]:
    return {"top": int(top), "left": int(left), "height": int(height), "width": int(width)}


@register_method("cutout")
class Cutout(_SeededTorchvision):
    description = "Cutout / Random Erasing (DeVries & Taylor 2017; Zhong et al. 2020): erase one random box"
    paper = ("DeVries & Taylor, Improved Regularization of CNNs with Cutout (arXiv 1708.04552); Zhong et al., "
             "Random Erasing Data Augmentation (AAAI 2020, arXiv 1708.04896)")

    @config_dataclass
    class Config:
        scale: range_option(gt=0, le=1) = (0.02, 0.33)  # erased area as a fraction of the image
        ratio: range_option(gt=0) = (0.3, 3.3)  # aspect ratio range of the box
        value: int = Field(0, ge=0, le=255)  # fill grey level

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        # p=1: an offline copy that is not erased would be a duplicate of its source.
        self.transform = v2.RandomErasing(p=1.0, scale=c.scale, ratio=c.ratio, value=c.value)

    def apply(self, image):
        tensor = v2.functional.pil_to_tensor(image)
        p = self.transform.make_params([tensor])
        out = self.transform.transform(tensor, p)
        return v2.functional.to_pil_image(out), {"erase": _box(p["i"], p["j"], p["h"], p["w"])}


@register_method("flipcrop")
class FlipCrop(_SeededTorchvision):
    description = "Random horizontal flip + random resized crop back to the source size; torchvision v2"
    paper = ("Szegedy et al., Going Deeper with Convolutions (CVPR 2015, arXiv 1409.4842): the Inception "
             "random-resized crop, with horizontal flips")

    @config_dataclass
    class Config:
        # Milder than torchvision's ImageNet training default (0.08, 1): an offline copy is kept forever.
        scale: range_option(gt=0, le=1) = (0.5, 1.0)  # crop area as a fraction of the image
        ratio: range_option(gt=0) = (3 / 4, 4 / 3)  # aspect ratio range of the crop
        flip_p: float = Field(0.5, ge=0, le=1)

    def apply(self, image):
        c = self.config
        crop = v2.RandomResizedCrop(size=(image.height, image.width), scale=c.scale, ratio=c.ratio, antialias=True)
        p = crop.make_params([image])
        image = crop.transform(image, p)
        flip = bool(torch.rand(()) < c.flip_p)
        if flip:
            image = v2.functional.horizontal_flip(image)
        return image, {"crop": _box(p["top"], p["left"], p["height"], p["width"]), "flip": flip}
