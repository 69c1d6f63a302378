"""The main job on real data, offline."""
import json

from PIL import Image

from conftest import cli, read_rows
from genaug.data.builtin import fashion_mnist, fashion_mnist_available, stratified_subset


def test_demo_runs_end_to_end_on_real_data(tmp_path):
    out = tmp_path / "demo"
    res = cli("demo", "--out", out, "--per-class", 3, "-n", 2, "--json", tmp_path / "d.json")
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["dataset"] == ("fashion-mnist" if fashion_mnist_available() else "digits")
    assert str(out / "grid.png") in res.output
    rows = read_rows(out / "synthetic")
    assert len(rows) == 3 * 2 * result["classes"]
    grid = Image.open(out / "grid.png")
    assert grid.width > 3 * 28 and grid.height > 28
    if result["dataset"] == "fashion-mnist":  # a class named "T-shirt/top" keeps its name, in a safe folder
        assert "T-shirt/top" in {r["label"] for r in rows}


def test_fashion_mnist_reader_when_installed():
    if not fashion_mnist_available():
        import pytest

        pytest.skip("dataset-fashion-mnist is not installed (make test installs it as root)")
    images, labels, classes = fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype.name == "uint8" and len(classes) == 10
    idx = stratified_subset(labels, 5, seed=0)
    assert len(idx) == 50 and (labels[idx] == labels[idx].min()).sum() == 5
