"""Synthetic-data metrics: precision / recall / density / coverage (the `prdc` package, Naeem et al. 2020),
FID and KID (torchmetrics), in the feature space of a real ImageNet network, overall and per class.

Features are computed once per image and handed to torchmetrics through its custom-extractor interface
(an identity module that declares `num_features`), so FID and KID see exactly the features PRDC sees.
"""
from __future__ import annotations

import contextlib
import io
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


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset: int = 50) -> dict[str, float]:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    out: dict[str, float] = {}
    d = real.shape[1]
    if min(len(real), len(fake)) >= 2:
        fid = FrechetInceptionDistance(feature=_Precomputed(d))
        fid.update(real.double(), real=True)
        fid.update(fake.double(), real=False)
        out["fid"] = max(0.0, float(fid.compute()))  # tiny negative values are round-off of sqrtm
        subset = min(kid_subset, len(real), len(fake))
        with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=_Precomputed(d), subset_size=subset, subsets=50)
        kid.update(real.double(), real=True)
        kid.update(fake.double(), real=False)
        mean, std = kid.compute()
        out["kid"], out["kid_std"] = float(mean), float(std)
    return out


def prdc_scores(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    from prdc import compute_prdc

    if min(len(real), len(fake)) <= k:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints its sample counts
        scores = compute_prdc(real.numpy().astype(np.float64), fake.numpy().astype(np.float64), nearest_k=k)
    return {name: float(v) for name, v in scores.items()}


def synthetic_metrics(real: str | Path, synthetic: str | Path, extractor: nn.Module | None = None, k: int = 5,
                      image_size: int = 128, feature_size: int = 224, per_class: bool = True,
                      clip=None, prompt: str = "a photo of a {label}") -> dict[str, Any]:
    """Compare a synthetic set to the real one it should resemble.

    precision: share of synthetic images inside the real manifold (fidelity); recall: share of real
    images inside the synthetic manifold (diversity); density / coverage: their outlier-robust versions.
    FID / KID: distances between the two feature distributions (0 = the same distribution).
    With a `clip` component (genaug.components.clip.Clip): the CLIP score of each synthetic image against
    `prompt` filled with its label.
    """
    if extractor is None:
        from ..features import ImageFeatures

        extractor = ImageFeatures(size=feature_size)
    real_set, syn_set = load_any(real, image_size, "real"), load_any(synthetic, image_size, "synthetic")
    if not len(syn_set):
        raise ConfigError(f"{synthetic} holds no images")
    rf = extract(real_set, extractor, desc="real features")
    sf = extract(syn_set, extractor, desc="synthetic features")
    result: dict[str, Any] = {"n_real": len(real_set), "n_synthetic": len(syn_set), "k": k,
                              "features": getattr(extractor, "name", type(extractor).__name__),
                              "overall": {**prdc_scores(rf, sf, k), **fid_kid(rf, sf)}}
    rl, sl = np.array(real_set.labels), np.array(syn_set.labels)
    if clip is not None:
        texts = [prompt.format(label=label) for label in syn_set.labels]
        result["overall"]["clip_score"] = clip.clip_score(syn_set.images, texts)
        result["clip"] = {"model": clip.id, "revision": clip.revision, "prompt": prompt}
    if per_class:
        result["per_class"] = {
            str(c): {"n_real": int((rl == c).sum()), "n_synthetic": int((sl == c).sum()),
                **prdc_scores(rf[rl == c], sf[sl == c], k), **fid_kid(rf[rl == c], sf[sl == c]),
                **({"clip_score": clip.clip_score(syn_set.images[torch.from_numpy(sl == c)],
                                                  [prompt.format(label=c)] * int((sl == c).sum()))}
                   if clip is not None and (sl == c).any() else {})}
            for c in sorted(set(rl) | set(sl))}
    return result
