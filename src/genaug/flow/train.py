"""`genaug fit-flow`: train the class-conditional flow-matching generator on the user's images.

An unlabelled pool (`unlabeled=`) can teach it more than the labelled images hold — the papers' premise,
a generator that has seen more than the labelled set: pool images always carry the "no class" token, so
they train the unconditional model that classifier-free guidance and inversion lean on, while the labelled
images (with `label_dropout`) train the classes. `unlabeled_share` of every batch comes from the pool. The
pool's own labels, if it has any, are never read.

Resumable: a checkpoint (weights, EMA, optimiser, RNG, step) is written atomically every
`checkpoint_every` steps; rerunning the same command continues from it, and a larger `steps` trains on.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field
from tqdm.auto import tqdm

from ..core.config import (ConfigError, build_config, config_dataclass, differences, shown_differences,
                           to_dict, values_option)
from ..core.devices import Precision, autocast, autocast_dtype, precision_name, resolve_device
from ..core.files import atomic_path
from ..core.log import bar_disabled, get_logger
from ..data.imageset import load_real
from .model import FLOW_CONFIG, FlowModel, FlowSpec, make_unet

log = get_logger(__name__)
CHECKPOINT = "checkpoint.pt"


@config_dataclass
class FlowTrainConfig:
    image_size: int | None = Field(None, ge=8)  # None: the first image's longer side, rounded up to a multiple of 4
    channels: Literal["auto", 1, 3] = "auto"  # auto: 1 when every image is grey
    block_channels: values_option(ge=1, item=int) = (32, 64, 64)  # one UNet level each
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False
    steps: int = Field(600, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    label_dropout: float = Field(0.1, ge=0, le=1)  # share of "no class" labels: enables classifier-free guidance
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    # random horizontal flips of the training images: right for most photos, wrong where a mirrored image is
    # another thing (digits, letters, text, left/right anatomy) — hence off unless asked for
    hflip: bool = False
    unlabeled_share: float = Field(0.5, ge=0, le=1)  # share of every batch from the unlabelled pool, if one is given
    sigma_min: float = Field(0.0, ge=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: str = "auto"
    # the UNet's forward pass in bfloat16 autocast (weights, optimiser, EMA and loss stay float32): "auto" where it
    # is fast — a GPU with bfloat16, a CPU with AMX tiles (a step 1.9x faster on a 2-core AMX CPU) — else float32
    precision: Precision = "float32"


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:  # a kill mid-save keeps the previous checkpoint
        torch.save(obj, tmp)


def _sample_t(n: int, how: str, g: torch.Generator) -> torch.Tensor:
    if how == "uniform":
        return torch.rand(n, generator=g)
    return torch.sigmoid(torch.randn(n, generator=g))  # logit-normal(0, 1): more weight mid-path (SD3's choice)


def load_pool(src: str | Path, size: int) -> torch.Tensor:
    """The unlabelled pool's images, uint8 `(N, 3, S, S)`: any genaug source (its labels are dropped here and
    never reach training), or a folder of image files in any layout."""
    from ..data.images import is_image_name
    from ..data.imageset import load_files

    src = Path(src)
    if not src.exists():
        raise ConfigError(f"unlabeled pool not found: {src}")
    try:
        pool = load_real(src, size, "unlabeled pool")
    except ConfigError:
        if not src.is_dir():
            raise
        files = sorted(str(p) for p in src.rglob("*") if p.is_file() and is_image_name(p.name)
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        pool = load_files(files, size)
    if not len(pool):
        raise ConfigError(f"unlabeled pool {src} holds no usable images")
    return pool.images


def _digest(images: torch.Tensor | None, labels=None) -> str | None:
    """What a training run was fed — the images' pixels and their labels, in order — so a resume can tell the
    same images from others of the same count."""
    if images is None:
        return None
    import hashlib

    h = hashlib.blake2b(images.contiguous().numpy().tobytes(), digest_size=16)
    h.update(json.dumps(list(labels) if labels is not None else None).encode())
    return h.hexdigest()


def fit_flow(src: str | Path, out: str | Path, config: dict[str, Any] | None = None,
             progress: bool | None = None, unlabeled: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) the generator on the labelled images `src`, and the unlabelled pool `unlabeled`."""
    cfg = build_config(FlowTrainConfig, config or {}, where="fit-flow")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    t_start = time.perf_counter()

    size = cfg.image_size
    if size is None:
        from ..data.sources import Source

        source = Source(src)
        first = next(source.load(r) for r in source.records() if r.error is None)
        size = 4 * math.ceil(max(first.image.size) / 4)
    data = load_real(src, size, "fit-flow")
    classes = sorted(set(data.labels))
    images = data.images
    pool = load_pool(unlabeled, size) if unlabeled is not None else None

    def is_grey(x: torch.Tensor) -> bool:
        return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())

    grey = is_grey(images) and (pool is None or is_grey(pool))
    channels = (1 if grey else 3) if cfg.channels == "auto" else cfg.channels
    x_all = to_model_space(images, channels)
    y_all = data.targets(classes)
    x_pool = to_model_space(pool, channels) if pool is not None else None
    n_pool = 0 if pool is None else round(cfg.unlabeled_share * cfg.batch_size)
    spec = FlowSpec(classes=classes, image_size=size, channels=channels, sigma_min=cfg.sigma_min)

    torch.manual_seed(cfg.seed)
    model = FlowModel(make_unet(spec, cfg.block_channels, cfg.layers_per_block, cfg.attention), spec).to(device)
    from diffusers.training_utils import EMAModel

    ema = EMAModel(model.unet.parameters(), decay=cfg.ema_decay)
    opt = torch.optim.Adam(model.unet.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    resolved = {"source": str(Path(src).resolve()), "n_images": len(data), "classes": classes, "image_size": size,
                "channels": channels, "train": to_dict(cfg),
                "unlabeled": str(Path(unlabeled).resolve()) if unlabeled is not None else None,
                "n_unlabeled": 0 if pool is None else len(pool),
                "data_digest": _digest(images, data.labels), "pool_digest": _digest(pool),
                "precision": precision_name(amp)}
    step = 0
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        # older checkpoints: counts, not digests; no precision (they trained in float32); options a later genaug
        # added at their defaults. The precision compared is what the run computes in (`precision`: "auto" resolved),
        # not the setting: an "auto" run continues under an explicit setting that computes the same, and never in
        # another precision
        before = {"n_unlabeled": 0, "precision": "float32", **ckpt["config"]}
        before["train"] = {**to_dict(FlowTrainConfig()), **before["train"]}
        keys = ["classes", "n_images", "n_unlabeled", "train", "precision"] + [
            k for k in ("data_digest", "pool_digest") if k in before]
        differ = [d for k in keys for d in differences(k, before[k], resolved[k])
                  if d[0] not in ("train.steps", "train.precision")]
        if differ:
            hint = ""
            if any(d[0] == "precision" for d in differ):
                hint = (f" (precision={cfg.precision} computes in {resolved['precision']} on this machine; "
                        f"precision={before['precision']} continues the checkpoint)")
            raise ConfigError(f"{out} holds a checkpoint of another training run ({shown_differences(differ)}){hint}; "
                              "use another --out, or the same images and options to resume")
        if ckpt["step"] > cfg.steps:
            raise ConfigError(f"{out} already holds {ckpt['step']} training steps, more than steps={cfg.steps}; "
                              f"use steps={ckpt['step']} (or more) to finish it, or another --out")
        done = out / "fit_result.json"
        if ckpt["step"] == cfg.steps and done.is_file() and (out / FLOW_CONFIG).is_file():
            # finished before, by this same run (compared above): its model and result stand; only this call's
            # seconds are new (no state loaded, no weights rewritten, no reconstruction measured again)
            result = json.loads(done.read_text())
            if result.get("steps") == ckpt["step"]:
                result["call_seconds"] = round(time.perf_counter() - t_start, 1)
                return result
        model.unet.load_state_dict(ckpt["unet"])
        ema.load_state_dict(ckpt["ema"])
        ema.to(device)  # loaded to the CPU; its averages must live beside the weights they follow
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        g.set_state(ckpt["rng"])
        step = ckpt["step"]
        log.info("resuming fit-flow at step %d", step)
    (out / "fit_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))

    log_path = out / "train_log.csv"
    new_log = step == 0 or not log_path.exists()
    if not new_log:  # the steps logged after the checkpoint are trained again: their rows go
        with open(log_path, newline="") as f:
            kept = [r for i, r in enumerate(csv.reader(f)) if i == 0 or (r and r[0].isdigit() and int(r[0]) <= step)]
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
    with open(log_path, "w" if new_log else "a", newline="") as f:
        w = csv.writer(f)
        if new_log:
            w.writerow(["step", "loss", "lr", "seconds"])
        bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="genaug fit-flow", unit="step",
                   disable=bar_disabled(progress))
        model.train()
        window, t0 = [], time.perf_counter() - (float(ckpt["seconds"]) if step else 0.0)
        while step < cfg.steps:
            idx = torch.randint(len(x_all), (cfg.batch_size - n_pool,), generator=g)
            x1, y = x_all[idx].clone(), y_all[idx].clone()
            y[torch.rand(len(idx), generator=g) < cfg.label_dropout] = len(classes)  # the "no class" token
            if n_pool:  # pool images: always the "no class" token
                x1 = torch.cat([x1, x_pool[torch.randint(len(x_pool), (n_pool,), generator=g)]])
                y = torch.cat([y, torch.full((n_pool,), len(classes), dtype=y.dtype)])
            if cfg.hflip:
                flip = torch.rand(len(x1), generator=g) < 0.5
                x1[flip] = x1[flip].flip(-1)
            t = _sample_t(len(x1), cfg.time_sampling, g)
            eps = torch.randn(x1.shape, generator=g)
            with autocast(device, amp):
                loss = model.loss(x1.to(device), y.to(device), t.to(device), eps.to(device)).float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.step(model.unet.parameters())
            step += 1
            window = (window + [loss.item()])[-20:]
            bar.update(1)
            w.writerow([step, loss.item(), sched.get_last_lr()[0], round(time.perf_counter() - t0, 2)])
            if step % 10 == 0 or step == cfg.steps:
                f.flush()
                bar.set_postfix(loss=f"{sum(window) / len(window):.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _atomic_save({"step": step, "unet": model.unet.state_dict(), "ema": ema.state_dict(),
                              "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": g.get_state(),
                              "config": resolved, "seconds": time.perf_counter() - t0}, ckpt_path)
        bar.close()
        train_seconds = time.perf_counter() - t0

    ema.copy_to(model.unet.parameters())  # the averaged weights are the ones we ship
    model.eval()
    model.save_pretrained(out)
    recon = reconstruction_error(model, x_all[:64].to(device), y_all[:64].to(device))
    result = {"model_dir": str(out), "steps": step, "image_size": size, "channels": channels, "classes": classes,
              "n_images": len(data), "unlabeled": resolved["unlabeled"], "n_unlabeled": resolved["n_unlabeled"],
              "precision": resolved["precision"],
              # the whole training's seconds, resumed runs included; `call_seconds`: this call's (loading too)
              "seconds": round(train_seconds, 1), "call_seconds": round(time.perf_counter() - t_start, 1),
              "reconstruction": recon}
    (out / "fit_result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def to_model_space(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 `(N, 3, S, S)` images as the model sees them: floats in [-1, 1] with `channels` channels. One channel
    is PIL's luminance (mode "L", what `FlowModel.encode_images` reads a source as, computed the same way), which
    for a grey image is the image itself."""
    if channels == 1:
        x = images.to(torch.int32)
        images = ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 32768) >> 16)[:, None]
    return images.float() / 127.5 - 1


@torch.no_grad()
def reconstruction_error(model: FlowModel, x1: torch.Tensor, y: torch.Tensor, steps: int = 20,
                         solver: str = "euler") -> dict[str, float]:
    """Invert images to latents and generate them back; MSE and PSNR in [-1, 1] pixel units."""
    z = model.invert(x1, y, steps=steps, solver=solver)
    back = model.generate(z, y, steps=steps, solver=solver)
    mse = float((back - x1).pow(2).mean())
    return {"steps": steps, "solver": solver, "mse": mse, "psnr_db": float(10 * math.log10(4 / max(mse, 1e-12))),
            "latent_std": float(z.std())}
