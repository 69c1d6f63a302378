"""Classifiers and feature extractors.

Classifier names are timm names (`resnet18`, `vit_tiny_patch16_224`, `genaug_small_cnn`, …) or
`torchvision/<name>` for torchvision's zoo. Pretrained weights come from a local file, never a hub;
`pretrained="imagenet"` means torchvision's ImageNet MobileNetV2 weights (checksum prefix b0353104), found by
`genaug.features.mobilenet_v2_imagenet_file` (torch's cache, the offline package, or a download).
"""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import nn

from ..core.config import ConfigError
from ..features import IMAGENET_MEAN, IMAGENET_STD, load_state, mobilenet_v2_imagenet_file

HALF = (0.5, 0.5, 0.5)


class SmallCNN(nn.Module):
    """Six 3x3 conv layers in three stages, global average pooling, a linear head: for 28-64 px images."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.2):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate((width, width * 2, width * 4)):
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c, num_classes)

    def get_classifier(self) -> nn.Module:  # the timm interface linear probing uses
        return self.head

    def forward(self, x):
        return self.head(self.drop(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)))


def genaug_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """timm entry point, so `timm.create_model("genaug_small_cnn", num_classes=10)` works (once
    `register_timm_models()` ran; `create_classifier` does it)."""
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}  # timm's own
    return SmallCNN(**kwargs)


def register_timm_models() -> None:
    """Add genaug's own models to timm's registry (timm is imported only when a classifier is built)."""
    import timm
    from timm.models import register_model

    if not timm.is_model("genaug_small_cnn"):
        register_model(genaug_small_cnn)


def _replace_last_linear(model: nn.Module, num_classes: int) -> str:
    name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no linear head to replace")
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return name


def create_classifier(name: str, num_classes: int, pretrained: str | None = None,
                      linear_probe: bool = False, **model_options) -> tuple[nn.Module, tuple, tuple]:
    """`(model, mean, std)`; with `linear_probe` only the new head is trainable."""
    import timm

    register_timm_models()

    path = None
    if pretrained == "imagenet":
        if name != "torchvision/mobilenet_v2":
            raise ConfigError("pretrained=imagenet names torchvision's ImageNet MobileNetV2 weights: "
                              "use model=torchvision/mobilenet_v2")
        path = mobilenet_v2_imagenet_file()
    elif pretrained:
        path = Path(pretrained)
    if name.startswith("torchvision/"):
        import torchvision

        arch = name.split("/", 1)[1]
        try:
            model = torchvision.models.get_model(arch, weights=None, **model_options)
        except ValueError:
            raise ConfigError(f"unknown torchvision model {arch!r}") from None
        if path is not None:
            model.load_state_dict(load_state(path))
        head = _replace_last_linear(model, num_classes)
    else:
        try:
            kwargs = {"pretrained_cfg_overlay": {"file": str(path)}} if path else {}
            if path and not path.is_file():
                raise ConfigError(f"pretrained weights not found: {path}")
            model = timm.create_model(name, pretrained=path is not None, num_classes=num_classes, **kwargs,
                                      **model_options)
        except TypeError as e:
            raise ConfigError(f"model {name!r} does not take these model_options: {e}") from None
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"unknown model {name!r}: a timm model name or torchvision/<name>") from None
            raise
        head = None  # timm sized the head itself (num_classes); get_classifier() finds it
    if linear_probe:
        model.requires_grad_(False)
        head_module = model.get_submodule(head) if head else model.get_classifier()
        head_module.requires_grad_(True)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if path is not None else (HALF, HALF)
    return model, mean, std
