"""The audit finds copies of training images (memorisation) and of test / validation images (leakage), image by
image, and leaves an honest synthetic set alone."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, digit_folder
from genaug.core.config import ConfigError
from genaug.pipeline import augment
from genaug.scoring.audit import AUDIT, PAIRS_IMAGE, THUMB, _PAD, audit, nearest, nearest_earlier

CLASSES = "012"


def _folder(root: Path, digit_images, rows: slice) -> Path:
    return digit_folder(root, digit_images, rows, CLASSES)


def _jitter(src: Path, dst: Path, seed: int = 0) -> None:
    """A slightly changed copy: pixel noise of +-4 levels and 3% darker."""
    a = np.asarray(Image.open(src).convert("RGB")).astype(np.int16)
    a = a * 0.97 + np.random.default_rng(seed).integers(-4, 5, a.shape)
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(dst)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, digit_images):
    """Disjoint train (10 per class), test (5), val (5) and generator-source (5) digits; an honest synthetic set:
    flipcrop variants of the generator-source digits, which neither the train nor the test set holds."""
    root = tmp_path_factory.mktemp("audit")
    d = {name: _folder(root / name, digit_images, rows) for name, rows in
         (("train", slice(0, 10)), ("test", slice(10, 15)), ("val", slice(15, 20)), ("gen", slice(20, 25)))}
    augment(d["gen"], root / "honest", "flipcrop", n=1, progress=False)
    augment(d["train"], root / "from_train", "flipcrop", n=1, progress=False)
    d.update(honest=root / "honest", from_train=root / "from_train", root=root)
    return d


def _copy_of(sets, name: str, dst: Path) -> Path:
    shutil.copytree(sets[name], dst)
    return dst


def _flagged(r, flag: str) -> set[str]:
    return {im["file_name"] for im in r["images"] if im[flag]}


def test_nearest_matches_brute_force_and_skips_itself():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=-1)
    sims, idx = nearest(a, b, chunk=7)  # blocks of 7 rows: the same answer as all at once
    full = a @ b.T
    assert torch.equal(idx, full.argmax(1)) and torch.allclose(sims, full.max(1).values)
    sims, idx = nearest(b, b, exclude_self=True, chunk=4)
    assert not (idx == torch.arange(30)).any() and (sims < 1 - 1e-4).all()


def test_nearest_earlier_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    a[25] = a[6]  # a repeat: its nearest earlier row is the original, at similarity 1
    sims, idx = nearest_earlier(a, chunk=7)  # 7 x 7 blocks: the same answer as the full lower triangle
    full = (a @ a.T).masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(-1), float("-inf"))
    assert idx[0] == -1 and sims[0].isnan()
    assert torch.equal(idx[1:], full[1:].argmax(1)) and torch.allclose(sims[1:], full[1:].max(1).values)
    assert idx[25] == 6 and sims[25] == pytest.approx(1.0, abs=1e-5)
    assert (idx[1:] < torch.arange(1, 40)).all()


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_near_duplicates_among_the_synthetic_images(sets, tmp_path):
    """The same pixels three times: the first (in metadata order) is the original, the later two duplicates."""
    syn = _copy_of(sets, "honest", tmp_path / "syn")
    order = [r["file_name"] for r in _rows(syn)]
    first, second, third = order[3], order[9], order[12]
    for later in (second, third):
        shutil.copy(syn / first, syn / later)
    r = audit(syn, sets["train"], test=sets["test"], write=False)
    assert [im["file_name"] for im in r["images"]] == order
    assert _flagged(r, "duplicate") == {second, third}
    assert _flagged(r, "near_copy") | _flagged(r, "leak") == set()  # repeats of a non-training image
    by_name = {im["file_name"]: im for im in r["images"]}
    assert by_name[second]["synthetic_dup_of"] == first
    assert by_name[third]["synthetic_dup_of"] in {first, second}
    for later in (second, third):
        assert by_name[later]["synthetic_dup_sim"] == pytest.approx(1.0, abs=1e-4)
    assert not by_name[first]["duplicate"] and by_name[first]["synthetic_dup_sim"] < r["threshold"]["value"]
    assert r["counts"]["duplicate"] == 2
    labels = {by_name[f]["label"] for f in (second, third)}
    assert sum(v["duplicate"] for v in r["per_class"].values()) == 2
    assert all(r["per_class"][c]["duplicate"] == sum(by_name[f]["label"] == c for f in (second, third))
               for c in labels)


def _red(px) -> bool:
    return px[0] > 180 and px[1] < 80 and px[2] < 80


def test_closest_pairs_drawn_as_thumbnails(sets, tmp_path):
    syn = _copy_of(sets, "honest", tmp_path / "syn")
    name = sorted(p.relative_to(syn).as_posix() for p in syn.rglob("*.png"))[4]
    shutil.copy(sets["train"] / "1/img_2.png", syn / name)
    heights = {}
    for k in (4, 2):
        r = audit(syn, sets["train"], test=sets["test"], top_k=k)
        assert r["pairs_image"] == PAIRS_IMAGE
        with Image.open(syn / PAIRS_IMAGE) as im:
            im.load()
            heights[k] = im.height
            png = im.convert("RGB")
    assert heights[4] == 2 * heights[2] and png.width > 2 * THUMB  # one row per pair
    top = r["closest_pairs"]
    assert top[0]["synthetic"] == name and top[0]["flag"] and not top[1]["flag"]
    row_h = png.height // 2
    # the flagged pair is the first row, framed in red; the second is not
    assert _red(png.getpixel((1, 1))) and _red(png.getpixel((png.width - 2, row_h - 2)))
    assert not _red(png.getpixel((1, row_h + 1)))

    def thumbs(k):
        y = k * row_h + _PAD
        return [np.asarray(png.crop((x, y, x + THUMB, y + THUMB))) for x in (_PAD, 2 * _PAD + THUMB)]

    syn_t, real_t = thumbs(0)  # the copy: the synthetic thumbnail is the real one
    assert np.array_equal(syn_t, real_t) and syn_t.std() > 10
    syn_t, real_t = thumbs(1)
    assert not np.array_equal(syn_t, real_t)
    # every pair says where its real image is: that very file
    for p in top:
        path = Path(p["real_path"])
        assert path.is_absolute() and path == (sets[p["split"]] / p["real"]).resolve()
    copied = np.asarray(Image.open(top[0]["real_path"]).convert("RGB"))
    assert np.array_equal(copied, np.asarray(Image.open(syn / name).convert("RGB")))
    assert json.loads((syn / AUDIT).read_text())["closest_pairs"][0]["real_path"] == top[0]["real_path"]
    # nothing to draw, nothing drawn (and the earlier drawing is gone); write=False writes nothing
    r = audit(syn, sets["train"], top_k=0)
    assert r["pairs_image"] is None and not (syn / PAIRS_IMAGE).exists()
    r = audit(syn, sets["train"], top_k=3, write=False)
    assert r["pairs_image"] is None and not (syn / PAIRS_IMAGE).exists() and len(r["closest_pairs"]) == 3


def test_an_honest_set_is_not_flagged(sets):
    r = audit(sets["honest"], sets["train"], test=sets["test"], val=sets["val"])
    assert r["n_synthetic"] == 15 and r["n_train"] == 30 and r["n_test"] == 15 and r["n_val"] == 15
    assert r["counts"] == {"near_copy": 0, "source_copy": 0, "leak": 0, "duplicate": 0, "source_found": 15}
    t = r["threshold"]
    # no two honest synthetic images are near-duplicates either; the first has no earlier image to repeat
    first, *rest = r["images"]
    assert first["synthetic_dup_of"] is None and first["synthetic_dup_sim"] is None and not first["duplicate"]
    assert all(im["synthetic_dup_of"] and im["synthetic_dup_sim"] < t["value"] for im in rest)
    assert t["method"] == "quantile" and t["quantile"] == 0.99 and t["n_train_pairs"] == 30
    assert t["train_duplicates"] == 0 and t["train_nn_median"] < t["value"] < 1
    assert all(im["train_sim"] < t["value"] for im in r["images"])
    assert json.loads((sets["honest"] / AUDIT).read_text()) == json.loads(json.dumps(r))


def test_copies_of_training_images_are_flagged_image_by_image(sets, tmp_path):
    syn = _copy_of(sets, "honest", tmp_path / "syn")
    names = sorted(p.relative_to(syn).as_posix() for p in syn.rglob("*.png"))
    exact = {names[0]: "0/img_3.png", names[12]: "2/img_0.png"}
    jittered = {names[7]: "1/img_5.png"}
    for fname, real in exact.items():
        shutil.copy(sets["train"] / real, syn / fname)
    for fname, real in jittered.items():
        _jitter(sets["train"] / real, syn / fname)
    r = audit(syn, sets["train"], test=sets["test"], top_k=5)
    copies = {**exact, **jittered}
    assert _flagged(r, "near_copy") == set(copies)
    assert _flagged(r, "leak") == set()
    by_name = {im["file_name"]: im for im in r["images"]}
    for fname, real in copies.items():
        assert by_name[fname]["nearest_train"] == real
    for fname in exact:
        assert by_name[fname]["train_sim"] == pytest.approx(1.0, abs=1e-4)
    assert r["threshold"]["value"] < by_name[names[7]]["train_sim"] < 1 - 1e-4
    assert {c: v["near_copy"] for c, v in r["per_class"].items()} == {"0": 1, "1": 1, "2": 1}
    top = r["closest_pairs"]
    assert len(top) == 5 and {p["synthetic"] for p in top[:3]} == set(copies) and all(p["flag"] for p in top[:3])
    assert [p["similarity"] for p in top] == sorted((p["similarity"] for p in top), reverse=True)


def test_copies_of_test_and_val_images_are_leakage(sets, tmp_path):
    syn = _copy_of(sets, "honest", tmp_path / "syn")
    names = sorted(p.relative_to(syn).as_posix() for p in syn.rglob("*.png"))
    shutil.copy(sets["test"] / "0/img_1.png", syn / names[1])
    _jitter(sets["test"] / "1/img_2.png", syn / names[6], seed=1)
    shutil.copy(sets["val"] / "2/img_4.png", syn / names[11])
    r = audit(syn, sets["train"], test=sets["test"], val=sets["val"])
    assert _flagged(r, "leak") == {names[1], names[6], names[11]}
    assert _flagged(r, "near_copy") == set()
    by_name = {im["file_name"]: im for im in r["images"]}
    assert (by_name[names[1]]["heldout_split"], by_name[names[1]]["nearest_heldout"]) == ("test", "0/img_1.png")
    assert (by_name[names[6]]["heldout_split"], by_name[names[6]]["nearest_heldout"]) == ("test", "1/img_2.png")
    assert (by_name[names[11]]["heldout_split"], by_name[names[11]]["nearest_heldout"]) == ("val", "2/img_4.png")
    assert r["counts"]["leak"] == 3 and sum(v["leak"] for v in r["per_class"].values()) == 3
    # without the held-out sets there is nothing to leak into, and the copies are no training image's
    r = audit(syn, sets["train"], write=False)
    assert r["counts"]["leak"] == 0 and "nearest_heldout" not in r["images"][0]


def test_own_source_copies(sets, tmp_path):
    """Generated from the training set itself: a copy of its own source is a source copy; a copy of another
    training image a near-copy only."""
    syn = _copy_of(sets, "from_train", tmp_path / "syn")
    rows = [json.loads(line) for line in (syn / "metadata.jsonl").read_text().splitlines()]
    own, other = rows[2], rows[20]
    shutil.copy(sets["train"] / own["source_id"], syn / own["file_name"])
    shutil.copy(sets["train"] / "2/img_9.png", syn / other["file_name"])
    assert other["source_id"] != "2/img_9.png"
    r = audit(syn, sets["train"])
    assert r["counts"]["source_found"] == 30
    by_name = {im["file_name"]: im for im in r["images"]}
    assert by_name[own["file_name"]]["source_sim"] == pytest.approx(1.0, abs=1e-4)
    assert by_name[own["file_name"]]["source_copy"] and by_name[own["file_name"]]["near_copy"]
    assert by_name[other["file_name"]]["near_copy"] and not by_name[other["file_name"]]["source_copy"]
    assert {own["file_name"], other["file_name"]} <= _flagged(r, "near_copy")


def test_fixed_threshold_and_bad_options(sets):
    r = audit(sets["honest"], sets["train"], threshold=-1.0, write=False)
    assert r["threshold"] == {"value": -1.0, "method": "fixed"} and r["counts"]["near_copy"] == 15
    with pytest.raises(ConfigError, match="quantile"):
        audit(sets["honest"], sets["train"], quantile=0)
    with pytest.raises(ConfigError, match="not a genaug output folder"):
        audit(sets["train"], sets["train"])
    with pytest.raises(ConfigError, match="does not exist"):
        audit(sets["honest"], sets["root"] / "nope")


def test_cli(sets, tmp_path):
    syn = _copy_of(sets, "honest", tmp_path / "syn")
    name = sorted(p.relative_to(syn).as_posix() for p in syn.rglob("*.png"))[4]
    shutil.copy(sets["test"] / "0/img_0.png", syn / name)
    out = cli("audit", syn, "--real", sets["train"], "--test", sets["test"], "--json", tmp_path / "a.json").output
    assert "near-copy threshold" in out and "closest flagged pairs" in out and name in out
    assert "duplicate" in out.splitlines()[1] and f"closest pairs: {syn / PAIRS_IMAGE}" in out
    assert (syn / PAIRS_IMAGE).is_file()
    assert json.loads((tmp_path / "a.json").read_text())["counts"]["leak"] == 1
    assert (syn / AUDIT).is_file()
    for args, msg in [((tmp_path / "missing", "--real", sets["train"]), "does not exist"),
                      ((sets["train"], "--real", sets["train"]), "not a genaug output folder"),
                      ((syn, "--real", tmp_path / "nope"), "does not exist")]:
        err = cli("audit", *args, expect=2).output.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err
