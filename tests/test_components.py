"""Pretrained-model components load a hub id or a local directory through one loader, with clear errors."""
import time

import pytest
import torch
from PIL import Image

from conftest import cli
from genaug.components.clip import Clip
from genaug.components.hub import ModelNotAvailable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cli("tiny-models", out)
    return out


def test_tiny_models_are_written_deterministically(tiny, tmp_path):
    cli("tiny-models", tmp_path)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tiny / "clip" / f).read_bytes() == (tmp_path / "clip" / f).read_bytes(), f


def test_clip_similarities(tiny):
    clip = Clip(str(tiny / "clip"))
    images = [Image.new("RGB", (20, 24), (i * 60, 100, 30)) for i in range(3)]
    sim = clip.image_text_similarity(images, ["a photo of a cat", "a red car", "a dog"])
    assert sim.shape == (3,) and (sim.abs() <= 1 + 1e-5).all()
    same = clip.image_image_similarity(images, images)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
    score = clip.clip_score(torch.randint(0, 255, (3, 3, 24, 24), dtype=torch.uint8), ["a photo of a cat"] * 3)
    assert 0 <= score <= 100


def test_missing_hub_model_offline_is_a_quick_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ModelNotAvailable) as e:
        Clip("openai/clip-vit-large-patch14")
    msg = str(e.value)
    assert "openai/clip-vit-large-patch14" in msg and "HF_HUB_OFFLINE" in msg and "directory" in msg
    assert time.perf_counter() - t < 5


def test_offline_is_read_as_huggingface_hub_reads_it(monkeypatch):
    """HF_HUB_OFFLINE=ON is offline to huggingface_hub, so to genaug too: the error says so, at once."""
    from genaug.components import hub

    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")
    with pytest.raises(ModelNotAvailable, match="HF_HUB_OFFLINE is set"):
        Clip("org/not-cached", revision="0123abc")
    with pytest.raises(ModelNotAvailable) as e:
        Clip("org/not-cached", revision="0123abc")
    assert "hf download org/not-cached --revision 0123abc --local-dir DIR" in str(e.value)


def test_the_hub_is_reached_through_the_environments_proxy(monkeypatch):
    """A machine that reaches the hub only through HTTPS_PROXY / HTTP_PROXY is online: a download goes there."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from huggingface_hub import constants

    from genaug.components import hub

    class Proxy(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
        for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        assert not hub._hub_reachable(timeout=2)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub._hub_reachable(timeout=2)
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")  # plain http
        assert hub._hub_reachable(timeout=2)
    finally:
        server.shutdown()


def test_a_partly_downloaded_cache_entry_is_completed_from_the_hub_or_named(tiny, tmp_path, monkeypatch):
    """The model's weights are in the HF cache but not its processor (fetched alone by another tool): offline,
    the error says the entry is partial; online, genaug asks the hub for the rest instead of failing on the cache."""
    import shutil

    from genaug.components import hub

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--org--clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):  # the model, without tokenizer / processor files
        shutil.copy(tiny / "clip" / f, snap / f)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotAvailable, match="only partly in the local cache and HF_HUB_OFFLINE is set"):
        Clip("org/clip")
    asked = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: asked.append(1) or True)
    with pytest.raises(ModelNotAvailable, match="could not load 'org/clip' from the hub"):
        Clip("org/clip")  # this machine has no hub: the second try fails, naming where it looked
    assert asked


def test_a_missing_folder_that_looks_like_a_hub_id_names_its_neighbours(tmp_path, monkeypatch):
    (tmp_path / "models" / "clip").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailable, match=r"Nor is it a directory: models/ holds clip"):
        Clip("models/clp")


def test_local_model_folders_are_keyed_by_what_they_hold(tiny, tmp_path):
    import shutil

    from transformers import CLIPModel

    from genaug.components.hub import model_key

    copy = shutil.copytree(tiny / "clip", tmp_path / "a" / "clip")  # times kept: the same weights, same key
    assert model_key(str(copy)) == model_key(str(tiny / "clip")) != model_key("org/clip", "abc")
    CLIPModel.from_pretrained(copy).save_pretrained(copy)  # re-saved in place
    assert model_key(str(copy)) != model_key(str(tiny / "clip"))
    assert model_key("org/clip", "abc") != model_key("org/clip", "abd")


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not found"):
        Clip(str(tmp_path / "nope" / "clip"))


def test_pickled_weights_are_refused(tiny, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny / "clip")
    model.save_pretrained(tmp_path / "pickled")  # transformers 5 always writes safetensors: swap in a pickle
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    CLIPProcessor.from_pretrained(tiny / "clip").save_pretrained(tmp_path / "pickled")
    with pytest.raises(ModelNotAvailable, match="clip: could not load"):
        Clip(str(tmp_path / "pickled"))


def test_metrics_with_clip_score_and_clip_features(tiny, tmp_path, digit_images):
    import json

    from conftest import make_imagefolder

    real = make_imagefolder(tmp_path / "real", digit_images, per_class=8)
    out = tmp_path / "aug"
    cli("augment", real, "--method", "flipcrop", "--out", out, "-n", 2)
    cli("metrics", "--real", real, "--synthetic", out, "--clip", tiny / "clip", "--features", "clip",
        "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= m["overall"]["clip_score"] <= 100 and m["features"].startswith("clip:")
    assert all("clip_score" in v for v in m["per_class"].values())
    assert "needs --clip" in cli("metrics", "--real", real, "--synthetic", out, "--features", "clip", expect=2).output


def test_models_dir_redirects_every_component(tmp_path, tiny, digit_images):
    from conftest import make_imagefolder, read_rows

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    for method, extra in [("real_guidance", ["steps=2", "resolution=32"]),
                          ("sgid", ["n_beam=1", "n_nucleus=1", "steps=4", "resolution=32"]),
                          ("semantic_flow", ["mode=sdedit", "steps=4"]),
                          ("diagen", ["-n", "1", "llm=local", "steps=4", "resolution=32", "ti_steps=2",
                                      "weighting=none", "prompts_per_class=2"]),
                          ("da_fusion", ["-n", "1", "model=stabilityai/stable-diffusion-xl-base-1.0", "steps=4",
                                         "ti_steps=2", "strengths=[0.5]"])]:
        out = tmp_path / method
        cli("augment", src, "--method", method, "--out", out, "--models", tiny, *extra)
        rows = read_rows(out)
        assert len(rows) == 4
        ids = [m["id"] for m in rows[0]["models"].values()]
        assert all(str(tiny) in i for i in ids), ids  # default hub ids were redirected to the local folder
        if method == "diagen":
            assert rows[0]["models"]["llm"]["id"] == str(tiny / "llm")
        if method == "da_fusion":
            assert rows[0]["models"]["diffusion"]["id"] == str(tiny / "sdxl")
    assert "not a directory" in cli("augment", src, "--method", "sgid", "--out", tmp_path / "x", "--models",
                                    tmp_path / "none", expect=2).output


def test_models_dir_folder_of_a_diffusion_hub_id():
    from genaug.components.diffusion import SD15_MODEL, SDXL_MODEL, models_dir_name

    assert [models_dir_name(m) for m in (SD15_MODEL, SDXL_MODEL, "someone/my-sdxl-finetune",
                                         "runwayml/stable-diffusion-inpainting", "CompVis/stable-diffusion-v1-4")] \
        == ["sd15", "sdxl", "sdxl", "sd15-inpaint", "sd15"]


def test_llm_default_is_the_environment_endpoint_then_a_local_model_then_templates_with_a_warning(
        tmp_path, tiny, chat_server, monkeypatch):
    from conftest import ChatServer
    from genaug.components.hub import models_dir
    from genaug.components.llm import LLMOptions
    from genaug.core.config import ConfigError

    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    monkeypatch.delenv("GENAUG_LLM_MODEL", raising=False)
    assert LLMOptions().llm == "auto"
    # Nothing configured, the hub offline, no --models: templates, and a warning that says how to fix it.
    llm = LLMOptions().language_model()
    assert llm.kind == "template" and llm.complete("write a caption") == []
    assert "GENAUG_LLM_URL" in llm.warning and "llm=template" in llm.warning and "HF_HUB_OFFLINE" in llm.warning
    # Templates chosen on purpose: no warning.
    assert LLMOptions(llm="template").language_model().warning is None
    # --models DIR holding an llm: the default loads it.
    with models_dir(tiny):
        llm = LLMOptions().language_model()
    assert llm.kind == "local" and llm.id == str(tiny / "llm") and llm.warning is None
    # An endpoint named by the environment comes first, with its model name and the key from api_key_env.
    monkeypatch.setenv("GENAUG_LLM_URL", chat_server)
    monkeypatch.setenv("GENAUG_LLM_MODEL", "served-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    ChatServer.answer = "a misty lake shore at dawn"
    with models_dir(tiny):
        llm = LLMOptions().language_model()
    assert llm.kind == "http" and llm.warning is None and llm.describe()["id"] == f"{chat_server} (served-model)"
    assert llm.complete("write a caption") == ["a misty lake shore at dawn"]
    _, body, auth = ChatServer.requests[-1]
    assert body["model"] == "served-model" and auth == "Bearer sk-env"
    assert LLMOptions(llm_model="mine").language_model().model_name == "mine"  # the option wins over the env
    monkeypatch.setenv("GENAUG_LLM_URL", "localhost:8000")
    with pytest.raises(ConfigError, match="GENAUG_LLM_URL"):
        LLMOptions().language_model()


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 3.00 GiB"),
                                   MemoryError("cannot allocate"), OSError("broken safetensors header")])
def test_llm_auto_falls_back_to_templates_on_any_load_failure_but_an_explicit_llm_raises(tiny, monkeypatch, error):
    """Nobody asked for auto's model: whatever stops it loading (memory, a broken download, the device) gives
    templates and a warning naming the error — never a crashed run. `llm=local` / `llm=<id>` were asked for."""
    import genaug.components.llm as llm_mod
    from genaug.components.hub import models_dir

    real_load = llm_mod.load_pretrained

    def failing(cls, model, revision=None, role="model", **kw):
        if role == "llm":
            raise error
        return real_load(cls, model, revision, role=role, **kw)

    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    monkeypatch.setattr(llm_mod, "load_pretrained", failing)
    with models_dir(tiny):
        llm = llm_mod.LLMOptions().language_model()
        assert llm.kind == "template" and llm.complete("write a caption") == []
        assert type(error).__name__ in llm.warning and str(error).split(".")[0] in llm.warning
        assert str(tiny / "llm") in llm.warning and "llm=template" in llm.warning
        for explicit in ("local", str(tiny / "llm")):
            with pytest.raises(type(error)):
                llm_mod.LLMOptions(llm=explicit).language_model()


def test_llm_auto_looks_for_a_small_pinned_instruct_model(monkeypatch):
    """auto's local model is a 1.5B instruct model (3 GB in half precision, not a 15 GB 7B), at a pinned commit,
    and the warning says which model it looked for."""
    from genaug.components.llm import LLMOptions

    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    warning = LLMOptions().language_model().warning  # offline: not in the cache
    assert "'Qwen/Qwen2.5-1.5B-Instruct'" in warning and "revision 989aa7980e4cf806f80c7fef2b1adb7bc71aa306" in warning
