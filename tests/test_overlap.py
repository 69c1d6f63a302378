"""The local executor writes batch i on a background thread while batch i+1 generates (and reads sources
ahead): the folder it leaves is the one a serial run leaves, a failed write stops the run with its own
error, and no thread outlives the run."""
import json
import os
import signal
import threading
import time
import traceback

import pytest

from conftest import make_imagefolder, png_bytes, read_rows
from genaug.engine.core import RunSummary, plan
from genaug.engine.local import STOP_WAIT, CtrlC, read_ahead, run_local
from genaug.pipeline import augment


def _genaug_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("genaug")]


def _rows(out):
    return [{k: v for k, v in r.items() if k != "created_at"} for r in read_rows(out)]


@pytest.fixture
def source(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=6)
    (src / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # rejected mid-stream
    return src


def test_rows_order_and_bytes_match_a_single_batch_run(tmp_path, source):
    # batch_size=1: many batches, writer and reader busy; 1000: one batch, nothing to overlap (a serial run)
    many = augment(source, tmp_path / "many", method="augmix", n=3, batch_size=1, progress=False)
    one = augment(source, tmp_path / "one", method="augmix", n=3, batch_size=1000, progress=False)
    assert many.generated == one.generated == 54 and many.sources == one.sources == 18
    assert many.rejected == one.rejected == 1
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")  # same rows, same order
    assert png_bytes(tmp_path / "many") == png_bytes(tmp_path / "one")
    assert (tmp_path / "many" / "rejected.jsonl").read_text() == (tmp_path / "one" / "rejected.jsonl").read_text()
    assert not _genaug_threads()


class _Recorded:
    """The method, with the start of each call recorded (generate calls `m(batch, params)`)."""

    def __init__(self, method, started):
        self._m, self.starts, self._started = method, [], started

    def __getattr__(self, name):
        return getattr(self._m, name)

    def __call__(self, batch, params):
        self.starts.append(time.monotonic())
        if len(self.starts) == 2:
            self._started.set()
        return self._m(batch, params)


def test_next_batch_generates_while_the_writer_writes_and_memory_stays_bounded(tmp_path, source):
    p = plan(source, tmp_path / "out", "augmix", n=2, batch_size=4)  # 18 readable sources x 2 = 9 batches
    second_batch_started = threading.Event()
    p.method = method = _Recorded(p.method, second_batch_started)
    real_write, seen = p.outdir.write, {}

    def slow_first_write(image, row):
        if not seen:
            # A serial executor never starts batch 2 before batch 1 is written: this wait would time out.
            seen["overlapped"] = second_batch_started.wait(timeout=5)
            time.sleep(1.0)  # the writer stays stuck: generation must stop a bounded number of batches ahead
            seen["calls_while_stuck"] = len(method.starts)
        real_write(image, row)

    p.outdir.write = slow_first_write
    summary = RunSummary(out=tmp_path / "out")
    run_local(p, summary, progress=False)
    p.outdir.close()
    assert seen["overlapped"], "batch 2 did not start generating while batch 1 was being written"
    assert seen["calls_while_stuck"] <= 3  # batch 1 being written, batch 2 queued, batch 3 waiting to queue
    assert summary.generated == 36 and len(method.starts) == 9
    assert not _genaug_threads()


def test_a_failed_write_stops_the_run_with_its_message_and_the_folder_resumes(tmp_path, source):
    clean = augment(source, tmp_path / "clean", method="augmix", n=2, batch_size=2, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "1").write_text("a file where the label folder of class 1 goes")  # every write of class 1 fails
    with pytest.raises(FileExistsError, match=str(out / "1")):
        augment(source, out, method="augmix", n=2, batch_size=2, progress=False)
    assert not _genaug_threads()
    rows = read_rows(out)
    assert rows and {r["label"] for r in rows} == {"0"}  # stopped at the failure: nothing of class 2 written

    (out / "1").unlink()
    again = augment(source, out, method="augmix", n=2, batch_size=2, progress=False)
    assert again.already_done == len(rows) and again.generated == clean.generated - len(rows)
    assert _rows(out) == _rows(tmp_path / "clean") and png_bytes(out) == png_bytes(tmp_path / "clean")
    assert not (out / ".genaug-tmp").exists()


def test_a_duplicate_id_is_rejected_whatever_the_batch_size(tmp_path, digit_images):
    # Sources are read ahead of the writer: a duplicate's fate must not depend on whether its id's first
    # occurrence was already written.
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2)
    lines = ["path,label,id"] + [f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},{p.stem}-{p.parent.name}"
                                 for p in sorted(src.rglob("*.png"))]
    lines.append(lines[1])  # the first image again, same id
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    rejected = {}
    for bs in (1, 100):
        s = augment(tmp_path / "m.csv", tmp_path / f"out{bs}", method="augmix", n=1, batch_size=bs, progress=False)
        assert s.generated == 6 and s.rejected == 1 and s.already_done == 0
        rejected[bs] = [json.loads(line) for line in (tmp_path / f"out{bs}" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[1] == rejected[100] and "duplicate id" in rejected[1][0]["reason"]


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test (a test run started in the background inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_is_raised_at_once_in_generation_and_held_elsewhere_until_the_next_check(ctrl_c_raises):
    with CtrlC() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c.interruptible():
                signal.raise_signal(signal.SIGINT)
                pytest.fail("generation went on after Ctrl-C")
        ctrl_c.received = False
        signal.raise_signal(signal.SIGINT)  # in a queue or lock call: held, not raised there
        assert ctrl_c.received
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
        with pytest.raises(KeyboardInterrupt):  # one held before generation stops it before it starts
            with ctrl_c.interruptible():
                pytest.fail("generation started after Ctrl-C")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def mine(signum, frame):
        raise RuntimeError("the caller's own handler")

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with CtrlC():
            assert signal.getsignal(signal.SIGINT) is mine  # a caller's handler is left alone
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stalled_source_does_not_keep_a_stopped_run_waiting():
    # The reader thread is stuck reading the second source (a hung network mount); Ctrl-C, seen by the
    # consumer's wait, must end the block within STOP_WAIT, not when the read returns.
    release = threading.Event()

    def sources():
        yield "first"
        release.wait(60)  # the stalled read
        yield "second"

    def ctrl_c_after_a_moment(started=time.monotonic()):
        if time.monotonic() - started > 0.3:
            raise KeyboardInterrupt

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            with read_ahead(sources(), depth=1, name="genaug-stalled-reader", waiting=ctrl_c_after_a_moment) as items:
                assert next(items) == "first"
                next(items)
        assert time.monotonic() - t0 < 0.3 + STOP_WAIT + 2.0
        stalled = [t for t in threading.enumerate() if t.name == "genaug-stalled-reader"]
        assert len(stalled) == 1  # still in its read: the block did not wait for it
    finally:
        release.set()  # the read returns; the thread sees the stop and ends
    stalled[0].join(5)
    assert not stalled[0].is_alive()


def test_ctrl_c_while_waiting_for_the_writer_stops_the_run_outside_any_queue_call(tmp_path, source,
                                                                                  ctrl_c_raises):
    # The writer is stuck on batch 1, so generation stops a few batches ahead, waiting in Queue.put. A
    # KeyboardInterrupt raised inside that call can break the queue's lock and hang the run; it must be raised
    # by genaug's own check once the wait ends, and the batches already generated must be written.
    p = plan(source, tmp_path / "out", "augmix", n=2, batch_size=4)
    real_write, seen = p.outdir.write, []

    def slow_first_write(image, row):
        if not seen:
            seen.append(row)
            time.sleep(1.0)  # generation catches up and waits for the writer
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        real_write(image, row)

    p.outdir.write = slow_first_write
    summary = RunSummary(out=tmp_path / "out")
    with pytest.raises(KeyboardInterrupt) as info:
        run_local(p, summary, progress=False)
    p.outdir.release()
    frames = {f.filename for f in traceback.extract_tb(info.value.__traceback__)}
    assert not {f for f in frames if f.endswith(("queue.py", "threading.py"))}, frames
    assert summary.generated in (12, 16)  # batch 1 written, then the 2 or 3 generated while it was stuck
    assert len(read_rows(tmp_path / "out")) == summary.generated
    assert not _genaug_threads()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
