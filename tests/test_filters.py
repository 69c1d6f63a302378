"""Filters judge every synthetic image, record why, and training leaves the removed ones out."""
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import cli, digit_folder, read_rows
from genaug.pipeline import augment
from genaug.scoring.filters import FILTERS_JSON, NEGATIVE_PROMPTS, filter_folder

CLASSES = "012"
# the real-only classifier: the offline fallback (ImageNet MobileNetV2, linear, 64 px), trained briefly
PROBE = {"backbone": "mobilenet_v2", "classifier": {"epochs": 8}}


def _folder(root: Path, digit_images, rows: slice) -> Path:
    return digit_folder(root, digit_images, rows, CLASSES)


@pytest.fixture(scope="module")
def base(tmp_path_factory, digit_images):
    """Real training digits (20 per class), other digits the generator starts from, and an honest synthetic
    folder: flipcrop variants of those."""
    root = tmp_path_factory.mktemp("filters")
    train = _folder(root / "train", digit_images, slice(0, 20))
    gen = _folder(root / "gen", digit_images, slice(20, 28))
    augment(gen, root / "honest", "flipcrop", n=1, progress=False)
    return {"root": root, "train": train, "gen": gen, "honest": root / "honest"}


def _spoiled(base, dst: Path) -> tuple[Path, dict[str, str]]:
    """The honest folder with four images spoiled: one black, one a copy of a training image, one a copy of an
    earlier synthetic image, one showing a 0 while labelled 1."""
    shutil.copytree(base["honest"], dst)
    rows = read_rows(dst)
    by_label = {c: [r for r in rows if r["label"] == c] for c in CLASSES}
    spoiled = {"blank": by_label["0"][1]["file_name"], "near_copy": by_label["2"][0]["file_name"],
               "duplicate": by_label["2"][3]["file_name"], "mislabelled": by_label["1"][2]["file_name"]}
    size = Image.open(dst / spoiled["blank"]).size
    Image.new("RGB", size, (0, 0, 0)).save(dst / spoiled["blank"])
    shutil.copy(base["train"] / "2" / "img_5.png", dst / spoiled["near_copy"])
    shutil.copy(dst / by_label["2"][2]["file_name"], dst / spoiled["duplicate"])
    shutil.copy(base["gen"] / "0" / "img_4.png", dst / spoiled["mislabelled"])
    return dst, spoiled


@pytest.fixture(scope="module")
def filtered(base):
    syn, spoiled = _spoiled(base, base["root"] / "spoiled")
    summary = filter_folder(syn, base["train"], config=PROBE)
    return syn, spoiled, summary


def test_each_spoiled_image_is_caught_by_its_filter_and_recorded(filtered):
    syn, spoiled, summary = filtered
    rows = {r["file_name"]: r for r in read_rows(syn)}
    assert summary["filters"] == ["blank", "duplicate", "agreement", "cleanlab"]  # clip only with a CLIP model
    # every image carries every filter's decision
    assert all(set(r["filters"]) == set(summary["filters"]) and isinstance(r["filtered"], list) for r in rows.values())
    assert "blank" in rows[spoiled["blank"]]["filtered"] and "blank" in rows[spoiled["blank"]]["filters"]["blank"]["reason"]
    near = rows[spoiled["near_copy"]]["filters"]["duplicate"]
    assert not near["pass"] and "near_copy" in near["flags"] and near["nearest_train"] == "2/img_5.png"
    dup = rows[spoiled["duplicate"]]["filters"]["duplicate"]
    assert not dup["pass"] and "duplicate" in dup["flags"] and dup["duplicate_of"]
    bad = rows[spoiled["mislabelled"]]["filters"]["agreement"]
    assert not bad["pass"] and bad["predicted"] == "0"
    # removed images weigh 0 (their old weight kept); the others keep theirs
    for r in rows.values():
        assert (r["weight"] == 0) == bool(r["filtered"])
        assert ("weight_before_filter" in r) == bool(r["filtered"])
        assert 0 <= r["scores"]["label_quality"] <= 1
    # the honest images (flipcrop variants of unseen digits) are neither blank nor copies, and mostly agree with
    # the classifier (a mirrored 2 may not)
    honest = [r for name, r in rows.items() if name not in spoiled.values()]
    assert {name for name, r in rows.items() if {"blank", "duplicate"} & set(r["filtered"])} == \
        {spoiled[k] for k in ("blank", "near_copy", "duplicate")}
    assert sum(r["filters"]["agreement"]["pass"] for r in honest) >= 0.6 * len(honest)
    # the funnel: in order, each step removes what the earlier ones left; per class adds up
    f = summary["funnel"]
    assert [s["filter"] for s in f] == summary["filters"] and f[-1]["remaining"] == summary["kept"]
    assert summary["n"] - sum(s["removed"] for s in f) == summary["kept"] == sum(not r["filtered"] for r in rows.values())
    assert sum(c["kept"] for c in summary["per_class"].values()) == summary["kept"]
    assert json.loads((syn / FILTERS_JSON).read_text())["funnel"] == f
    assert (syn / "audit.json").is_file()  # the duplicate filter's evidence
    acc = summary["models"]["probe"]["holdout_accuracy"]  # how far to trust agreement / cleanlab, said
    assert 0 <= acc <= 1 and bool(summary["warnings"]) == (acc < 0.7)


def test_training_chaining_and_weighting_leave_filtered_images_out(filtered, base):
    from genaug.data.sources import Source
    from genaug.scoring.probe import fit_probe
    from genaug.scoring.weighting import _weight_rows
    from genaug.train import load_synthetic

    syn, _, summary = filtered
    rows = read_rows(syn)
    out = {r["file_name"] for r in rows if r["filtered"]}
    assert out and set(load_synthetic(syn, 16).ids) == {r["file_name"] for r in rows} - out
    assert {rec.id for rec in Source(syn).records()} == {r["file_name"] for r in rows} - out
    # DIAGen's weighting afterwards keeps them at 0, and averages each source's kept variants to 1
    probe = fit_probe(base["train"], **PROBE)  # the filter's probe, reused from the work folder
    assert (probe.work / "classifier" / "metrics.json").is_file()
    tmp = base["root"] / "weighted"
    shutil.copytree(syn, tmp)
    w = _weight_rows(tmp, probe, "diagen", 0.2, None)
    assert w["n_filtered"] == len(out)
    assert all(r["weight"] == 0 for r in read_rows(tmp) if r["filtered"])


def test_a_rerun_with_other_filters_gives_weights_back(filtered, base):
    syn, spoiled, _ = filtered
    again = base["root"] / "again"
    shutil.copytree(syn, again)
    r = filter_folder(again, base["train"], config={"filters": ["blank"]})
    rows = {x["file_name"]: x for x in read_rows(again)}
    assert r["filters"] == ["blank"] and [k for k, x in rows.items() if x["filtered"]] == [spoiled["blank"]]
    assert rows[spoiled["near_copy"]]["weight"] == 1.0 and "weight_before_filter" not in rows[spoiled["near_copy"]]
    assert set(rows[spoiled["near_copy"]]["filters"]) == {"blank"}


def test_drop_deletes_and_a_resumed_run_does_not_generate_them_again(base):
    syn, spoiled = _spoiled(base, base["root"] / "drop")
    n = len(read_rows(syn))
    r = filter_folder(syn, base["train"], config={"filters": ["blank", "duplicate"], "action": "drop"})
    names = {x["file_name"] for x in read_rows(syn)}
    gone = [spoiled["blank"], spoiled["near_copy"], spoiled["duplicate"]]
    assert r["dropped"] == n - len(names) >= 3 and not names & set(gone)
    assert not any((syn / g).exists() for g in gone)
    dropped = [json.loads(line) for line in (syn / "filtered.jsonl").read_text().splitlines()]
    assert {d["file_name"] for d in dropped} >= set(gone)
    assert all(d["filtered"] for d in dropped)
    augment(base["gen"], syn, "flipcrop", n=1, progress=False)  # resume: the dropped variants stay dropped
    assert {x["file_name"] for x in read_rows(syn)} == names and not any((syn / g).exists() for g in gone)


def test_clip_filter_follows_alias_rule(base, tiny_models):
    syn = base["root"] / "clip"
    shutil.copytree(base["honest"], syn)
    r = filter_folder(syn, base["train"], config={"filters": ["clip"], "clip": str(tiny_models["clip"])})
    prompts = r["models"]["clip"]["prompts"]
    assert prompts == [f"a photo of a {c}" for c in CLASSES] + NEGATIVE_PROMPTS
    for x in read_rows(syn):
        d = x["filters"]["clip"]
        assert d["predicted"] in prompts and d["pass"] == (d["predicted"] == f"a photo of a {x['label']}")
    r = filter_folder(syn, base["train"], config={"filters": ["clip"], "clip": str(tiny_models["clip"]),
                                                  "clip_match": "any"})
    for x in read_rows(syn):  # ALIA's rule: removed only when a negative prompt wins
        d = x["filters"]["clip"]
        assert d["pass"] == (d["predicted"] not in NEGATIVE_PROMPTS)


def test_filter_stage_of_augment_and_the_cli(base, tmp_path):
    out = tmp_path / "o"
    res = cli("augment", base["gen"], "--method", "flipcrop", "--out", out, "--filter", "blank,duplicate",
              "filter.action=weight")
    assert "filter_funnel: " in res.output and "(duplicate)" in res.output
    s = json.loads((out / FILTERS_JSON).read_text())
    assert s["filters"] == ["blank", "duplicate"] and s["real"] == str(base["gen"])
    assert "unchanged" in cli("augment", base["gen"], "--method", "flipcrop", "--out", out, "--filter",
                              "blank,duplicate", "filter.action=weight").output
    res = cli("filter", out, "--filters", "blank", "--json", tmp_path / "f.json")
    assert "kept" in res.output and json.loads((tmp_path / "f.json").read_text())["filters"] == ["blank"]
    yaml_cfg = tmp_path / "filters.yaml"
    yaml_cfg.write_text("filters: [duplicate]\n")
    res = cli("filter", out, "--config", yaml_cfg, "--filters", "blank", "--json", tmp_path / "f.json")
    assert json.loads((tmp_path / "f.json").read_text())["filters"] == ["blank"]  # the flag beats the YAML
    res = cli("filter", out, "--config", yaml_cfg, "--filters", "default", "--json", tmp_path / "f.json")
    assert json.loads((tmp_path / "f.json").read_text())["filters"] == ["blank", "duplicate", "agreement", "cleanlab"]
    res = cli("filter", out, "--filters", "blank", "--json", tmp_path / "f.json")  # the funnel the card shows
    cli("card", out, "--no-metrics")  # the data card shows this very funnel
    html = (out / "card.html").read_text()
    assert 'id="funnel-table"' in html and "<td>blank</td>" in html
    assert "needs a CLIP model" in cli("filter", out, "--filters", "clip", expect=2).output
    assert "filters" in cli("filter", out, "--filters", "sharpness", expect=2).output
    assert "not a genaug output folder" in cli("filter", tmp_path, expect=2).output
    assert "unknown option" in cli("augment", base["gen"], "--method", "flipcrop", "--out", tmp_path / "p",
                                   "filter.nosuch=1", expect=2).output
    assert not (tmp_path / "p" / "metadata.jsonl").exists()  # bad filter options fail before generating


def test_the_duplicate_filter_reuses_a_matching_audit(filtered, base):
    syn, spoiled, summary = filtered
    assert summary["models"]["duplicate"]["audit_reused"] is False  # the first run audited
    again = base["root"] / "reuse"
    shutil.copytree(syn, again)  # copy2 keeps the times: the audit still describes these very images
    audit_file = again / "audit.json"
    before = audit_file.stat().st_mtime_ns
    r = filter_folder(again, base["train"], config={"filters": ["duplicate"]})
    assert r["models"]["duplicate"]["audit_reused"] is True and audit_file.stat().st_mtime_ns == before
    assert {x["file_name"] for x in read_rows(again) if x["filtered"]} >= {spoiled["near_copy"], spoiled["duplicate"]}
    # another threshold, or an image changed since, and the audit runs again
    r = filter_folder(again, base["train"], config={"filters": ["duplicate"], "quantile": 0.95})
    assert r["models"]["duplicate"]["audit_reused"] is False
    Path(again / spoiled["blank"]).touch()
    r = filter_folder(again, base["train"], config={"filters": ["duplicate"], "quantile": 0.95})
    assert r["models"]["duplicate"]["audit_reused"] is False
