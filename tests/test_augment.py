"""`genaug augment` end to end through the CLI, for every registered generator."""
import json
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import cli, make_imagefolder, overrides, png_bytes, read_rows
from genaug import list_methods

GENERATORS = list_methods()
REQUIRED = {"file_name", "label", "source_id", "source_path", "variant", "method", "method_version", "seed",
            "params", "created_at", "weight", "config_hash"}


def test_methods_lists_every_method_with_a_description():
    lines = cli("methods").output.split("\n\n")[0].strip().splitlines()  # the training transforms follow
    names = [line.split()[0] for line in lines]
    assert names == list_methods()
    assert {"randaugment", "trivialaugment", "autoaugment", "augmix", "cutout", "flipcrop"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def _blank_rejections(out) -> int:
    """How many variants were refused as blank (the only refusals these runs may have)."""
    path = out / "rejected.jsonl"
    reasons = [json.loads(line)["reason"] for line in path.read_text().splitlines()] if path.exists() else []
    assert all("is blank" in r for r in reasons), reasons
    return len(reasons)


@pytest.mark.parametrize("method", GENERATORS)
def test_each_generator_end_to_end(method, imagefolder, tmp_path, method_options):
    out = tmp_path / "out"
    res = cli("augment", imagefolder, "--method", method, "--out", out, "-n", 2, "--seed", 7,
              *overrides(method_options.get(method, {})))
    blank = _blank_rejections(out)  # e.g. TrivialAugment's brightness ~0 on a small digit: never written as data
    assert blank <= 3 and f"wrote {18 - blank} image(s)" in res.output
    rows = read_rows(out)
    assert len(rows) == 18 - blank and len({r["file_name"] for r in rows}) == 18 - blank
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["method"] == method and r["variant"] in (0, 1)
        assert r["file_name"].startswith(r["label"] + "/")
        img = Image.open(out / r["file_name"])
        src = Image.open(r["source_path"])
        assert img.mode == "RGB" and img.size == src.size
        assert r["params"], "every method records what it applied"
    # variants really differ from their source and from each other
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(Image.open(out / r["file_name"]).tobytes())
    assert sum(len(v) == 2 and v[0] != v[1] for v in by_source.values()) >= 7 - blank
    # the parquet manifest holds the same rows; config.yaml the resolved config
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["file_name"] for r in table) == sorted(r["file_name"] for r in rows)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == method and cfg["n"] == 2 and cfg["seed"] == 7 and "torch" in cfg["versions"]
    assert not (out / ".genaug-tmp").exists()


def test_recorded_params_describe_what_was_applied(imagefolder, tmp_path):
    cli("augment", imagefolder, "--method", "randaugment", "--out", tmp_path / "ra", "-n", 1)
    ops = [r["params"]["ops"] for r in read_rows(tmp_path / "ra")]
    assert all(len(o) == 2 for o in ops)  # N = 2 by default
    cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "fc", "-n", 1)
    for r in read_rows(tmp_path / "fc"):
        crop = r["params"]["crop"]
        assert 0 < crop["height"] * crop["width"] <= 16 * 16 and isinstance(r["params"]["flip"], bool)


def test_huggingface_imagefolder_reads_the_output(imagefolder, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "augmix", "--out", out, "-n", 2)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 18
    assert {"image", "label", "source_id", "params", "seed"} <= set(ds.column_names)
    assert ds[0]["image"].size == (16, 16)


def test_options_from_yaml_and_overrides(imagefolder, tmp_path):
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("method: randaugment\nn: 3\noptions: {num_ops: 1}\ninput: {min_side: 4}\n")
    out = tmp_path / "out"
    cli("augment", imagefolder, "--config", cfg, "--out", out, "magnitude=5", "-n", 1)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["n"] == 1  # the flag beats the file
    assert resolved["options"]["num_ops"] == 1 and resolved["options"]["magnitude"] == 5
    assert resolved["input"]["min_side"] == 4
    assert all(len(r["params"]["ops"]) == 1 for r in read_rows(out))


@pytest.mark.parametrize("args, message", [
    (["--method", "randaugment", "magnitud=3"], "unknown option 'magnitud'"),
    (["--method", "randaugment", "num_ops=two"], "option 'num_ops'"),
    (["--method", "randaugment", "input.min_sid=3"], "unknown option 'min_sid'"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "cutmix"], "batch-level"),
    (["--method", "randaugment", "noequals"], "key=value"),
    ([], "no method given"),
])
def test_bad_configuration_is_one_clear_line(imagefolder, tmp_path, args, message):
    res = cli("augment", imagefolder, "--out", tmp_path / "out", *args, expect=2)
    assert message in res.output and "Traceback" not in res.output


def test_missing_source_is_a_clear_error(tmp_path):
    res = cli("augment", tmp_path / "nowhere", "--method", "cutout", "--out", tmp_path / "o", expect=2)
    assert "source not found" in res.output


@pytest.mark.parametrize("method", GENERATORS)
def test_same_bytes_whatever_the_batch_size(method, imagefolder, tmp_path, method_options):
    for bs in (1, 4, 64):
        cli("augment", imagefolder, "--method", method, "--out", tmp_path / f"bs{bs}", "-n", 3, "--batch-size", bs,
            *overrides(method_options.get(method, {})))
    a, b, c = (png_bytes(tmp_path / f"bs{bs}") for bs in (1, 4, 64))
    assert len(a) + _blank_rejections(tmp_path / "bs1") == 27 and a == b == c


def test_seed_changes_the_images(imagefolder, tmp_path):
    cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "s0", "-n", 2, "--seed", 0)
    cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "s1", "-n", 2, "--seed", 1)
    assert png_bytes(tmp_path / "s0").keys() == png_bytes(tmp_path / "s1").keys()
    assert png_bytes(tmp_path / "s0") != png_bytes(tmp_path / "s1")


def test_rerun_skips_and_larger_n_adds_only_missing_variants(imagefolder, tmp_path):
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 2)
    first = png_bytes(out)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in first}
    assert "wrote 0 image(s)" in cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 2).output
    res = cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 3)
    assert "wrote 9 image(s)" in res.output and "18 already present" in res.output
    after = png_bytes(out)
    assert len(after) == 27 and all(after[p] == b for p, b in first.items())
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())  # untouched, not rewritten
    rows = read_rows(out)
    assert len(rows) == 27 and len({(r["source_id"], r["variant"]) for r in rows}) == 27
    # a fresh run with n=3 makes exactly the same files
    cli("augment", imagefolder, "--method", "cutout", "--out", tmp_path / "fresh", "-n", 3)
    assert png_bytes(tmp_path / "fresh") == after


def test_a_last_row_cut_before_its_newline_is_kept_and_the_next_rows_follow_on_their_own_lines(imagefolder,
                                                                                                 tmp_path):
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 1)
    n = len(read_rows(out))
    meta = out / "metadata.jsonl"
    meta.write_text(meta.read_text().rstrip("\n"))  # cut between the last "}" and its newline
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 2)
    assert len(read_rows(out)) == 2 * n
    cli("augment", imagefolder, "--method", "cutout", "--out", tmp_path / "fresh", "-n", 2)
    assert png_bytes(out) == png_bytes(tmp_path / "fresh")


def test_a_manifest_left_behind_by_a_killed_reweighting_is_rebuilt_by_the_next_run(imagefolder, tmp_path):
    # `genaug weight` rewrites metadata.jsonl, then manifest.parquet: killed between the two, the parquet holds
    # the old weights with the same number of rows; the next run must see that and rebuild it
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 1)
    meta = out / "metadata.jsonl"
    meta.write_text("".join(json.dumps({**json.loads(line), "weight": 0.5}) + "\n"
                            for line in meta.read_text().splitlines()))
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 1)  # nothing to generate
    assert set(pq.read_table(out / "manifest.parquet").column("weight").to_pylist()) == {0.5}


def test_an_output_folder_inside_the_image_folder_it_reads_is_refused(imagefolder, tmp_path):
    res = cli("augment", imagefolder, "--method", "cutout", "--out", imagefolder / "aug", expect=2)
    assert "is inside the source folder" in res.output and not (imagefolder / "aug").exists()


def test_resuming_with_other_settings_is_refused(imagefolder, tmp_path):
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "cutout", "--out", out)
    res = cli("augment", imagefolder, "--method", "cutout", "--out", out, "--seed", 3, expect=2)
    assert "other settings" in res.output and "seed" in res.output
    res = cli("augment", imagefolder, "--method", "randaugment", "--out", out, expect=2)
    assert "method" in res.output
    # one option changed: the message names it alone, not the whole options
    res = cli("augment", imagefolder, "--method", "cutout", "--out", out, "value=9", expect=2)
    text = " ".join(res.output.split())
    assert "options.value: 0 there, 9 now" in text and "options.scale" not in text


def test_resuming_a_folder_of_an_older_genaug_says_which_new_setting_stops_it(imagefolder, tmp_path):
    """A later genaug's new option at its default (the old behaviour) resumes the folder; set otherwise, the
    refusal names it and the genaug that made the folder."""
    out = tmp_path / "out"
    cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 1)

    def as_an_older_genaug_wrote_it():  # without the option "value"
        config = yaml.safe_load((out / "config.yaml").read_text())
        del config["options"]["value"]
        config["versions"]["genaug"] = "0.0.1"
        (out / "config.yaml").write_text(yaml.safe_dump(config))

    as_an_older_genaug_wrote_it()
    res = cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 2)  # value at its default, 0
    assert "already present" in res.output
    as_an_older_genaug_wrote_it()
    res = cli("augment", imagefolder, "--method", "cutout", "--out", out, "-n", 2, "value=9", expect=2)
    text = " ".join(res.output.split())
    assert "options.value: absent there, 9 now" in text and "made by genaug 0.0.1" in text


def test_new_source_images_are_picked_up_on_rerun(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2)
    out = tmp_path / "out"
    cli("augment", src, "--method", "flipcrop", "--out", out)
    make_imagefolder(src, digit_images, per_class=3)
    res = cli("augment", src, "--method", "flipcrop", "--out", out)
    assert "wrote 3 image(s)" in res.output and len(read_rows(out)) == 9
