"""Real + synthetic images for a training loop — genaug's own (`genaug train`) or yours.

`AugmentedDataset` holds the real images and any number of genaug output folders (or other labelled sources
added to the real ones, e.g. a manifest of pseudo-labelled unlabelled images: weight 1), decoded once into
memory at one resolution (few-shot and low-data sets are small: 10k images at 32 px are 30 MB), with each
image's class index and loss weight (1 for real images, the manifest's `weight` for synthetic ones — also
when a genaug output folder is given as the real set; weight-0 images are left out). `SyntheticShareSampler` yields batches of indices in which synthetic images
are a fixed share of every batch (the papers' mixing), or real and synthetic pooled and shuffled.

    loader = DataLoader(ds, batch_sampler=SyntheticShareSampler(ds, batch_size=64, synthetic_share=0.5))
    for images, labels, weights in loader: ...   # uint8 (B, 3, S, S), int64 (B,), float32 (B,)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from ..core.config import ConfigError
from ..data.imageset import ImageSet, concat, load_real, load_synthetic
from ..data.metadata import METADATA


def _load_added(src: str | Path, size: int) -> ImageSet:
    """A folder with genaug's metadata.jsonl: its images and weights; any other labelled source: weight 1."""
    if (Path(src) / METADATA).is_file():
        return load_synthetic(src, size)
    return load_real(src, size, f"added {Path(src).name}")


class AugmentedDataset(Dataset):
    """Item i: `(image, label, weight)` — a uint8 `(3, S, S)` tensor (or `transform(image)`), the class index
    in `classes`, and the loss weight. Indices `0 … n_real-1` are the real images, the rest synthetic."""

    def __init__(self, real: str | Path | ImageSet, synthetic: Sequence[str | Path | ImageSet] = (),
                 image_size: int = 32, classes: Sequence[str] | None = None, use_weights: bool = True,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        # a genaug output folder as the real set (CAS: a classifier on synthetic images alone) keeps its weights
        real_set = (real if isinstance(real, ImageSet) else load_synthetic(real, image_size)
                    if (Path(real) / METADATA).is_file() else load_real(real, image_size, "real"))
        syn_set = concat([s if isinstance(s, ImageSet) else _load_added(s, image_size) for s in synthetic], image_size)
        self.classes = list(classes) if classes is not None else sorted(set(real_set.labels))
        foreign = sorted(set(syn_set.labels) - set(self.classes))
        if foreign:
            raise ConfigError(f"synthetic labels {foreign[:5]} are not among the real classes {self.classes[:10]}")
        pool = concat([real_set, syn_set], image_size)
        self.images = pool.images
        self.labels = pool.labels
        self.ids = pool.ids
        self.targets = pool.targets(self.classes)
        self.weights = pool.weights if use_weights else torch.ones(len(pool))
        self.n_real, self.n_synthetic = len(real_set), len(syn_set)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = self.images[i]  # the weight as a float32 scalar tensor: a DataLoader collates it to float32 (B,)
        return (self.transform(image) if self.transform else image), int(self.targets[i]), self.weights[i]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(images, labels, weights)` of a batch at once: what a DataLoader would collate, without the per-item
        Python loop (genaug train's own path; `transform` is not applied)."""
        return self.images[indices], self.targets[indices], self.weights[indices]

    def is_synthetic(self, indices: torch.Tensor) -> torch.Tensor:
        return indices >= self.n_real


class SyntheticShareSampler(Sampler[list[int]]):
    """Batches of indices into an `AugmentedDataset` (or any dataset laid out real-then-synthetic).

    - `synthetic_share=s`: every batch holds exactly `round(s * batch_size)` synthetic images (none when the
      dataset has no synthetic image); real and synthetic images are each drawn from a fresh permutation
      cycled as needed, so every image is seen as evenly as the batch count allows.
    - `synthetic_share=None` (or `"pool"`): real and synthetic images pooled, one permutation of all of them
      cycled; the synthetic share is then n_synthetic / (n_real + n_synthetic), 91 % for 10 variants per image.
      The default, 0.5, is DA-Fusion's and DIAGen's synthetic probability.
    `num_batches` per epoch defaults to one pass over the real images at the real part of each batch (over
    the pool, when pooled; over the synthetic images, when every batch is synthetic). The
    order depends only on `seed` and the epoch (`set_epoch`, as DistributedSampler), never on the machine.
    """

    def __init__(self, dataset: AugmentedDataset | None = None, batch_size: int = 64,
                 synthetic_share: float | str | None = 0.5, num_batches: int | None = None, seed: int = 0,
                 n_real: int | None = None, n_synthetic: int | None = None):
        self.n_real = dataset.n_real if dataset is not None else int(n_real or 0)
        self.n_synthetic = dataset.n_synthetic if dataset is not None else int(n_synthetic or 0)
        if synthetic_share == "pool":
            synthetic_share = None
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if synthetic_share is not None and not 0 <= synthetic_share <= 1:
            raise ConfigError(f"synthetic_share must be in [0, 1] (or None: pooled), got {synthetic_share}")
        self.batch_size, self.synthetic_share, self.seed, self.epoch = batch_size, synthetic_share, seed, 0
        n_syn = self.synthetic_per_batch
        if self.n_real == 0 and n_syn < batch_size:
            raise ConfigError("no real images to draw from")
        # what one pass (the default epoch) goes over, in words for the logs
        if synthetic_share is None:
            base, per = self.n_real + self.n_synthetic, batch_size
            self.pass_over = f"the {base} real and synthetic images"
        elif n_syn == batch_size:  # all-synthetic batches
            base, per = self.n_synthetic, batch_size
            self.pass_over = f"the {base} synthetic images"
        else:  # the real images, at the real part of each batch
            base, per = self.n_real, batch_size - n_syn
            self.pass_over = f"the {base} real images, {per} a batch"
        self.num_batches = num_batches or max(1, math.ceil(base / per))

    @property
    def synthetic_per_batch(self) -> int:
        if self.synthetic_share is None or self.n_synthetic == 0:
            return 0
        return int(round(self.synthetic_share * self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    @staticmethod
    def _cycle(n: int, count: int, g: torch.Generator) -> torch.Tensor:
        """`count` indices from successive permutations of `range(n)`."""
        if count == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(count / n))])[:count]

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        b, k = self.batch_size, self.synthetic_per_batch
        if self.synthetic_share is None:
            order = self._cycle(self.n_real + self.n_synthetic, b * self.num_batches, g)
            for s in range(self.num_batches):
                yield order[s * b:(s + 1) * b].tolist()
            return
        real = self._cycle(self.n_real, (b - k) * self.num_batches, g)
        syn = self.n_real + self._cycle(self.n_synthetic, k * self.num_batches, g) if k else real[:0]
        for s in range(self.num_batches):
            yield torch.cat([real[s * (b - k):(s + 1) * (b - k)], syn[s * k:(s + 1) * k]]).tolist()
