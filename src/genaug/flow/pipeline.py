"""A pretrained text-conditioned rectified-flow pipeline from diffusers (Stable Diffusion 3 family) as a
velocity field for `semantic_flow`: the same inversion, perturbation, SDEdit and composition, in the
pipeline's VAE latent space, conditioned on a prompt made from the label.

Conventions. diffusers' flow-matching pipelines write x_sigma = (1 - sigma) x0 + sigma noise, sigma from
1 (noise) to 0 (data), and their transformer predicts v = noise - x0. genaug's time is t = 1 - sigma, so
dx/dt = -v. Steps follow the pipeline's own `FlowMatchEulerDiscreteScheduler` sigma schedule (with its
time shift), solved with Euler in either direction — the scheduler's `step` only goes forward.
"""
from __future__ import annotations

import numpy as np
import torch

from ..components.hub import absent_components, load_pretrained, local_override
from ..core.devices import model_dtype, resolve_device
from .model import FlowODE, run_fixed


class PipelineFlow(FlowODE):
    def __init__(self, model: str, revision: str | None = None, prompt: str = "a photo of a {label}",
                 negative_prompt: str = "", resolution: int | None = None, device=None, micro_batch: int = 4):
        from diffusers import DiffusionPipeline

        self.device = resolve_device(device)
        dtype = model_dtype(self.device)
        model = local_override("sd3", model)
        self.pipe = load_pretrained(DiffusionPipeline, model, revision, role="rectified-flow pipeline",
                                    dtype=dtype, **absent_components(model)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        if not hasattr(self.pipe, "transformer") or "FlowMatch" not in type(self.pipe.scheduler).__name__:
            from ..core.config import ConfigError

            raise ConfigError(f"{model} is a {type(self.pipe).__name__} with a {type(self.pipe.scheduler).__name__}; "
                              "semantic_flow needs a rectified-flow pipeline (SD3 family, FlowMatchEulerDiscreteScheduler)")
        self.prompt, self.negative_prompt, self.micro_batch = prompt, negative_prompt, micro_batch
        vae_scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.pipe.transformer.config.sample_size * vae_scale
        self.id, self.revision = model, revision
        self.tokens: dict[str, str] = {}  # label -> the textual-inversion token text its prompts say (add_tokens)
        self._cond_cache: dict[str, dict[str, torch.Tensor]] = {}

    # ---- textual-inversion tokens ------------------------------------------------------------------
    def add_tokens(self, tokens: dict[str, str], vectors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Give the text encoders one new token per class: `tokens` is `{label: token}`, `vectors`
        `{token: {text_encoder_name: rows}}` with rows for every encoder the pipeline has (CLIP-L `text_encoder`,
        CLIP-G `text_encoder_2`, T5 `text_encoder_3` when present), as `learned_flow_tokens` learns them on this
        pipeline; a row is `(dim,)`, or `(vectors, dim)` for a multi-vector token (entries `token, token_1, …`).
        diffusers' SD3 pipelines have no `load_textual_inversion`, so the rows are added as its loader adds them:
        tokenizer entries, the embeddings resized where needed, the rows written. Every encoder then sees the
        token where the prompt has `{label}`."""
        from ..components.textual_inversion import flow_text_encoders, flow_token_text, vector_tokens
        from ..core.config import ConfigError

        encoders = flow_text_encoders(self.pipe)
        n_vectors = {}  # token -> its vectors (a multi-vector token has several rows per encoder)
        for token, per_encoder in vectors.items():  # check everything before changing anything
            counts = {v.reshape(-1, v.shape[-1]).shape[0] for v in per_encoder.values()}
            if set(per_encoder) != set(encoders) or len(counts) != 1:
                raise ConfigError(f"textual-inversion token {token}: {self.id} has text encoders {sorted(encoders)}, "
                                  f"the token rows for {sorted(per_encoder)}; learn the tokens on this pipeline")
            n_vectors[token] = counts.pop()
            for name, (_, te) in encoders.items():
                width = te.get_input_embeddings().weight.shape[1]
                if per_encoder[name].shape[-1] != width:
                    raise ConfigError(f"textual-inversion token {token}: its {name} row has "
                                      f"{per_encoder[name].shape[-1]} values, {self.id}'s {name} embeds in {width}; "
                                      "learn the tokens on this pipeline")
        texts = {}
        for token, per_encoder in vectors.items():
            n = n_vectors[token]
            names = vector_tokens(token, n)
            for name, (tok, te) in encoders.items():
                tok.add_tokens([t for t in names if t not in tok.get_vocab()])  # SD3's tokenizers may be one object
                ids = tok.convert_tokens_to_ids(names)
                if max(ids) >= te.get_input_embeddings().weight.shape[0]:  # T5 has spare rows past its vocabulary
                    te.resize_token_embeddings(len(tok), mean_resizing=False)
                weight = te.get_input_embeddings().weight
                with torch.no_grad():
                    weight[ids] = per_encoder[name].reshape(n, -1).to(weight.device, weight.dtype)
            texts[token] = flow_token_text(token, n)
        self.tokens = {**self.tokens, **{label: texts[token] for label, token in tokens.items()}}
        self._cond_cache.clear()

    def prompt_for(self, label: str) -> str:
        """The prompt of `label`, for every text encoder: with a token for it, the token (T5 has learned it too; a
        pipeline without T5 feeds zeros in its place)."""
        return self.prompt.format(label=self.tokens.get(label, label))

    # ---- images <-> latents ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: list) -> torch.Tensor:
        vae = self.pipe.vae
        px = self.pipe.image_processor.preprocess([im.convert("RGB") for im in images], height=self.resolution,
                                                  width=self.resolution).to(self.device, vae.dtype)
        latents = run_fixed(lambda p: vae.encode(p).latent_dist.mode(), self.micro_batch, px)  # the mode: no sampling
        return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor

    @torch.no_grad()
    def decode_images(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list:
        vae = self.pipe.vae
        latents = x / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        px = run_fixed(lambda z: vae.decode(z).sample, self.micro_batch, latents.to(vae.dtype))
        images = self.pipe.image_processor.postprocess(px.float(), output_type="pil")
        return [im if im.size == size else im.resize(size) for im, size in zip(images, sizes)]

    # ---- conditioning and velocity -----------------------------------------------------------------
    @torch.no_grad()
    def condition(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """Prompt embeddings per label, each encoded once and alone (cached): a label's embedding never
        depends on the other labels in the batch, and the text encoders run once per class, not per image."""
        for label in set(labels) - set(self._cond_cache):
            prompt = self.prompt_for(label)
            pe, npe, ppe, nppe = self.pipe.encode_prompt(
                prompt=[prompt], prompt_2=None, prompt_3=[prompt], device=self.device,
                do_classifier_free_guidance=True, negative_prompt=[self.negative_prompt])
            self._cond_cache[label] = {"embeds": pe, "pooled": ppe, "neg_embeds": npe, "neg_pooled": nppe}
        return {k: torch.cat([self._cond_cache[label][k] for label in labels]) for k in
                ("embeds", "pooled", "neg_embeds", "neg_pooled")}

    def _v(self, x, sigma, embeds, pooled):
        def call(xs, ss, es, ps):
            return self.pipe.transformer(hidden_states=xs, timestep=ss * 1000, encoder_hidden_states=es,
                                         pooled_projections=ps).sample

        return run_fixed(call, self.micro_batch, x, sigma, embeds, pooled)

    @torch.no_grad()
    def velocity(self, t, x: torch.Tensor, cond, guidance: float = 1.0) -> torch.Tensor:
        sigma = (1 - torch.as_tensor(t, dtype=x.dtype, device=x.device)).expand(len(x))
        v = self._v(x, sigma, cond["embeds"], cond["pooled"])
        if guidance != 1.0:
            uncond = self._v(x, sigma, cond["neg_embeds"], cond["neg_pooled"])
            v = uncond + guidance * (v - uncond)
        return -v

    def _sigmas(self, steps: int) -> np.ndarray:
        sched = self.pipe.scheduler
        sched.set_timesteps(steps, device="cpu")
        return sched.sigmas.numpy().astype(np.float64)  # descending, 1 -> 0, with the pipeline's time shift

    def time_grid(self, t_from: float, t_to: float, steps: int) -> list[float]:
        """The scheduler's own grid (in t = 1 - sigma) between t_from and t_to, and both ends: one Euler step each."""
        lo, hi = sorted((t_from, t_to))
        inner = [1 - float(s) for s in self._sigmas(steps) if lo < 1 - float(s) < hi]
        return sorted({t_from, t_to, *inner}, reverse=t_from > t_to)

    @torch.no_grad()
    def integrate(self, x: torch.Tensor, cond, t_from: float, t_to: float, steps: int = 20,
                  solver: str = "euler", guidance: float = 1.0) -> torch.Tensor:
        """Euler on the scheduler's sigma grid between t_from and t_to (either direction). `steps` counts
        the whole [0, 1] interval; the grid's sigmas inside the interval are used, plus both end points."""
        if t_from == t_to:
            return x
        if solver != "euler":
            from ..core.config import ConfigError

            raise ConfigError("with a diffusers pipeline, semantic_flow integrates on the scheduler's grid: solver=euler")
        s_from, s_to = 1 - t_from, 1 - t_to
        lo, hi = sorted((s_from, s_to))
        grid = [s for s in self._sigmas(steps) if lo < s < hi]
        path = sorted({s_from, s_to, *grid}, reverse=s_from > s_to)
        for a, b in zip(path, path[1:]):
            x = x + (a - b) * self.velocity(1 - a, x, cond, guidance)  # dt = -(dsigma) = a - b
        return x
