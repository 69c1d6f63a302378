"""Jobs side by side (`bench.lanes`): each after the jobs it needs, at a fixed thread count, errors back to the
caller, workers stopped on an error."""
import time
from pathlib import Path

import pytest
import torch

from genaug.bench.lanes import JobFailed, Lanes


def _append(path: str, text: str) -> str:
    """Append `text` to the file and return the file's whole text: a later job sees what earlier jobs wrote."""
    with open(path, "a") as f:
        f.write(text)
    return Path(path).read_text()


def _threads(x: int) -> tuple[int, int]:
    return x * x, torch.get_num_threads()


def _fail(message: str) -> None:
    raise ValueError(message)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_runs_after_the_jobs_it_needs_and_at_the_set_thread_count(tmp_path, workers):
    log = str(tmp_path / "log.txt")
    with Lanes(workers, threads=1) as lanes:
        assert lanes.inline == (workers == 1)
        first = lanes.submit(_append, log, "a")
        second = lanes.submit(_append, log, "b", after=[first])
        third = lanes.submit(_append, log, "c", after=[second])
        squares = [lanes.submit(_threads, x) for x in range(5)]
        assert lanes.result(third) == "abc"
        assert lanes.join(squares) == [(x * x, 1) for x in range(5)]
        assert set(lanes.seconds) >= {first, second, third, *squares}
    assert torch.get_num_threads() >= 1  # inline jobs give the caller its thread count back


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_job_raises_for_whoever_waits_and_its_dependents_do_not_run(tmp_path, workers):
    log = tmp_path / "log.txt"
    with Lanes(workers) as lanes:
        bad = lanes.submit(_fail, "no such split")
        after = lanes.submit(_append, str(log), "never", after=[bad])
        fine = lanes.submit(_threads, 3)
        with pytest.raises(ValueError, match="no such split"):
            lanes.result(bad)
        later = lanes.submit(_append, str(log), "never", after=[after])
        for job in (after, later):  # the first failure itself, whoever waits (a ConfigError stays one)
            with pytest.raises(ValueError, match="no such split"):
                lanes.result(job)
            assert isinstance(job.exception(), JobFailed) and isinstance(job.exception().__cause__, ValueError)
        assert "_append not run: a job it needs failed (ValueError: no such split)" in str(after.exception())
        assert lanes.result(fine) == (9, 1)
        assert not fine.cancel()  # a job is stopped with the lanes, never by cancelling its future
    assert not log.exists()


def _settings() -> tuple:
    from genaug.core.log import bar_disabled, get_logger

    return bar_disabled(), get_logger().getEffectiveLevel()


def test_workers_follow_the_callers_verbosity_and_draw_no_bars_of_their_own():
    import logging

    from genaug.core.log import get_logger

    logger = get_logger()
    before = logger.level
    logger.setLevel(logging.ERROR)  # genaug -q
    try:
        with Lanes(2) as lanes:
            assert lanes.result(lanes.submit(_settings)) == (True, logging.ERROR)
    finally:
        logger.setLevel(before)


def test_a_job_still_waiting_when_the_lanes_close_fails_and_does_not_run(tmp_path):
    log = tmp_path / "log.txt"
    with Lanes(2) as lanes:
        first = lanes.submit(_sleep, 0.5)
        waiting = lanes.submit(_append, str(log), "never", after=[first])
    assert isinstance(waiting.exception(timeout=5), JobFailed) and "the lanes closed first" in str(waiting.exception())
    assert not log.exists()


def test_workers_end_with_a_killed_main_process(tmp_path):
    """A main process killed outright (SIGKILL, the OOM killer) runs no clean-up: its workers notice and end
    instead of finishing their job and waiting for ever (or writing into a folder a rerun is writing)."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "main.py"
    script.write_text("import time\nfrom genaug.bench.lanes import Lanes\n"
                      "if __name__ == '__main__':\n"
                      "    with Lanes(2) as lanes:\n"
                      "        jobs = [lanes.submit(time.sleep, 60) for _ in range(2)]\n"
                      "        print(*lanes._pool._processes, flush=True)\n"
                      "        lanes.join()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (ended, not yet reaped by its new parent) is ended too
        stat = Path(f"/proc/{pid}/stat")
        return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")

    deadline = time.perf_counter() + 30
    while any(alive(p) for p in pids) and time.perf_counter() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_an_error_in_the_caller_stops_the_workers_at_once():
    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with Lanes(2) as lanes:
            lanes.submit(_sleep, 60)
            lanes.submit(_sleep, 60)
            time.sleep(1)
            raise KeyboardInterrupt
    assert time.perf_counter() - t < 30


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="workers and threads must be >= 1"):
        Lanes(0)


def test_a_classifier_run_is_the_same_in_this_process_and_in_a_worker(tmp_path, digit_images):
    """Every job runs at the lanes' thread count wherever it runs: one worker (this process) or several give the
    same checkpoint bytes and accuracies."""
    from conftest import make_imagefolder
    from genaug.bench.run import train_cached

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=20)
    cfg = {"epochs": 2, "batch_size": 16, "image_size": 16, "min_steps": 0, "seed": 1}
    rows = {}
    for workers in (1, 2):
        with Lanes(workers) as lanes:
            jobs = [lanes.submit(train_cached, tmp_path / f"w{workers}-{seed}", src, [], src, None, {},
                                 {**cfg, "seed": seed}, {"arm": "real"}, progress=False) for seed in (0, 1)]
            rows[workers] = [{k: r[k] for k in ("val_acc", "best_epoch")} for r in lanes.join(jobs)]
    assert rows[1] == rows[2]
    for seed in (0, 1):
        assert (tmp_path / f"w1-{seed}" / "best.safetensors").read_bytes() == \
            (tmp_path / f"w2-{seed}" / "best.safetensors").read_bytes()


def test_a_script_without_a_main_guard_is_told_what_to_do(tmp_path):
    """Spawned workers import the calling script anew; one that starts work at import cannot start them, and the
    error says how to fix it instead of a bare BrokenProcessPool."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from genaug.bench.lanes import Lanes\n"
                      "with Lanes(2) as lanes:\n"
                      "    print(lanes.result(lanes.submit(abs, -3)))\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "if __name__ == '__main__':" in res.stderr and "workers=1" in res.stderr
    script.write_text("from genaug.bench.lanes import Lanes\n"
                      "if __name__ == '__main__':\n"
                      "    with Lanes(2) as lanes:\n"
                      "        print(lanes.result(lanes.submit(abs, -3)))\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "3"
