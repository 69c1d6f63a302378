"""A run killed with SIGKILL at any moment, then rerun, ends exactly as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_imagefolder, png_bytes, read_rows

GENAUG = [sys.executable, "-m", "genaug.cli"]


def _run(src, out, *extra):
    return [*GENAUG, "augment", str(src), "--method", "augmix", "--out", str(out), "-n", "4", "--batch-size", "8", *extra]


def _rows_on_disk(out: Path) -> int:
    try:
        return (out / "metadata.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def source_and_clean_run(tmp_path_factory, digit_images):
    root = tmp_path_factory.mktemp("kill")
    src = make_imagefolder(root / "src", digit_images, per_class=60)  # 180 sources x 4 = 720 images
    subprocess.run(_run(src, root / "clean"), env=ENV, check=True, capture_output=True, timeout=300)
    return src, png_bytes(root / "clean")


# Past row 0 the writer thread is busy (batch i written while batch i+1 generates): a kill lands mid-write.
# SIGINT is Ctrl-C: the run stops at once (the batches already generated are written, nothing after).
@pytest.mark.parametrize("kill_after_rows, sig", [(0, signal.SIGKILL), (37, signal.SIGKILL), (150, signal.SIGKILL),
                                                  (100, signal.SIGINT)],
                         ids=["kill-0", "kill-37", "kill-150", "ctrl-c-100"])
def test_sigkill_then_rerun_is_exactly_complete(tmp_path, source_and_clean_run, kill_after_rows, sig):
    src, clean = source_and_clean_run
    env = ENV
    out = tmp_path / "out"
    # Ctrl-C as a terminal delivers it: a test run started in the background (`cmd &`) inherits an ignored
    # SIGINT, which the child would keep (Python installs KeyboardInterrupt only over the default action)
    proc = subprocess.Popen(_run(src, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _rows_on_disk(out) <= kill_after_rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: make the dataset larger"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # Ctrl-C ends the run: no thread keeps the process alive
    assert proc.returncode != 0
    assert b"Exception in thread" not in err
    killed_at = _rows_on_disk(out)
    assert killed_at < 720

    done = subprocess.run(_run(src, out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert len(rows) == 720 and len({(r["source_id"], r["variant"]) for r in rows}) == 720
    pngs = png_bytes(out)
    assert set(pngs) == {r["file_name"] for r in rows}  # none lost, none doubled, no orphans
    assert not list(out.rglob("*.tmp")) and not (out / ".genaug-tmp").exists()
    for name in pngs:
        with Image.open(out / name) as im:
            im.load()
    assert clean == pngs  # byte-identical to a run that was never interrupted
