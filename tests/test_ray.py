"""The Ray Data executor against a real local Ray (2 CPUs): the same bytes and rows as the local executor,
the same resume guarantees."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli, make_imagefolder, overrides, png_bytes, read_rows

ray = pytest.importorskip("ray", reason="Ray Data is an extra: pip install 'genaug[ray]'")


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@contextlib.contextmanager
def actor_threads():
    """The local executor at the actors' thread count (one: `num_cpus_per_worker`): CPU kernels split their sums
    by thread count, so a diffusion image's last bits may differ at another (README, Determinism; measured on an
    AVX2 CPU: 1 of 18 tiny-SD real_guidance images)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rows(out):
    return [{k: v for k, v in r.items() if k != "created_at"} for r in read_rows(out)]


@pytest.mark.parametrize("method", ["randaugment", "real_guidance"])
def test_ray_writes_what_the_local_executor_writes(method, ray_session, tmp_path, digit_images, method_options):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=3, classes=("0", "1"))
    (src / "1" / "broken.png").write_bytes(b"not an image")
    opts = overrides(method_options.get(method, {}))
    with actor_threads():
        cli("augment", src, "--method", method, "--out", tmp_path / "local", "-n", 3, "--batch-size", 4, *opts)
    res = cli("augment", src, "--method", method, "--out", tmp_path / "ray", "-n", 3, "--batch-size", 4, *opts,
              "--executor", "ray", "--workers", "2")
    assert "wrote 18 image(s)" in res.output and "1 rejected" in res.output
    assert png_bytes(tmp_path / "ray") == png_bytes(tmp_path / "local") and len(png_bytes(tmp_path / "ray")) == 18
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")  # same rows, same order
    assert (tmp_path / "ray" / "rejected.jsonl").read_text() == (tmp_path / "local" / "rejected.jsonl").read_text()

    # A crash that left half the rows and a torn line: the rerun redoes only the missing images.
    meta = tmp_path / "ray" / "metadata.jsonl"
    lines = meta.read_text().splitlines(keepends=True)
    meta.write_text("".join(lines[:7]) + lines[7][:25])
    for line in lines[7:]:
        (tmp_path / "ray" / json.loads(line)["file_name"]).unlink()
    res = cli("augment", src, "--method", method, "--out", tmp_path / "ray", "-n", 3, "--batch-size", 4, *opts,
              "--executor", "ray", "--workers", "1,2")
    assert "wrote 11 image(s)" in res.output and "7 already present" in res.output
    assert png_bytes(tmp_path / "ray") == png_bytes(tmp_path / "local")
    assert sorted(map(json.dumps, _rows(tmp_path / "ray"))) == sorted(map(json.dumps, _rows(tmp_path / "local")))
    assert "wrote 0 image(s)" in cli("augment", src, "--method", method, "--out", tmp_path / "ray", "-n", 3,
                                     *opts, "--batch-size", 4, "--executor", "ray").output


def test_ray_stages_for_gpu_workers_write_what_the_local_executor_writes(ray_session, tmp_path, digit_images):
    # With GPU workers the sources are decoded and the PNGs encoded in CPU stages beside the workers (the
    # default there); forced here on CPU workers: the same bytes, rows and rejections as the local executor,
    # staged or not. The manifest repeats an id on another image in the same batch: refused, not generated.
    from genaug.pipeline import augment

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=3, classes=("0", "1"))
    (src / "1" / "broken.png").write_bytes(b"not an image")
    files = sorted(src.rglob("*.png"))
    lines = [f"{f.relative_to(tmp_path).as_posix()},{f.parent.name},{f.parent.name}-{f.stem}" for f in files]
    lines.insert(1, f"{files[-2].relative_to(tmp_path).as_posix()},1,{lines[0].rsplit(',', 1)[1]}")
    (tmp_path / "m.csv").write_text("path,label,id\n" + "\n".join(lines) + "\n")
    local = augment(tmp_path / "m.csv", tmp_path / "local", method="randaugment", n=3, batch_size=4, progress=False)
    assert local.generated == 18 and local.rejected == 2
    for stages in (True, False):
        out = tmp_path / f"ray-{stages}"
        run = augment(tmp_path / "m.csv", out, method="randaugment", n=3, batch_size=4, progress=False,
                      executor="ray", workers=2, stages=stages)
        assert (run.generated, run.rejected) == (local.generated, local.rejected)
        assert png_bytes(out) == png_bytes(tmp_path / "local")
        assert _rows(out) == _rows(tmp_path / "local")
        assert (out / "rejected.jsonl").read_text() == (tmp_path / "local" / "rejected.jsonl").read_text()
        assert "duplicate id" in (out / "rejected.jsonl").read_text()


def test_ray_actors_compute_in_the_precision_the_driver_recorded(ray_session, tmp_path, digit_images, tiny_flow,
                                                                monkeypatch):
    # precision=auto is resolved once, where the run is planned, and recorded in config.yaml; the actors (other
    # processes, here unpatched) build the method from the recorded options, not from their own reading of auto
    # (a head node without AMX, workers with it): the same bytes as a local run in the recorded precision.
    import yaml

    import genaug.core.devices as devices
    from genaug.pipeline import augment

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    here = devices.fast_bfloat16(torch.device("cpu"))  # what the actors will find
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device: not here)  # the driver finds the other
    opts = {"model": str(tiny_flow), "steps": 3, "t0": [0.3]}
    run = augment(src, tmp_path / "ray", method="semantic_flow", n=2, batch_size=2, progress=False,
                  options={**opts, "precision": "auto"}, executor="ray", workers=2)
    recorded = yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())["options"]["precision"]
    assert run.generated == 8 and recorded == ("float32" if here else "bfloat16")
    with actor_threads():
        augment(src, tmp_path / "local", method="semantic_flow", n=2, batch_size=2, progress=False,
                options={**opts, "precision": recorded})
        augment(src, tmp_path / "other", method="semantic_flow", n=2, batch_size=2, progress=False,
                options={**opts, "precision": "bfloat16" if here else "float32"})
    assert png_bytes(tmp_path / "ray") == png_bytes(tmp_path / "local") != png_bytes(tmp_path / "other")


def test_bad_ray_options_are_clear(tmp_path, imagefolder):
    for args, message in ((["--executor", "spark"], "'spark' is not one of 'local', 'ray'"),
                          (["--workers", "2"], "need --executor ray"),
                          (["--executor", "ray", "--workers", "3,1"], "MIN <= MAX"),
                          (["--executor", "ray", "--workers", "x"], "N or MIN,MAX")):
        res = cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "o", *args, expect=2)
        assert message in res.output


@pytest.mark.skipif(os.environ.get("GENAUG_SLOW") != "1", reason="a second Ray start-up: set GENAUG_SLOW=1")
def test_killed_ray_run_resumes_without_doubles(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=30, classes=("0", "1", "2"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "genaug.cli", "augment", str(src), "--method", "augmix", "--out", str(out),
           "-n", "4", "--batch-size", "8", "--executor", "ray", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "metadata.jsonl").is_file()
                                          and len((out / "metadata.jsonl").read_text().splitlines()) >= 40):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False,
                   executable=shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray"))
    subprocess.run(cmd, check=True, capture_output=True)
    rows = read_rows(out)
    assert len(rows) == 360 and len({(r["source_id"], r["variant"]) for r in rows}) == 360
    cli("augment", src, "--method", "augmix", "--out", tmp_path / "local", "-n", 4)
    assert png_bytes(out) == png_bytes(tmp_path / "local")


def test_a_relative_source_after_the_driver_changed_directory_and_ray_data_settings_left_alone(ray_session, tmp_path, digit_images, monkeypatch):
    # Ray's workers keep the directory they were started in; the driver (a notebook, a script) may have moved
    # since ray.init. A source given relative to the driver's directory must still be read.
    from genaug.pipeline import augment

    make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    monkeypatch.chdir(tmp_path)
    import ray.data

    context = ray.data.DataContext.get_current()  # a user's own settings, other than genaug's
    monkeypatch.setattr(context.execution_options, "preserve_order", False)
    monkeypatch.setattr(context, "enable_progress_bars", True)
    local = augment("src", "local", method="flipcrop", n=1, batch_size=2, progress=False)
    run = augment("src", "ray", method="flipcrop", n=1, batch_size=2, progress=False, executor="ray", workers=1)
    assert run.generated == local.generated == 4 and run.rejected == 0
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    # genaug's Ray Data settings (source order, no Ray bars) were the run's own: the user's are as they were
    context = ray.data.DataContext.get_current()
    assert (context.execution_options.preserve_order, context.enable_progress_bars) == (False, True)
