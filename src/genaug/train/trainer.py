"""`genaug train`: a classifier on real (+ synthetic) images, evaluated in and out of distribution.

Mixing real and synthetic images, as the papers do:
- `synthetic_prob: p` (default 0.5, DA-Fusion's and DIAGen's synthetic probability) makes synthetic images a
  fixed share of every batch: round(p × batch_size) of them (the papers' share, without its batch-to-batch
  noise). An epoch is one pass over the real images at the real part of each batch:
  ceil(real images / (batch_size - synthetic per batch)) steps, so a synthetic share adds steps instead of
  taking real images away (at p = 0.5 twice the steps of real-only training).
- `synthetic_prob: pool` (or null) pools real and synthetic images and shuffles them (SGID's "added"); then the
  synthetic share is M / (M + 1) for M variants per real image (91 % for M = 10), and an epoch is one pass over
  the pool.
- `min_steps` (default 1000) floors the total: when epochs x that epoch length is less, each epoch is raised to
  ceil(min_steps / epochs) steps, so a few-shot set (5 shots x 7 classes: 1 pass = 1 or 2 steps) still trains.
`steps_per_epoch` sets the epoch length outright (min_steps is then ignored). The epoch length and where it came
from (`steps_per_epoch_from`: given, real_pass or min_steps) and `total_steps` are in config.yaml. The share
actually drawn is recorded in the results (`synthetic_share`, and per epoch in results.csv).
The data and the batches come from `AugmentedDataset` and `SyntheticShareSampler` (train/dataset.py), the
same pieces a user can put into a training loop of their own.
- Per-image weights from the synthetic manifest (`weight`, e.g. DIAGen's confidence weights) scale each
  sample's loss: loss = mean_i(w_i * CE_i), real images have weight 1. Weight-0 images are never drawn.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BeforeValidator, Field
from tqdm.auto import tqdm

from ..core.config import ConfigError, build_config, config_dataclass, to_dict
from ..core.devices import Precision, autocast, autocast_dtype, precision_name, resolve_device
from ..core.log import bar_disabled, get_logger
from ..data.imageset import ImageSet, load_any
from .dataset import AugmentedDataset, SyntheticShareSampler
from ..features import normalize
from .models import checkpoint_meta, create_classifier
from .transforms import OnlineAugment

log = get_logger(__name__)


def _share_option(v: Any) -> Any:
    if v is None or v == "pool":
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError("must be a number in [0, 1] (the synthetic share of every batch), "
                         "or pool (null) to pool real and synthetic images")
    return float(v)


@config_dataclass
class TrainConfig:
    """Every knob of `genaug train` (`key=value` on the command line, or a YAML `--config`)."""

    model: str = "genaug_small_cnn"  # a timm name, or torchvision/<name>
    model_options: dict[str, Any] = Field(default_factory=dict)  # extra arguments of the model, e.g. {width: 16}
    pretrained: str | None = None  # a weights file, or "imagenet" (MobileNetV2, torchvision/mobilenet_v2)
    mode: Literal["scratch", "finetune", "linear"] = "scratch"
    image_size: int = Field(32, ge=8)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # given: the epoch length, whatever min_steps says
    # a floor on the total optimizer steps so few-shot runs train long enough: with no steps_per_epoch, an epoch
    # (one pass over the real images) is lengthened to ceil(min_steps / epochs) steps when epochs x its steps fall
    # short. DA-Fusion trains a fixed 200 iterations x 50 epochs at batch 32 (10,000 steps) whatever the dataset
    # size (brandontrabucco/da-fusion train_classifier.py: iterations_per_epoch=200, num_epochs=50, a
    # RandomSampler of batch_size x iterations_per_epoch samples); 0 turns the floor off
    min_steps: int = Field(1000, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # the share of synthetic images in every batch (DA-Fusion / DIAGen: 0.5); "pool" or null: pooled with the real
    synthetic_prob: Annotated[float | Literal["pool"] | None, BeforeValidator(_share_option)] = 0.5
    use_weights: bool = True
    augment: str | None = None  # online augmentation: a classical transform (randaugment, cutout, …) or cutmix / mixup
    augment_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    # convolutions in NHWC (channels-last) layout: the same model and results up to float rounding, faster — the
    # small CNN's training step 1.43x and its inference 2.6x on a 2-core AVX-512 CPU (benchmarks/train_speed.py);
    # NVIDIA's recommended layout for convolutions on tensor cores. No effect on models without 4-D weights
    channels_last: bool = True
    # the forward pass in bfloat16 autocast (weights, optimiser and loss stay float32): "auto" where it is fast —
    # a GPU with bfloat16, a CPU with AMX tiles (the demo's small CNN: a training step 1.6x faster on a 2-core AMX
    # CPU, benchmarks/train_speed.py) — else float32; results move by float rounding, as a seed would. Evaluation
    # and a linear probe's cached features too; SIC's saliency (gradients to the input) stays float32
    precision: Precision = "float32"
    # mode=linear without online augmentation: the frozen backbone's features of every training image are computed
    # once and the head trains on them (the same steps, batches and result up to float rounding, without a backbone
    # pass per step); false: the backbone runs on every batch
    cache_features: bool = True
    eval_batch_size: int = Field(256, ge=1)
    sic_images: int = Field(0, ge=0)  # > 0: SIC explainability score (AGA) on this many test images
    # SIC saliency: xrai (AGA's and the XRAI paper's; PAIR's reference, 2 x 100 IG steps per image, slow on a CPU),
    # or the faster captum integrated_gradients / saliency (plain gradients)
    sic_saliency: Literal["xrai", "integrated_gradients", "saliency"] = "xrai"
    # XRAI's settings (PAIR's reference values): IG steps per baseline, the full or the fast region search, and
    # IG steps per model call (speed only)
    sic_xrai_steps: int = Field(100, ge=2)
    sic_xrai_algorithm: Literal["full", "fast"] = "full"
    sic_xrai_batch_size: int = Field(20, ge=1)


def synthetic_share(cfg: TrainConfig) -> float | None:
    """The sampler's share of synthetic images per batch; None: real and synthetic pooled."""
    return None if cfg.synthetic_prob in (None, "pool") else float(cfg.synthetic_prob)


def epoch_length(cfg: TrainConfig, pass_steps: int) -> tuple[int, str]:
    """`(steps per epoch, where from)`: `steps_per_epoch` when given; else `pass_steps` (one pass over the real
    images at the real part of each batch, or over the pool when pooled: the sampler's own length), raised to
    ceil(min_steps / epochs) when the run would otherwise take fewer than `min_steps` steps."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch, "given"
    if pass_steps * cfg.epochs < cfg.min_steps:
        return math.ceil(cfg.min_steps / cfg.epochs), "min_steps"
    return pass_steps, "real_pass"


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, mean, std, device, batch_size: int = 256,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits `(N, C)` (float32, on the CPU) of uint8 images `(N, 3, S, S)`, in batches, the model in eval mode;
    `dtype`: the forward pass in that autocast (a run's training precision, `autocast_dtype`)."""
    model.eval()
    device = torch.device(device)
    with autocast(device, dtype):
        out = [model(normalize(images[i:i + batch_size].to(device), mean, std)).float().cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate(model, images: ImageSet, classes: list[str], mean, std, device, batch_size: int = 256,
             dtype: torch.dtype | None = None) -> dict:
    """Top-1 and per-class accuracy, and the confusion matrix (rows: true class)."""
    from sklearn.metrics import confusion_matrix

    y = images.targets(classes)
    pred = predict_logits(model, images.images, mean, std, device, batch_size, dtype).argmax(1).numpy()
    cm = confusion_matrix(y.numpy(), pred, labels=list(range(len(classes))))
    support = cm.sum(1)
    per_class = {c: float(cm[i, i] / support[i]) for i, c in enumerate(classes) if support[i]}
    return {"accuracy": float((pred == y.numpy()).mean()), "per_class": per_class, "n": int(len(pred)),
            "confusion": cm.tolist()}


def load_run(run_dir: str | Path, device="cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A finished `genaug train` run's selected model (best.safetensors) and what using it needs: `classes`,
    `image_size`, `mean`, `std` (from the checkpoint's metadata), and `autocast`: the dtype to pass to
    `predict_logits` / `evaluate` (the precision the run computed in, wherever it is loaded)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    ckpt, cfg_file = run_dir / "best.safetensors", run_dir / "config.yaml"
    if not ckpt.is_file() or not cfg_file.is_file():
        raise ConfigError(f"{run_dir} is not a finished genaug train run (no best.safetensors / config.yaml)")
    with safe_open(str(ckpt), "pt") as f:
        meta = checkpoint_meta(f.metadata() or {})
    recorded = yaml.safe_load(cfg_file.read_text())
    opts = recorded["train"]
    model, _, _ = create_classifier(meta["model"], len(meta["classes"]), None, image_size=meta.get("image_size"),
                                    linear_probe=opts.get("mode") == "linear", **opts.get("model_options", {}))
    load_model(model, str(ckpt), device=str(device))
    # inference in the precision the run trained in, as it recorded it ("auto" resolved where it trained; runs that
    # predate the option: float32), not as "auto" would resolve on the machine that loads it
    meta["autocast"] = autocast_dtype(recorded.get("precision", "float32"), torch.device(device))
    return _layout(model.to(device), opts.get("channels_last", False)).eval(), meta


@torch.no_grad()
def _frozen_features(model, images: torch.Tensor, mean, std, device, batch_size: int,
                     dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    """`(head, features)` of a linear probe: its one trainable module and that module's input for every image
    (on the CPU, float32), computed once by the frozen model in eval mode (as linear-mode training runs it), in
    `dtype` autocast (the run's precision)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    # the innermost module holding exactly the trainable parameters (modules() lists parents first)
    head = [m for m in model.modules() if {id(p) for p in m.parameters()} == trainable][-1]
    inputs: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].float().cpu()))
    try:
        predict_logits(model, images, mean, std, device, batch_size, dtype)
    finally:
        hook.remove()
    return head, torch.cat(inputs)


def _layout(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model with its 4-D weights in channels-last layout (`channels_last`), else as it is. Inputs need not
    follow: a convolution with channels-last weights computes in that layout whatever its input's."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _plots(out: Path, history: list[dict], confusion: list[list[int]] | None, classes: list[str]) -> None:
    from matplotlib.figure import Figure  # no pyplot: the user's matplotlib backend is left alone
    from sklearn.metrics import ConfusionMatrixDisplay

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    a, b = fig.subplots(1, 2)
    a.plot(epochs, [h["train_loss"] for h in history])
    a.set(xlabel="epoch", ylabel="train loss")
    b.plot(epochs, [h["train_acc"] for h in history], label="train (batch)")
    if any(h.get("val_acc") is not None for h in history):
        b.plot(epochs, [h.get("val_acc") for h in history], label="validation")
    b.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    if confusion is not None:
        fig = Figure(figsize=(1 + 0.5 * len(classes), 1 + 0.5 * len(classes)))
        ConfusionMatrixDisplay(np.array(confusion), display_labels=classes).plot(ax=fig.subplots(), colorbar=False,
                                                                                 xticks_rotation="vertical")
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=100)


def _save(model, path: Path, meta: dict) -> None:
    """The weights, with `meta` as one JSON string (safetensors writes several metadata keys in a random
    order: the same run gave other bytes)."""
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"genaug": json.dumps(meta, sort_keys=True)})


def train(real: str | Path, out: str | Path, synthetic: list[str | Path] = (), val: str | Path | None = None,
          test: str | Path | None = None, ood: dict[str, str | Path] | None = None,
          config: dict[str, Any] | TrainConfig | None = None, progress: bool | None = None) -> dict:
    """Train, select (best validation epoch, else the last), evaluate; write the run directory."""
    cfg = config if isinstance(config, TrainConfig) else build_config(TrainConfig, config or {}, where="train")
    if cfg.mode != "scratch" and not cfg.pretrained:
        raise ConfigError(f"mode={cfg.mode} needs pretrained= (a weights file, or imagenet)")
    if cfg.mode == "scratch" and cfg.pretrained:
        raise ConfigError("pretrained= was given with mode=scratch; use mode=finetune or mode=linear")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a failed run leaves no earlier run's figures behind
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)

    data = AugmentedDataset(real, synthetic, cfg.image_size, use_weights=cfg.use_weights)
    classes = data.classes
    # every evaluation set is read, and its labels checked against the training classes, before training: a
    # wrong path or a foreign class fails now, not after the last epoch
    val_set = load_any(val, cfg.image_size, "val") if val else None
    test_set = load_any(test, cfg.image_size, "test") if test else None
    ood_sets = {name: load_any(p, cfg.image_size, name) for name, p in (ood or {}).items()}
    for name, s in (("validation", val_set), ("test", test_set), *ood_sets.items()):
        if s is not None:
            s.targets(classes)
    if not data.n_synthetic and synthetic:
        log.warning("the synthetic source(s) %s hold no image to draw (all weighted 0 or filtered): this run "
                    "trains on the real images alone", ", ".join(map(str, synthetic)))

    model, mean, std = create_classifier(cfg.model, len(classes), cfg.pretrained, linear_probe=cfg.mode == "linear",
                                         image_size=cfg.image_size,
                                         **cfg.model_options)
    _layout(model.to(device), cfg.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True))
    share = synthetic_share(cfg)
    sampler = SyntheticShareSampler(data, cfg.batch_size, share, seed=cfg.seed)  # its length: one pass
    steps, steps_from = epoch_length(cfg, sampler.num_batches)
    if steps_from == "min_steps":
        log.info("an epoch is raised from %d steps (one pass over %s) to %d: %d epochs x %d steps fall short of "
                 "min_steps=%d (min_steps=0 or steps_per_epoch= changes it)", sampler.num_batches,
                 sampler.pass_over, steps, cfg.epochs, sampler.num_batches, cfg.min_steps)
    sampler.num_batches = steps
    total = steps * cfg.epochs
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    online = OnlineAugment(cfg.augment, cfg.augment_options, len(classes), cfg.seed) if cfg.augment else None

    resolved = {"real": str(real), "synthetic": [str(s) for s in synthetic], "val": str(val) if val else None,
                "test": str(test) if test else None, "ood": {k: str(v) for k, v in (ood or {}).items()},
                "classes": classes, "n_real": data.n_real, "n_synthetic": data.n_synthetic, "steps_per_epoch": steps,
                "steps_per_epoch_from": steps_from, "total_steps": total, "precision": precision_name(amp),
                "train": to_dict(cfg)}
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    meta = {"classes": classes, "model": cfg.model, "image_size": cfg.image_size, "mean": mean, "std": std}

    features = head = None
    if cfg.mode == "linear" and cfg.cache_features and online is None:
        head, features = _frozen_features(model, data.images, mean, std, device, cfg.eval_batch_size, amp)

    history, best, step, syn_total, seen_total = [], (-1.0, 0), 0, 0, 0
    bar = tqdm(total=total, desc="genaug train", unit="step", disable=bar_disabled(progress))
    with open(out / "results.csv", "w", newline="") as f:
        writer = None
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            if cfg.mode == "linear":
                model.eval()  # frozen backbone: keep its batch-norm statistics
            t0, loss_sum, correct, seen, syn_seen = time.perf_counter(), 0.0, 0, 0, 0
            sampler.set_epoch(epoch)
            for batch in sampler:
                idx = torch.tensor(batch)
                x, y, w = data.batch(idx)
                syn_seen += int(data.is_synthetic(idx).sum())
                soft = F.one_hot(y, len(classes)).float()
                if features is None:
                    if online is not None:
                        x = online.images(x, step)
                    x = normalize(x.to(device), mean, std)
                    if online is not None and online.mix is not None:
                        x, soft = online.mix(x, y.to(device))
                with autocast(device, amp):
                    # the linear head on the cached features, or the whole model
                    logits = head(features[idx].to(device)) if features is not None else model(x)
                logits = logits.float()
                per = F.cross_entropy(logits, soft.to(device), reduction="none", label_smoothing=cfg.label_smoothing)
                loss = (per * w.to(device)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(1).cpu() == y).sum())
                seen += len(idx)
                bar.update(1)
            syn_total, seen_total = syn_total + syn_seen, seen_total + seen
            row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "synthetic_share": syn_seen / seen, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, "val_acc": None}
            if val_set is not None:
                row["val_acc"] = evaluate(model, val_set, classes, mean, std, device, cfg.eval_batch_size,
                                          amp)["accuracy"]
                bar.set_postfix(val=f"{row['val_acc']:.3f}")
            history.append(row)
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            score = row["val_acc"] if val_set is not None else epoch  # no validation: the last epoch
            if score >= best[0]:
                best = (score, epoch)
                _save(model, out / "best.safetensors", {**meta, "epoch": epoch})
    bar.close()
    _save(model, out / "last.safetensors", {**meta, "epoch": cfg.epochs})

    from safetensors.torch import load_model

    load_model(model, str(out / "best.safetensors"), device=str(device))
    result: dict[str, Any] = {"run_dir": str(out), "best_epoch": best[1], "classes": classes,
                              "n_real": data.n_real, "n_synthetic": data.n_synthetic,
                              # how real and synthetic were mixed, and the share of synthetic samples drawn
                              "synthetic_prob": (None if not data.n_synthetic else "pool" if share is None else share),
                              "synthetic_share": syn_total / max(1, seen_total), "total_steps": step,
                              "precision": precision_name(amp),
                              "train_seconds": time.perf_counter() - t_start, "history": history}
    if val_set is not None:
        result["val"] = evaluate(model, val_set, classes, mean, std, device, cfg.eval_batch_size, amp)
    if test_set is not None:
        result["test"] = evaluate(model, test_set, classes, mean, std, device, cfg.eval_batch_size, amp)
        if cfg.sic_images:
            from .explain import sic_score

            result["test"]["sic"] = sic_score(model, test_set.images, lambda x: normalize(x, mean, std),
                                              n_images=cfg.sic_images, seed=cfg.seed, method=cfg.sic_saliency,
                                              device=device, xrai_steps=cfg.sic_xrai_steps,
                                              xrai_algorithm=cfg.sic_xrai_algorithm,
                                              xrai_batch_size=cfg.sic_xrai_batch_size)
    result["ood"] = {name: evaluate(model, s, classes, mean, std, device, cfg.eval_batch_size, amp)
                     for name, s in ood_sets.items()}
    shown = result.get("test") or result.get("val")
    _plots(out, history, shown["confusion"] if shown else None, classes)
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return result
