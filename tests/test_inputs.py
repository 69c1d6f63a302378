"""Every kind of awkward input: what is used, what is rejected (with a reason), what is ignored."""
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli, read_rows
from genaug.data import InputConfig, Rejected, label_folder, load_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(path: Path, side: int = 40_000) -> None:
    """A real PNG header claiming side x side 1-bit pixels (1.6 G pixels) in a file of a few hundred bytes."""
    row = b"\x00" + b"\x00" * (side // 8)
    body = zlib.compress(row * 64)  # only the first rows: Pillow must refuse before decoding anyway
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def rgb16_png(path: Path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), from the PNG spec: filter byte + big-endian rows."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                     + _png_chunk(b"IEND", b""))


def photo(size=(24, 20)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize(size)


@pytest.fixture
def messy(tmp_path):
    """An ImageFolder with one class of good-but-awkward images and one class of unusable files."""
    root = tmp_path / "messy"
    ok, bad = root / "chat noir 猫", root / "broken"
    ok.mkdir(parents=True)
    bad.mkdir()
    (root / "empty class").mkdir()
    (root / ".hidden class").mkdir()
    photo().save(root / ".hidden class" / "x.png")
    p = photo()
    p.convert("CMYK").save(ok / "cmyk.jpg")
    Image.fromarray((np.arange(24 * 20).reshape(20, 24) * 100).astype(np.uint16)).save(ok / "grey16.png")
    rgb16_png(ok / "rgb16.png", np.asarray(p).astype(np.uint16) * 257)
    p.convert("P", palette=Image.ADAPTIVE, colors=16).save(ok / "palette.png")
    rgba = p.convert("RGBA")
    alpha = np.zeros((20, 24), np.uint8)
    alpha[5:15, 6:18] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(ok / "cutout rgba.png")
    p.convert("L").save(ok / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.new("RGB", (40, 20), (200, 30, 30)).save(ok / "exif_rotated.jpg", exif=exif)
    p.save(ok / "ünïcødé name.png")
    (ok / "README.txt").write_text("not an image, not an image extension: ignored")
    (ok / ".DS_Store").write_bytes(b"\x00\x01")
    photo().save(ok / ".hidden.png")

    (bad / "zero.png").write_bytes(b"")
    (bad / "text.jpg").write_text("this is text pretending to be a jpeg")
    (bad / "random.png").write_bytes(np.random.default_rng(0).bytes(2048))
    buf = bad / "full.png"
    photo((64, 64)).save(buf)
    (bad / "truncated.png").write_bytes(buf.read_bytes()[:400])
    buf.unlink()
    jpg = bad / "full.jpg"
    photo((64, 64)).save(jpg, quality=95)
    (bad / "truncated.jpg").write_bytes(jpg.read_bytes()[:-300])
    jpg.unlink()
    decompression_bomb(bad / "bomb.png")
    # a PNG whose eXIf chunk is not EXIF (Pillow fails reading the orientation, after decoding the pixels)
    png = (ok / "grey.png").read_bytes()
    at = png.index(b"IDAT") - 4
    (bad / "bad exif.png").write_bytes(png[:at] + _png_chunk(b"eXIf", b"\x00\x01garbage") + png[at:])
    Image.new("RGB", (1, 1)).save(bad / "one_pixel.png")
    Image.new("RGB", (300, 10)).save(bad / "strip.png")
    return root


def test_awkward_inputs_are_used_and_broken_ones_rejected_with_reasons(messy, tmp_path):
    out = tmp_path / "out"
    res = cli("augment", messy, "--method", "flipcrop", "--out", out, "-n", 1)
    rows = read_rows(out)
    used = {Path(r["source_id"]).name for r in rows}
    assert used == {"cmyk.jpg", "grey16.png", "rgb16.png", "palette.png", "cutout rgba.png", "grey.png",
                    "exif_rotated.jpg", "ünïcødé name.png"}
    assert all(r["label"] == "chat noir 猫" for r in rows)
    rejected = {Path(r["path"]).name: r["reason"] for r in map(json.loads, open(out / "rejected.jsonl"))}
    assert set(rejected) == {"zero.png", "text.jpg", "random.png", "truncated.png", "truncated.jpg", "bomb.png",
                             "one_pixel.png", "strip.png", "bad exif.png"}
    assert "damaged image data" in rejected["bad exif.png"]
    assert "empty file" in rejected["zero.png"]
    assert "not a recognised image" in rejected["text.jpg"] and "not a recognised image" in rejected["random.png"]
    assert "truncated" in rejected["truncated.png"] and "truncated" in rejected["truncated.jpg"]
    assert "decompression-bomb" in rejected["bomb.png"]
    assert "too small" in rejected["one_pixel.png"] and "aspect ratio" in rejected["strip.png"]
    assert "9 rejected" in res.output and "'empty class' has no images" in res.output
    # the EXIF-rotated 40x20 photo is used upright: 20x40
    exif_row = next(r for r in rows if r["source_id"].endswith("exif_rotated.jpg"))
    assert Image.open(out / exif_row["file_name"]).size == (20, 40)
    # hidden folders and files are not sources
    assert not any(".hidden" in r["source_id"] for r in rows)


def test_conversions_keep_the_picture(tmp_path):
    cfg, tmp = InputConfig(), tmp_path
    p = photo()
    arr = np.asarray(p.convert("L")).astype(np.uint16) * 257  # the same picture at 16 bit
    Image.fromarray(arr).save(tmp / "g16.png")
    rgb, alpha = load_image(tmp / "g16.png", cfg)
    assert alpha is None and rgb.mode == "RGB"
    assert np.abs(np.asarray(rgb)[..., 0].astype(int) - np.asarray(p.convert("L"))).max() <= 1  # scaled, not clipped
    rgb16_png(tmp / "rgb16.png", np.asarray(p).astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(load_image(tmp / "rgb16.png", cfg)[0]), np.asarray(p))
    rgba = p.convert("RGBA")
    a = np.zeros((20, 24), np.uint8)
    a[2:8, 3:9] = 255
    rgba.putalpha(Image.fromarray(a))
    rgba.save(tmp / "a.png")
    rgb, alpha = load_image(tmp / "a.png", cfg)
    assert np.array_equal(np.asarray(alpha), a)  # the alpha channel is kept as the mask
    p.save(tmp / "opaque.png")
    assert load_image(tmp / "opaque.png", cfg)[1] is None


def test_max_pixels_can_tighten_the_guard(tmp_path):
    photo((64, 64)).save(tmp_path / "p.png")
    with pytest.raises(Rejected, match="too many pixels"):
        load_image(tmp_path / "p.png", InputConfig(max_pixels=1000))


@pytest.mark.parametrize("label", ["../../etc", "/abs/path", "a/b", "a\\b", "..", ".", "CON", "x\x00y", "  spaced  ",
                                   "T-shirt/top", "猫", "a" * 300])
def test_label_folders_never_escape(label, tmp_path):
    name = label_folder(label)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert len(name.encode()) <= 100


def test_label_folders_are_distinct_and_stable():
    assert label_folder("a/b") != label_folder("a_b") != label_folder("a\\b")
    assert label_folder("cat") == "cat" and label_folder("chat noir 猫") == "chat noir 猫"
    assert label_folder("a/b") == label_folder("a/b")
    with pytest.raises(ValueError):
        label_folder("   ")


def test_manifest_labels_are_data_not_paths(tmp_path, digit_images):
    images, labels, _ = digit_images
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, label in enumerate(["../../escape", "T-shirt/top", "ok", ""]):
        images[i].save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"path": f"imgs/{i}.png", "label": label})
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = tmp_path / "out"
    cli("augment", manifest, "--method", "cutout", "--out", out, "-n", 2)
    written = sorted(p for p in tmp_path.rglob("*.png") if "imgs" not in p.parts)
    assert len(written) == 6 and all(out.resolve() in p.resolve().parents for p in written)
    got = {r["label"] for r in read_rows(out)}
    assert got == {"../../escape", "T-shirt/top", "ok"}  # original labels kept in the metadata
    reasons = [json.loads(line)["reason"] for line in open(out / "rejected.jsonl")]
    assert any("no label" in r for r in reasons) and any("not a JSON object" in r for r in reasons)


def test_csv_manifest_with_masks(tmp_path, digit_images):
    images, _, _ = digit_images
    for i in range(3):
        images[i].save(tmp_path / f"{i}.png")
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    Image.fromarray(m[:8]).save(tmp_path / "wrong.png")
    Image.fromarray(m).convert("RGBA").save(tmp_path / "opaque.png")  # an editor's export: opaque, white subject
    (tmp_path / "d.csv").write_text("path,label,mask,id\n0.png,zero,mask.png,\n1.png,one,,\n2.png,two,wrong.png,\n"
                                    "missing.png,three,,\n0.png,zero,opaque.png,again\n")
    from genaug.data import Source, load_example

    src = Source(tmp_path / "d.csv")
    recs = list(src.records())
    ex = load_example(recs[0], InputConfig())
    assert np.array_equal(np.asarray(ex.mask), m) and ex.label == "zero"
    assert load_example(recs[1], InputConfig()).mask is None
    with pytest.raises(Rejected, match="is 16x8 but the image is 16x16"):
        load_example(recs[2], InputConfig())
    with pytest.raises(Rejected, match="file not found"):
        load_example(recs[3], InputConfig())
    assert np.array_equal(np.asarray(load_example(recs[4], InputConfig()).mask), m)  # not all 255
    Image.fromarray(m // 255).save(tmp_path / "mask.png")  # a 0/1 mask: refused with the mend, not misread
    with pytest.raises(Rejected, match="no value of 128 or more.*multiply a 0/1 mask by 255"):
        load_example(recs[0], InputConfig())


def test_a_manifest_saved_by_a_spreadsheet_reads_as_written(tmp_path, digit_images):
    # Excel writes UTF-8 CSV with a byte-order mark; hand-written headers carry spaces; a JSONL file may start
    # with a mark too
    from genaug.data import Source

    digit_images[0][0].save(tmp_path / "0.png")
    (tmp_path / "d.csv").write_text("\ufeffpath, label\n0.png,zero\n", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('\ufeff{"path": "0.png", "label": "zero"}\n', encoding="utf-8")
    for name in ("d.csv", "d.jsonl"):
        recs = list(Source(tmp_path / name).records())
        assert [(r.id, r.label, r.error) for r in recs] == [("0.png", "zero", None)]


def test_manifest_without_required_columns_is_a_clear_error(tmp_path):
    (tmp_path / "d.csv").write_text("file,class\na.png,x\n")
    res = cli("augment", tmp_path / "d.csv", "--method", "cutout", "--out", tmp_path / "o", expect=2)
    assert "lacks column(s) ['label', 'path']" in res.output
    assert not (tmp_path / "o").exists()


def test_folder_without_classes_is_a_clear_error(tmp_path):
    (tmp_path / "flat").mkdir()
    photo().save(tmp_path / "flat" / "a.png")
    res = cli("augment", tmp_path / "flat", "--method", "cutout", "--out", tmp_path / "o", expect=2)
    assert "no class sub-folders" in res.output
