"""Classifier-confidence weights (DIAGen's weighting) for any synthetic folder."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import cli, make_imagefolder, read_rows
from genaug.scoring.probe import fit_temperature
from genaug.scoring.weighting import normalise_per_source, rule_weights

FAST = ["model=genaug_small_cnn", "pretrained=null", "mode=scratch", "image_size=16", "epochs=6", "lr=0.003",
        "batch_size=16"]


def test_rules_and_per_source_normalisation():
    p = np.array([0.9, 0.2, 0.5, 0.0, 0.0])
    assert rule_weights(p, "diagen").tolist() == [1.0, 0.4, 1.0, 0.0, 0.0]
    assert rule_weights(p, "confidence").tolist() == p.tolist()
    w = normalise_per_source(rule_weights(p, "diagen"), ["a", "a", "b", "c", "c"])
    assert w[:2] == pytest.approx([1 / 0.7, 0.4 / 0.7]) and w[2] == 1.0 and w[3:].tolist() == [0.0, 0.0]


def test_temperature_scaling_lowers_held_out_nll():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(5, (400,), generator=g)
    logits = torch.randn(400, 5, generator=g)
    logits[torch.arange(400), targets] += 1.0  # right more often than not...
    t, before, after = fit_temperature(logits * 6, targets)  # ...but far too confident
    assert t > 1 and after < before
    t2, b2, a2 = fit_temperature(logits / 6, targets)  # under-confident: T < 1
    assert t2 < 1 and a2 < b2


def test_a_calibration_set_classified_perfectly_keeps_the_temperature_at_its_bound():
    # the NLL of a perfectly separated set falls for ever as T -> 0: unbounded, DIAGen's weights became a filter
    from genaug.scoring.probe import T_MIN, temperature_note

    targets = torch.arange(10)
    logits = torch.zeros(10, 10)
    logits[targets, targets] = 1.2  # every one right, each at p ~ 0.25
    t, before, after = fit_temperature(logits, targets)
    assert t == pytest.approx(T_MIN) and after < before and "bound 0.1" in temperature_note(t)
    assert temperature_note(1.7) is None


def test_a_temperature_just_inside_the_bound_is_found_not_the_bound():
    """Logits whose best temperature is 0.155: a clamped LBFGS stopped at the bound 0.1 (zero gradient there)."""
    import numpy as np
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    targets = torch.randint(4, (60,), generator=g)
    logits = 0.3 * torch.randn(60, 4, generator=g)
    logits[torch.arange(60), targets] += 0.6
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
    best = grid[np.argmin([float(F.cross_entropy(logits.double() / t, targets)) for t in grid])]
    t, _, after = fit_temperature(logits, targets)
    assert t == pytest.approx(best, rel=2e-3)
    assert after <= min(float(F.cross_entropy(logits.double() / x, targets)) for x in grid) + 1e-9


def test_weight_command_rewrites_metadata_and_manifest(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=20)
    syn = tmp_path / "syn"
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 3)
    res = cli("weight", syn, "--real", real, *FAST, "--json", tmp_path / "w.json")
    assert "held-out NLL" in res.output
    summary = json.loads((tmp_path / "w.json").read_text())
    assert summary["holdout_nll_after"] <= summary["holdout_nll_before"] and summary["temperature"] > 0
    # the classifier's run is work, kept in the cache's work folder; the output folder holds data and records
    from genaug.data.cache import cache_root

    work = Path(json.loads((syn / "weighting.json").read_text())["work_dir"])
    assert work.parent == cache_root() / "work" / "probe" and (work / "classifier" / "best.safetensors").is_file()
    assert sorted(p.name for p in syn.iterdir()) == [".genaug.lock", "0", "1", "2", "config.yaml", "manifest.parquet",
                                                     "metadata.jsonl", "rejected.jsonl", "weighting.json"]
    rows = read_rows(syn)
    assert len(rows) == 180 and all(0 <= r["scores"]["confidence"] <= 1 for r in rows)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r["weight"])
    assert all(np.mean(w) == pytest.approx(1.0, abs=1e-4) or max(w) == 0 for w in by_source.values())
    manifest = {r["file_name"]: r["weight"] for r in pq.read_table(syn / "manifest.parquet").to_pylist()}
    assert manifest == {r["file_name"]: r["weight"] for r in rows}
    from genaug.train import load_synthetic

    assert load_synthetic(syn, 16).weights.tolist() == pytest.approx([r["weight"] for r in rows if r["weight"] > 0])
    # the folder still resumes: more variants are added next to the weighted ones
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 4)
    assert len(read_rows(syn)) == 240


def test_a_rerun_weighs_again_when_the_filters_removed_other_images(tmp_path, digit_images, monkeypatch):
    # DIAGen's weights average to 1 over a source's kept images: another filtered set means other weights, so
    # the weight stage of a rerun must not call the folder "unchanged"
    from genaug.data import Source
    from genaug.data.metadata import rewrite_rows
    from genaug.scoring import weighting

    real = make_imagefolder(tmp_path / "real", digit_images, per_class=2)
    syn = tmp_path / "syn"
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 3)

    class Probe:  # confidences 0.9 / 0.2 / 0.9 for variants 0 / 1 / 2
        def folder_probs(self, folder):
            rows = read_rows(folder)
            conf = torch.tensor([{0: 0.9, 1: 0.2, 2: 0.9}[r["variant"]] for r in rows])
            return torch.stack([conf, 1 - conf], 1), torch.zeros(len(rows), dtype=torch.long)

        def describe(self):
            from genaug.scoring.probe import resolve_classifier, work_dir

            cfg, _, _ = resolve_classifier("resnet50", None, download=False)
            return {"temperature": 1.0, "backbone_requested": "resnet50",
                    "work_dir": str(work_dir(real, 0.2, {**cfg, "seed": 0}))}

    weighting._weight_rows(syn, Probe(), "diagen", 0.2, None)
    assert not json.loads((syn / "weighting.json").read_text())["one_variant_per_source"]
    one = tmp_path / "one"
    cli("augment", real, "--method", "flipcrop", "--out", one, "-n", 1)
    weighting._weight_rows(one, Probe(), "diagen", 0.2, None)  # one variant a source: every weight 1, and said so
    assert json.loads((one / "weighting.json").read_text())["one_variant_per_source"]
    assert {r["weight"] for r in read_rows(one)} == {1.0}
    calls = []
    monkeypatch.setattr(weighting, "weight_synthetic", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        weighting.ConfigError("stopped here")))
    source = Source(real)
    assert "unchanged" in weighting.weight_stage(syn, source, backbone="resnet50")["weighting"] and not calls
    rows = read_rows(syn)
    rows[2]["filtered"] = "blank"  # a filter run removed one image
    rewrite_rows(syn, rows)
    assert "unchanged" not in weighting.weight_stage(syn, source, backbone="resnet50")["weighting"] and calls
    # the real images rewritten in place (another split of the same name): the probe, and so the weights, differ
    weighting._weight_rows(syn, Probe(), "diagen", 0.2, None)
    calls.clear()
    assert "unchanged" in weighting.weight_stage(syn, source, backbone="resnet50")["weighting"] and not calls
    first = sorted(real.rglob("*.png"))[0]
    first.write_bytes(sorted(real.rglob("*.png"))[-1].read_bytes())
    assert "unchanged" not in weighting.weight_stage(syn, source, backbone="resnet50")["weighting"] and calls


def test_weight_needs_two_real_images_per_class(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=1)
    cli("augment", real, "--method", "flipcrop", "--out", tmp_path / "syn")
    assert "needs 2" in cli("weight", tmp_path / "syn", "--real", real, *FAST, expect=2).output


def _val_folder(root, digit_images, per_class=5):
    """Other digit images than make_imagefolder's first ones: a validation split disjoint from the training one."""
    images, labels, classes = digit_images
    return make_imagefolder(root, (images[600:], labels[600:], classes), per_class=per_class)


def test_weight_calibrates_on_a_validation_split_when_given(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=20)
    val = _val_folder(tmp_path / "val", digit_images)
    syn = tmp_path / "syn"
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 2)
    res = cli("weight", syn, "--real", real, "--val", val, *FAST, "epochs=2")
    assert "validation NLL" in res.output
    w = json.loads((syn / "weighting.json").read_text())
    assert w["calibration"] == "val" and w["val"] == str(val) and w["n_holdout"] == 15 and w["holdout"] is None
    work = Path(w["work_dir"])
    import yaml

    trained = yaml.safe_load((work / "classifier" / "config.yaml").read_text())
    assert trained["n_real"] == 60 and trained["val"] == str(val)  # every real image trains; val selects and calibrates
    assert not (work / "holdout.csv").exists()
    # without --val: the fallback, 20 % of each class held out of training, and recorded as such
    cli("weight", syn, "--real", real, *FAST, "epochs=2")
    w = json.loads((syn / "weighting.json").read_text())
    assert w["calibration"] == "holdout" and w["holdout"] == 0.2 and w["n_holdout"] == 12 and w["val"] is None
    # one real image per class cannot be split, but can be weighted against a validation split
    one = make_imagefolder(tmp_path / "one", digit_images, per_class=1)
    cli("augment", one, "--method", "flipcrop", "--out", tmp_path / "syn1", "-n", 2)
    assert "needs 2" in cli("weight", tmp_path / "syn1", "--real", one, *FAST, "epochs=2", expect=2).output
    cli("weight", tmp_path / "syn1", "--real", one, "--val", val, *FAST, "epochs=2")
    assert json.loads((tmp_path / "syn1" / "weighting.json").read_text())["calibration"] == "val"
    assert "validation split not found" in cli("weight", syn, "--real", real, "--val", tmp_path / "nope", *FAST,
                                               expect=2).output


def test_the_default_classifier_is_diagens_resnet50_probe_where_its_weights_exist(tmp_path, monkeypatch):
    from genaug.scoring.probe import resolve_classifier
    from genaug.train.models import create_classifier

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg, used, fallback = resolve_classifier("resnet50", download=False)  # no weights, no network
    assert used == "mobilenet_v2" and cfg["model"] == "torchvision/mobilenet_v2" and "resnet50" in fallback
    assert (cfg["mode"], cfg["image_size"], cfg["augment"]) == ("linear", 64, "randaugment")  # the CPU-sized fallback
    assert resolve_classifier("resnet50", {"image_size": 256}, download=False)[0]["image_size"] == 256
    # torchvision's weights API keeps ResNet50_Weights.DEFAULT here; a file there is found and loads as a probe
    import torchvision

    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), ckpt)
    cfg, used, fallback = resolve_classifier("resnet50", download=False)
    assert used == "resnet50" and fallback is None and cfg["model"] == "torchvision/resnet50"
    assert cfg["pretrained"] == str(ckpt) and (cfg["image_size"], cfg["augment"]) == (256, "randaugment")
    model, mean, _ = create_classifier(cfg["model"], 3, cfg["pretrained"], linear_probe=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert mean[0] == pytest.approx(0.485)
    # asked for by name, the MobileNetV2 is no fallback; a model of one's own replaces the backbone
    assert resolve_classifier("mobilenet_v2", download=False)[1:] == ("mobilenet_v2", None)
    assert resolve_classifier("resnet50", {"model": "genaug_small_cnn"})[1] == "custom"
    with pytest.raises(Exception, match="unknown classifier backbone"):
        resolve_classifier("vgg")


def test_the_mobilenet_fallback_is_recorded_and_reported(tmp_path, digit_images, monkeypatch):
    from genaug.data.sources import Source
    from genaug.scoring.weighting import weight_stage

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ResNet-50 weights; HF_HUB_OFFLINE: no download
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=5)
    syn = tmp_path / "syn"
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 2)
    report = weight_stage(syn, Source(real), classifier={"image_size": 32, "epochs": 1})
    w = json.loads((syn / "weighting.json").read_text())
    assert w["backbone_requested"] == "resnet50" and w["backbone"] == "mobilenet_v2" and "resnet50" in w["backbone_fallback"]
    assert w["classifier"]["model"] == "torchvision/mobilenet_v2" and w["classifier"]["augment"] == "randaugment"
    assert "resnet50 unavailable" in report["weight_classifier_fallback"]
    assert report["weight_classifier"].startswith("mobilenet_v2") and "held out" in report["calibrated_on"]
    # a validation split asked for later is not "unchanged": the folder is weighed again, on it
    val = _val_folder(tmp_path / "val", digit_images, per_class=2)
    report = weight_stage(syn, Source(real), classifier={"image_size": 32, "epochs": 1}, val=val)
    assert report["calibrated_on"].startswith("validation split")


def test_diagen_names_the_validation_split_and_backbone_in_its_weight_stage():
    from types import SimpleNamespace

    from genaug.core.config import build_config
    from genaug.methods.diagen import DIAGen

    cfg = build_config(DIAGen.Config, {"weight_val": "val.csv", "weight_backbone": "mobilenet_v2",
                                       "weight_image_size": 128}, "diagen")
    [(name, options)] = DIAGen.stages(SimpleNamespace(config=cfg))
    assert name == "weight" and options["val"] == "val.csv" and options["backbone"] == "mobilenet_v2"
    assert options["classifier"]["image_size"] == 128
    default = build_config(DIAGen.Config, {}, "diagen")
    assert (default.weight_val, default.weight_backbone) == (None, "resnet50")
