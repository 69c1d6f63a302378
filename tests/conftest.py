import os

# Before any HF library is imported: nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genaug.cli import app
from genaug.data.builtin import digits


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENAUG_CACHE", str(tmp_path_factory.getbasetemp() / "genaug-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))


@pytest.fixture(scope="session")
def digit_images():
    """Real handwritten digits (scikit-learn), upscaled to 16x16 so every op has room."""
    images, labels, classes = digits("all")
    return [Image.fromarray(im).resize((16, 16), Image.NEAREST) for im in images], labels, classes


def make_imagefolder(root: Path, digit_images, per_class: int = 3, classes=("0", "1", "2")) -> Path:
    images, labels, names = digit_images
    root.mkdir(parents=True, exist_ok=True)
    for c in classes:
        d = root / c
        d.mkdir(exist_ok=True)
        idx = np.flatnonzero(labels == names.index(c) if c in names else labels == 0)[:per_class]
        for j, i in enumerate(idx):
            images[i].save(d / f"img_{j}.png")
    return root


@pytest.fixture
def imagefolder(tmp_path, digit_images):
    return make_imagefolder(tmp_path / "src", digit_images)


TINY_FLOW = {"image_size": 16, "block_channels": [16, 16], "steps": 3, "batch_size": 8, "checkpoint_every": 3}


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory, digit_images):
    """A flow-matching generator trained for a few steps on real digits (16 px): real weights, tiny."""
    from genaug.flow.train import fit_flow

    root = tmp_path_factory.mktemp("flow")
    src = make_imagefolder(root / "src", digit_images, per_class=4)
    fit_flow(src, root / "model", TINY_FLOW, progress=False)
    return root / "model"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random pretrained components (CLIP, BLIP, SD 1.x, SD inpainting, SDXL, SD3, a chat LLM), saved with
    save_pretrained."""
    from genaug.testing.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def method_options(tiny_flow, tiny_models):
    """Options that make every registered method runnable offline in tests (models point at tiny ones)."""
    segment = {"detector": str(tiny_models["grounding-dino"]), "segmenter": str(tiny_models["sam"]),
               "box_threshold": 0.0, "text_threshold": 0.0}
    return {"semantic_flow": {"model": str(tiny_flow), "steps": 4},
            "real_guidance": {"model": str(tiny_models["sd15"]), "steps": 2, "resolution": 32},
            "sgid": {"model": str(tiny_models["sd15"]), "captioner": str(tiny_models["blip"]),
                     "clip": str(tiny_models["clip"]), "n_beam": 2, "n_nucleus": 2, "steps": 4, "resolution": 32},
            "da_fusion": {"model": str(tiny_models["sd15"]), "steps": 4, "resolution": 32, "ti_steps": 3},
            "diagen": {"model": str(tiny_models["sd15"]), "steps": 4, "resolution": 32, "ti_steps": 3,
                       "weight_epochs": 2},
            "aga": {"model": str(tiny_models["sd15"]), "steps": 2, "resolution": 32, **segment},
            "inpaint": {"model": str(tiny_models["sd15-inpaint"]), "steps": 2, "mode": "foreground",
                        "dilation": 1, **segment}}


def overrides(options: dict) -> list[str]:
    import yaml

    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in options.items()]


def make_cutouts(root: Path, digit_images, per_class: int) -> Path:
    """Real handwritten digits as RGBA cut-outs (alpha = the ink), 40x40, two classes named like words (cat, dog)."""
    images, labels, names = digit_images
    for c, name in (("0", "cat"), ("1", "dog")):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == names.index(c))[:per_class]):
            g = np.asarray(images[i].convert("L").resize((40, 40), Image.NEAREST))
            rgba = np.dstack([g, 255 - g, np.full_like(g, 90), np.where(g > 60, 255, 0).astype(np.uint8)])
            Image.fromarray(rgba, "RGBA").save(root / name / f"{j}.png")
    return root


def cli(*args: str, expect: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, f"exit {result.exit_code}, expected {expect}:\n{result.output}"
    return result


def read_rows(out: Path) -> list[dict]:
    with open(out / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def png_bytes(out: Path) -> dict[str, bytes]:
    """The synthetic images of an output folder (not what lives in its hidden folders, such as `.genaug-tmp/`)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if not any(part.startswith(".") for part in p.relative_to(out).parts)}


class ChatServer(BaseHTTPRequestHandler):
    """A loopback OpenAI-compatible chat endpoint answering `answer` to every request, recording them."""

    answer = ""
    raw: bytes | None = None  # when set, the whole body of a 200 reply instead of a chat completion
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization")))
        data = type(self).raw or json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": type(self).answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ChatServer.requests, ChatServer.raw = [], None
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def digit_folder(root: Path, digit_images, rows: slice, classes: str = "012") -> Path:
    """An ImageFolder of the digits `rows` (a slice of each class's images, so disjoint slices are disjoint
    sets), 16 px."""
    images, labels, names = digit_images
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(np.flatnonzero(labels == names.index(c))[rows]):
            images[i].save(root / c / f"img_{j}.png")
    return root


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (make test installs it as root)")


def render_in_chromium(html: Path, tmp_path: Path) -> tuple[str, "np.ndarray"]:
    """`(DOM after the page's scripts ran, 1200 x 1600 screenshot as grey pixels)` from headless Chromium."""
    from PIL import Image

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / f"{html.stem}.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri()],
                   capture_output=True, timeout=120)
    return dom, np.asarray(Image.open(shot).convert("L"))
