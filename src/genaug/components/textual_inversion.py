"""Textual inversion (Gal et al. 2023) as DA-Fusion runs it (its fine_tune.py, adapted from the diffusers
example, with its scripts' settings): one new token per class, started from the word "the", whose embedding row is
the only thing that trains (or, `vectors` > 1, several rows, as its fine_tune_upstream.py `--num_vectors`); saved
as safetensors `{token: vector}` (a `(vectors, dim)` tensor for several) and loaded back with diffusers'
`load_textual_inversion`. Learned tokens are cached by a content hash of (the class's images, the
options, the base model and revision), so a rerun does not train again.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from ..core.config import ConfigError, config_dataclass
from ..data.cache import Cache
from ..core.log import bar_disabled, dropping
from .hub import model_key

# DA-Fusion's (and DIAGen's) `imagenet_templates_small`, fine_tune.py: the prompts a class token trains under
TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
             "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
             "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
             "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
             "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
             "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}",
             "a photo of the weird {}", "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}")
# bump when the training recipe changes in a way the options do not show: it is part of the cache key
RECIPE = "da-fusion-1"


def class_token(index: int) -> str:
    return f"<genaug-class-{index}>"


def vector_tokens(token: str, vectors: int) -> list[str]:
    """The tokenizer entries of a `vectors`-vector token, named as diffusers' `load_textual_inversion` names them
    (and its `maybe_convert_prompt` expands `token` in a prompt into): `token, token_1, …, token_{vectors-1}`."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def _images_digest(images: list[Image.Image]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for im in images:
        h.update(f"{im.size}".encode())
        h.update(im.convert("RGB").tobytes())
    return h.hexdigest()


def initial_row(tok, te, initializer: str) -> torch.Tensor:
    """The row a new token starts from: the mean of the embedding rows of `initializer`'s tokens (for a word
    that is one token, as DA-Fusion's "the", exactly that word's row)."""
    ids = tok.encode(initializer, add_special_tokens=False)
    if not ids:
        raise ConfigError(f"textual inversion: the initializer {initializer!r} has no tokens")
    return te.get_input_embeddings().weight[ids].detach().mean(0)


def _posterior(pipe, images: list[Image.Image], res: int, device, dtype: torch.dtype,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of every image at `res` px, in the model's latent space (shifted and
    scaled as the pipeline's own latents), computed once: a latent is drawn from it per step (DA-Fusion:
    `latent_dist.sample()`)."""
    vae = pipe.vae
    px = torch.stack([pipe.image_processor.preprocess(im.convert("RGB"), height=res, width=res)[0] for im in images])
    shift, scale = getattr(vae.config, "shift_factor", None) or 0.0, vae.config.scaling_factor
    with torch.no_grad():
        posterior = vae.encode(px.to(device, vae.dtype)).latent_dist
        return ((posterior.mean - shift) * scale).to(dtype), (posterior.std * scale).to(dtype)


def _fit(loss, step, latents: torch.Tensor, latents_std: torch.Tensor, phrase: str, draw_time, steps: int,
         batch_size: int, seed: int, desc: str, progress: bool | None) -> dict[str, Any]:
    """The training loop of both recipes (DA-Fusion's): per step a batch of the class's images with a latent drawn
    from each one's VAE posterior (`latents` ± `latents_std`), a random horizontal flip, noise, times from
    `draw_time(n, generator)` and a random template holding `phrase`; `loss(x0, noise, times, prompts)` backward,
    then `step()`. Every draw from one CPU generator seeded with `seed`; a fixed held-out draw (seed + 1) measures
    progress before and after without the sampling noise. Returns the losses: per step, and held-out."""
    device, dtype = latents.device, latents.dtype
    ge = torch.Generator().manual_seed(seed + 1)
    n_eval = min(len(latents), 8)
    fixed = (latents[:n_eval], torch.randn(latents[:n_eval].shape, generator=ge).to(device, dtype),
             draw_time(n_eval, ge), [TEMPLATES[i % len(TEMPLATES)].format(phrase) for i in range(n_eval)])
    g = torch.Generator().manual_seed(seed)
    losses = []
    with torch.enable_grad():
        with torch.no_grad():
            eval_before = loss(*fixed).item()
        for _ in tqdm(range(steps), desc=desc, disable=bar_disabled(progress), leave=False):
            idx = torch.randint(len(latents), (min(batch_size, len(latents)),), generator=g).to(device)
            lat = latents[idx] + latents_std[idx] * torch.randn(latents[idx].shape, generator=g).to(device, dtype)
            flip = torch.rand(len(idx), generator=g) < 0.5
            lat = torch.where(flip.view(-1, 1, 1, 1).to(device), lat.flip(-1), lat)
            noise = torch.randn(lat.shape, generator=g).to(device, dtype)
            times = draw_time(len(idx), g)
            prompts = [TEMPLATES[int(i)].format(phrase) for i in torch.randint(len(TEMPLATES), (len(idx),), generator=g)]
            value = loss(lat, noise, times, prompts)
            value.backward()
            step()
            losses.append(value.item())
        with torch.no_grad():
            eval_after = loss(*fixed).item()
    return {"train": losses, "eval_before": eval_before, "eval_after": eval_after}


def learn_token(pipe, images: list[Image.Image], token: str, initializer: str, steps: int = 1000,
                lr: float = 2e-3, batch_size: int = 4, weight_decay: float = 1e-2, resolution: int | None = None,
                seed: int = 0, progress: bool | None = None, vectors: int = 1,
                encoders: dict[str, tuple[Any, Any]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train one new token on `images` in `encoders` (`{text_encoder_name: (tokenizer, text_encoder)}`; default:
    copies of the pipeline's own) — one for SD 1.x / 2.x, two for SDXL; a row in each trains, starting from
    `initial_row(initializer)`, and the conditioning is built as the pipeline itself builds it. DA-Fusion's
    recipe: AdamW at a constant `lr` with decoupled `weight_decay` (on the new row only), a latent drawn from
    the VAE posterior per step, a random horizontal flip, a random template per image.
    `vectors` > 1 learns a multi-vector token, rows `token, token_1, …` (diffusers' names), each started from
    `initial_row(initializer)` as DA-Fusion's fine_tune_upstream.py (`--num_vectors`) starts them; unlike that
    script, whose training prompts hold only `token`, the pipeline's `maybe_convert_prompt` writes all of them
    wherever a prompt says `token`, so every row trains.
    Returns `{text_encoder_name: learned vector}` (shape `(dim,)`, or `(vectors, dim)` when `vectors` > 1) and the
    losses: per training step, and on a fixed held-out draw before and after."""
    from diffusers import DDPMScheduler

    from .diffusion import text_encoders

    copies = encoders or {name: (copy.deepcopy(tok), copy.deepcopy(te))
                          for name, (tok, te) in text_encoders(pipe).items()}
    tok_names = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    view = type(pipe)(**{**pipe.components, **{k: te for k, (_, te) in copies.items()},
                         **{tok_names[k]: tok for k, (tok, _) in copies.items()}})
    unet, vae = pipe.unet, pipe.vae
    rows = {}
    names = vector_tokens(token, vectors)
    for name, (tok, te) in copies.items():
        if tok.add_tokens(names) != len(names):
            raise ValueError(f"token {token} already exists in the tokenizer")
        init = initial_row(tok, te, initializer)
        te.resize_token_embeddings(len(tok), mean_resizing=False)
        emb = te.get_input_embeddings()  # transformers >= 5.6: CLIPTextModel has no .text_model
        token_id = torch.tensor(tok.convert_tokens_to_ids(names), device=emb.weight.device)
        with torch.no_grad():
            emb.weight[token_id] = init  # fine_tune_upstream.py: every vector a copy of the initializer's row
        te.requires_grad_(False)
        emb.weight.requires_grad_(True)
        rows[name] = (emb.weight, token_id, ~torch.isin(torch.arange(len(tok), device=emb.weight.device), token_id))
    for m in (unet, vae):
        m.requires_grad_(False)
    opt = torch.optim.AdamW([w for w, _, _ in rows.values()], lr=lr, weight_decay=0.0)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    res = resolution or unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    device, dtype = unet.device, unet.dtype
    latents_all, latents_std = _posterior(pipe, images, res, device, dtype)
    xl = "text_encoder_2" in copies

    def denoising_loss(lat, noise, t, prompts):
        enc = view.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
        extra = {}
        if xl:  # SDXL's micro-conditioning: original size, crop (0, 0), target size
            time_ids = torch.tensor([[res, res, 0, 0, res, res]], device=device, dtype=dtype).repeat(len(prompts), 1)
            extra["added_cond_kwargs"] = {"text_embeds": enc[2], "time_ids": time_ids}
        pred = unet(noise_sched.add_noise(lat, noise, t), t, encoder_hidden_states=enc[0], **extra).sample
        target = noise if noise_sched.config.prediction_type == "epsilon" else noise_sched.get_velocity(lat, noise, t)
        return F.mse_loss(pred.float(), target.float())

    def draw_t(n, gen):
        return torch.randint(noise_sched.config.num_train_timesteps, (n,), generator=gen).to(device)

    def step():
        with torch.no_grad():
            for weight, token_id, keep in rows.values():
                weight.grad[keep] = 0  # only the new row learns
                weight[token_id] *= 1 - lr * weight_decay  # AdamW's decoupled decay, on that row alone
        opt.step()
        opt.zero_grad(set_to_none=True)

    losses = _fit(denoising_loss, step, latents_all, latents_std, token, draw_t, steps, batch_size, seed,
                  f"textual inversion {token}", progress)
    learned = {name: weight[token_id].detach().clone().squeeze(0) for name, (weight, token_id, _) in rows.items()}
    return learned, losses


# the file format: diffusers' / A1111's `{token: vector}` for one text encoder, `clip_l` / `clip_g` for SDXL
_FILE_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}


def token_vectors(pipe, token: str) -> dict[str, torch.Tensor]:
    """`{text_encoder_name: the token's embedding row}` of a pipeline that knows `token`; a multi-vector token's
    rows (`token, token_1, …`) as one `(vectors, dim)` tensor."""
    from .diffusion import text_encoders

    out = {}
    for name, (tok, te) in text_encoders(pipe).items():
        names, vocab = [token], tok.get_vocab()
        while f"{token}_{len(names)}" in vocab:
            names.append(f"{token}_{len(names)}")
        ids = tok.convert_tokens_to_ids(names)
        out[name] = te.get_input_embeddings().weight[ids].detach().clone().squeeze(0)
    return out


def initializer_text(init: str, label: str) -> str:
    """The text a class's token starts from: `init` with `{label}` replaced by the class name."""
    return init.replace("{label}", label.replace("_", " "))


def _learn_to_file(pipe, images: list[Image.Image], token: str, label: str, options: dict[str, Any],
                   progress: bool | None, path: Path) -> None:
    """Learn `token` (on copies: the pipeline gains tokens only through load_textual_inversion) into `path`."""
    from safetensors.torch import save_file

    options = dict(options)
    initializer = initializer_text(options.pop("init"), label)
    vectors, losses = learn_token(pipe, images, token, initializer, progress=progress, **options)
    state = ({token: vectors["text_encoder"].cpu()} if len(vectors) == 1 else
             {_FILE_KEYS[name]: v.cpu() for name, v in vectors.items()})
    save_file(state, str(path), metadata={
        "token": token, "label": label, "initializer": initializer, "vectors": str(options.get("vectors", 1)),
        "recipe": RECIPE,
        "eval_loss_before": f"{losses['eval_before']:.5f}",
        "eval_loss_after": f"{losses['eval_after']:.5f}"})


def _token_file(images: list[Image.Image], label: str, token: str, model: tuple, options: dict[str, Any],
                recipe: str, learn) -> Path:
    """The cached token file of (the class's images, label, token, model = (id, revision, *more), options,
    recipe), the model keyed by what it holds (`model_key`); `learn(path)` writes it when missing. A second run
    needing the same token waits for the first's file instead of training again."""
    key = hashlib.blake2b(repr((_images_digest(images), label, token, model_key(*model[:2]), *model[2:],
                                sorted(options.items()), recipe)).encode(), digest_size=16).hexdigest()
    return Cache("textual_inversion").get_or_create(key, ".safetensors", learn)


def learned_tokens(pipe, model_id: str, revision: str | None, images_by_class: dict[str, list[Image.Image]],
                   options: dict[str, Any], progress: bool | None = None) -> dict[str, str]:
    """`{label: token}` for every class, learned or taken from the cache, and loaded into `pipe`."""
    from safetensors.torch import load_file

    from .diffusion import text_encoders

    tokens = {}
    for i, label in enumerate(sorted(images_by_class)):
        token = class_token(i)
        path = _token_file(images_by_class[label], label, token, (model_id, revision), options, RECIPE,
                           functools.partial(_learn_to_file, pipe, images_by_class[label], token, label, options,
                                             progress))
        encoders = text_encoders(pipe)
        if token not in pipe.tokenizer.get_vocab():
            state = load_file(str(path))
            # diffusers resizes the embeddings, and transformers notes how it initialises the new rows (we
            # overwrite them at once): that note only, only here
            with dropping("transformers.modeling_utils", "The new embeddings will be initialized"):
                for name, (tok, te) in encoders.items():
                    vector = state[token] if len(encoders) == 1 else state[_FILE_KEYS[name]]
                    pipe.load_textual_inversion({token: vector}, token=token, tokenizer=tok, text_encoder=te)
        tokens[label] = token
    return tokens


@config_dataclass
class TextualInversionOptions:
    """How a method learns its class tokens (a base of the methods' Configs)."""

    # DA-Fusion's scripts/fine_tuning/fine_tune_*.sh: 1000 steps, batch 4, lr 5e-4 scaled by the batch
    # (--scale_lr: 5e-4 x 4 = 2e-3), constant; AdamW's weight decay 1e-2 (fine_tune.py's default)
    ti_steps: int = Field(1000, ge=1)  # textual-inversion optimisation steps per class
    ti_lr: float = Field(2e-3, gt=0)  # the effective (already batch-scaled) learning rate
    ti_batch_size: int = Field(4, ge=1)
    ti_weight_decay: float = Field(1e-2, ge=0)
    # the text the token's row starts from (mean of its tokens' rows); `{label}` is the class name.
    # DA-Fusion's fine_tune.py sets initializer_token = "the" for every class.
    ti_init: str = "the"
    # vectors per class token (rows `<token>, <token>_1, …`, each started from ti_init, all in every prompt):
    # fine_tune.py (DA-Fusion's released scripts, DIAGen) learns 1; the DA-Fusion paper's final tokens came from
    # fine_tune_upstream.py --num_vectors 4 (da-fusion issue #24; train_classifier.py --tokens-per-class 4)
    ti_vectors: int = Field(1, ge=1)

    @field_validator("ti_init", mode="before")
    @classmethod
    def _check_init(cls, v: Any) -> str:
        if isinstance(v, dict):  # `ti_init: {label}` in a YAML file is a mapping (key=value keeps it text)
            raise ValueError("must be a text; in a YAML file quote it: ti_init: '{label}'")
        if not isinstance(v, str):
            raise ValueError("must be a text")
        if not v.strip() or v.replace("{label}", "").count("{") or v.replace("{label}", "").count("}"):
            raise ValueError('must be a non-empty text, "{label}" the only placeholder (e.g. "the", "{label}")')
        return v

    def class_tokens(self, diffusion, source) -> dict[str, str]:
        """`{label: token}` learned (or taken from the cache) from each class's images in `source`, and loaded
        into `diffusion`'s pipeline. Unreadable images are skipped (the engine lists them as rejected)."""
        return learned_tokens(diffusion.pipe, diffusion.id, diffusion.revision, class_images(source),
                              {"steps": self.ti_steps, "lr": self.ti_lr, "batch_size": self.ti_batch_size,
                               "weight_decay": self.ti_weight_decay, "init": self.ti_init,
                               "vectors": self.ti_vectors, "resolution": diffusion.resolution})


# ---- textual inversion on a rectified-flow pipeline (Stable Diffusion 3 family) ---------------------------------
# SD3's text encoders, their tokenizers and their keys in a token file (the clip_l / clip_g / t5 of SD3 embedding files)
_FLOW_ENCODERS = {"text_encoder": ("tokenizer", "clip_l"), "text_encoder_2": ("tokenizer_2", "clip_g"),
                  "text_encoder_3": ("tokenizer_3", "t5")}
# The loss of diffusers' SD3 training scripts (examples/dreambooth/train_dreambooth_lora_sd3.py, its defaults):
# sigmas drawn logit-normal(0, 1) over the scheduler's own (shifted) training sigmas, x_sigma = (1 - sigma) x0 +
# sigma noise, target noise - x0, weighting of the scheme (uniform for logit_normal). Bump on any change: it is part
# of the cache key.
FLOW_RECIPE = "sd3-flow-matching-1"
FLOW_WEIGHTING = "logit_normal"


def flow_text_encoders(pipe) -> dict[str, tuple[Any, Any]]:
    """`{name: (tokenizer, text_encoder)}` of an SD3 pipeline: CLIP-L, CLIP-G and, when it has one, T5."""
    out = {}
    for te_name, (tok_name, _) in _FLOW_ENCODERS.items():
        tok, te = getattr(pipe, tok_name, None), getattr(pipe, te_name, None)
        if tok is not None and te is not None:
            out[te_name] = (tok, te)
    return out


def flow_token_text(token: str, vectors: int) -> str:
    """What a prompt says for a `vectors`-vector token on an SD3 pipeline (which has no `maybe_convert_prompt`)."""
    return " ".join(vector_tokens(token, vectors))


def _put_rows(ids: torch.Tensor, rows: torch.Tensor, module, args, out):
    """Forward hook of an embedding: its output at the positions of `ids` is `rows` (so only they get gradients)."""
    for token_id, row in zip(ids.tolist(), rows):
        out = torch.where((args[0] == token_id).unsqueeze(-1), row.to(out.dtype), out)
    return out


def learn_flow_token(pipe, images: list[Image.Image], token: str, initializer: str, steps: int = 1000,
                     lr: float = 2e-3, batch_size: int = 4, weight_decay: float = 1e-2, vectors: int = 1,
                     resolution: int | None = None, seed: int = 0,
                     progress: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Textual inversion on a rectified-flow pipeline (SD3 family) through its own flow-matching loss: the token
    (`vectors` rows, named as `vector_tokens`) is added to every text encoder the pipeline has (CLIP-L, CLIP-G and
    T5 when present), each row started from `initial_row(initializer)`, and only those rows train, against the
    transformer's velocity error on the class's VAE latents (`FLOW_RECIPE`). The rows train as float32 leaves put
    into the embeddings' outputs by a hook, so no other row of any embedding matrix is touched (nor gets a
    gradient), in any dtype. DA-Fusion's recipe otherwise, as `learn_token`: AdamW at a constant `lr` with
    decoupled `weight_decay` on the rows, a latent drawn from the VAE posterior per step, a random horizontal
    flip, a random template per image; every draw from one CPU generator seeded with `seed`.
    The pipeline's tokenizers gain the token (its embedding rows are resized, not written: load the returned rows
    with the flow's `add_tokens`). Returns `{text_encoder_name: rows}` (`(dim,)`, or `(vectors, dim)`) and the
    losses: per step, and on a fixed held-out draw before and after."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    transformer, vae = pipe.transformer, pipe.vae
    device, dtype = transformer.device, transformer.dtype
    names = vector_tokens(token, vectors)
    encoders = flow_text_encoders(pipe)
    rows, hooks = {}, []
    for m in (transformer, vae, *(te for _, te in encoders.values())):
        m.requires_grad_(False)
    try:
        for name, (tok, te) in encoders.items():
            init = initial_row(tok, te, initializer)
            tok.add_tokens([n for n in names if n not in tok.get_vocab()])  # SD3's CLIP tokenizers may be one object
            ids = torch.tensor(tok.convert_tokens_to_ids(names))
            if int(ids.max()) >= te.get_input_embeddings().num_embeddings:  # T5 has spare rows past its vocabulary
                with dropping("transformers.modeling_utils", "The new embeddings will be initialized"):
                    te.resize_token_embeddings(len(tok), mean_resizing=False)
            rows[name] = init.float().repeat(len(names), 1).requires_grad_(True)
            weight = te.get_input_embeddings().weight  # T5's encoder looks up through its own module, weight tied
            hooks += [m.register_forward_hook(functools.partial(_put_rows, ids.to(device), rows[name]))
                      for m in te.modules() if isinstance(m, torch.nn.Embedding) and m.weight is weight]
        phrase = flow_token_text(token, vectors)
        opt = torch.optim.AdamW(list(rows.values()), lr=lr, weight_decay=weight_decay)
        sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # fresh: the training sigmas
        n_train = sched.config.num_train_timesteps
        res = resolution or transformer.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
        latents_all, latents_std = _posterior(pipe, images, res, device, dtype)

        def flow_loss(x0, noise, u, prompts):
            idx = (u * n_train).long().clamp(max=n_train - 1)  # u = 1.0 after rounding would run past the end
            timesteps = sched.timesteps[idx].to(device)
            sigmas = sched.sigmas[idx].to(device, dtype).view(-1, *[1] * (x0.dim() - 1))
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=prompts, device=device,
                                                      do_classifier_free_guidance=False)
            pred = transformer(hidden_states=(1 - sigmas) * x0 + sigmas * noise, timestep=timesteps,
                               encoder_hidden_states=embeds, pooled_projections=pooled).sample
            weighting = compute_loss_weighting_for_sd3(FLOW_WEIGHTING, sigmas).float()
            return (weighting * (pred.float() - (noise - x0).float()) ** 2).reshape(len(x0), -1).mean(1).mean()

        def draw_u(n, gen):
            return compute_density_for_timestep_sampling(FLOW_WEIGHTING, n, logit_mean=0.0, logit_std=1.0,
                                                         generator=gen)

        def step():
            opt.step()
            opt.zero_grad(set_to_none=True)

        losses = _fit(flow_loss, step, latents_all, latents_std, phrase, draw_u, steps, batch_size, seed,
                      f"textual inversion {token} (flow matching)", progress)
    finally:
        for h in hooks:
            h.remove()
    learned = {name: r.detach().clone().squeeze(0) for name, r in rows.items()}
    return learned, losses


def _learn_flow_to_file(pipe, images: list[Image.Image], token: str, label: str, options: dict[str, Any],
                        progress: bool | None, path: Path) -> None:
    from safetensors.torch import save_file

    options = dict(options)
    initializer = initializer_text(options.pop("init"), label)
    vectors, losses = learn_flow_token(pipe, images, token, initializer, progress=progress, **options)
    save_file({_FLOW_ENCODERS[name][1]: v.cpu().contiguous() for name, v in vectors.items()}, str(path), metadata={
        "token": token, "label": label, "initializer": initializer, "vectors": str(options.get("vectors", 1)),
        "recipe": FLOW_RECIPE, "eval_loss_before": f"{losses['eval_before']:.5f}",
        "eval_loss_after": f"{losses['eval_after']:.5f}"})


def learned_flow_tokens(pipe, model_id: str, revision: str | None, images_by_class: dict[str, list[Image.Image]],
                        options: dict[str, Any], progress: bool | None = None,
                        ) -> tuple[dict[str, str], dict[str, dict[str, torch.Tensor]]]:
    """`{label: token}` and `{token: {text_encoder_name: rows}}` for every class of an SD3 pipeline, learned with
    `learn_flow_token` or taken from the cache (`textual_inversion`, the same cache as `learned_tokens`; keyed by
    the class's images, the options, the model and its revision, the encoders present and `FLOW_RECIPE`). The rows
    are not written into `pipe`: the flow's `add_tokens` does that, for a fresh token and a cached one alike."""
    from safetensors.torch import load_file

    encoders = sorted(flow_text_encoders(pipe))
    tokens, vectors = {}, {}
    for i, label in enumerate(sorted(images_by_class)):
        token = class_token(i)
        path = _token_file(images_by_class[label], label, token, (model_id, revision, encoders), options,
                           FLOW_RECIPE, functools.partial(_learn_flow_to_file, pipe, images_by_class[label], token,
                                                          label, options, progress))
        state = load_file(str(path))
        vectors[token] = {name: state[_FLOW_ENCODERS[name][1]] for name in encoders}
        tokens[label] = token
    return tokens, vectors


def class_images(source) -> dict[str, list[Image.Image]]:
    """Each class's images in `source`, read with the run's input checks; unreadable ones skipped (the engine
    lists them as rejected)."""
    from ..data.images import Rejected

    by_class: dict[str, list[Image.Image]] = {}
    for rec in source.records():
        try:
            ex = source.load(rec)
        except Rejected:
            continue
        by_class.setdefault(ex.label, []).append(ex.image)
    return by_class
