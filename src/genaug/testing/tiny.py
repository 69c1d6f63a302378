"""Tiny, randomly initialised versions of the pretrained components, built fully offline and
deterministically (same bytes in every process), saved with `save_pretrained` so tests and smoke runs
load them through the same code path as real hub models.

Tokenizers are built from vocabularies written in code: `tokenizers`' trainers give different ids in
different processes, which would make two "identical" tiny models disagree.
"""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS_WORDS = sorted(set(
    "a an the of on in with and is are photo picture drawing painting image cat dog bird car truck boat ship "
    "airplane horse deer frog red blue green small big sitting standing field sky tree street lake forest "
    "there shirt trouser pullover dress coat sandal sneaker bag ankle boot zero one two three four five six "
    "seven eight nine".split()))


def bpe_merges(symbol_seqs: list[list[str]]) -> list[tuple[str, str]]:
    """Classic BPE with a deterministic tie-break: merge the most frequent pair until every word is one symbol."""
    seqs = [list(s) for s in symbol_seqs]
    merges = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i:i + 2] = [s[i] + s[i + 1]]
                i += 1


def make_clip_tokenizer(words=CORPUS_WORDS, model_max_length: int = 77):
    """A CLIP BPE tokenizer: specials, the byte-level alphabet, and one token per corpus word."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges = bpe_merges([list(w[:-1]) + [w[-1] + "</w>"] for w in words])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def make_clip(image_size: int = 64, seed: int = 0):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = make_clip_tokenizer()
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=16),
        projection_dim=16)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                            crop_size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    return CLIPModel(cfg).eval(), proc


def make_sd3(seed: int = 0):
    """A Stable Diffusion 3 pipeline (rectified flow, FlowMatchEulerDiscreteScheduler) at 32 px, without
    the optional T5 encoder (diffusers then feeds zeros in its place)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = make_clip_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
    text = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok), projection_dim=32,
                          max_position_embeddings=77)
    te1, te2 = CLIPTextModelWithProjection(text).eval(), CLIPTextModelWithProjection(text).eval()
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae.eval(), text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
                                    tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    return pipe, None


def _sd_unet(in_channels: int = 4, cross_attention_dim: int = 32, xl: bool = False):
    from diffusers import UNet2DConditionModel

    extra = dict(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=6 * 8 + 32) if xl else dict(attention_head_dim=8)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                in_channels=in_channels, out_channels=4, norm_num_groups=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_attention_dim, **extra).eval()


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=64).eval()


def _clip_text(vocab_size: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                         projection_dim=32, num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5,
                         vocab_size=vocab_size, max_position_embeddings=77)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_safety_checker(flag_all: bool, image_size: int = 32):
    """diffusers' SD safety checker on a tiny CLIP vision tower, with its feature extractor. Its concept
    thresholds decide: `flag_all` flags every image (threshold -2 < any cosine), else none (threshold 2)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                      num_attention_heads=4),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=image_size, patch_size=16),
                     projection_dim=16)
    checker = StableDiffusionSafetyChecker(cfg).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return checker, extractor


def make_sd15(seed: int = 0, inpaint: bool = False, safety_checker: str | None = None):
    """A Stable Diffusion 1.x pipeline (UNet, VAE, CLIP text encoder, DDIM) at 64 px, no safety checker;
    `inpaint=True`: an inpainting checkpoint (9-channel UNet: latents, mask, masked-image latents);
    `safety_checker="flag_all"` / `"flag_none"`: with a tiny safety checker, as hub SD 1.x checkpoints have."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    tok = make_clip_tokenizer()
    torch.manual_seed(seed)
    unet, vae, text = _sd_unet(9 if inpaint else 4), _sd_vae(), _clip_text(len(tok))
    checker = extractor = None
    if safety_checker is not None:
        checker, extractor = make_safety_checker(safety_checker == "flag_all")
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=_sd_scheduler(),
               safety_checker=checker, feature_extractor=extractor, image_encoder=None,
               requires_safety_checker=checker is not None), None


def make_sd15_inpaint(seed: int = 0):
    return make_sd15(seed, inpaint=True)


def make_sdxl(seed: int = 0):
    """An SDXL pipeline at 64 px: two CLIP text encoders (the second with projection, giving the pooled
    embedding), a text-time conditioned UNet, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tok = make_clip_tokenizer()
    torch.manual_seed(seed)
    unet, vae = _sd_unet(cross_attention_dim=64, xl=True), _sd_vae()
    te1, te2 = _clip_text(len(tok)), _clip_text(len(tok), projection=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True), None


def make_bert_tokenizer(model_max_length: int = 40):
    """A WordPiece vocabulary written in code: specials, punctuation, the corpus words, letters and digits."""
    from transformers import BertTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab: dict[str, int] = {}
    for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!'-:;()") + CORPUS_WORDS + chars + \
            ["##" + ch for ch in chars]:
        vocab.setdefault(t, len(vocab))
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def make_blip(image_size: int = 64, seed: int = 0):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = make_bert_tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token
    torch.manual_seed(seed)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id, sep_token_id=tok.sep_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=16),
        projection_dim=32, image_text_hidden_size=32)
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    return BlipForConditionalGeneration(cfg).eval(), proc


def make_sam(image_size: int = 64, seed: int = 0):
    """A tiny Segment Anything (box / point prompts -> masks) with its processor."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                 iou_head_hidden_dim=32))
    proc = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": image_size // 4},
        mask_pad_size={"height": image_size // 4, "width": image_size // 4}))
    return SamModel(cfg).eval(), proc


def make_grounding_dino(image_size: int = 64, seed: int = 0):
    """A tiny GroundingDINO (text phrases -> boxes) with its processor (Swin patch 2: 64 px keeps 4 levels)."""
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    tok = make_bert_tokenizer(model_max_length=256)
    torch.manual_seed(seed)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=image_size, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4, out_features=["stage2", "stage3", "stage4"],
                                   out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=256),
        d_model=32, num_queries=10, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, max_text_len=256)
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": image_size}), tokenizer=tok)
    return GroundingDinoForObjectDetection(cfg).eval(), proc


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def make_llama_tokenizer(words=CORPUS_WORDS):
    """A SentencePiece-style BPE with byte fallback (any UTF-8 text round-trips) and a chat template."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in ["\u2581", "\n"] + [chr(i) for i in range(33, 127)]:
        vocab.setdefault(ch, len(vocab))
    merges = bpe_merges([["\u2581"] + list(w) for w in words])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_llm(seed: int = 0):
    """A tiny Llama chat model (causal LM + chat template)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_llama_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


BUILDERS = {"clip": make_clip, "blip": make_blip, "sd15": make_sd15, "sd15-inpaint": make_sd15_inpaint,
            "sdxl": make_sdxl, "sd3": make_sd3, "llm": make_llm, "sam": make_sam, "grounding-dino": make_grounding_dino}


def write_tiny_models(out: str | Path, which: list[str] | None = None) -> dict[str, Path]:
    """Save every tiny component to `out/<component>` (model and processor side by side)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    out = Path(out)
    written = {}
    for name in which or list(BUILDERS):
        model, processor = BUILDERS[name]()
        d = out / name
        model.save_pretrained(d)
        if processor is not None:  # a pipeline saves its own tokenizers and processors
            processor.save_pretrained(d)
        written[name] = d
    return written
