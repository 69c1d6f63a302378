"""The local executor: stream the source, generate the missing (image, variant) pairs in batches, write.

Three threads, so the model never waits for the disk: a reader decodes the next sources, the caller's
thread generates batch i+1, and one writer thread writes batch i (PNG encoding, rename, metadata row,
fsync). Everything the folder sees still happens in one thread, in the order a serial run would do it, so
`metadata.jsonl` and `rejected.jsonl` hold the same rows in the same order and the PNGs are the same
bytes. Memory holds a bounded number of batches (queues of fixed depth) plus the set of finished
(source id, variant) keys — never the dataset.
"""
from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from ..core.log import bar_disabled
from ..core.records import Example
from ..data.images import Rejected
from .core import Plan, RunSummary, generate

_POLL = 0.1  # seconds between looks at a stop flag while a queue is full
STOP_WAIT = 1.0  # seconds a stopped run waits for its reader thread before leaving it behind


class CtrlC:
    """Ctrl-C during a run, raised only where it is safe. A KeyboardInterrupt that lands inside a
    `queue.Queue` or `threading.Condition` call can leave its lock released by the wrong thread or a
    wake-up lost: the writer then waits for a job that is already queued and the run hangs for ever (seen
    in about 1 Ctrl-C in 20 before this class), or the interrupt is swallowed and the run ends as if nothing
    happened. So the handler raises at once only inside `interruptible()` blocks (model loading and
    generation, where the time goes); elsewhere it is remembered and raised by the next `check()`, which
    the loop calls once per source. Installed only from the main thread and only over Python's own
    handler (a caller's handler is left alone)."""

    def __init__(self) -> None:
        self.received = False
        self._open = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True
        if self._open:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.received:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self, check: bool = True) -> Iterator[None]:
        """Ctrl-C raises at once in this block (and, with `check`, one received before it raises here)."""
        self._open = True
        try:
            if check:
                self.check()
            yield
        finally:
            self._open = False

    def __enter__(self) -> CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first (so a thread never blocks on a queue nobody reads)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            pass
    return False


@contextlib.contextmanager
def read_ahead(items: Iterable, depth: int, name: str = "genaug-reader",
               waiting: Callable[[], None] | None = None) -> Iterator[Iterator]:
    """`items`, produced on a background thread up to `depth` ahead of the consumer. An exception there is
    raised here, unchanged, when the consumer reaches it; leaving the block stops and joins the thread (after
    an exception, for at most STOP_WAIT seconds). `waiting` is called every 0.1 s while the consumer waits for
    the next item (a stalled source can still be stopped: `CtrlC.check`)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for x in items:
                if not _put(q, (True, x), stop):
                    return
            _put(q, (False, None), stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer as it is
            _put(q, (False, e), stop)

    def consume() -> Iterator:
        while True:
            try:
                more, x = q.get(timeout=_POLL)
            except queue.Empty:
                if waiting is not None:
                    waiting()
                continue
            if not more:
                if x is not None:
                    raise x
                return
            yield x

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    done = False
    try:
        yield consume()
        done = True
    finally:
        stop.set()
        # After an exception (a Ctrl-C among them) the thread gets STOP_WAIT seconds: it may be stuck in a
        # stalled read of the source (a hung network mount), which must not keep the run from stopping; a
        # daemon, it ends at its next put or with the process.
        thread.join(None if done else STOP_WAIT)


class BatchWriter:
    """Runs write jobs, in order, on one background thread while the caller goes on (generates the next
    batch). At most `depth` jobs wait; `submit` blocks beyond that, so memory holds a bounded number of
    batches. A job that raises stops the writing: later jobs are dropped (a rerun regenerates them, the same
    bytes) and the exception itself — its type, message and traceback — is raised in the caller by its next
    `check`, `submit` or `close`."""

    def __init__(self, depth: int = 1, name: str = "genaug-writer"):
        self._jobs: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._raised = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:  # after a failure the queue is still emptied, so `submit` never hangs
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = e

    def check(self) -> None:
        """Raise the writer's exception, if it had one (once)."""
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self._jobs.put(job)
        self.check()

    def close(self, ctrl_c: CtrlC, raise_error: bool = True) -> None:
        """Write what was submitted (also after an error or Ctrl-C in the caller: what was generated is kept),
        then end the thread. A Ctrl-C during the wait stops it (`Thread.join` is safe to interrupt): the
        daemon thread dies with the process, and a rerun finishes the folder as after any kill."""
        if self._thread.is_alive():
            self._jobs.put(None)
            with ctrl_c.interruptible(check=False):
                self._thread.join()
        if raise_error:
            self.check()


def run_local(p: Plan, summary: RunSummary, progress: bool | None = None) -> None:
    run, outdir = p.run, p.outdir
    # progress=None: a bar when stderr is a terminal (tqdm's own rule); True / False force it.
    bar = tqdm(total=p.source.count() * run.n, desc=f"genaug {run.method}", unit="img", dynamic_ncols=True,
               disable=bar_disabled(progress))
    counts = threading.Lock()  # the bar is moved from this thread (skips, refusals) and the writer's (writes)
    pending: list[tuple[Example, int, int]] = []
    unreadable: list[tuple[str, str, str]] = []  # listed by the next batch's job: the order of a serial run

    def bar_add(done: int = 0, dropped: int = 0) -> None:
        with counts:
            bar.total -= dropped
            if done:
                bar.update(done)

    def write_job(rejects: list[tuple[str, str, str]], results: list[tuple[dict, Any]]) -> Callable[[], None]:
        def job() -> None:  # runs on the writer thread, the only one that touches the folder
            for path, source_id, reason in rejects:
                outdir.reject(path, source_id, reason)
            for row, image in results:
                outdir.write(image, row)
            outdir.sync()
            summary.generated += len(results)
            bar_add(done=len(results))
        return job

    def flush() -> None:
        rejects, results = unreadable[:], []
        unreadable.clear()
        if pending:
            with ctrl_c.interruptible():  # the long part: Ctrl-C stops it at once
                p.prepare()
                results, refused = generate(p.method, pending, p.row_base)
            rejects += [(e.path, e.id, reason) for e, reason in refused.values()]
            bar_add(dropped=len(pending) - len(results))
            pending.clear()
        if rejects or results:
            writer.submit(write_job(rejects, results))

    def decoded() -> Iterator[tuple[Any, list[tuple[int, int]], Example | Rejected | None]]:
        for rec, todo in p.pending(summary):
            if not todo:
                yield rec, todo, None
                continue
            try:
                yield rec, todo, p.source.load(rec, p.input_cfg)
            except Rejected as e:
                yield rec, todo, e

    writer = BatchWriter(depth=1)  # one batch written, one waiting, one generating
    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            try:
                with read_ahead(decoded(), depth=p.batch_size, waiting=ctrl_c.check) as records:  # next sources
                    for rec, todo, ex in records:
                        ctrl_c.check()  # a Ctrl-C outside generation stops the run here
                        writer.check()  # a failed write stops the run at the next source, not at the end
                        if len(todo) < run.n:
                            bar_add(done=run.n - len(todo))
                        if not todo:
                            summary.sources += 1
                            continue
                        if isinstance(ex, Rejected):
                            unreadable.append((rec.path, rec.id, str(ex)))
                            bar_add(dropped=len(todo))
                            continue
                        summary.sources += 1
                        for k, s in todo:
                            pending.append((ex, k, s))
                            if len(pending) >= p.batch_size:
                                flush()
                    flush()
                    ctrl_c.check()
            except BaseException:
                writer.close(ctrl_c, raise_error=False)  # this thread's error (or Ctrl-C) is reported
                raise
            writer.close(ctrl_c)
            ctrl_c.check()  # Ctrl-C during the last write: all is on disk, but the run says it was stopped
    finally:
        bar.close()
