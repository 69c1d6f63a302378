"""Online augmentation during training: the classical per-image transforms (the same torchvision v2 code
as the offline `randaugment`, `cutout`, … generators, seeded per sample) and the batch-level mixes CutMix
and MixUp. Training never builds a generator: a diffusion method cannot be asked for here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torchvision.transforms import v2

from ..core.config import ConfigError, build_config, config_dataclass
from ..core.records import Example
from ..core.seeding import derive_seed
from ..methods import classical

# Per-image transforms: the offline generators' own classes, whose Config and sampling they share.
IMAGE_TRANSFORMS = {"randaugment": classical.RandAugment, "trivialaugment": classical.TrivialAugment,
                    "autoaugment": classical.AutoAugment, "augmix": classical.AugMix, "cutout": classical.Cutout,
                    "flipcrop": classical.FlipCrop}


class _BatchMix(ABC):
    """Batch-level mixing: `make_transform(num_classes)` returns a callable taking `(images, int labels)` and
    returning `(images, soft labels)`; with probability `1 - p` the batch is left unmixed (one-hot labels), so
    the output type never depends on the draw."""

    description = ""
    Config: type

    def __init__(self, config):
        self.config = config

    @abstractmethod
    def mixer(self, num_classes: int):
        """The torchvision v2 mixing transform."""

    def make_transform(self, num_classes: int):
        mix, p = self.mixer(num_classes), self.config.p

        def transform(images: torch.Tensor, labels: torch.Tensor):
            if torch.rand(()) < p:
                return mix(images, labels)
            return images, F.one_hot(labels, num_classes).to(torch.float32)

        return transform


class CutMix(_BatchMix):
    description = "CutMix (Yun et al. 2019), batch-level at training time: alpha=1, applied with p=0.5"

    @config_dataclass
    class Config:
        alpha: float = Field(1.0, gt=0)
        p: float = Field(0.5, ge=0, le=1)

    def mixer(self, num_classes: int):
        return v2.CutMix(num_classes=num_classes, alpha=self.config.alpha)


class MixUp(_BatchMix):
    description = "MixUp (Zhang et al. 2018), batch-level at training time: alpha=0.2, applied with p=1"

    @config_dataclass
    class Config:
        alpha: float = Field(0.2, gt=0)
        p: float = Field(1.0, ge=0, le=1)

    def mixer(self, num_classes: int):
        return v2.MixUp(num_classes=num_classes, alpha=self.config.alpha)


BATCH_TRANSFORMS = {"cutmix": CutMix, "mixup": MixUp}


def list_transforms() -> list[str]:
    """Every name `genaug train augment=NAME` (and a bench arm) accepts."""
    return sorted({**IMAGE_TRANSFORMS, **BATCH_TRANSFORMS})


def transform_class(name: str) -> type:
    cls = IMAGE_TRANSFORMS.get(name) or BATCH_TRANSFORMS.get(name)
    if cls is None:
        raise ConfigError(f"augment={name!r} is not a training transform; choose from {', '.join(list_transforms())} "
                          "(generative methods write images with `genaug augment`, then train with --synthetic)")
    return cls


class OnlineAugment:
    """One training transform: per-image ones run on every image of a batch (seeded per sample and step),
    batch mixes mix the batch and return soft labels."""

    def __init__(self, name: str, options: dict[str, Any], num_classes: int, seed: int):
        cls = transform_class(name)
        config = build_config(cls.Config, options, where=f"augment {name!r}")
        self.per_image = cls(config) if name in IMAGE_TRANSFORMS else None
        self.mix = cls(config).make_transform(num_classes) if name in BATCH_TRANSFORMS else None
        self.seed = seed

    def images(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self.per_image is None:
            return x
        from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

        examples = [Example(id=str(i), image=to_pil_image(img), label="", path="") for i, img in enumerate(x)]
        params = [{"seed": derive_seed(self.seed, f"online/{step}", i)} for i in range(len(x))]
        return torch.stack([pil_to_tensor(s.image) for s in self.per_image(examples, params)])
