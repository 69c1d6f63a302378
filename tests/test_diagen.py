"""DIAGen: embedding noise, LLM-written class prompts (local model, HTTP endpoint, template fallback),
classifier-confidence weights; and the LLM component's sanitising."""
import json
from pathlib import Path

import pytest

from conftest import ChatServer, cli, make_imagefolder, png_bytes, read_rows


@pytest.fixture
def src(tmp_path, digit_images):
    return make_imagefolder(tmp_path / "src", digit_images, per_class=4, classes=("0", "1"))


def _args(tiny_models, *extra):
    return ["--method", "diagen", "-n", 2, f"model={tiny_models['sd15']}", "steps=4", "resolution=32", "ti_steps=3",
            "weight_epochs=2", "prompts_per_class=4", *extra]


def test_embedding_noise_has_the_configured_std_and_is_seeded():
    import torch

    from genaug.methods.diagen import add_embedding_noise

    base = {"text_encoder": torch.full((200_000,), 0.3), "text_encoder_2": torch.zeros(200_000)}
    for std in (0.005, 0.01, 0.025):
        noisy = add_embedding_noise(base, std, seed=7)
        for name, v in noisy.items():
            d = v - base[name]
            assert d.std().item() == pytest.approx(std, rel=0.01) and abs(d.mean().item()) < std / 100
        assert not torch.equal(noisy["text_encoder"] - 0.3, noisy["text_encoder_2"])  # independent per encoder
    assert all(torch.equal(a, b) for a, b in zip(add_embedding_noise(base, 0.01, 3).values(),
                                                 add_embedding_noise(base, 0.01, 3).values()))
    assert torch.equal(add_embedding_noise(base, 0.0, 3)["text_encoder"], base["text_encoder"])


def test_sanitise_bounds_and_cleans_completions():
    from genaug.components.llm import sanitise

    text = ('1. "a photo of a red cat in the rain"\n2) a photo of a cat\x07 at night\n\n- a photo of a cat\x1b[31m\n'
            "* a photo of a cat at night\n" + "word " * 100 + "\n\ufffd\ufffd\n   \n3. a photo of a red cat in the rain")
    lines = sanitise(text, max_chars=60)
    assert lines[:3] == ["a photo of a red cat in the rain", "a photo of a cat at night", "a photo of a cat [31m"]
    assert all(len(line) <= 60 and line == line.strip() and line.isprintable() for line in lines)
    assert len(lines) == len(set(lines)) == 4  # duplicates and blank / replacement-only lines dropped
    markdown = ("## Prompts\nHere are 3 prompts:\n**1. A dog on a beach**\n1.A dog in the snow\n- *a dog* in rain\n"
                "2) __a dog__ at night\n2.5D render of a dog\na photo of <genaug_dog_1> on grass")
    assert sanitise(markdown) == ["A dog on a beach", "A dog in the snow", "a dog in rain", "a dog at night",
                                  "2.5D render of a dog", "a photo of <genaug_dog_1> on grass"]


def test_a_malformed_endpoint_reply_is_not_cached(chat_server, caplog):
    """A 200 reply that is no chat completion (a proxy's error page) falls back to templates for this request
    only: the next run asks again instead of reading an empty completion from the cache for ever."""
    from conftest import ChatServer
    from genaug.components.llm import LLM

    ChatServer.raw = b"<html>502 upstream</html>"
    assert LLM(chat_server).complete("write prompts", seed=3) == []
    assert "not an OpenAI chat completion" in caplog.text and "502 upstream" in caplog.text
    ChatServer.raw, ChatServer.answer = None, "a dog on grass"
    assert LLM(chat_server).complete("write prompts", seed=3) == ["a dog on grass"]
    assert len(ChatServer.requests) == 2


def test_diagen_end_to_end_with_a_local_llm(src, tmp_path, tiny_models, monkeypatch):
    import genaug.components.llm as llm
    import genaug.components.textual_inversion as ti

    out = tmp_path / "a"
    res = cli("augment", src, "--out", out, *_args(tiny_models, f"llm={tiny_models['llm']}"))
    rows = read_rows(out)
    assert len(rows) == 16 and "weighting: diagen" in res.output
    for r in rows:
        p = r["params"]
        assert p["token"] in p["prompt"] and r["label"] not in p["prompt"].replace(p["token"], "")
        assert p["noise_std"] in (0.0, 0.005, 0.01, 0.025) and p["noise_slot"] in range(4)
        assert p["strength"] == 0.7 and p["guidance_scale"] == 15 and p["prompt_source"] in ("llm", "template")
        assert 0 <= r["scores"]["confidence"] <= 1 and 0 <= r["weight"] <= 2
    assert rows[0]["models"]["llm"]["id"] == str(tiny_models["llm"])
    w = json.loads((out / "weighting.json").read_text())
    assert w["n_synthetic"] == 16 and w["holdout_nll_after"] <= w["holdout_nll_before"] + 1e-6
    assert not (out / ".weighting").exists() and (Path(w["work_dir"]) / "classifier" / "best.safetensors").is_file()
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r["weight"])
    assert all(sum(ws) / len(ws) == pytest.approx(1.0, abs=1e-5) or sum(ws) == 0 for ws in by_source.values())

    # Same seed elsewhere: identical bytes; no second textual inversion, no second LLM call.
    monkeypatch.setattr(ti, "learn_token", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    monkeypatch.setattr(llm.LLM, "_local", lambda *a, **k: (_ for _ in ()).throw(AssertionError("asked again")))
    cli("augment", src, "--out", tmp_path / "b", *_args(tiny_models, f"llm={tiny_models['llm']}"))
    assert png_bytes(out) == png_bytes(tmp_path / "b")
    assert [r["params"] for r in rows] == [r["params"] for r in read_rows(tmp_path / "b")]
    # A rerun of the finished run prepares nothing, writes nothing and does not weigh again.
    from genaug.methods.diagen import DIAGen

    monkeypatch.setattr(DIAGen, "prepare", lambda *a: (_ for _ in ()).throw(AssertionError("prepared again")))
    res = cli("augment", src, "--out", out, *_args(tiny_models, f"llm={tiny_models['llm']}"))
    assert "wrote 0 image(s)" in res.output and "unchanged" in res.output


def test_diagen_prompts_from_an_openai_compatible_endpoint(src, tmp_path, tiny_models, chat_server, monkeypatch):
    from genaug.methods.diagen import DIAGen

    monkeypatch.setenv("MY_KEY", "sk-test")
    ChatServer.answer = ("Here are your prompts:\n1. a photo of a large 0 on a beach at night\n"
                          "2. A photo of a shiny 0 in the rain\n3. a photo of a 1 and a 0\n4. a photo of a dog\n"
                          "5. \"a photo of a 0 in a kitchen\"\n")
    out = tmp_path / "o"
    cli("augment", src, "--out", out, *_args(tiny_models, f"llm={chat_server}", "llm_model=my-model",
                                             "llm_api_key_env=MY_KEY", "weighting=none"))
    path, body, auth = ChatServer.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "my-model" and auth == "Bearer sk-test"
    assert "exactly once" in body["messages"][0]["content"] and len(ChatServer.requests) == 2  # one per class
    rows = read_rows(out)
    llm_prompts = {r["params"]["prompt"].replace(r["params"]["token"], "<t>") for r in rows
                   if r["params"]["prompt_source"] == "llm" and r["label"] == "0"}
    assert llm_prompts and llm_prompts <= {"a photo of a large <t> on a beach at night",
                                           "A photo of a shiny <t> in the rain", "a photo of a <t> in a kitchen"}
    assert not (out / "weighting.json").exists()
    # Lines that do not name the class exactly once, or that name another class, are dropped; the class is
    # filled from the templates.
    method = DIAGen(DIAGen.Config(model=str(tiny_models["sd15"]), resolution=32, llm=chat_server,
                                  prompts_per_class=4))
    assert [p for p, s in method.write_prompts("1") if s == "llm"] == ["a photo of a {token} and a 0"]
    prompts = method.write_prompts("1", ("0", "1"))
    assert [s for _, s in prompts] == ["template"] * 4
    # a class whose name holds another's: "dog" inside "hot dog" is this class, not the other one
    ChatServer.answer = "a photo of a hot dog on a plate\na photo of a dog and a hot dog\n"
    method = DIAGen(DIAGen.Config(model=str(tiny_models["sd15"]), resolution=32, llm=chat_server,
                                  prompts_per_class=1))
    assert method.write_prompts("hot dog", ("dog", "hot dog")) == [("a photo of a {token} on a plate", "llm")]
    assert method.write_prompts("dog", ("dog", "hot dog"))[0][1] == "template"  # both lines name a hot dog
    ChatServer.answer = "\x00\x01 garbage without any class"
    assert all(s == "template" for _, s in DIAGen(DIAGen.Config(
        model=str(tiny_models["sd15"]), resolution=32, llm=chat_server, prompt_seed=1)).write_prompts("0"))


def test_unreachable_endpoint_is_a_clear_error(src, tmp_path, tiny_models):
    res = cli("augment", src, "--out", tmp_path / "o", *_args(tiny_models, "llm=http://127.0.0.1:9/v1"), expect=2)
    assert "cannot be reached" in res.output and "Traceback" not in res.output


def test_template_prompts_are_deterministic_and_use_the_slots(tiny_models):
    from genaug.methods.diagen import DIAGen

    cfg = dict(model=str(tiny_models["sd15"]), resolution=32, prompts_per_class=20)
    a = DIAGen(DIAGen.Config(**cfg)).write_prompts("cat")
    assert a == DIAGen(DIAGen.Config(**cfg)).write_prompts("cat") and len(a) == 20
    assert all(p.startswith("a photo of a ") and p.count("{token}") == 1 and s == "template" for p, s in a)
    assert len({p for p, _ in a}) > 10  # the slots vary
    bare = DIAGen(DIAGen.Config(**cfg, slots=())).write_prompts("cat")
    assert {p for p, _ in bare} == {"a photo of a {token}"}


def test_weighting_that_cannot_run_is_reported_not_fatal(tmp_path, digit_images, tiny_models):
    src = make_imagefolder(tmp_path / "one", digit_images, per_class=1, classes=("0", "1"))
    res = cli("augment", src, "--out", tmp_path / "o", *_args(tiny_models), "-n", 1)
    assert "weighting: skipped" in res.output and "the classifier needs 2" in res.output
    assert [r["weight"] for r in read_rows(tmp_path / "o")] == [1.0, 1.0]


def test_diagen_by_default_asks_the_environment_endpoint_else_warns(tiny_models, chat_server, monkeypatch):
    from genaug.methods.diagen import DIAGen

    cfg = dict(model=str(tiny_models["sd15"]), resolution=32, prompts_per_class=2)
    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    method = DIAGen(DIAGen.Config(**cfg))  # llm=auto, the hub offline: templates, said so
    assert method.llm.kind == "template" and len(method.warnings) == 1 and "no language model" in method.warnings[0]
    assert [s for _, s in method.write_prompts("0")] == ["template"] * 2
    assert DIAGen(DIAGen.Config(**cfg, llm="template")).warnings == []
    monkeypatch.setenv("GENAUG_LLM_URL", chat_server)
    ChatServer.answer = "a photo of a wet 0 in a forest\na photo of a 0 at sunset"
    method = DIAGen(DIAGen.Config(**cfg))
    assert method.warnings == [] and method.models()["llm"]["id"].startswith(chat_server)
    assert method.write_prompts("0") == [("a photo of a wet {token} in a forest", "llm"),
                                         ("a photo of a {token} at sunset", "llm")]


def test_template_fallback_warning_reaches_the_run_summary_the_user_sees(tmp_path, digit_images, tiny_models,
                                                                         monkeypatch):
    """llm=auto with no endpoint and no loadable model: the user is told, in the command's output and in the
    --json summary, not only on the method object; and every image says its prompt came from a template."""
    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0", "1"))
    args = _args(tiny_models, "weighting=none", "ti_steps=1", "-n", 1)
    res = cli("augment", src, "--out", tmp_path / "o", *args, "--json", tmp_path / "summary.json")
    assert "1 warning(s): no language model" in res.output and "prompts come from templates" in res.output
    warnings = json.loads((tmp_path / "summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "Qwen/Qwen2.5-1.5B-Instruct" in warnings[0] and "llm=template" in warnings[0]
    rows = read_rows(tmp_path / "o")
    assert len(rows) == 2 and {r["params"]["prompt_source"] for r in rows} == {"template"}
    assert "llm" not in rows[0]["models"]
    # templates chosen on purpose: nothing to warn of
    res = cli("augment", src, "--out", tmp_path / "t", *args, "llm=template", "--json", tmp_path / "t.json")
    assert "warning(s)" not in res.output and json.loads((tmp_path / "t.json").read_text())["warnings"] == []


def test_fixed_noise_vectors_plus_the_clean_one_are_diagens_default(tmp_path, digit_images, tiny_models):
    """DIAGen's code (aggregate_embeddings.py) draws one noisy vector per σ per class once and keeps the clean
    one beside them; images are given one of these K + 1 vectors, never fresh noise."""
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    base = _args(tiny_models, "weighting=none", "prompts_per_class=1", "slots=[]", "-n", 4)
    cli("augment", src, "--out", tmp_path / "noisy", *base)
    rows = read_rows(tmp_path / "noisy")
    stds = (0.0, 0.005, 0.01, 0.025)
    vectors = {}  # (label, slot) -> (std, seed)
    for r in rows:
        p = r["params"]
        assert p["noise_std"] == stds[p["noise_slot"]]
        assert ("noise_seed" in p) == (p["noise_slot"] > 0)  # the clean vector has no noise and records none
        vectors.setdefault((r["label"], p["noise_slot"]), set()).add(p.get("noise_seed"))
    assert all(len(seeds) == 1 for seeds in vectors.values())  # one fixed vector per class and slot
    assert {slot for _, slot in vectors} == {0, 1, 2, 3}  # the clean one used too
    seeds_of = {label: {next(iter(v)) for (lab, slot), v in vectors.items() if lab == label and slot} for label in "01"}
    assert not seeds_of["0"] & seeds_of["1"]  # each class has its own noise
    # an image's variants cycle through the K + 1 slots (DIAGen's rotation): 4 variants, 4 slots, each once
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], {})[r["variant"]] = r["params"]["noise_slot"]
    for slots in by_source.values():
        assert sorted(slots.values()) == [0, 1, 2, 3]
        assert all(slots[k] == (slots[0] + k) % 4 for k in slots)

    # the clean slot is the learned token itself: those images are the very images of a run without noise
    cli("augment", src, "--out", tmp_path / "clean", *base, "noise_stds=[]")
    clean = {r["file_name"]: r["params"] for r in read_rows(tmp_path / "clean")}
    assert all("noise_std" not in p for p in clean.values())
    a, b = png_bytes(tmp_path / "noisy"), png_bytes(tmp_path / "clean")
    for r in rows:
        assert (a[r["file_name"]] == b[r["file_name"]]) == (r["params"]["noise_slot"] == 0), r["params"]

    # per-image noise stays available: every image its own seed, σ drawn from noise_stds
    cli("augment", src, "--out", tmp_path / "per", *base, "noise_mode=per_image")
    per = [r["params"] for r in read_rows(tmp_path / "per")]
    assert all("noise_slot" not in p and p["noise_std"] in stds[1:] for p in per)
    assert len({p["noise_seed"] for p in per}) == len(per)


def test_noise_slots_are_seeded_and_bad_noise_options_are_clear(tiny_models):
    from genaug.core.config import ConfigError
    from genaug.methods.diagen import DIAGen, noise_slots

    s = noise_slots((0.005, 0.01, 0.025), True, 0, "cat")
    assert [std for std, _ in s] == [0.0, 0.005, 0.01, 0.025] and s[0][1] is None
    assert s == noise_slots((0.005, 0.01, 0.025), True, 0, "cat") != noise_slots((0.005, 0.01, 0.025), True, 1, "cat")
    assert noise_slots((0.005, 0.01), False, 0, "cat") == s[1:3]  # no clean slot; the same noisy vectors
    with pytest.raises(ConfigError, match="noise_clean"):
        DIAGen(DIAGen.Config(model=str(tiny_models["sd15"]), resolution=32, noise_stds=(), noise_clean=False))
