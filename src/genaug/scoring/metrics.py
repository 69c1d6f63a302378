"""Synthetic-data metrics: precision / recall / density / coverage (the `prdc` package, Naeem et al. 2020),
Fréchet and kernel distances (torchmetrics) in the feature space of a real ImageNet network, and CMMD
(Jayasumana et al. 2024) on CLIP image embeddings; overall and per class.

Features are computed once per image and handed to torchmetrics through its custom-extractor interface
(an identity module that declares `num_features`), so the Fréchet and kernel distances see exactly the
features PRDC sees.

A Fréchet distance is only comparable with another in the same feature space, so its key names the space:
`fid` / `kid` only in the FID Inception-v3's (genaug.features.InceptionFeatures), else `fd_<space>` /
`kd_<space>` (`fd_mobilenet_v2`), the space read off the extractor's `name` (`feature_space`).
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.config import ConfigError
from ..core.log import bar_disabled
from ..data.imageset import ImageSet, load_any
from ..features import FID_FEATURES

# CMMD's kernel bandwidth and the factor that makes its values readable: the paper's and its reference
# code's (google-research/google-research, cmmd/distance.py).
CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0
KID_SEED = 0  # the subsets KID averages over: a fixed draw


class _Precomputed(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def extract(images: ImageSet, extractor: nn.Module, batch_size: int = 64, desc: str = "features") -> torch.Tensor:
    chunks = [extractor(images.images[i:i + batch_size])
              for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=bar_disabled(), leave=False)]
    return torch.cat(chunks).float() if chunks else torch.empty(0, extractor.num_features)


def default_extractor(extractor: nn.Module | None, feature_size: int = 224,
                      image_size: int | None = None) -> tuple[nn.Module, int]:
    """`(extractor, image size to load at)`: `extractor`, else the ImageNet MobileNetV2's at `feature_size` px;
    `image_size`, else the extractor's own input size (its `size`, else 128)."""
    if extractor is None:
        from ..features import ImageFeatures

        extractor = ImageFeatures(size=feature_size)
    return extractor, image_size or int(getattr(extractor, "size", 128))


def feature_space(extractor: nn.Module) -> str:
    """The short name of an extractor's feature space: its `name` (else its class name) up to the first
    character outside `[a-z0-9_]` ("mobilenet_v2-imagenet@224px" -> "mobilenet_v2", "clip:openai/..." ->
    "clip"); the FID network's is `features.FID_FEATURES`."""
    name = str(getattr(extractor, "name", type(extractor).__name__)).lower()
    return re.match(r"[a-z0-9_]*", name).group(0) or "features"


def distance_keys(space: str) -> tuple[str, str]:
    """The keys of the Fréchet and kernel distances in `space`: ("fid", "kid") in the FID Inception-v3's,
    else ("fd_<space>", "kd_<space>"), so a number is never taken for a published FID it cannot be compared
    with."""
    return ("fid", "kid") if space == FID_FEATURES else (f"fd_{space}", f"kd_{space}")


def frechet_kernel_distances(real: torch.Tensor, fake: torch.Tensor, space: str,
                             kid_subset: int = 50) -> dict[str, float]:
    """Fréchet distance (FID's formula) and the kernel distance (KID's unbiased polynomial-kernel MMD, mean and
    std over 50 subsets, drawn with a fixed seed: the same features give the same figures) between two feature
    sets of `space`, keyed by `distance_keys(space)`."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fd_key, kd_key = distance_keys(space)
    out: dict[str, float] = {}
    d = real.shape[1]
    if min(len(real), len(fake)) >= 2:
        fid = FrechetInceptionDistance(feature=_Precomputed(d))
        fid.update(real.double(), real=True)
        fid.update(fake.double(), real=False)
        out[fd_key] = max(0.0, float(fid.compute()))  # tiny negative values are round-off of sqrtm
        subset = min(kid_subset, len(real), len(fake))
        with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=_Precomputed(d), subset_size=subset, subsets=50)
        kid.update(real.double(), real=True)
        kid.update(fake.double(), real=False)
        with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
            torch.manual_seed(KID_SEED)
            mean, std = kid.compute()
        out[kd_key], out[f"{kd_key}_std"] = float(mean), float(std)
    return out


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD (Jayasumana et al. 2024): `scale` x the squared MMD between embedding sets `x (n, D)` and `y (m, D)`
    with the Gaussian RBF kernel exp(-|a - b|^2 / (2 sigma^2)); the minimum-variance (biased) estimator of
    Gretton et al. 2012, eq. 5, that the paper's code uses: kernel means over all pairs, diagonals included.
    Give L2-normalised CLIP image embeddings (`Clip.image_embeds`) for the paper's metric.

    torchmetrics has no RBF-kernel MMD (its KID is the unbiased polynomial-kernel one), hence these lines.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError(f"cmmd needs two (n, D) embedding sets of one width, got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    if not len(x) or not len(y):
        raise ConfigError("cmmd needs at least one embedding in each set")
    if not sigma > 0:
        raise ConfigError(f"cmmd's sigma must be > 0, got {sigma}")
    x, y = x.double(), y.double()
    gamma = 1 / (2 * sigma ** 2)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * torch.cdist(a, b).square()).mean()

    return float(scale * (k(x, x) + k(y, y) - 2 * k(x, y)))


def prdc_scores(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    from prdc import compute_prdc

    if min(len(real), len(fake)) <= k + 1:  # prdc's k-NN radii need k + 1 neighbours besides the point itself
        return {}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints its sample counts
        scores = compute_prdc(real.numpy().astype(np.float64), fake.numpy().astype(np.float64), nearest_k=k)
    return {name: float(v) for name, v in scores.items()}


def synthetic_metrics(real: str | Path, synthetic: str | Path, extractor: nn.Module | None = None, k: int = 5,
                      image_size: int | None = None, feature_size: int = 224, per_class: bool = True,
                      clip=None, prompt: str = "a photo of a {label}") -> dict[str, Any]:
    """Compare a synthetic set to the real one it should resemble.

    precision: share of synthetic images inside the real manifold (fidelity); recall: share of real
    images inside the synthetic manifold (diversity); density / coverage: their outlier-robust versions.
    Fréchet / kernel distances between the two feature distributions (0 = the same distribution), keyed by
    the feature space (`distance_keys`: `fid` / `kid` only with the FID Inception-v3).
    With a `clip` component (genaug.components.clip.Clip): CMMD between the real and synthetic CLIP image
    embeddings, and the CLIP score of each synthetic image against `prompt` filled with its label.
    Images are loaded at `image_size` px, by default the extractor's input size (its `size`, else 128), and
    at the CLIP vision tower's input size for CMMD and the CLIP score.
    """
    if k < 1:
        raise ConfigError(f"k={k}: precision / recall need at least 1 nearest neighbour")
    if extractor is None and feature_size < 32:
        raise ConfigError(f"feature_size={feature_size}: MobileNetV2 needs at least 32 px (its stride)")
    extractor, image_size = default_extractor(extractor, feature_size, image_size)
    space = feature_space(extractor)
    fd_key, kd_key = distance_keys(space)
    real_set, syn_set = load_any(real, image_size, "real"), load_any(synthetic, image_size, "synthetic")
    if not len(syn_set):
        raise ConfigError(f"{synthetic} holds no images")
    rf = extract(real_set, extractor, desc="real features")
    sf = extract(syn_set, extractor, desc="synthetic features")
    result: dict[str, Any] = {"n_real": len(real_set), "n_synthetic": len(syn_set), "k": k,
                              "features": getattr(extractor, "name", type(extractor).__name__),
                              "feature_space": space, "image_size": image_size,
                              "distances": {"frechet": fd_key, "kernel": kd_key},
                              "overall": {**prdc_scores(rf, sf, k), **frechet_kernel_distances(rf, sf, space)}}
    rl, sl = np.array(real_set.labels), np.array(syn_set.labels)
    if clip is not None:
        clip_size = clip.image_size
        if clip_size != image_size:
            real_set, syn_set = load_any(real, clip_size, "real"), load_any(synthetic, clip_size, "synthetic")
        embed = clip.as_feature_extractor()
        r_emb, s_emb = extract(real_set, embed, desc="real CLIP"), extract(syn_set, embed, desc="synthetic CLIP")
        result["overall"]["cmmd"] = cmmd(r_emb, s_emb)
        texts = [prompt.format(label=label) for label in syn_set.labels]
        result["overall"]["clip_score"] = clip.clip_score(syn_set.images, texts)
        result["clip"] = {"model": clip.id, "revision": clip.revision, "prompt": prompt, "image_size": clip_size}
        result["cmmd"] = {"embeddings": f"clip:{clip.id}, L2-normalised image embeddings", "sigma": CMMD_SIGMA,
                          "scale": CMMD_SCALE, "estimator": "biased (Gretton et al. 2012, eq. 5)"}
    if per_class:
        result["per_class"] = {}
        for c in sorted(set(rl) | set(sl)):
            r_in, s_in = rl == c, sl == c
            row = {"n_real": int(r_in.sum()), "n_synthetic": int(s_in.sum()),
                   **prdc_scores(rf[r_in], sf[s_in], k), **frechet_kernel_distances(rf[r_in], sf[s_in], space)}
            if clip is not None and s_in.any():
                if min(r_in.sum(), s_in.sum()) >= 2:
                    row["cmmd"] = cmmd(r_emb[torch.from_numpy(r_in)], s_emb[torch.from_numpy(s_in)])
                row["clip_score"] = clip.clip_score(syn_set.images[torch.from_numpy(s_in)],
                                                    [prompt.format(label=c)] * int(s_in.sum()))
            result["per_class"][str(c)] = row
    return result
