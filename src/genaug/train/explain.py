"""Explainability: the SIC score AGA reports.

SIC is the Softmax Information Curve of Kapishnikov et al., "XRAI: Better Attributions Through Regions"
(ICCV 2019, arXiv 1906.02825), computed with Google PAIR's reference implementation
(`saliency.metrics.pic.compute_pic_metric`). Per image: start from a fully blurred version (a seeded
random 1 % of pixels kept, the rest interpolated); reveal pixels in the order of the saliency map at the
thresholds below; for each partially revealed image, x = its information (lossless WebP size, normalised
between the blurred and the original image) and y = the model's softmax for the class it predicts on the
original image (normalised the same way, kept monotonic). The image's SIC is the area under that curve;
the score of a classifier is the median curve's area over the images it could be computed on (images
whose prediction is below `min_pred_value`, or not above the blurred image's, are skipped and counted).
Saliency comes from captum: Integrated Gradients by default (|attribution| summed over channels).
A higher SIC means the model's confidence is carried by the pixels its saliency points at.
"""
from __future__ import annotations

from typing import Any, Literal
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.log import bar_disabled

THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)  # the XRAI paper's


def saliency_maps(model, x: torch.Tensor, target: torch.Tensor,
                  method: Literal["integrated_gradients", "saliency"] = "integrated_gradients") -> np.ndarray:
    """`(B, H, W)` saliency of normalised inputs `x` for classes `target`, via captum."""
    from captum.attr import IntegratedGradients, Saliency

    x = x.clone().requires_grad_(True)
    if method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(x, target=target, baselines=torch.zeros_like(x), n_steps=32)
    elif method == "saliency":
        attr = Saliency(model).attribute(x, target=target, abs=True)
    else:
        raise ValueError(f"unknown saliency method {method!r}")
    return attr.detach().abs().sum(1).cpu().numpy()


def sic_score(model, images: torch.Tensor, normalize, n_images: int = 50, seed: int = 0,
              method: str = "integrated_gradients", min_pred_value: float = 0.5, device="cpu") -> dict[str, Any]:
    """SIC of `model` on up to `n_images` uint8 images `(N, 3, H, W)`; `normalize` maps uint8 -> model input."""
    from saliency.metrics import pic

    model.eval()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images))[:n_images])

    @torch.no_grad()
    def softmax_of(batch_hwc: np.ndarray, cls: int) -> list[float]:
        x = torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).to(device)
        return model(normalize(x)).softmax(1)[:, cls].cpu().tolist()

    # saliency 0.2.1 calls np.trapz, which NumPy 2.4 removed (np.trapezoid is the same): lent for this call only
    with mock.patch.object(np, "trapz", getattr(np, "trapz", np.trapezoid), create=True):
        results, skipped = [], 0
        for i in tqdm(pick, desc="SIC", unit="img", disable=bar_disabled(), leave=False):
            img = images[i]
            x = normalize(img[None].to(device))
            with torch.no_grad():
                cls = int(model(x).argmax(1))
            sal = saliency_maps(model, x, torch.tensor([cls], device=device), method)[0]
            h, w = sal.shape
            mask = np.zeros(h * w, dtype=bool)
            mask[rng.choice(h * w, size=max(1, int(0.01 * h * w)), replace=False)] = True
            try:
                results.append(pic.compute_pic_metric(
                    img=img.permute(1, 2, 0).numpy(), saliency_map=sal, random_mask=mask.reshape(h, w),
                    pred_func=lambda b, c=cls: softmax_of(b, c), saliency_thresholds=THRESHOLDS,
                    min_pred_value=min_pred_value, keep_monotonous=True, num_data_points=100))
            except pic.ComputePicMetricError:
                skipped += 1
        out: dict[str, Any] = {"method": method, "n_scored": len(results), "n_skipped": skipped,
                               "min_pred_value": min_pred_value}
        if results:
            agg = pic.aggregate_individual_pic_results(results, method="median")
            out.update(sic=float(agg.auc), curve_y=[round(float(v), 4) for v in agg.curve_y[::10]])
        else:
            out["sic"] = None
        return out
