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


GENAUG_MODELS = ("genaug_small_cnn",)  # registered in timm by genaug: timm does not load their weights files


def register_timm_models() -> None:
    """Add genaug's own models to timm's registry (timm is imported only when a classifier is built)."""
    import timm
    from timm.models import register_model

    if not timm.is_model("genaug_small_cnn"):
        register_model(genaug_small_cnn)


def _last_linear(model: nn.Module) -> tuple[str | None, nn.Linear | None]:
    """`(name, module)` of the model's last linear layer, its classifier head; `(None, None)` without one."""
    return next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), (None, None))


def _replace_last_linear(model: nn.Module, num_classes: int) -> str:
    name, last = _last_linear(model)
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no linear head to replace")
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return name


def create_classifier(name: str, num_classes: int, pretrained: str | None = None,
                      linear_probe: bool = False, image_size: int | None = None,
                      **model_options) -> tuple[nn.Module, tuple, tuple]:
    """`(model, mean, std)`; with `linear_probe` only the new head is trainable. `image_size`: a timm model
    built for a fixed input size (a ViT's `img_size`) is built for this one unless `model_options` say."""
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
            _load_backbone(model, path)
        head = _replace_last_linear(model, num_classes)
    else:
        try:
            kwargs = {"pretrained_cfg_overlay": {"file": str(path)}} if path else {}
            if path and not path.is_file():
                raise ConfigError(f"pretrained weights not found: {path}")
            def build(**size):
                return timm.create_model(name, pretrained=path is not None, num_classes=num_classes, **kwargs,
                                         **size, **model_options)

            # a ViT's patch grid is fixed at build time: built for the images it will see, where the model takes
            # an img_size (a model that does not is built as it is)
            sized = bool(image_size) and "img_size" not in model_options
            try:
                model = build(img_size=image_size) if sized else build()
            except TypeError:
                if not sized:
                    raise
                model = build()
        except TypeError as e:
            raise ConfigError(f"model {name!r} does not take these model_options: {e}") from None
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"unknown model {name!r}: a timm model name or torchvision/<name>") from None
            raise
        if path is not None and name in GENAUG_MODELS:  # timm loads files only for its own zoo's models
            _load_backbone(model, path)
        head = None  # timm sized the head itself (num_classes); get_classifier() finds it
    if linear_probe:
        model.requires_grad_(False)
        head_module = model.get_submodule(head) if head else model.get_classifier()
        head_module.requires_grad_(True)
    mean, std = _normalisation(path)
    return model, mean, std


def _normalisation(path: Path | None) -> tuple[tuple, tuple]:
    """The input normalisation of weights: a genaug run's checkpoint records its own (mean, std in its
    metadata); other weights files are ImageNet's; no file (from scratch): 0.5 / 0.5."""
    if path is None:
        return HALF, HALF
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = checkpoint_meta(f.metadata() or {})
        if "mean" in meta and "std" in meta:
            return tuple(meta["mean"]), tuple(meta["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def checkpoint_meta(metadata: dict[str, str]) -> dict:
    """What a genaug run saved beside its weights (one `genaug` key, JSON; checkpoints of earlier genaug: one
    key per entry)."""
    import json

    if "genaug" in metadata:
        return json.loads(metadata["genaug"])
    return {k: json.loads(v) for k, v in metadata.items()}


def _load_backbone(model: nn.Module, path: Path) -> None:
    """Load a weights file into `model` but its classifier head when the head's shape differs (a checkpoint of
    another number of classes: the head is new). Any other missing, unexpected or mis-shaped weight is an error:
    the file is not this architecture's."""
    state, own = load_state(path), model.state_dict()
    differ = [k for k in state if k in own and state[k].shape != own[k].shape]
    head_name = _last_linear(model)[0]
    head = {k for k in differ if head_name is not None and k.rpartition(".")[0] == head_name}
    state = {k: v for k, v in state.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head]
    wrong = sorted(set(differ) - head)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}" for what, keys in
                           (("missing", missing), ("unexpected", list(unexpected)), ("other shape", wrong)) if keys)
        raise ConfigError(f"pretrained={path} does not fit this model ({detail})")

