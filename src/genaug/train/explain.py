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
Saliency, as in AGA and the XRAI paper, is XRAI by default (PAIR's `saliency.core.XRAI`): integrated
gradients of the softmax of the predicted class from a black and a white baseline (the image's min and max),
averaged, max over channels, then ranked over Felzenszwalb segments of the image at six scales (the image is
segmented at 224 px whatever its size); the map is constant on each region. `integrated_gradients` (captum,
zero baseline, 32 steps, |attribution| summed over channels) and `saliency` (captum plain gradients) are the
faster options. A higher SIC means the model's confidence is carried by the pixels its saliency points at.
"""
from __future__ import annotations

from typing import Any, Literal
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.config import ConfigError
from ..core.log import bar_disabled

THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)  # the XRAI paper's
SALIENCY_METHODS = ("xrai", "integrated_gradients", "saliency")
XRAI_STEPS = 100  # IG steps per baseline: saliency.core.XRAIParameters' default
XRAI_BATCH_SIZE = 20  # IG steps per model call: PAIR's example notebooks (the library's own default is 1)


def _check_request(method: str, xrai_steps: int, xrai_batch_size: int, xrai_algorithm: str) -> None:
    if method not in SALIENCY_METHODS:
        raise ConfigError(f"unknown SIC saliency {method!r}; choose one of {', '.join(SALIENCY_METHODS)}")
    if method == "xrai" and (xrai_steps < 2 or xrai_batch_size < 1 or xrai_algorithm not in ("full", "fast")):
        raise ConfigError(f"XRAI needs xrai_steps >= 2, xrai_batch_size >= 1 and xrai_algorithm full or fast; "
                          f"got {xrai_steps}, {xrai_batch_size}, {xrai_algorithm!r}")


def _xrai_maps(model, images: torch.Tensor, normalize, target: torch.Tensor, steps: int, batch_size: int,
               algorithm: str) -> np.ndarray:
    """XRAI maps `(B, H, W)` of uint8 images `(B, 3, H, W)` through PAIR's reference implementation. The
    image goes in at 0..255 with black (0) and white (255) baselines, and `normalize` runs inside the model
    call, as in PAIR's PyTorch example; gradients are of the softmax of class `target`."""
    from saliency.core import XRAI, XRAIParameters
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    device = next(iter(model.parameters())).device

    def call_model(batch_hwc: np.ndarray, call_model_args=None, expected_keys=None) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(batch_hwc, dtype=np.float32)).to(device)
        x.requires_grad_(True)
        prob = model(normalize(x.permute(0, 3, 1, 2))).softmax(1)[:, call_model_args["class"]]
        (grad,) = torch.autograd.grad(prob.sum(), x)
        return {INPUT_OUTPUT_GRADIENTS: grad.detach().cpu().numpy()}

    params = XRAIParameters(steps=steps, algorithm=algorithm)
    xrai = XRAI()
    maps = []
    for img, t in zip(images.cpu(), target.tolist()):
        x = img.permute(1, 2, 0).numpy().astype(np.float32)
        # black and white baselines, as XRAI's paper: PAIR's default is the image's own min and max, which for a
        # low-contrast image are neither
        maps.append(xrai.GetMask(x, call_model, call_model_args={"class": int(t)},
                                 baselines=[np.zeros_like(x), np.full_like(x, 255.0)], batch_size=batch_size,
                                 extra_parameters=params))
    return np.stack(maps).astype(np.float32)


def saliency_maps(model, images: torch.Tensor, normalize, target: torch.Tensor,
                  method: Literal["xrai", "integrated_gradients", "saliency"] = "xrai", xrai_steps: int = XRAI_STEPS,
                  xrai_batch_size: int = XRAI_BATCH_SIZE, xrai_algorithm: Literal["full", "fast"] = "full") -> np.ndarray:
    """`(B, H, W)` saliency of uint8 images `(B, 3, H, W)` for classes `target`; `normalize` maps uint8 to the
    model's input. XRAI via PAIR's `saliency`; the others via captum."""
    _check_request(method, xrai_steps, xrai_batch_size, xrai_algorithm)
    if method == "xrai":
        return _xrai_maps(model, images, normalize, target, xrai_steps, xrai_batch_size, xrai_algorithm)
    from captum.attr import IntegratedGradients, Saliency

    x = normalize(images).clone().requires_grad_(True)
    if method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(x, target=target, baselines=torch.zeros_like(x), n_steps=32)
    else:
        attr = Saliency(model).attribute(x, target=target, abs=True)
    return attr.detach().abs().sum(1).cpu().numpy()


def sic_score(model, images: torch.Tensor, normalize, n_images: int = 50, seed: int = 0, method: str = "xrai",
              min_pred_value: float = 0.5, device="cpu", xrai_steps: int = XRAI_STEPS,
              xrai_batch_size: int = XRAI_BATCH_SIZE, xrai_algorithm: str = "full") -> dict[str, Any]:
    """SIC of `model` on up to `n_images` uint8 images `(N, 3, H, W)`; `normalize` maps uint8 -> model input.
    `xrai_steps` (integrated-gradient steps per baseline) and `xrai_algorithm` (`full`, or PAIR's less precise
    `fast`) shape XRAI's map; `xrai_batch_size` (IG steps per model call) only its speed."""
    from saliency.metrics import pic

    _check_request(method, xrai_steps, xrai_batch_size, xrai_algorithm)  # before any work, not at the first image
    model.eval()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images))[:n_images])
    options = {"xrai_steps": xrai_steps, "xrai_algorithm": xrai_algorithm} if method == "xrai" else {}

    @torch.no_grad()
    def softmax_of(batch_hwc: np.ndarray, cls: int) -> list[float]:
        x = torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).to(device)
        return model(normalize(x)).softmax(1)[:, cls].cpu().tolist()

    # saliency 0.2.1 calls np.trapz, which NumPy 2.4 removed (np.trapezoid is the same): lent for this call only
    with mock.patch.object(np, "trapz", getattr(np, "trapz", np.trapezoid), create=True):
        results, skipped = [], {}
        for i in tqdm(pick, desc="SIC", unit="img", disable=bar_disabled(), leave=False):
            img = images[i]
            with torch.no_grad():
                cls = int(model(normalize(img[None].to(device))).argmax(1))
            sal = saliency_maps(model, img[None].to(device), normalize, torch.tensor([cls], device=device), method,
                                xrai_steps=xrai_steps, xrai_batch_size=xrai_batch_size, xrai_algorithm=xrai_algorithm)[0]
            h, w = sal.shape
            mask = np.zeros(h * w, dtype=bool)
            mask[rng.choice(h * w, size=max(1, int(0.01 * h * w)), replace=False)] = True
            try:
                results.append(pic.compute_pic_metric(
                    img=img.permute(1, 2, 0).numpy(), saliency_map=sal, random_mask=mask.reshape(h, w),
                    pred_func=lambda b, c=cls: softmax_of(b, c), saliency_thresholds=THRESHOLDS,
                    min_pred_value=min_pred_value, keep_monotonous=True, num_data_points=100))
            except pic.ComputePicMetricError as e:  # PIC's three reasons, counted apart
                why = ("low_confidence" if "min_pred_value" in str(e) else
                       "blurred_not_less_informative" if "entropy" in str(e) else "blurred_not_less_confident")
                skipped[why] = skipped.get(why, 0) + 1
        out: dict[str, Any] = {"method": method, **options, "n_scored": len(results),
                               "n_skipped": sum(skipped.values()), "skipped": skipped,
                               "min_pred_value": min_pred_value}
        if results:
            agg = pic.aggregate_individual_pic_results(results, method="median")
            out.update(sic=float(agg.auc), curve_y=[round(float(v), 4) for v in agg.curve_y[::10]])
        else:
            out["sic"] = None
        return out
