"""`genaug card DIR`: the data card of an output folder, one self-contained HTML page, rendered in headless
Chromium."""
import json
import re
import shutil

import numpy as np
import pytest

from conftest import cli, make_imagefolder, needs_chromium, read_rows, render_in_chromium
from genaug.data.metadata import rewrite_rows

CLASSES = ("0", "1", "2")
FILTERS = {"filters": ["blank", "clip"], "action": "weight", "n": 18, "kept": 15,
           "funnel": [{"filter": "blank", "failed": 1, "removed": 1, "remaining": 17},
                      {"filter": "clip", "failed": 4, "removed": 2, "remaining": 15}],
           "per_class": {"0": {"n": 6, "kept": 4, "blank": 1, "clip": 2},
                         "1": {"n": 6, "kept": 5, "clip": 1},
                         "2": {"n": 6, "kept": 6}},
           "options": {"clip": {"threshold": 0.2}}}


def _section(html: str, name: str) -> str:
    """The text of one <h2 id=NAME> section, up to the next <h2."""
    start = html.index(f'<h2 id="{name}"')
    end = html.find("<h2", start + 1)
    return html[start:end if end > 0 else None]


def _srcs(html: str, cls: str) -> list[str]:
    return re.findall(rf'<img class="t {cls}"[^>]*src="(data:image/png;base64,[^"]+)"', html)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digit_images):
    """randaugment variants (2 per image) of 3 digits x 3 classes, audited, with a hand-written filters.json and
    one row that failed the `clip` filter."""
    root = tmp_path_factory.mktemp("card")
    src = make_imagefolder(root / "src", digit_images, classes=CLASSES)
    out = root / "out"
    cli("augment", src, "--method", "randaugment", "-n", "2", "--out", out)
    cli("audit", out, "--real", src, "--feature-size", "64")
    (out / "filters.json").write_text(json.dumps(FILTERS))
    rows = read_rows(out)
    rows[1].update(filtered=["clip"], weight=0.0)
    rewrite_rows(out, rows)
    return src, out, rows[1]["file_name"]


@pytest.fixture(scope="module")
def card(folder):
    src, out, _ = folder
    res = cli("card", out, "--feature-size", "64")  # real images: the run's source, which is still there
    assert res.output.strip().endswith("card.html")
    return (out / "card.html").read_text(encoding="utf-8")


def test_card_shows_classes_images_funnel_audit_and_metrics(folder, card):
    src, out, filtered = folder
    audit = json.loads((out / "audit.json").read_text())
    # every class: its own grid of real beside synthetic thumbnails (3 real digits per class, 6 variants)
    for c in CLASSES:
        row = re.search(rf'<div class="row" data-class="{c}">(.*?)</div>\s*</div>', card, re.S).group(1)
        assert len(_srcs(row, "real")) == 3 and len(_srcs(row, "synthetic")) == 6
    assert "randaugment" in card and str(src) in card and "genaug version" in card
    assert "num_magnitude_bins: 31" in card  # config.yaml verbatim
    # the filter funnel and the per-class table, with the filtered image and its reason
    funnel = re.sub(r"\s+", "", _section(card, "filters"))
    assert "<tr><td>blank</td><td>1</td><td>1</td><td>17</td></tr>" in funnel
    assert "<tr><td>clip</td><td>4</td><td>2</td><td>15</td></tr>" in funnel
    assert "<tr><td>0</td><td>6</td><td>4</td><td>1</td><td>2</td></tr>" in funnel
    assert len(_srcs(card, "filtered")) == 1 and f'alt="filtered {filtered}"' in card and "0: clip" in card
    # the weights: one image at weight 0
    assert "<td>at weight 0</td><td>1</td>" in _section(card, "weighting")
    # the audit's counts as written in audit.json
    audit_html = re.sub(r"\s+", "", _section(card, "audit"))
    counts = audit["counts"]
    assert "".join(f"<th>{k}</th>" for k in ("near_copy", "source_copy", "leak")) in audit_html
    assert f"<tr><td>all</td><td>{counts['near_copy']}</td><td>{counts['source_copy']}</td><td>{counts['leak']}</td>" \
        in audit_html
    # the metrics, overall and per class, named by feature space; CMMD asks for --clip
    metrics = _section(card, "metrics")
    assert "<th>precision</th>" in metrics and "<th>fd_mobilenet_v2</th>" in metrics
    assert re.search(r"<td>overall</td><td>9</td><td>17</td><td>\d\.\d{4}</td>", metrics)
    assert all(f"<tr><td>{c}</td>" in metrics for c in CLASSES) and "CMMD and the CLIP score need" in metrics


def test_card_without_metrics_and_elsewhere(folder, tmp_path):
    """--no-metrics leaves the metrics out; --real names the real images; --out writes elsewhere, and nothing
    else in the folder changes."""
    src, out, _ = folder
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "card.html"}
    page = tmp_path / "sub" / "page.html"
    cli("card", out, "--no-metrics", "--real", src, "--per-class", "2", "--out", page)
    html = page.read_text(encoding="utf-8")
    metrics = _section(html, "metrics")
    assert "--no-metrics" in metrics and "<table" not in metrics and "precision" not in metrics
    assert len(_srcs(html, "real")) == 2 * 3 and len(_srcs(html, "synthetic")) == 2 * 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "card.html"} == before


def test_card_without_real_images_or_side_files(folder, tmp_path):
    """A folder moved away from its source, with no audit / filters / weighting: synthetic images only, and each
    missing section says how to produce it."""
    _, out, _ = folder
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("*.json", "audit_pairs.png", "card.html"))
    (bare / "config.yaml").write_text((bare / "config.yaml").read_text().replace("source: ", "source: /nonexistent"))
    cli("card", bare)
    html = (bare / "card.html").read_text(encoding="utf-8")
    assert "Synthetic images only" in html and not _srcs(html, "real") and len(_srcs(html, "synthetic")) == 18
    assert "genaug audit" in _section(html, "audit") and "genaug filter" in _section(html, "filters")
    assert "genaug weight" in _section(html, "weighting") and "pass --real" in _section(html, "metrics")
    # an audit without its pairs image: the closest pairs as a table of thumbnails, synthetic beside real
    shutil.copy(out / "audit.json", bare / "audit.json")
    cli("card", bare)
    audit = _section((bare / "card.html").read_text(encoding="utf-8"), "audit")
    pairs = json.loads((out / "audit.json").read_text())["closest_pairs"]
    assert 'id="pairs-table"' in audit and pairs[0]["synthetic"] in audit and pairs[0]["real"] in audit
    assert len(_srcs(audit, "pair")) == 2 * min(len(pairs), 12)
    assert 'id="audit-stale"' not in audit


def test_card_marks_an_audit_older_than_the_folders_images(folder, tmp_path):
    """Images generated after the audit: the card says its figures are out of date; the closest pairs are
    listed as text beside the pairs picture (whose font may lack a label's script)."""
    src, out, _ = folder
    grown = shutil.copytree(out, tmp_path / "grown")
    cli("augment", src, "--method", "randaugment", "-n", "3", "--out", grown)  # 9 more images, not audited
    cli("card", grown, "--no-metrics")
    audit = _section((grown / "card.html").read_text(encoding="utf-8"), "audit")
    assert 'id="audit-stale"' in audit and "9 not audited" in audit and "rerun genaug audit" in audit
    assert "audit closest pairs" in audit and 'id="pairs-table"' in audit


def test_card_lists_each_model_once(folder, tmp_path):
    """The models of the rows' provenance (as a generative method records them: {role: {id, revision}}), each
    distinct one listed once; a classical run says it used none."""
    _, out, _ = folder
    copy = tmp_path / "gen"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("card.html"))
    cli("card", copy, "--no-metrics")
    assert "No pretrained model" in _section((copy / "card.html").read_text(encoding="utf-8"), "models")
    rows = read_rows(copy)
    sd = {"diffusion": {"id": "stabilityai/sd-turbo", "revision": "b261bac"}}
    for i, r in enumerate(rows):
        r["models"] = sd if i % 2 else {**sd, "llm": {"id": "meta-llama/Llama-3.2-1B", "revision": "4e20de3"}}
    rewrite_rows(copy, rows)
    cli("card", copy, "--no-metrics")
    models = re.sub(r"\s+", "", _section((copy / "card.html").read_text(encoding="utf-8"), "models"))
    assert models.count("<tr><td>diffusion</td><td>stabilityai/sd-turbo</td><td>b261bac</td></tr>") == 1
    assert models.count("<td>meta-llama/Llama-3.2-1B</td>") == 1


def test_card_bad_input(folder, tmp_path):
    _, out, _ = folder
    (tmp_path / "plain").mkdir()
    res = cli("card", tmp_path / "plain", expect=2)
    assert "is not a genaug output folder" in res.output and "genaug augment" in res.output
    assert "does not exist" in cli("card", tmp_path / "nothing", expect=2).output
    assert "real images" in cli("card", out, "--real", tmp_path / "missing", "--out", tmp_path / "c.html",
                                expect=2).output
    assert not (tmp_path / "c.html").exists()


@needs_chromium
def test_card_renders_in_chromium(folder, card, tmp_path):
    _, out, _ = folder
    dom, shot = render_in_chromium(out / "card.html", tmp_path)
    n_img = dom.count("<img")
    assert n_img >= 3 * (3 + 6) + 1 and f'data-images-loaded="{n_img}"' in dom  # every image decoded
    assert all(f'data-class="{c}"' in dom for c in CLASSES) and 'id="funnel-table"' in dom
    assert shot.shape == (1600, 1200) and len(np.unique(shot)) > 50  # a rendered page, not a blank one
