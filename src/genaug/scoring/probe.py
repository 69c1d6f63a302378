"""The real-only classifier that judges synthetic images: trained on the real images alone, its confidences
calibrated by temperature scaling. DIAGen's weighting (`weighting.py`) and the label-agreement and
confident-learning filters (`filters.py`) both ask it `probs(images)`.

1. The classifier is trained with `genaug train`. DIAGen's (visinf/DIAGen `train_filter.py`,
   `models/filter_model.py`) is the default `backbone="resnet50"`: a linear head on the frozen ImageNet ResNet-50
   (torchvision's DEFAULT weights), 256 px, RandAugment. Where those weights cannot be had (not in torch's cache,
   no network, or `HF_HUB_OFFLINE` set) the offline ImageNet MobileNetV2 takes its place (linear, RandAugment,
   at genaug's CPU-sized 64 px), and the probe says so (`backbone`, `fallback`). `classifier` options
   (genaug train's) override any of it.
2. Temperature scaling (Guo et al. 2017): one temperature T minimises the negative log-likelihood of real images
   the classifier did not train on (LBFGS on log T, T kept positive). With `val` (DIAGen: a separate validation
   split) the classifier trains on every real image, its best epoch is chosen on `val` and T is fitted on `val`;
   without it `holdout` of each class's real images (seeded) are held out of training and calibrate T.
The classifier's run (split manifests, checkpoint, plots) is work, kept under
`GENAUG_CACHE/work/probe/<key>/`, keyed by the real images (paths, labels, file sizes and times), the
validation split and the options: a finished run there is reused (two scorers of one real set, or a rerun,
train once).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock

from ..components.hub import offline
from ..core.config import ConfigError
from ..core.devices import resolve_device, resolved_precision
from ..data.cache import cache_root
from ..data.sources import Source
from ..data.splits import per_class_order, write_manifest
from ..features import resnet50_imagenet_file

# The probe's protocol (DIAGen: linear head, 256 px, RandAugment, batch 32); its training length and optimiser are
# genaug's (DIAGen: Adam 1e-4 for up to 50 x 200 steps with early stopping; here 15 passes at AdamW 1e-2).
# min_steps=0: the probe keeps its 15 passes rather than genaug train's 1000-step floor. Each step runs the frozen
# backbone on the CPU (seconds a batch at 256 px), so the floor would turn a few-shot probe of about a minute into
# an hour; a linear head at lr 1e-2 on frozen features needs far fewer steps than a network from scratch. A
# `classifier` option `min_steps` (or `steps_per_epoch`) still lengthens it.
PROBE = {"mode": "linear", "image_size": 256, "augment": "randaugment", "epochs": 15, "lr": 1e-2, "batch_size": 32,
         "min_steps": 0}
# Input size per backbone: DIAGen's 256 px for its ResNet-50; the offline MobileNetV2 fallback keeps genaug's
# CPU-sized 64 px (4x to 16x cheaper on a CPU, where a machine without the ResNet-50 file usually is);
# `image_size=` overrides either.
BACKBONES = {"resnet50": {"image_size": 256}, "mobilenet_v2": {"image_size": 64}}


def resolve_classifier(backbone: str = "resnet50", overrides: dict[str, Any] | None = None,
                       download: bool | None = None) -> tuple[dict[str, Any], str, str | None]:
    """`(genaug train options, backbone used, why it fell back or None)`. `resnet50` is DIAGen's; its weights come
    from torch's cache or a download (none when `HF_HUB_OFFLINE` is set); without them the offline MobileNetV2
    is used. A `model` in `overrides` replaces the backbone altogether (`backbone` is then "custom")."""
    overrides = dict(overrides or {})
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown classifier backbone {backbone!r}: {' or '.join(BACKBONES)}")
    if "model" in overrides:
        return {**PROBE, **overrides}, "custom", None
    if download is None:
        download = not offline()
    used, fallback, pretrained = backbone, None, "imagenet"
    if backbone == "resnet50":
        try:
            pretrained = str(resnet50_imagenet_file(download=download))
        except ConfigError as e:
            used, fallback = "mobilenet_v2", f"resnet50 unavailable, used the offline ImageNet MobileNetV2: {e}"
    cfg = {"model": f"torchvision/{used}", "pretrained": pretrained, **PROBE, **BACKBONES[used], **overrides}
    return cfg, used, fallback


# The temperature is kept in [T_MIN, T_MAX]. On a calibration set the classifier gets entirely right (a few-shot
# hold-out of one image a class often is), the NLL falls for ever as T -> 0: unbounded, T reached 0.02 and every
# synthetic image whose label was not the classifier's first choice got weight ~0 (DIAGen's rule turned into a
# hard filter). At the bound the report says so.
T_MIN, T_MAX = 0.1, 10.0


def temperature_note(t: float) -> str | None:
    """What a user should know about a fitted temperature at one of its bounds; None inside them."""
    bound = next((b for b in (T_MIN, T_MAX) if math.isclose(t, b, rel_tol=1e-4)), None)
    if bound is None:
        return None
    return (f"temperature at its bound {bound:g}: the calibration NLL kept falling (a calibration set the classifier "
            f"gets {'all right' if bound == T_MIN else 'badly wrong'}, often a tiny one); a larger validation "
            "split calibrates better")


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 100) -> tuple[float, float, float]:
    """`(T, NLL at T = 1, NLL at T)` for held-out logits: T minimising the NLL within [T_MIN, T_MAX] (the NLL
    is convex in 1/T, so unimodal in log T: a bounded 1-D search, scipy's Brent, finds it; LBFGS on a clamped
    log T stopped at a bound with zero gradient when the optimum lay inside)."""
    from scipy.optimize import minimize_scalar

    logits, targets = logits.double(), targets.long()
    with torch.no_grad():
        def nll(log_t: float) -> float:
            return float(F.cross_entropy(logits / math.exp(log_t), targets))

        found = minimize_scalar(nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                                options={"xatol": 1e-6, "maxiter": max(steps, 100)})
        t = min(max(math.exp(found.x), T_MIN), T_MAX)
        # at a bound the search stops within its tolerance of it: report the bound itself
        t = next((b for b in (T_MIN, T_MAX) if math.isclose(t, b, rel_tol=1e-4)), t)
        return t, nll(0.0), nll(math.log(t))


def split_real(real: str | Path, holdout: float, seed: int, out: Path) -> tuple[Path, Path]:
    """`holdout` of each class's real images (seeded) held out: `(out/train.csv, out/holdout.csv)`."""
    recs = (r for r in Source(real).records() if r.error is None)
    train, held = [], []
    for label, rs in per_class_order(recs, lambda r: r.label, lambda r: r.id, seed, salt="weight").items():
        if len(rs) < 2:
            raise ConfigError(f"class {label!r} has {len(rs)} real image: the classifier needs 2 "
                              "(one to train, one held out to calibrate on), or a validation split (--val)")
        k = min(len(rs) - 1, max(1, round(holdout * len(rs))))
        held += rs[:k]
        train += rs[k:]
    return write_manifest(train, out / "train.csv"), write_manifest(held, out / "holdout.csv")


def _fingerprint(src: str | Path) -> str:
    """What the real images are, cheaply: every record's id, label, and its file's size and modification time."""
    h = hashlib.blake2b(digest_size=8)
    for r in Source(src).records():
        st = os.stat(r.path) if r.path and os.path.isfile(r.path) else None
        h.update(json.dumps([r.id, r.label, r.error, st and st.st_size, st and st.st_mtime_ns]).encode())
    return h.hexdigest()


def work_dir(real: str | Path, holdout: float, classifier: dict[str, Any], val: str | Path | None = None) -> Path:
    """Where the probe of `real` trains: `GENAUG_CACHE/work/probe/<key>`."""
    parts = [str(Path(real).resolve()), _fingerprint(real), holdout, classifier]
    if val is not None:
        parts += [str(Path(val).resolve()), _fingerprint(val)]
    key = json.dumps(parts, sort_keys=True, default=str)
    return cache_root() / "work" / "probe" / hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass
class Probe:
    model: torch.nn.Module
    mean: tuple
    std: tuple
    classes: list[str]
    temperature: float
    config: dict[str, Any]  # genaug train's options it was trained with
    backbone: str  # the one used: resnet50, mobilenet_v2 or custom
    backbone_requested: str
    fallback: str | None
    calibration: str  # "val" or "holdout"
    n_calibration: int
    nll_before: float  # calibration NLL at T = 1 and at T
    nll_after: float
    work: Path
    accuracy: float = float("nan")  # on the calibration images (held out of training, or the validation split)
    autocast: torch.dtype | None = None  # the precision its run computed in (`load_run`): predictions in it too

    def logits(self, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """Raw logits of uint8 images `(N, 3, S, S)` at the probe's `config["image_size"]`."""
        from ..train.trainer import predict_logits

        if not len(images):
            return torch.empty(0, len(self.classes))
        return predict_logits(self.model, images, self.mean, self.std, next(self.model.parameters()).device, batch,
                              self.autocast)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities `(N, C)`, columns in the order of `classes`."""
        return (self.logits(images) / self.temperature).softmax(1)

    def folder_probs(self, folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        """`(probs (N, C), label indices (N,))` of every image of a genaug output folder, in the order of its
        rows (weight 0 and filtered ones too: scorers judge them all); a label the probe never saw is an
        error."""
        from ..train import load_synthetic

        images = load_synthetic(folder, self.image_size, keep_zero_weight=True)
        targets = images.targets(self.classes)  # before any forward pass
        return self.probs(images.images), targets

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def describe(self) -> dict[str, Any]:
        """What a record of a scorer that used it says about it."""
        return {"backbone_requested": self.backbone_requested, "backbone": self.backbone,
                "backbone_fallback": self.fallback, "classifier": self.config, "temperature": self.temperature,
                "calibration": self.calibration, "n_holdout": self.n_calibration,
                "holdout_nll_before": self.nll_before, "holdout_nll_after": self.nll_after,
                "holdout_accuracy": self.accuracy, "work_dir": str(self.work)}


def fit_probe(real: str | Path, val: str | Path | None = None, holdout: float = 0.2,
              classifier: dict[str, Any] | None = None, seed: int = 0, backbone: str = "resnet50",
              progress: bool | None = None) -> Probe:
    """Train (or reuse) the real-only classifier of `real` and calibrate its temperature."""
    from ..train import load_real, load_run, train

    if not Path(real).exists():
        raise ConfigError(f"real images not found: {real}")
    if val is not None and not Path(val).exists():
        raise ConfigError(f"validation split not found: {val}")
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    cfg, used, fallback = resolve_classifier(backbone, classifier)
    cfg["seed"] = seed
    if "precision" in cfg:  # keyed (and recorded) by what it computes in here: "auto" differs between machines
        cfg["precision"] = resolved_precision(cfg["precision"], resolve_device(cfg.get("device")))
    work = work_dir(real, holdout, cfg, val)
    work.mkdir(parents=True, exist_ok=True)
    run = work / "classifier"
    with FileLock(work / ".lock", thread_local=False):  # two scorers of one real set take turns
        if val is None:  # no validation split: hold part of each class out of training to calibrate on
            train_csv, calib_src = split_real(real, holdout, seed, work)
        else:  # DIAGen's: train on every real image, select the epoch and calibrate on the validation split
            train_csv, calib_src = real, val
        if (run / "metrics.json").is_file():  # a finished run of the same key (train writes it last)
            classes = json.loads((run / "metrics.json").read_text())["classes"]
        else:
            classes = train(train_csv, run, val=val, config=cfg, progress=progress)["classes"]
        model, meta = load_run(run)
        mean, std = meta["mean"], meta["std"]
    probe = Probe(model, mean, std, classes, 1.0, cfg, used, backbone, fallback,
                  "holdout" if val is None else "val", 0, float("nan"), float("nan"), work, autocast=meta["autocast"])
    held = load_real(calib_src, probe.image_size, "holdout" if val is None else "val")
    logits, targets = probe.logits(held.images), held.targets(classes)
    probe.temperature, probe.nll_before, probe.nll_after = fit_temperature(logits, targets)
    probe.n_calibration, probe.accuracy = len(held), float((logits.argmax(1) == targets).float().mean())
    return probe
