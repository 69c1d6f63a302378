"""A class-conditional flow-matching generator that genaug trains on the user's own images
(Shivashankar & Miller, section 2.2.2), plus the ODE machinery it is used with.

Convention (the paper's): t = 0 is noise, t = 1 is the image. The conditional path is
    psi_t(x1, eps) = (1 - (1 - sigma_min) t) eps + t x1,   target velocity  x1 - (1 - sigma_min) eps   (eq. 9)
The network is diffusers' `UNet2DModel` with a class embedding; index `num_classes` is the "no class"
token used for label dropout and classifier-free guidance. ODEs are solved with torchdiffeq.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.devices import autocast

FLOW_CONFIG = "flow_config.json"


@dataclass
class FlowSpec:
    """What a trained generator needs besides its weights: saved next to them as flow_config.json."""

    classes: list[str]
    image_size: int
    channels: int
    sigma_min: float = 0.0

    def save(self, directory: Path) -> None:
        (directory / FLOW_CONFIG).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: Path) -> "FlowSpec":
        return cls(**json.loads((directory / FLOW_CONFIG).read_text()))


def make_unet(spec: FlowSpec, channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
              attention: bool = False):
    from diffusers import UNet2DModel

    down = ("DownBlock2D",) * (len(channels) - 1) + (("AttnDownBlock2D",) if attention else ("DownBlock2D",))
    up = (("AttnUpBlock2D",) if attention else ("UpBlock2D",)) + ("UpBlock2D",) * (len(channels) - 1)
    return UNet2DModel(sample_size=spec.image_size, in_channels=spec.channels, out_channels=spec.channels,
                       block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                       down_block_types=down, up_block_types=up, norm_num_groups=min(16, channels[0]),
                       num_class_embeds=len(spec.classes) + 1, add_attention=attention)


def run_fixed(fn, micro_batch: int, *tensors: torch.Tensor) -> torch.Tensor:
    """`fn(*chunks)` over micro-batches of exactly `micro_batch` rows (the last padded with copies of its
    first row), concatenated. Kernels choose algorithms by batch size and their float results differ in the
    last bits; with one fixed shape every row's result is the same whatever else shares its batch."""
    out, n_all = [], len(tensors[0])
    for i in range(0, n_all, micro_batch):
        chunk = [v[i:i + micro_batch] for v in tensors]
        n = len(chunk[0])
        if n < micro_batch:
            chunk = [torch.cat([v, v[:1].expand(micro_batch - n, *v.shape[1:])]) for v in chunk]
        # one memory format too: a slice or a padded copy of a channels-last tensor (a VAE's output) may come out
        # channels-last or not depending on its length, and convolutions pick another kernel for each
        out.append(fn(*[v.contiguous() for v in chunk])[:n].contiguous())
    return torch.cat(out)


def take(cond, rows):
    """Rows of a conditioning: a tensor, or a dict of tensors (prompt embeddings and pooled embeddings)."""
    return {k: v[rows] for k, v in cond.items()} if isinstance(cond, dict) else cond[rows]


class FlowODE(ABC):
    """ODE solves on a velocity field `velocity(t, x, cond, guidance)`, t = 0 noise, t = 1 image.

    `cond` is whatever the field is conditioned on (class indices, prompt embeddings), one row per sample.
    """

    sigma_min: float = 0.0

    @abstractmethod
    def velocity(self, t, x: torch.Tensor, cond, guidance: float = 1.0) -> torch.Tensor:
        """dx/dt at time t, with classifier-free guidance `guidance` (1 = none)."""

    @abstractmethod
    def encode_images(self, images: list) -> torch.Tensor:
        """PIL images -> points at t = 1 of the model's space (pixels or VAE latents)."""

    @abstractmethod
    def decode_images(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list:
        """Points at t = 1 -> RGB PIL images of the given sizes."""

    @abstractmethod
    def condition(self, labels: list[str]):
        """The conditioning of each label (one row each)."""

    def unknown_labels(self, labels) -> list[str]:
        """Labels this model cannot condition on (text-conditioned models know every label)."""
        return []

    def noise_at(self, x1: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """A point of the conditional path at time t: SDEdit-style insertion of a real image (eq. 10 on the flow path)."""
        return (1 - (1 - self.sigma_min) * t) * eps + t * x1

    @torch.no_grad()
    def integrate(self, x: torch.Tensor, cond, t_from: float, t_to: float, steps: int = 20,
                  solver: str = "euler", guidance: float = 1.0) -> torch.Tensor:
        """Solve dx/dt = v(t, x | cond) from `t_from` to `t_to` (backwards when t_to < t_from: inversion).

        `steps` counts fixed steps over the whole [0, 1] interval, so a part of it gets its share. An adaptive
        solver (dopri5) ignores `steps` and picks its steps from an error estimate over the tensor it solves, so
        each row is solved on its own: a row's result never depends on the rows beside it in a batch."""
        from torchdiffeq import odeint

        if t_from == t_to:
            return x
        ts = torch.tensor([t_from, t_to], dtype=x.dtype, device=x.device)
        fixed = solver in ("euler", "midpoint", "rk4")
        options = {"step_size": 1.0 / max(1, steps)} if fixed else {}

        def solve(x0, c):
            return odeint(lambda t, z: self.velocity(t, z, c, guidance), x0, ts, method=solver, options=options,
                          rtol=1e-4, atol=1e-4)[-1]

        if fixed or len(x) == 1:
            return solve(x, cond)
        return torch.cat([solve(x[i:i + 1], cond[i:i + 1]) for i in range(len(x))])

    def time_grid(self, t_from: float, t_to: float, steps: int) -> list[float]:
        """The step boundaries from `t_from` to `t_to`: the multiples of 1/steps between them, and both ends."""
        lo, hi = sorted((t_from, t_to))
        inner = [i / steps for i in range(1, steps) if lo < i / steps < hi]
        return sorted({t_from, t_to, *inner}, reverse=t_from > t_to)

    @torch.no_grad()
    def generate_inside(self, z: torch.Tensor, cond, region: torch.Tensor, source: torch.Tensor, x1: torch.Tensor,
                        t_from: float = 0.0, steps: int = 20, solver: str = "euler",
                        guidance: float = 1.0) -> torch.Tensor:
        """Object-centric generation along the ODE (paper 3.3; RePaint / blended latents on the flow path).

        Only where `region` is 1 is the image regenerated from `z`; the rest stays on the source's own path:
        after every step it is put back on the straight line from `source` (the unperturbed source at
        `t_from`: its inversion, or its SDEdit insertion) to the source itself `x1` at t = 1, so it ends as
        the source exactly. `region` broadcasts against `z` (1 = regenerate, 0 = keep)."""
        keep = 1 - region
        x = region * z + keep * source
        if t_from >= 1:
            return region * z + keep * x1
        grid = self.time_grid(t_from, 1.0, steps)
        for a, b in zip(grid, grid[1:]):
            x = self.integrate(x, cond, a, b, steps, solver, guidance)
            w = (b - t_from) / (1 - t_from)  # 1 at the end: exactly the source there
            x = region * x + keep * ((1 - w) * source + w * x1)
        return x

    def invert(self, x1, cond, steps=20, solver="euler", t_to: float = 0.0, guidance: float = 1.0):
        """Image (t = 1) -> latent (t = 0), or to any intermediate time `t_to`."""
        return self.integrate(x1, cond, 1.0, t_to, steps, solver, guidance)

    def generate(self, z, cond, steps=20, solver="euler", t_from: float = 0.0, guidance: float = 1.0):
        """Latent (t = `t_from`, 0 by default) -> image (t = 1)."""
        return self.integrate(z, cond, t_from, 1.0, steps, solver, guidance)


class FlowModel(nn.Module, FlowODE):
    """Velocity field v(t, x | y) with classifier-free guidance, and the ODE solves built on it.

    Out of training, the network always sees micro-batches of exactly `micro_batch` samples (the last one
    padded): CPU and GPU kernels choose their algorithm by batch size, and their float results differ in
    the last bits, which would make an image depend on what else was in its batch. With a fixed shape,
    every output is byte-identical whatever `--batch-size` or order.
    """

    def __init__(self, unet, spec: FlowSpec, micro_batch: int = 16):
        super().__init__()
        self.unet, self.spec, self.micro_batch = unet, spec, micro_batch
        self.sigma_min = spec.sigma_min
        # out of training: the UNet's forward pass in this autocast dtype (None: as the weights are); the ODE state
        # stays float32
        self.autocast: torch.dtype | None = None

    def _unet(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def call(xs, ts, ys):
            # no autocast block at all when None: an enclosing one (the trainer's) stays as it is
            with autocast(xs.device, self.autocast):
                return self.unet(xs, ts, class_labels=ys).sample.float()

        return call(x, t, y) if self.training else run_fixed(call, self.micro_batch, x, t, y)

    @property
    def null_class(self) -> int:
        return len(self.spec.classes)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device="cpu") -> "FlowModel":
        from diffusers import UNet2DModel

        directory = Path(directory)
        if not (directory / FLOW_CONFIG).is_file():
            from ..core.config import ConfigError

            raise ConfigError(f"{directory} is not a genaug flow model (no {FLOW_CONFIG}); train one with genaug fit-flow")
        unet = UNet2DModel.from_pretrained(directory / "unet", use_safetensors=True)
        return cls(unet, FlowSpec.load(directory)).to(device).eval()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.spec.save(directory)

    def velocity(self, t: torch.Tensor | float, x: torch.Tensor, y: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x)) * 1000  # the UNet's time scale
        if guidance == 1.0:
            return self._unet(x, t, y)
        null = torch.full_like(y, self.null_class)
        v = self._unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = v.chunk(2)
        return uncond + guidance * (cond - uncond)

    def encode_images(self, images: list) -> torch.Tensor:
        spec, out = self.spec, []
        for image in images:
            im = image.convert("L" if spec.channels == 1 else "RGB").resize((spec.image_size, spec.image_size),
                                                                            Image.BILINEAR)
            arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
            out.append((arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)) / 127.5 - 1)
        return torch.stack(out).to(self.unet.device)

    def decode_images(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list:
        arrs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        out = []
        for arr, size in zip(arrs, sizes):
            im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).convert("RGB")
            out.append(im if im.size == size else im.resize(size, Image.BILINEAR))
        return out

    def condition(self, labels: list[str]) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.spec.classes)}
        return torch.tensor([index[label] for label in labels], device=self.unet.device)

    def unknown_labels(self, labels) -> list[str]:
        return sorted(set(labels) - set(self.spec.classes))

    def loss(self, x1: torch.Tensor, y: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-sample conditional flow-matching loss (eq. 9)."""
        xt = self.noise_at(x1, eps, t.view(-1, 1, 1, 1))
        target = x1 - (1 - self.sigma_min) * eps
        return (self.velocity(t, xt, y) - target).pow(2).flatten(1).mean(1)
