"""One writer per output folder, one computation per cache entry — with real processes, as a user would run them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_imagefolder, png_bytes, read_rows
from genaug.core.config import ConfigError
from genaug.data.writer import LOCK, RUN_INFO, OutputDir

GENAUG = str(Path(sys.executable).with_name("genaug"))


def _augment(src, out, n=4):
    return [GENAUG, "augment", str(src), "--method", "augmix", "--out", str(out), "-n", str(n), "--batch-size", "8"]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}  # carries the test's GENAUG_CACHE


def test_two_runs_into_one_folder_never_interleave(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=30)  # 90 x 4: seconds of work to overlap
    out = tmp_path / "out"
    procs = [subprocess.Popen(_augment(src, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    results = [(rc, o, e) for o, e, rc in results]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert "Traceback" not in "".join(o + e for _, o, e in results)
    assert f"{out} is being written by another genaug run (pid " in loser and "genaug augment" in loser
    rows = read_rows(out)
    assert len(rows) == 360 and len({(r["source_id"], r["variant"]) for r in rows}) == 360
    assert set(png_bytes(out)) == {r["file_name"] for r in rows}
    assert not (out / RUN_INFO).exists() and not (out / ".genaug-tmp").exists()

    before = {p: p.read_bytes() for p in (out / "metadata.jsonl", out / "manifest.parquet")}
    pngs = png_bytes(out)
    again = subprocess.run(_augment(src, out), env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "wrote 0 image(s)" in again.stdout and "360 already present" in again.stdout
    assert {p: p.read_bytes() for p in before} == before and png_bytes(out) == pngs


def test_a_killed_run_leaves_no_lock_behind(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=20)
    out = tmp_path / "out"
    proc = subprocess.Popen(_augment(src, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "metadata.jsonl").is_file() or (out / "metadata.jsonl").stat().st_size == 0:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    info = json.loads((out / RUN_INFO).read_text())
    assert info["pid"] == proc.pid and "augment" in info["command"]
    with pytest.raises(ConfigError, match=f"pid {proc.pid}"):  # held while it runs...
        OutputDir(out, {}, ())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK).exists()  # ...the file stays, but the OS dropped the lock with the process
    done = subprocess.run(_augment(src, out), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert len(rows) == 240 and len({(r["source_id"], r["variant"]) for r in rows}) == 240


def test_the_folder_lock_within_one_process(tmp_path):
    out = tmp_path / "out"
    first = OutputDir(out, {"method": "a"}, ("method",))
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        OutputDir(out, {"method": "a"}, ("method",))
    from genaug.scoring.weighting import weight_synthetic

    with pytest.raises(ConfigError, match="being written by another genaug run"):  # re-weighting rewrites rows
        weight_synthetic(out, tmp_path)
    first.close()
    with pytest.raises(ConfigError, match="other settings"):  # a refused open releases the lock it took
        OutputDir(out, {"method": "b"}, ("method",))
    OutputDir(out, {"method": "a"}, ("method",)).close()


_FILL = """
import os, sys, time
from genaug.data.cache import Cache

def make_file(tmp):
    with open(sys.argv[1], "a") as f:
        f.write("file\\n")
    time.sleep(1.5)  # long enough for the other process to arrive while this one computes
    tmp.write_bytes(b"x" * 1_000_000)

def make_value():
    with open(sys.argv[1], "a") as f:
        f.write("value\\n")
    time.sleep(1.5)
    return {"captions": ["a photo of a zero"] * 100}

cache = Cache("fill-test")
path = cache.get_or_create("ab12cd", ".bin", make_file)
value = cache.get_or_put("ab12cd", make_value)
print(path, len(path.read_bytes()), len(value["captions"]))
"""


def test_two_processes_filling_one_cache_entry_compute_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GENAUG_CACHE", str(tmp_path / "cache"))
    calls = tmp_path / "calls.log"
    procs = [subprocess.Popen([sys.executable, "-c", _FILL, str(calls)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    results = [(rc, o, e) for o, e, rc in results]
    assert all(rc == 0 for rc, _, _ in results), results
    assert calls.read_text().splitlines() == ["file", "value"]  # each entry computed by one process only
    from genaug.data.cache import Cache

    cache = Cache("fill-test")
    entry = cache.path("ab12cd", ".bin")
    assert {out.strip() for _, out, _ in results} == {f"{entry} 1000000 100"}  # both read the complete entry
    assert sorted(p.name for p in cache.dir.rglob("*")) == ["ab", "ab12cd.bin", "ab12cd.json", "ab12cd.lock"]
