"""Splits, training with real + synthetic data, evaluation."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import cli, make_imagefolder
from genaug.core.config import build_config
from genaug.train import SyntheticShareSampler, TrainConfig, create_classifier, load_run, train
from genaug.train.trainer import epoch_length

# min_steps=0: these tests are not about the epoch length, and the 1000-step floor would make each run ~50x longer
FAST = {"epochs": 2, "batch_size": 16, "image_size": 16, "min_steps": 0}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory, digit_images):
    """Real digits, 3 classes x 40 images, as an ImageFolder."""
    return make_imagefolder(tmp_path_factory.mktemp("digits") / "src", digit_images, per_class=40)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_splits_are_stratified_reproducible_and_disjoint(digits_folder, tmp_path):
    cli("split", digits_folder, "--out", tmp_path / "a", "--shots", 5, "--seeds", 0, 1, 2, "--val", 4)
    cli("split", digits_folder, "--out", tmp_path / "b", "--shots", 5, "--seeds", "0,1,2", "--val", 4)
    for seed in (0, 1, 2):
        a = (tmp_path / "a" / "shots-5" / f"seed-{seed}" / "train.csv").read_bytes()
        assert a == (tmp_path / "b" / "shots-5" / f"seed-{seed}" / "train.csv").read_bytes()
        train_rows = _rows(tmp_path / "a" / "shots-5" / f"seed-{seed}" / "train.csv")
        val_rows = _rows(tmp_path / "a" / "shots-5" / f"seed-{seed}" / "val.csv")
        assert sorted(np.unique([r["label"] for r in train_rows], return_counts=True)[1]) == [5, 5, 5]
        assert len(val_rows) == 12 and not {r["id"] for r in train_rows} & {r["id"] for r in val_rows}
    ids = [{r["id"] for r in _rows(tmp_path / "a" / "shots-5" / f"seed-{s}" / "train.csv")} for s in (0, 1)]
    assert ids[0] != ids[1]
    cli("split", digits_folder, "--out", tmp_path / "f", "--fraction", 0.25, "--seeds", 0)
    rows = _rows(tmp_path / "f" / "fraction-0.25" / "seed-0" / "train.csv")
    assert len(rows) == 30 and all((tmp_path / "f" / "fraction-0.25" / "seed-0" / r["path"]).is_file() for r in rows)
    res = cli("split", digits_folder, "7", "--out", tmp_path / "g", "--shots", 5, expect=2)  # a stray argument
    assert "unexpected argument(s) '7'" in res.output and not (tmp_path / "g").exists()


def test_split_reruns_masks_duplicates_and_foreign_manifests(digits_folder, tmp_path):
    """A rerun without --val removes the old val.csv (it overlapped the new rest.csv); masks travel into the
    split; duplicate ids and a manifest with nothing usable are refused; a Windows manifest's paths are read."""
    from genaug.data import Source

    out = tmp_path / "sp"
    cli("split", digits_folder, "--out", out, "--shots", 2, "--val", 1)
    cli("split", digits_folder, "--out", out, "--shots", 2)
    assert not (out / "shots-2" / "seed-0" / "val.csv").exists()
    pngs = sorted(digits_folder.rglob("*.png"))
    rows = [(p.relative_to(digits_folder).as_posix(), p.parent.name) for p in pngs]
    masked = digits_folder.parent / "masked.csv"
    masked.write_text("path,label,mask\n" + "".join(f"src/{p},{lab},src/{p}\n" for p, lab in rows))
    cli("split", masked, "--out", tmp_path / "m", "--shots", 2)
    recs = list(Source(tmp_path / "m" / "shots-2" / "seed-0" / "train.csv").records())
    assert len(recs) == 6 and all(r.mask_path and r.mask_path.endswith(r.path.split("src/")[1]) for r in recs)
    dup = digits_folder.parent / "dup.csv"
    dup.write_text("path,label,id\n" + "".join(f"src/{p},{lab},same-{i % 50}\n" for i, (p, lab) in enumerate(rows)))
    assert "duplicate id" in cli("split", dup, "--out", tmp_path / "d", "--shots", 2, expect=2).output
    bad = digits_folder.parent / "bad.jsonl"
    bad.write_text("".join(f'{{"file_name": "src/{p}", "label": "{lab}"}}\n' for p, lab in rows))
    res = cli("split", bad, "--out", tmp_path / "b", "--shots", 2, expect=2)
    assert "lists no usable image" in res.output and "has no path" in res.output
    win = digits_folder.parent / "win.csv"
    win.write_text("path,label\n" + "".join(f"src\\{p.replace('/', chr(92))},{lab}\n" for p, lab in rows))
    assert [r.id for r in Source(win).records()] == [f"src/{p}" for p, _ in rows]
    assert all(r.error is None for r in Source(win).records())


def test_split_order_does_not_depend_on_listing(digits_folder, tmp_path):
    from genaug.data import Source
    from genaug.data.splits import choose

    recs = list(Source(digits_folder).records())
    a, _ = choose(recs, seed=3, shots=4)
    b, _ = choose(list(reversed(recs)), seed=3, shots=4)
    assert sorted(r.id for r in a) == sorted(r.id for r in b)


@pytest.mark.parametrize("args, message", [
    (["--shots", 50], "too few"), ([], "exactly one of"), (["--shots", 2, "--fraction", 0.5], "exactly one of"),
    (["--fraction", 1.5], "(0, 1]")])
def test_bad_split_requests(digits_folder, tmp_path, args, message):
    assert message in cli("split", digits_folder, "--out", tmp_path / "s", *args, expect=2).output


def test_synthetic_share_is_exact_in_every_batch():
    sampler = SyntheticShareSampler(batch_size=32, synthetic_share=0.3, num_batches=200, n_real=100, n_synthetic=500)
    batches = [torch.tensor(b) for b in sampler]
    assert len(batches) == 200 and all(len(b) == 32 for b in batches)
    assert {int((b >= 100).sum()) for b in batches} == {round(0.3 * 32)}  # the share of every batch, not on average
    idx = torch.cat(batches)
    real, syn = idx[idx < 100], idx[idx >= 100]
    assert np.bincount(real.numpy(), minlength=100).min() > 0  # real images are cycled, not sampled with holes
    counts = np.bincount(syn.numpy() - 100, minlength=500)
    assert counts.max() - counts.min() <= 1  # synthetic images too: each as often as the batch count allows
    pooled = SyntheticShareSampler(batch_size=10, synthetic_share=None, n_real=100, n_synthetic=50)
    assert len(pooled) == 15 and sorted(i for b in pooled for i in b) == list(range(150))  # one permutation
    none = SyntheticShareSampler(batch_size=10, synthetic_share=0.0, num_batches=10, n_real=100, n_synthetic=50)
    assert all(i < 100 for b in none for i in b)
    # an epoch: one pass over the real images at the real part of a batch; all-synthetic: over the synthetic ones
    assert len(SyntheticShareSampler(batch_size=10, synthetic_share=0.5, n_real=100, n_synthetic=50)) == 20
    only = SyntheticShareSampler(batch_size=10, synthetic_share=1.0, n_real=100, n_synthetic=50)
    assert len(only) == 5 and sorted(i for b in only for i in b) == list(range(100, 150))
    first = list(sampler)
    assert first == list(sampler)  # seeded: the same batches again
    sampler.set_epoch(1)
    assert list(sampler) != first  # and another order the next epoch


def _fake_synthetic(src_dir, out_dir, weights):
    """A synthetic folder in genaug's format: copies of some real images with chosen weights."""
    import shutil

    out_dir.mkdir(parents=True)
    rows = []
    for i, (img, w) in enumerate(zip(sorted(src_dir.rglob("*.png")), weights)):
        rel = f"{img.parent.name}/syn_{i}.png"
        (out_dir / img.parent.name).mkdir(exist_ok=True)
        shutil.copy(img, out_dir / rel)
        rows.append({"file_name": rel, "label": img.parent.name, "weight": w})
    (out_dir / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out_dir


def test_zero_weight_synthetic_images_change_nothing(digits_folder, tmp_path):
    syn = _fake_synthetic(digits_folder, tmp_path / "syn", [1.0] * 10)
    syn0 = _fake_synthetic(digits_folder, tmp_path / "syn0", [0.0] * 10)
    cfg = {**FAST, "synthetic_prob": 0.5}
    a = train(digits_folder, tmp_path / "a", synthetic=[syn], config=cfg, progress=False)
    b = train(digits_folder, tmp_path / "b", synthetic=[syn, syn0], config=cfg, progress=False)
    wa, wb = load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors")
    assert a["n_synthetic"] == 10 and b["n_synthetic"] == 10
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_weights_scale_the_loss(digits_folder, tmp_path):
    half = _fake_synthetic(digits_folder, tmp_path / "half", [0.5] * 120)
    ones = _fake_synthetic(digits_folder, tmp_path / "ones", [1.0] * 120)
    # all-synthetic batches, weights unchanged; 8 steps (with no real image in a batch, a pass would be 120)
    cfg = {**FAST, "epochs": 1, "synthetic_prob": 1.0, "lr": 1e-9, "steps_per_epoch": 8}
    a = train(digits_folder, tmp_path / "a", synthetic=[half], config=cfg, progress=False)
    b = train(digits_folder, tmp_path / "b", synthetic=[ones], config=cfg, progress=False)
    assert a["history"][0]["train_loss"] == pytest.approx(0.5 * b["history"][0]["train_loss"], rel=1e-3)
    c = train(digits_folder, tmp_path / "c", synthetic=[half], config={**cfg, "use_weights": False}, progress=False)
    assert c["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-3)


def test_synthetic_data_is_half_of_every_batch_by_default_and_the_share_is_recorded(digits_folder, tmp_path):
    # 4 synthetic images per real one: pooled, 80 % of the samples would be synthetic (91 % at M = 10)
    syn = [_fake_synthetic(digits_folder, tmp_path / f"syn{i}", [1.0] * 120) for i in range(4)]
    r = train(digits_folder, tmp_path / "default", synthetic=syn, config={**FAST, "epochs": 1}, progress=False)
    assert r["n_synthetic"] == 480 and r["synthetic_prob"] == 0.5  # the papers' synthetic probability
    assert r["synthetic_share"] == 0.5 and r["history"][0]["synthetic_share"] == 0.5
    # an epoch is a pass over the 120 real images at the 8 real images of each batch of 16
    assert len(r["history"]) == 1 and r["history"][0]["step"] == 15
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert metrics["synthetic_prob"] == 0.5 and metrics["synthetic_share"] == 0.5
    # pooling is still there when asked for, by name or by null, and is recorded as such
    for value in ("pool", None):
        p = train(digits_folder, tmp_path / f"pool-{value}", synthetic=syn, config={**FAST, "epochs": 1,
                                                                                     "synthetic_prob": value},
                  progress=False)
        assert p["synthetic_prob"] == "pool" and p["synthetic_share"] == pytest.approx(0.8, abs=0.03)
    real_only = train(digits_folder, tmp_path / "real", config={**FAST, "epochs": 1}, progress=False)
    assert real_only["synthetic_prob"] is None and real_only["synthetic_share"] == 0.0
    res = cli("train", "--real", digits_folder, "--synthetic", syn[0], "--out", tmp_path / "cli", "epochs=1",
              "batch_size=16", "image_size=16", "synthetic_prob=pool", "min_steps=0", "--json", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["synthetic_prob"] == "pool", res.output
    assert "pool (null)" in cli("train", "--real", digits_folder, "--out", tmp_path / "bad", "synthetic_prob=half",
                                expect=2).output


def test_training_is_deterministic_and_learns(digits_folder, tmp_path):
    cfg = {**FAST, "epochs": 6, "lr": 3e-3}
    a = train(digits_folder, tmp_path / "a", val=digits_folder, test=digits_folder, config=cfg, progress=False)
    b = train(digits_folder, tmp_path / "b", val=digits_folder, test=digits_folder, config=cfg, progress=False)
    assert a["test"]["accuracy"] == b["test"]["accuracy"] > 0.6  # 3 real digit classes, seen in training
    hist = [h["train_loss"] for h in a["history"]]
    assert hist[-1] < hist[0]


def test_train_cli_writes_an_ecosystem_run_dir(digits_folder, tmp_path):
    run = tmp_path / "run"
    res = cli("train", "--real", digits_folder, "--test", digits_folder, "--ood", f"same={digits_folder}",
              "--out", run, "epochs=2", "batch_size=16", "image_size=16", "augment=randaugment", "min_steps=0",
              "--json", tmp_path / "r.json")
    assert "test: accuracy" in res.output and "same: accuracy" in res.output
    for name in ("config.yaml", "results.csv", "best.safetensors", "last.safetensors", "confusion.png",
                 "curves.png", "metrics.json"):
        assert (run / name).is_file(), name
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["test"]["per_class"]) == {"0", "1", "2"} and result["ood"]["same"]["n"] == 120
    assert len(_rows(run / "results.csv")) == 2


@pytest.mark.parametrize("augment", ["cutmix", "mixup", "cutout"])
def test_online_augmentations_train(digits_folder, tmp_path, augment):
    r = train(digits_folder, tmp_path / augment, config={**FAST, "epochs": 1, "augment": augment}, progress=False)
    assert np.isfinite(r["history"][0]["train_loss"])


@pytest.mark.parametrize("cfg, message", [
    ({"mode": "linear"}, "needs pretrained"), ({"pretrained": "x.pth"}, "mode=scratch"),
    ({"model": "no_such_model"}, "unknown model"), ({"epochs": 0}, "epochs"), ({"synthetic_prob": 2}, "synthetic_prob"),
    ({"augment": "real_guidance"}, "not a training transform"),
    ({"min_steps": -1}, "option 'min_steps': Input should be greater than or equal to 0 (got -1)")])
def test_bad_training_options(digits_folder, tmp_path, cfg, message):
    res = cli("train", "--real", digits_folder, "--out", tmp_path / "r", *[f"{k}={v}" for k, v in cfg.items()], expect=2)
    assert message in res.output


def test_linear_probe_on_the_real_imagenet_mobilenet(digits_folder, tmp_path):
    model, mean, std = create_classifier("torchvision/mobilenet_v2", 3, "imagenet", linear_probe=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"] and mean[0] == pytest.approx(0.485)
    cfg = {"model": "torchvision/mobilenet_v2", "pretrained": "imagenet", "mode": "linear",
           "epochs": 3, "image_size": 64, "lr": 1e-2, "batch_size": 32, "min_steps": 0}
    r = train(digits_folder, tmp_path / "lp", test=digits_folder, progress=False, config=cfg)
    assert r["test"]["accuracy"] > 0.6  # real ImageNet features separate digits linearly
    # the frozen backbone's features are computed once (the default) or on every batch: the same training
    slow = train(digits_folder, tmp_path / "lp-slow", test=digits_folder, progress=False,
                 config={**cfg, "cache_features": False})
    assert [h["train_loss"] for h in r["history"]] == pytest.approx([h["train_loss"] for h in slow["history"]],
                                                                    rel=1e-4)
    assert r["test"]["confusion"] == slow["test"]["confusion"]


def test_sic_explainability_score(digits_folder, tmp_path):
    r = train(digits_folder, tmp_path / "sic", test=digits_folder, progress=False,
              config={**FAST, "epochs": 8, "lr": 3e-3, "sic_images": 12, "sic_saliency": "saliency"})
    sic = r["test"]["sic"]
    assert sic["n_scored"] + sic["n_skipped"] == 12 and sic["n_scored"] > 0
    assert 0.0 <= sic["sic"] <= 1.0 and sic["curve_y"][0] == 0.0 and sic["curve_y"][-1] == 1.0


def test_a_timm_model_from_scratch_and_as_linear_probe(digits_folder, tmp_path):
    r = train(digits_folder, tmp_path / "r18", progress=False, config={**FAST, "epochs": 1, "model": "resnet18"})
    assert np.isfinite(r["history"][0]["train_loss"])
    from safetensors.torch import save_model

    model, _, _ = create_classifier("resnet18", 3)
    save_model(model, str(tmp_path / "r18.safetensors"))
    probe, mean, _ = create_classifier("resnet18", 3, str(tmp_path / "r18.safetensors"), linear_probe=True)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert mean[0] == pytest.approx(0.485)


def test_a_genaug_checkpoint_starts_a_fine_tune_of_the_default_model(digits_folder, tmp_path):
    """pretrained=<a run's best.safetensors> loads its backbone into genaug_small_cnn (timm loads files only
    for its own zoo), with the run's own normalisation; a head of another class count is new; a file of
    another architecture is refused."""
    from genaug.core.config import ConfigError

    train(digits_folder, tmp_path / "a", config={**FAST, "epochs": 1}, progress=False)
    ckpt = load_file(tmp_path / "a" / "best.safetensors")
    model, mean, std = create_classifier("genaug_small_cnn", 5, str(tmp_path / "a" / "best.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.items() if not k.startswith("head."))
    assert state["head.weight"].shape[0] == 5 and mean == std == (0.5, 0.5, 0.5)
    r = train(digits_folder, tmp_path / "b", progress=False,
              config={**FAST, "epochs": 1, "mode": "finetune", "pretrained": str(tmp_path / "a" / "best.safetensors")})
    assert np.isfinite(r["history"][0]["train_loss"])
    from safetensors.torch import save_model

    save_model(create_classifier("resnet18", 3)[0], str(tmp_path / "r18.safetensors"))
    with pytest.raises(ConfigError, match="does not fit this model"):
        create_classifier("genaug_small_cnn", 3, str(tmp_path / "r18.safetensors"))


def test_the_same_run_writes_the_same_checkpoint_bytes(digits_folder, tmp_path):
    for name in ("a", "b"):
        train(digits_folder, tmp_path / name, config={**FAST, "epochs": 1}, progress=False)
    assert (tmp_path / "a" / "best.safetensors").read_bytes() == (tmp_path / "b" / "best.safetensors").read_bytes()


def test_evaluation_sets_are_checked_before_training(digits_folder, tmp_path, digit_images):
    """A test set with a class the model does not learn, or a missing OOD path, fails before the first step, and
    the folder keeps no earlier run's metrics.json."""
    run = tmp_path / "r"
    train(digits_folder, run, config={**FAST, "epochs": 1}, progress=False)
    assert (run / "metrics.json").is_file()
    wider = make_imagefolder(tmp_path / "wider", digit_images, per_class=2, classes=("0", "1", "2", "3"))
    res = cli("train", "--real", digits_folder, "--test", wider, "--out", run, "epochs=50", "min_steps=0",
              "image_size=16", expect=2)
    assert "['3'] are not among the training classes" in res.output
    assert not (run / "metrics.json").exists() and len(_rows(run / "results.csv")) == 1  # no epoch ran
    res = cli("train", "--real", digits_folder, "--ood", f"far={tmp_path / 'nope'}", "--out", run, "epochs=50",
              "min_steps=0", "image_size=16", expect=2)
    assert "nope" in res.output and len(_rows(run / "results.csv")) == 1


def test_a_vit_is_built_for_the_image_size_and_weights_collate_to_float32(digits_folder, tmp_path):
    from torch.utils.data import DataLoader

    from genaug.train import AugmentedDataset

    r = train(digits_folder, tmp_path / "vit", progress=False,
              config={**FAST, "epochs": 1, "model": "vit_tiny_patch16_224", "image_size": 32})
    assert np.isfinite(r["history"][0]["train_loss"])
    _, _, w = next(iter(DataLoader(AugmentedDataset(digits_folder, image_size=16), batch_size=4)))
    assert w.dtype == torch.float32 and w.shape == (4,)
    import logging

    # genaug's logger does not propagate to the root (where pytest listens); whatever an earlier test left of
    # its level or handlers, a handler of this test's own hears it
    heard, logger, level = [], logging.getLogger("genaug"), logging.getLogger("genaug").level
    handler = logging.Handler()
    handler.emit = lambda record: heard.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        empty = _fake_synthetic(digits_folder, tmp_path / "zero", weights=[0.0] * 6)
        train(digits_folder, tmp_path / "z", synthetic=[empty], config={**FAST, "epochs": 1}, progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    trainer_log = logging.getLogger("genaug.train.trainer")
    assert any("hold no image to draw" in m for m in heard), (heard, trainer_log.disabled, logger.disabled,
                                                              trainer_log.level, logger.handlers)


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory, digit_images):
    """2 images per class: one pass over them is a single batch, the few-shot regime of issue 12."""
    return make_imagefolder(tmp_path_factory.mktemp("few") / "src", digit_images, per_class=2)


TINY = {"batch_size": 16, "image_size": 8}


def test_few_shot_runs_train_at_least_min_steps(few_shot, tmp_path):
    # 6 images at batch 16: one pass is 1 step, 3 epochs would be 3 steps; the floor (60 here) lengthens the epochs
    r = train(few_shot, tmp_path / "run", config={**TINY, "epochs": 3, "min_steps": 60}, progress=False)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["steps_per_epoch"] == 20 and resolved["steps_per_epoch_from"] == "min_steps"
    assert resolved["total_steps"] == r["total_steps"] == 60
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["total_steps"] == 60
    assert [int(row["step"]) for row in _rows(tmp_path / "run" / "results.csv")] == [20, 40, 60]


@pytest.mark.parametrize("n_synthetic", [0, 70])
def test_the_default_floor_gives_the_issues_few_shot_run_1000_steps(n_synthetic):
    # 5 shots x 7 classes at the defaults (batch 64, 30 epochs, share 0.5): one pass is 1 step (2 with synthetic
    # images), 30 or 60 steps in all; the default min_steps raises every epoch to ceil(1000 / 30) = 34 steps
    cfg = build_config(TrainConfig, {}, where="train")
    assert (cfg.min_steps, cfg.epochs, cfg.batch_size, cfg.synthetic_prob) == (1000, 30, 64, 0.5)
    sampler = SyntheticShareSampler(batch_size=cfg.batch_size, synthetic_share=cfg.synthetic_prob, n_real=35,
                                    n_synthetic=n_synthetic)
    assert epoch_length(cfg, sampler.num_batches) == (34, "min_steps")
    # a large set keeps its one pass per epoch: 10,000 real images are 157 steps, 4,710 in 30 epochs
    big = SyntheticShareSampler(batch_size=64, synthetic_share=None, n_real=10_000)
    assert epoch_length(cfg, big.num_batches) == (157, "real_pass")


def test_a_synthetic_share_adds_steps_instead_of_taking_real_images(digits_folder, tmp_path):
    syn = _fake_synthetic(digits_folder, tmp_path / "syn", [1.0] * 120)
    cfg = {"epochs": 1, "batch_size": 20, "image_size": 8, "min_steps": 0}
    real = train(digits_folder, tmp_path / "real", config=cfg, progress=False)
    half = train(digits_folder, tmp_path / "half", synthetic=[syn], config=cfg, progress=False)
    assert real["total_steps"] == 6 and half["total_steps"] == 12  # 120 real images at 20, then at 10 a batch
    assert half["history"][0]["synthetic_share"] == 0.5  # so both saw every real image once
    assert yaml.safe_load((tmp_path / "half" / "config.yaml").read_text())["steps_per_epoch_from"] == "real_pass"
    pooled = train(digits_folder, tmp_path / "pool", synthetic=[syn], config={**cfg, "synthetic_prob": "pool"},
                   progress=False)
    assert pooled["total_steps"] == 12  # pooled: one pass over the 240 real and synthetic images, as before


def test_an_explicit_steps_per_epoch_wins_over_min_steps(few_shot, tmp_path):
    r = train(few_shot, tmp_path / "run", config={**TINY, "epochs": 2, "steps_per_epoch": 3, "min_steps": 1000},
              progress=False)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert r["total_steps"] == resolved["total_steps"] == 6 and resolved["steps_per_epoch_from"] == "given"


def test_the_probe_keeps_its_short_training_unless_asked(few_shot):
    """The real-only probe (weighting, filters) keeps its 15 passes, not train's 1000-step floor: a frozen backbone
    on the CPU at that length would take an hour. `classifier.min_steps` still lengthens it."""
    from genaug.scoring.probe import fit_probe

    tiny = {"model": "genaug_small_cnn", "pretrained": None, "mode": "scratch", "image_size": 8}
    for extra, steps in (({}, 15), ({"min_steps": 30}, 30)):  # 3 training images: 1 step a pass, 15 passes
        probe = fit_probe(few_shot, classifier={**tiny, **extra}, progress=False)
        assert json.loads((probe.work / "classifier" / "metrics.json").read_text())["total_steps"] == steps


def test_the_probe_predicts_in_its_runs_precision_and_is_keyed_by_it(few_shot, monkeypatch):
    """A probe trained in bfloat16 calibrates and weights in bfloat16 too; `auto` is resolved before it keys the
    probe's folder, so a cache shared between machines never hands one precision's probe to the other."""
    import genaug.core.devices as devices
    from genaug.scoring.probe import fit_probe
    from genaug.train.trainer import predict_logits

    tiny = {"model": "genaug_small_cnn", "pretrained": None, "mode": "scratch", "image_size": 8, "device": "cpu"}
    probe = fit_probe(few_shot, classifier={**tiny, "precision": "bfloat16"}, progress=False)
    assert probe.autocast == torch.bfloat16 and probe.config["precision"] == "bfloat16"
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(probe.logits(x), predict_logits(probe.model, x, probe.mean, probe.std, "cpu",
                                                       dtype=torch.bfloat16))
    for fast, resolved in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(devices, "fast_bfloat16", lambda device, fast=fast: fast)
        auto = fit_probe(few_shot, classifier={**tiny, "precision": "auto"}, progress=False)
        assert auto.config["precision"] == resolved
        assert (auto.work == probe.work) == (resolved == "bfloat16")


def test_bfloat16_training_is_deterministic_recorded_and_learns(digits_folder, tmp_path):
    """precision=bfloat16: the forward pass in bfloat16 autocast (weights and optimiser float32); the same run twice
    writes the same bytes, its precision is recorded, and it learns as float32 does (other bytes: rounding)."""
    from genaug.core.devices import fast_bfloat16

    cfg = {**FAST, "epochs": 6, "seed": 3}
    runs = {p: train(digits_folder, tmp_path / p, val=digits_folder, config={**cfg, "precision": p}, progress=False)
            for p in ("float32", "bfloat16")}
    again = train(digits_folder, tmp_path / "again", val=digits_folder, config={**cfg, "precision": "bfloat16"},
                  progress=False)
    assert (tmp_path / "bfloat16" / "best.safetensors").read_bytes() == (tmp_path / "again" / "best.safetensors").read_bytes()
    assert (tmp_path / "bfloat16" / "best.safetensors").read_bytes() != (tmp_path / "float32" / "best.safetensors").read_bytes()
    assert runs["bfloat16"]["precision"] == again["precision"] == "bfloat16" and runs["float32"]["precision"] == "float32"
    assert yaml.safe_load((tmp_path / "bfloat16" / "config.yaml").read_text())["precision"] == "bfloat16"
    assert runs["bfloat16"]["val"]["accuracy"] > 0.8 and abs(runs["bfloat16"]["val"]["accuracy"]
                                                              - runs["float32"]["val"]["accuracy"]) < 0.1
    auto = train(digits_folder, tmp_path / "auto", config={**FAST, "epochs": 1, "precision": "auto", "device": "cpu"},
                 progress=False)
    assert auto["precision"] == ("bfloat16" if fast_bfloat16(torch.device("cpu")) else "float32")
    # a run predicts in what it computed in, wherever it is loaded: an "auto" run made on a machine where auto
    # resolved the other way (its config.yaml says so) is not re-resolved here
    assert load_run(tmp_path / "bfloat16")[1]["autocast"] == torch.bfloat16
    assert load_run(tmp_path / "float32")[1]["autocast"] is None
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    other = "float32" if auto["precision"] == "bfloat16" else "bfloat16"
    (tmp_path / "auto" / "config.yaml").write_text(yaml.safe_dump({**recorded, "precision": other}))
    assert load_run(tmp_path / "auto")[1]["autocast"] == (torch.bfloat16 if other == "bfloat16" else None)
    with pytest.raises(Exception, match="precision"):
        build_config(TrainConfig, {"precision": "float16"}, where="train")
