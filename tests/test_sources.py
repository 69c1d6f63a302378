"""Data in from anywhere a user keeps it: genaug's own output folders (labels byte for byte), Hugging Face
datasets, cut-outs with transparency, and the seeded per-class splits every module shares."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import cli, make_imagefolder, read_rows
from genaug.core.seeding import derive_seed
from genaug.data import InputConfig, Source
from genaug.data.imageset import load_any, load_real
from genaug.data.metadata import rewrite_rows

LABELS = ["T-shirt/top", "Bag", "T-shirt/top", "Bag", "Ankle boot", "Ankle boot"]  # slash, space: not folder names
COPY = ["scale=[1,1]", "ratio=[1,1]", "flip_p=0"]  # flipcrop with these options copies its input


def _write_manifest(tmp_path, digit_images) -> Path:
    images, _, _ = digit_images
    (tmp_path / "img").mkdir()
    with open(tmp_path / "labels.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, label in enumerate(LABELS):
            images[i * 7].save(tmp_path / "img" / f"{i}.png")
            w.writerow([f"img/{i}.png", label])
    return tmp_path / "labels.csv"


def test_chained_augment_keeps_labels_byte_for_byte(tmp_path, digit_images):
    manifest = _write_manifest(tmp_path, digit_images)
    cli("augment", manifest, "--method", "flipcrop", "--out", tmp_path / "a1", "-n", "2")
    cli("augment", tmp_path / "a1", "--method", "cutout", "--out", tmp_path / "a2", "-n", "1")
    first = {r["file_name"]: r for r in read_rows(tmp_path / "a1")}
    second = read_rows(tmp_path / "a2")
    assert len(second) == len(first) == 2 * len(LABELS)
    for r in second:  # the source of each second-generation image is a first-generation one, by its file_name
        assert r["label"] == first[r["source_id"]]["label"]
    assert sorted(r["label"] for r in second) == sorted(LABELS * 2)
    assert json.loads(json.dumps(yaml.safe_load((tmp_path / "a2" / "config.yaml").read_text())))["source_kind"] \
        == "genaug-output"
    # training's loader sees the exact labels, whether the folder is read as synthetic or as a real source
    for ims in (load_any(tmp_path / "a2", 16), load_real(tmp_path / "a2", 16)):
        assert sorted(ims.labels) == sorted(LABELS * 2)
    real = load_real(tmp_path / "a1", 16)
    assert dict(zip(real.ids, real.labels)) == {k: r["label"] for k, r in first.items()}


def test_output_folder_source_leaves_out_zero_weight_rows(tmp_path, digit_images):
    manifest = _write_manifest(tmp_path, digit_images)
    cli("augment", manifest, "--method", "flipcrop", "--out", tmp_path / "a1", "-n", "1")
    rows = read_rows(tmp_path / "a1")
    rows[0]["weight"] = 0.0
    rewrite_rows(tmp_path / "a1", rows)
    recs = list(Source(tmp_path / "a1").records())
    assert [(r.id, r.label) for r in recs] == [(r["file_name"], r["label"]) for r in rows[1:]]


# ---- Hugging Face datasets -----------------------------------------------------------------------------------
def _hf_source(kind: str, root: Path, digit_images) -> tuple[Path, list[str]]:
    """A dataset of LABELS in one of HF's layouts; returns its path and the ids genaug should give its rows."""
    import datasets

    images = [digit_images[0][i * 7] for i in range(len(LABELS))]
    names = sorted(set(LABELS))
    if kind.startswith("imagefolder"):  # HF's layout: files plus metadata.jsonl keyed by file_name (no config.yaml)
        # `train/metadata.jsonl` names the files of split `train`; a top-level one names them from the top
        sub, meta = ("train", root / "train") if kind == "imagefolder-split" else ("imgs", root)
        (root / sub).mkdir(parents=True)
        with open(meta / "metadata.jsonl", "w", encoding="utf-8") as f:
            for i, (im, label) in enumerate(zip(images, LABELS)):
                im.save(root / sub / f"{i}.png")
                name = (root / sub / f"{i}.png").relative_to(meta).as_posix()
                f.write(json.dumps({"file_name": name, "label": label}) + "\n")
        return root, [f"{sub}/{i}.png" for i in range(len(LABELS))]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [names.index(x) for x in LABELS]}, features=feats)
    if kind == "saved":
        ds.save_to_disk(str(root))
    else:
        root.mkdir(parents=True)
        root = root / "data.parquet"
        ds.to_parquet(str(root))
    return root, [str(i) for i in range(len(LABELS))]


@pytest.mark.parametrize("kind", ["saved", "parquet", "imagefolder", "imagefolder-split"])
def test_hugging_face_dataset_is_a_source(kind, tmp_path, digit_images):
    src, ids = _hf_source(kind, tmp_path / "hf", digit_images)
    assert Source(src).kind == f"hf-{kind.split('-')[0]}"  # a split folder `train` is not taken for a class
    cli("augment", src, "--method", "flipcrop", "--out", tmp_path / "out", "-n", "1", *COPY)
    rows = read_rows(tmp_path / "out")
    assert sorted((r["source_id"], r["label"]) for r in rows) == sorted(zip(ids, LABELS))
    # the pixels are the dataset's own (the method copies its input)
    for r in rows:
        got = np.asarray(Image.open(tmp_path / "out" / r["file_name"]).convert("L"))
        assert np.array_equal(got, np.asarray(digit_images[0][ids.index(r["source_id"]) * 7]))
    real = load_any(src, 16)
    assert list(zip(real.ids, real.labels)) == list(zip(ids, LABELS))
    assert (real.weights == 1).all()


def test_an_hf_imagefolder_brings_its_masks(tmp_path, digit_images):
    # HF's imagefolder reads `mask_file_name` as an Image column `mask`: the dataset's masks, as documented
    from genaug.data import load_example

    root = tmp_path / "hf"
    (root / "imgs").mkdir(parents=True)
    m = np.zeros((16, 16), np.uint8)
    m[3:9, 5:12] = 255
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i in range(3):
            digit_images[0][i].save(root / "imgs" / f"{i}.png")
            Image.fromarray(np.roll(m, i, axis=1)).save(root / "imgs" / f"{i}_mask.png")
            f.write(json.dumps({"file_name": f"imgs/{i}.png", "mask_file_name": f"imgs/{i}_mask.png",
                                "label": "zero"}) + "\n")
    src = Source(root)
    recs = list(src.records())
    assert src.kind == "hf-imagefolder" and [r.id for r in recs] == [f"imgs/{i}.png" for i in range(3)]
    for i, rec in enumerate(recs):
        assert np.array_equal(np.asarray(load_example(rec, InputConfig()).mask), np.roll(m, i, axis=1))


def test_undecodable_dataset_row_is_rejected_with_a_reason(tmp_path, digit_images):
    import datasets

    good = digit_images[0][0]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [good, {"bytes": b"not an image", "path": None}, good],
                                     "label": ["T-shirt/top", "Bag", "Bag"]}, features=feats)
    ds.save_to_disk(str(tmp_path / "hf"))
    assert Source(tmp_path / "hf").count() == 3  # listing reads no image bytes
    cli("augment", tmp_path / "hf", "--method", "flipcrop", "--out", tmp_path / "out", "-n", "1", *COPY)
    assert sorted(r["source_id"] for r in read_rows(tmp_path / "out")) == ["0", "2"]
    rejected = [json.loads(line) for line in open(tmp_path / "out" / "rejected.jsonl", encoding="utf-8")]
    assert [r["id"] for r in rejected] == ["1"] and "not a recognised image" in rejected[0]["reason"]


def test_dataset_with_several_splits_names_them(tmp_path, digit_images):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [digit_images[0][0]], "label": ["a"]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    result = cli("augment", tmp_path / "dd", "--method", "flipcrop", "--out", tmp_path / "out", expect=2)
    assert "['test', 'train']" in result.output and "Traceback" not in result.output


# ---- cut-outs with transparency ------------------------------------------------------------------------------
def _cutout(root: Path) -> Path:
    """A red square on a transparent field whose hidden colour is black, as in most real cut-out files."""
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[4:12, 4:12] = (200, 30, 30, 255)
    (root / "bag").mkdir(parents=True)
    Image.fromarray(arr, "RGBA").save(root / "bag" / "cut.png")
    return root


@pytest.mark.parametrize("background, rgb", [(None, (255, 255, 255)), ("'#0000ff'", (0, 0, 255)),
                                             ("[0,128,0]", (0, 128, 0))])
def test_cutout_is_composited_onto_the_background(background, rgb, tmp_path):
    src = _cutout(tmp_path / "src")
    extra = [] if background is None else [f"input.background={background}"]
    cli("augment", src, "--method", "flipcrop", "--out", tmp_path / "out", "-n", "1", *COPY, *extra)
    (row,) = read_rows(tmp_path / "out")
    out = np.asarray(Image.open(tmp_path / "out" / row["file_name"]).convert("RGB"))
    assert tuple(out[0, 0]) == rgb and tuple(out[15, 15]) == rgb and tuple(out[8, 8]) == (200, 30, 30)
    cfg = InputConfig() if background is None else InputConfig(background=yaml.safe_load(background))
    ims = load_real(src, 16, input_cfg=cfg)  # training composites the same way
    assert tuple(ims.images[0][:, 0, 0].tolist()) == rgb


@pytest.mark.parametrize("mode, key", [("L", 0), ("RGB", (0, 0, 0))])
def test_a_colour_keyed_cutout_is_composited_and_masked_too(mode, key, tmp_path):
    # a grey or RGB PNG whose tRNS chunk marks one colour transparent: a cut-out without an alpha channel
    arr = np.zeros((16, 16, 3) if mode == "RGB" else (16, 16), np.uint8)
    arr[4:12, 4:12] = 200
    (tmp_path / "src" / "bag").mkdir(parents=True)
    Image.fromarray(arr, mode).save(tmp_path / "src" / "bag" / "cut.png", transparency=key)
    src = Source(tmp_path / "src")
    ex = src.load(next(src.records()))
    assert tuple(np.asarray(ex.image)[0, 0]) == (255, 255, 255) and tuple(np.asarray(ex.image)[8, 8]) == (200,) * 3
    assert ex.mask is not None and np.asarray(ex.mask)[0, 0] == 0 and np.asarray(ex.mask)[8, 8] == 255


def test_cutout_alpha_stays_the_mask(tmp_path):
    src = Source(_cutout(tmp_path / "src"), InputConfig(background="black"))
    ex = src.load(next(src.records()))
    alpha = np.zeros((16, 16), np.uint8)
    alpha[4:12, 4:12] = 255
    assert ex.mask is not None and ex.mask.mode == "L" and np.array_equal(np.asarray(ex.mask), alpha)
    assert tuple(np.asarray(ex.image)[0, 0]) == (0, 0, 0)


def test_bad_background_is_a_one_line_error(imagefolder, tmp_path):
    result = cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "o", "input.background=nope",
                 expect=2)
    assert "background" in result.output and "Traceback" not in result.output


# ---- splits --------------------------------------------------------------------------------------------------
def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_split_writes_the_rest_of_every_class(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=6)
    cli("split", src, "--out", tmp_path / "sp", "--shots", "2", "--val", "1", "--seeds", "0", "1")
    everything = {r.id: r.label for r in Source(src).records()}
    for seed in (0, 1):
        d = tmp_path / "sp" / "shots-2" / f"seed-{seed}"
        parts = {name: _csv(d / f"{name}.csv") for name in ("train", "val", "rest")}
        ids = {name: [r["id"] for r in rows] for name, rows in parts.items()}
        assert len(ids["rest"]) == 3 * 3  # 6 per class - 2 train - 1 val
        assert not (set(ids["train"]) & set(ids["rest"])) and not (set(ids["val"]) & set(ids["rest"]))
        assert sorted(ids["train"] + ids["val"] + ids["rest"]) == sorted(everything)
        assert all(everything[r["id"]] == r["label"] for rows in parts.values() for r in rows)
        assert load_real(d / "rest.csv", 16).ids == ids["rest"]  # a usable manifest, paths relative to it
    meta = yaml.safe_load((tmp_path / "sp" / "split.yaml").read_text())["splits"]["shots-2"]
    assert meta["counts"]["seed-0"] == {"train": 6, "val": 3, "rest": 9} and "rest.csv" in meta["files"]


def test_choose_keeps_its_selections(tmp_path, digit_images):
    """Split files written before the shared per-class order must come out the same: the former algorithm."""
    from genaug.data.splits import choose

    recs = list(Source(make_imagefolder(tmp_path / "src", digit_images, per_class=7)).records())
    for seed in (0, 3):
        train, val = choose(list(reversed(recs)), seed, shots=2, val=2)
        old_train, old_val = [], []
        for label in sorted({r.label for r in recs}):
            rs = sorted((r for r in recs if r.label == label), key=lambda r: r.id)
            order = np.random.default_rng(derive_seed(seed, f"split/{label}", 0)).permutation(len(rs))
            old_train += [rs[i].id for i in order[:2]]
            old_val += [rs[i].id for i in order[2:4]]
        assert [r.id for r in train] == old_train and [r.id for r in val] == old_val


def test_per_class_order_is_seeded_and_stratified():
    from genaug.data.builtin import stratified_subset
    from genaug.data.splits import per_class_order

    items = [(f"{c}{i}", c) for c in "abc" for i in range(10)]
    order = per_class_order(items, lambda t: t[1], lambda t: t[0], seed=5)
    assert list(order) == ["a", "b", "c"]
    assert all(sorted(v) == sorted(t for t in items if t[1] == c) for c, v in order.items())
    # the listing order and the other classes do not matter; the seed and the salt do
    assert per_class_order(reversed(items), lambda t: t[1], lambda t: t[0], seed=5) == order
    assert per_class_order(items[:10], lambda t: t[1], lambda t: t[0], seed=5) == {"a": order["a"]}
    assert per_class_order(items, lambda t: t[1], lambda t: t[0], seed=6) != order
    assert per_class_order(items, lambda t: t[1], lambda t: t[0], seed=5, salt="weight") != order

    labels = np.array([0] * 10 + [1] * 3 + [2] * 8)
    idx = stratified_subset(labels, 4, seed=1)
    assert np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, stratified_subset(labels, 4, seed=1))
    assert np.bincount(labels[idx]).tolist() == [4, 3, 4]
    assert not np.array_equal(idx, stratified_subset(labels, 4, seed=2))


def test_weighting_holdout_is_the_shared_order(tmp_path, digit_images):
    from genaug.scoring.probe import split_real

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=5)
    train_csv, held_csv = split_real(src, 0.4, 7, tmp_path / "w")
    recs = list(Source(src).records())
    old_held = []
    for label in sorted({r.label for r in recs}):
        rs = sorted((r for r in recs if r.label == label), key=lambda r: r.id)
        order = np.random.default_rng(derive_seed(7, f"weight/{label}", 0)).permutation(len(rs))
        old_held += [rs[i].id for i in order[:2]]
    assert [r["id"] for r in _csv(held_csv)] == old_held
    assert len(_csv(train_csv)) == 9


def test_hf_rows_travel_through_the_ray_executor(tmp_path, digit_images):
    """Arrow rows (no file behind them) reach Ray actors by index: same bytes and rows as locally."""
    ray = pytest.importorskip("ray", reason="Ray Data is an extra: pip install 'genaug[ray]'")
    from conftest import png_bytes

    src, _ = _hf_source("saved", tmp_path / "hf", digit_images)
    cli("augment", src, "--method", "flipcrop", "--out", tmp_path / "local", "-n", "2")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        cli("augment", src, "--method", "flipcrop", "--out", tmp_path / "ray", "-n", "2", "--executor", "ray",
            "--workers", "1")
    finally:
        ray.shutdown()
    assert png_bytes(tmp_path / "ray") == png_bytes(tmp_path / "local") and len(png_bytes(tmp_path / "ray")) == 12
    strip = lambda rows: [{k: v for k, v in r.items() if k != "created_at"} for r in rows]  # noqa: E731
    assert strip(read_rows(tmp_path / "ray")) == strip(read_rows(tmp_path / "local"))
