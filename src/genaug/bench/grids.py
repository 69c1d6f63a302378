"""Pictures of what genaug made."""
from __future__ import annotations

from pathlib import Path

from ..data.metadata import CONFIG, read_rows, source_file


def save_grid(synthetic_dir: Path, out_png: Path, per_row: int = 10, n_variants: int = 3,
              min_tile: int = 64) -> Path | None:
    """One row per class (its first source image that can still be read): the real image, then its first
    `n_variants` variants. None when no source image can be found."""
    import torch
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor
    from torchvision.utils import make_grid, save_image

    from ..core.config import load_yaml

    synthetic_dir = Path(synthetic_dir)
    source_root = (load_yaml(synthetic_dir / CONFIG) or {}).get("source") if (synthetic_dir / CONFIG).is_file() else None
    rows: dict[Path, list[str]] = {}
    first_of_label: dict[str, Path] = {}
    for r in read_rows(synthetic_dir):
        if r["variant"] < n_variants and (src := source_file(r, source_root)) is not None:
            rows.setdefault(src, [None] * n_variants)[r["variant"]] = r["file_name"]
            first_of_label[r["label"]] = min(first_of_label.get(r["label"], src), src)
    if not rows:
        return None
    width = 1 + max(sum(fn is not None for fn in v) for v in rows.values())
    tiles = []
    for src in [first_of_label[label] for label in sorted(first_of_label)][:per_row]:
        files = [src] + [synthetic_dir / fn for fn in rows[src] if fn]
        row = [Image.open(p).convert("RGB") for p in files]
        size = row[0].size
        row = [im.resize(size) for im in row]  # a method may change the size; the grid needs one
        scale = max(1, min_tile // max(size))  # small images (28 px) are enlarged, pixels kept sharp
        row = [im.resize((size[0] * scale, size[1] * scale), Image.NEAREST) for im in row]
        row += [Image.new("RGB", row[0].size, (255, 255, 255))] * (width - len(row))
        tiles += [pil_to_tensor(im) for im in row]
    grid = make_grid(torch.stack(tiles), nrow=width, padding=2, pad_value=255)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.float() / 255, out_png)
    return out_png
