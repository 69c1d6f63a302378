"""The torch Dataset and batch sampler users put into their own training loop (the README's example runs)."""
import re
from pathlib import Path

import torch

from conftest import make_imagefolder
from genaug import augment
from genaug.train import AugmentedDataset, SyntheticShareSampler

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("**In your own training loop**")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_training_loop_runs(tmp_path, digit_images, monkeypatch):
    make_imagefolder(tmp_path / "data", digit_images, per_class=8)
    augment(tmp_path / "data", tmp_path / "aug", method="flipcrop", n=2, progress=False)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), "README example", "exec"), scope)  # noqa: S102 - our own README's code
    ds, loss = scope["ds"], scope["loss"]
    assert ds.n_real == 24 and ds.n_synthetic == 48 and ds.classes == ["0", "1", "2"]
    assert torch.isfinite(loss)


def test_items_batches_and_weights(tmp_path, digit_images):
    make_imagefolder(tmp_path / "data", digit_images, per_class=4)
    augment(tmp_path / "data", tmp_path / "aug", method="cutout", n=1, progress=False)
    ds = AugmentedDataset(tmp_path / "data", synthetic=[tmp_path / "aug"], image_size=16)
    image, label, weight = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and weight == 1.0
    assert ds.classes[label] == ds.labels[0]  # the index maps back to the exact label
    loader = torch.utils.data.DataLoader(ds, batch_sampler=SyntheticShareSampler(ds, batch_size=8, synthetic_share=0.25))
    images, labels, weights = next(iter(loader))
    assert images.shape == (8, 3, 16, 16) and labels.dtype == torch.int64 and weights.shape == (8,)
    assert images.dtype == torch.uint8 and set(weights.tolist()) == {1.0}
    sampler = SyntheticShareSampler(ds, batch_size=8, synthetic_share=0.25)
    assert all(sum(i >= ds.n_real for i in b) == 2 for b in sampler)
    flipped = AugmentedDataset(tmp_path / "data", image_size=16, transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[0][0], ds[0][0].flip(-1))


def test_an_output_folder_as_the_real_set_keeps_its_weights(tmp_path, digit_images):
    # CAS trains on a generator's images alone: they are its "real" set, and their weights still count
    import json

    make_imagefolder(tmp_path / "data", digit_images, per_class=2)
    augment(tmp_path / "data", tmp_path / "aug", method="cutout", n=2, progress=False)
    meta = tmp_path / "aug" / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["weight"] = [0.0, 0.5, 2.0][i % 3]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = AugmentedDataset(tmp_path / "aug", image_size=16)
    assert ds.n_real == 8 and sorted(ds.weights.tolist()) == [0.5] * 4 + [2.0] * 4  # weight 0: never drawn


def test_a_generated_image_gone_missing_is_named_in_the_error(tmp_path, digit_images):
    import pytest

    from genaug.core.config import ConfigError

    make_imagefolder(tmp_path / "data", digit_images, per_class=2)
    augment(tmp_path / "data", tmp_path / "aug", method="cutout", n=1, progress=False)
    gone = sorted((tmp_path / "aug").rglob("*.png"))[0]
    gone.unlink()
    with pytest.raises(ConfigError, match=f"{gone.name}.*file not found.*rerun"):
        AugmentedDataset(tmp_path / "data", synthetic=[tmp_path / "aug"], image_size=16)


def test_shared_loads_decode_a_source_once_and_see_a_rewritten_manifest(tmp_path, digit_images):
    import json
    import os

    from genaug.data.imageset import load_real, load_synthetic, shared_loads

    make_imagefolder(tmp_path / "data", digit_images, per_class=4)
    augment(tmp_path / "data", tmp_path / "aug", method="cutout", n=1, progress=False)
    assert load_real(tmp_path / "data", 16) is not load_real(tmp_path / "data", 16)  # off outside the block
    with shared_loads():
        real = load_real(tmp_path / "data", 16)
        assert load_real(tmp_path / "data", 16) is real and load_real(tmp_path / "data", 20) is not real
        syn = load_synthetic(tmp_path / "aug", 16)
        assert load_synthetic(tmp_path / "aug", 16) is syn and len(syn) == 12
        meta = tmp_path / "aug" / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text().splitlines()]
        rows[0]["weight"] = 0.0  # a later stage re-weights: the next load must see it
        meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
        st = meta.stat()
        os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert len(load_synthetic(tmp_path / "aug", 16)) == 11
    assert load_real(tmp_path / "data", 16) is not real
