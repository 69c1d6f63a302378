"""A class-conditional flow-matching generator that genaug trains on the user's own images
(Shivashankar & Miller, section 2.2.2), plus the ODE machinery it is used with.

Convention (the paper's): t = 0 is noise, t = 1 is the image. The conditional path is
    psi_t(x1, eps) = (1 - (1 - sigma_min) t) eps + t x1,   target velocity  x1 - (1 - sigma_min) eps   (eq. 9)
The network is diffusers' `UNet2DModel` with a class embedding; index `num_classes` is the "no class"
token used for label dropout and classifier-free guidance. ODEs are solved with torchdiffeq.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

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


class FlowModel(nn.Module):
    """Velocity field v(t, x | y) with classifier-free guidance, and the ODE solves built on it.

    Out of training, the network always sees micro-batches of exactly `micro_batch` samples (the last one
    padded): CPU and GPU kernels choose their algorithm by batch size, and their float results differ in
    the last bits, which would make an image depend on what else was in its batch. With a fixed shape,
    every output is byte-identical whatever `--batch-size` or order.
    """

    def __init__(self, unet, spec: FlowSpec, micro_batch: int = 8):
        super().__init__()
        self.unet, self.spec, self.micro_batch = unet, spec, micro_batch

    def _unet(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.unet(x, t, class_labels=y).sample
        m, out = self.micro_batch, []
        for i in range(0, len(x), m):
            xs, ts, ys = x[i:i + m], t[i:i + m], y[i:i + m]
            n = len(xs)
            if n < m:
                pad = m - n
                xs, ts, ys = (torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) for v in (xs, ts, ys))
            out.append(self.unet(xs, ts, class_labels=ys).sample[:n])
        return torch.cat(out)

    @property
    def null_class(self) -> int:
        return len(self.spec.classes)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device="cpu") -> "FlowModel":
        from diffusers import UNet2DModel

        directory = Path(directory)
        if not (directory / FLOW_CONFIG).is_file():
            from ..config import ConfigError

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

    def loss(self, x1: torch.Tensor, y: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-sample conditional flow-matching loss (eq. 9)."""
        s = self.spec.sigma_min
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - (1 - s) * tt) * eps + tt * x1
        target = x1 - (1 - s) * eps
        return (self.velocity(t, xt, y) - target).pow(2).flatten(1).mean(1)

    def noise_at(self, x1: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        """A point of the conditional path at time t: SDEdit-style insertion of a real image (eq. 10 on the flow path)."""
        return (1 - (1 - self.spec.sigma_min) * t) * eps + t * x1

    @torch.no_grad()
    def integrate(self, x: torch.Tensor, y: torch.Tensor, t_from: float, t_to: float, steps: int = 20,
                  solver: str = "euler", guidance: float = 1.0) -> torch.Tensor:
        """Solve dx/dt = v(t, x | y) from `t_from` to `t_to` (backwards when t_to < t_from: inversion)."""
        from torchdiffeq import odeint

        if t_from == t_to:
            return x
        ts = torch.tensor([t_from, t_to], dtype=x.dtype, device=x.device)
        options = {"step_size": abs(t_to - t_from) / max(1, steps)} if solver in ("euler", "midpoint", "rk4") else {}
        return odeint(lambda t, z: self.velocity(t, z, y, guidance), x, ts, method=solver, options=options,
                      rtol=1e-4, atol=1e-4)[-1]

    def invert(self, x1, y, steps=20, solver="euler", t_to: float = 0.0, guidance: float = 1.0):
        """Image (t = 1) -> latent (t = 0), or to any intermediate time `t_to`."""
        return self.integrate(x1, y, 1.0, t_to, steps, solver, guidance)

    def generate(self, z, y, steps=20, solver="euler", t_from: float = 0.0, guidance: float = 1.0):
        """Latent (t = `t_from`, 0 by default) -> image (t = 1)."""
        return self.integrate(z, y, t_from, 1.0, steps, solver, guidance)
