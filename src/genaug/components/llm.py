"""Prompt writing with a language model: an OpenAI-compatible HTTP endpoint (vLLM, Ollama, llama.cpp
server, …), a local transformers chat model, or no model at all (the caller's deterministic templates).

`llm` is one string:
- `"auto"` (default), what the papers do wherever it can be had, in this order:
  1. the OpenAI-compatible endpoint named by the environment: `GENAUG_LLM_URL` (an API base, `.../v1`),
     `GENAUG_LLM_MODEL` (the model name sent; `llm_model` wins), the key in the variable `api_key_env` names;
  2. the default local chat model (`LOCAL_LLM`, a small instruct model at a pinned revision: about 3 GB in
     bf16 / fp16, 6 GB in fp32 on a CPU) when it can be loaded: `--models DIR` holds `DIR/llm`, or it is in
     the Hugging Face cache, or the hub can be reached;
  3. else — it cannot be had, or loading it failed in any way (no memory, a broken download, a device
     error) — templates, with a warning (`LLM.warning`, naming the error) that methods pass on to the run
     summary; every image records `prompt_source` (`llm` or `template`);
- `"template"`: no model, chosen on purpose (no warning); `complete` returns nothing;
- `"local"`: the default local chat model, an error when it cannot be loaded;
- a hub id or a local directory of a causal LM with a chat template;
- an `http://` or `https://` URL of an OpenAI-compatible API base (`.../v1`); the model name sent is
  `llm_model`, the key (if any) is read from the environment variable named by `api_key_env`.

Completions are sanitised (`sanitise`): split into lines, list markers and quotes stripped, control
characters removed, length-bounded, de-duplicated — so a bad completion can never break a run — and cached
on disk by (backend, model, request, seed), so a rerun asks nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata

import torch
from pydantic import Field

from ..core.config import ConfigError, config_dataclass
from ..core.devices import model_dtype, resolve_device
from ..data.cache import Cache
from ..core.log import get_logger
from .hub import ModelNotAvailable, load_pretrained, local_override, model_key

log = get_logger(__name__)

# Small enough to run beside a diffusion model on one GPU, or at all on a CPU; a stronger model is one
# `llm=<hub id>` or `GENAUG_LLM_URL` away. The revision is the hub commit of Qwen/Qwen2.5-1.5B-Instruct.
LOCAL_LLM = "Qwen/Qwen2.5-1.5B-Instruct"
LOCAL_LLM_REVISION = "989aa7980e4cf806f80c7fef2b1adb7bc71aa306"
URL_ENV, MODEL_ENV = "GENAUG_LLM_URL", "GENAUG_LLM_MODEL"  # llm=auto: an endpoint given by the environment
# a list marker: "- ", "* ", "1. ", "2) ", "a. ", and "1.A dog" (a number's marker glued to the text)
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022>]+\s+|\(?\d{1,3}[.):](?:\s+|(?=[^\W\d_]))|[a-z][.)]\s+)",
                          re.IGNORECASE)
_HEADER = re.compile(r"^\s*#{1,6}\s")  # a Markdown header: a title above the list, not a prompt
_EMPHASIS = re.compile(r"\*\*|__|(?<!\w)\*(?=\S)|(?<=\S)\*(?!\w)")  # Markdown bold / italic markers
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def sanitise(text: str, max_chars: int = 200) -> list[str]:
    """One clean prompt per non-empty line of `text`: no list markers, Markdown emphasis or headers, quotes or
    control characters, inner whitespace collapsed, cut at a word boundary to `max_chars`, duplicates dropped
    (first kept). A Markdown header or a line ending in a colon ("Here are 5 prompts:") is a title, dropped."""
    out: list[str] = []
    for line in (text or "").splitlines():
        if _HEADER.match(line):
            continue
        line = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in line)
        line = _EMPHASIS.sub("", line.replace("\ufffd", " "))
        line = " ".join(_LIST_MARKER.sub("", line.strip()).split()).strip(_QUOTES + " ").strip()
        if line.endswith(":"):
            continue
        if len(line) > max_chars:
            line = line[:max_chars].rsplit(" ", 1)[0].rstrip(",;:- ")
        if line and line not in out:
            out.append(line)
    return out


class LLM:
    """`complete(instruction, seed)` → sanitised lines (possibly none, never raises on a bad completion)."""

    def __init__(self, llm: str = "auto", revision: str | None = None, llm_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.8, top_p: float = 0.95,
                 max_new_tokens: int = 400, max_chars: int = 200, timeout: float = 120.0, device=None,
                 trust_remote_code: bool = False):
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.max_chars, self.timeout = max_chars, timeout
        self.cache = Cache("llm")
        self.warning: str | None = None  # set when llm=auto found no model: templates instead
        self.model_key: str | None = None  # what completions are cached by: the endpoint and model, or model_key
        llm = llm or "template"
        if llm == "auto":
            url = os.environ.get(URL_ENV, "").strip()
            if url:
                if not url.startswith(("http://", "https://")):
                    raise ConfigError(f"{URL_ENV}={url!r} is not an http(s) URL of an OpenAI-compatible API base "
                                      f"(e.g. http://localhost:8000/v1)")
                llm, llm_model = url, llm_model or os.environ.get(MODEL_ENV) or None
            else:
                model = local_override("llm", LOCAL_LLM)
                try:
                    self._load_local(model, revision, device, trust_remote_code)
                    self.kind = "local"
                    return
                except Exception as e:  # noqa: BLE001 - nobody asked for this model: any failure means templates
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    why = (str(e).split(". Fix:")[0] if isinstance(e, ModelNotAvailable)
                           else f"{type(e).__name__}: {first}" if first else type(e).__name__)
                    self.warning = (f"no language model: {URL_ENV} is not set and the default llm {model!r} could "
                                    f"not be loaded ({why}); prompts come from templates (prompt_source=template). "
                                    f"Set {URL_ENV} (and {MODEL_ENV}), pass llm=<hub id | folder | URL>, or "
                                    f"llm=template to choose templates")
                self.tokenizer = self.model = None  # whatever half-loaded is freed (the exception is gone here)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning(self.warning)
                llm = "template"
        self.kind = ("template" if llm == "template" else
                     "http" if llm.startswith(("http://", "https://")) else "local")
        self.id, self.revision = llm, revision
        if self.kind == "http":
            self.url = llm.rstrip("/")
            self.model_name = llm_model or "default"
            self.api_key = os.environ.get(api_key_env) if api_key_env else None
            self.id = self.model_key = f"{self.url} ({self.model_name})"
        elif self.kind == "local":
            self._load_local(local_override("llm", LOCAL_LLM if llm == "local" else llm), revision, device,
                             trust_remote_code)

    def _load_local(self, model: str, revision: str | None, device, trust_remote_code: bool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.revision = revision or (LOCAL_LLM_REVISION if model == LOCAL_LLM else None)
        self.id = model
        self.device = resolve_device(device)
        self.tokenizer = load_pretrained(AutoTokenizer, model, self.revision, role="llm tokenizer", weights=False,
                                         trust_remote_code=trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"llm {model!r} has no chat template: use an instruct / chat model")
        self.model = load_pretrained(AutoModelForCausalLM, model, self.revision, role="llm",
                                     dtype=model_dtype(self.device),
                                     trust_remote_code=trust_remote_code).to(self.device).eval()
        self.model_key = model_key(model, self.revision)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "revision": self.revision or ("local" if self.kind == "local" else self.kind)}

    def complete(self, instruction: str, seed: int = 0) -> list[str]:
        if self.kind == "template":
            return []
        key = hashlib.blake2b(json.dumps([self.kind, self.model_key, instruction, seed, self.temperature,
                                          self.top_p, self.max_new_tokens]).encode(), digest_size=16).hexdigest()
        try:
            text = self.cache.get_or_put(key, lambda: self._http(instruction, seed) if self.kind == "http"
                                         else self._local(instruction, seed))
        except _Malformed as e:  # not cached: the next run asks again
            log.warning(f"llm endpoint {self.url}: {e}; this request falls back to templates")
            return []
        return sanitise(text, self.max_chars)

    @torch.no_grad()
    def _local(self, instruction: str, seed: int) -> str:
        enc = self.tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True).to(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)  # generate() samples from torch's global RNG
            out = self.model.generate(**enc, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def _http(self, instruction: str, seed: int) -> str:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model_name, "messages": [{"role": "user", "content": instruction}],
                "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_new_tokens, "seed": seed}
        try:
            r = requests.post(f"{self.url}/chat/completions", json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise ConfigError(f"llm endpoint {self.url} cannot be reached ({type(e).__name__}: {e}); check the URL "
                              f"and that the server is running, or use llm=template") from None
        if r.status_code != 200:
            raise ConfigError(f"llm endpoint {self.url}/chat/completions answered HTTP {r.status_code}: "
                              f"{r.text.strip()[:200]}")
        try:
            return str(r.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):  # a bad completion: the caller uses its templates
            raise _Malformed(f"a reply that is not an OpenAI chat completion ({r.text.strip()[:120]!r})") from None


class _Malformed(Exception):
    """An endpoint answered 200 with something that is not a chat completion (a proxy's page, a half reply)."""


@config_dataclass
class LLMOptions:
    """Which language model writes a method's prompts (a base of the methods' Configs)."""

    # auto: $GENAUG_LLM_URL, else the default local chat model if it can be loaded, else templates with a warning;
    # template | local | a hub id or folder of a chat model | an OpenAI-compatible URL
    llm: str = "auto"
    llm_model: str | None = None  # the model name sent to an HTTP endpoint (llm=auto: else $GENAUG_LLM_MODEL)
    llm_revision: str | None = None
    llm_api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding an endpoint's API key
    llm_temperature: float = Field(0.8, ge=0)
    llm_trust_remote_code: bool = False  # a local model's own modelling code runs only when this is on

    def language_model(self, device=None) -> LLM:
        return LLM(self.llm, self.llm_revision, self.llm_model, api_key_env=self.llm_api_key_env,
                   temperature=self.llm_temperature, device=device, trust_remote_code=self.llm_trust_remote_code)
