"""What genaug's self-contained HTML pages (the bench report, the data card) share: images inlined as
base64 data URIs, and a script that counts the images the browser decoded (the browser tests read it)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

# On load, <html data-images-loaded="N">: N images decoded and laid out (a headless browser's --dump-dom shows it).
IMAGES_LOADED_SCRIPT = """<script>
window.addEventListener("load", () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.documentElement.dataset.imagesLoaded = ok;
});
</script>"""


def img64(path: Path) -> str:
    """A PNG file as a data URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def thumb64(image, size: int = 96) -> str:
    """A PIL image as a PNG data URI, shrunk to at most `size` px on its longer side (never enlarged: the page
    scales small images up, pixels kept sharp, so it stays small)."""
    image = image.convert("RGB")
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
