"""Independent jobs of a harness (the demo's classifier runs, fit-flow, generations) side by side in worker
processes, each job after the jobs it needs.

Small models use a CPU core badly from several threads: on a 2-core CPU two one-thread processes go through
1.2x the demo's classifier steps a second of one two-thread process (`benchmarks/train_speed.py`), and whatever
a job does besides its model (reading, evaluating, writing) runs beside the other's. `Lanes(workers)` keeps
`workers` processes of `threads` torch threads each (spawned: torch and fork do not mix) and hands each a job
once every job it comes `after` has finished; the main process only waits. Every job runs at `threads` threads
whichever process runs it, `workers` = 1 included (then in the calling process, one after the other), so the
results do not depend on how many workers there are — float kernels may round differently at another thread
count, so that count is part of what a result is.

Workers decode each image set once for their whole life (`data.imageset.keep_loads`), as `shared_loads` does
in one process. A job's exception comes back to whoever waits for it; a job after a failed one is not run (it
fails too). On an error or Ctrl-C in the main process the workers are stopped: only the jobs in flight are lost,
and every job here caches what it finished (a rerun does the rest).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.log import bar_disabled, get_logger, set_progress

# more workers than this only add processes (each imports torch: about 300 MB) and contention: a harness here
# rarely has more independent jobs ready at once
MAX_DEFAULT_WORKERS = 8


class JobFailed(RuntimeError):
    """A job was not run because a job it comes after failed; `root` is that first failure (also `__cause__`)."""

    def __init__(self, message: str, root: BaseException):
        super().__init__(message)
        self.root = root
        self.__cause__ = root


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # ready once the parent process has ended, however it ended
    os._exit(1)


def _start_worker(threads: int, preload: tuple[str, ...], log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops the workers
    parent = multiprocessing.parent_process()
    if parent is not None:  # a main process killed outright (SIGKILL, the OOM killer) takes its workers with it
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()
    torch.set_num_threads(threads)
    set_progress(False)  # a job's own bars would garble the main process's bar of jobs
    get_logger().setLevel(log_level)  # the main process's verbosity (-q / -v), not the environment's default
    from ..data.imageset import keep_loads

    keep_loads()
    for module in preload:  # a head start only: a module that will not import is the job's to report
        try:
            importlib.import_module(module)
        except Exception:
            pass


def _cpu_quota() -> int | None:
    """The CPUs a cgroup v2 quota allows this process (a container's `--cpus`), or None without one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, -(-int(quota) // int(period)))


def default_workers(threads: int = 1) -> int:
    """As many workers as the CPUs this process may use (its affinity and a container's CPU quota) allow at
    `threads` threads each, at most MAX_DEFAULT_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = min(cpus, _cpu_quota() or cpus)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(1, threads)))


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C ignored while workers are spawned: they inherit it ignored (Python keeps an inherited SIG_IGN), so a
    Ctrl-C while they still import does not print a traceback from each of them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _broken(e: BaseException) -> RuntimeError:
    return RuntimeError(
        "a worker process died (killed, out of memory, or it could not start: a script that runs genaug side by "
        "side must guard its entry point with `if __name__ == '__main__':`, since each worker imports the script "
        f"anew); with workers=1 everything runs in this process ({e})")


def _timed(fn: Callable, args: tuple, kwargs: dict) -> tuple[Any, float]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


class Lanes:
    """`submit(fn, *args, after=[futures], **kwargs)` -> a Future of `fn(*args, **kwargs)`, run once every future
    in `after` is done; `result(future)` waits for one, `join()` for all; `seconds[future]`: how long its job ran.
    Use as a context manager."""

    def __init__(self, workers: int, threads: int = 1, progress: bool | None = None, desc: str = "genaug jobs",
                 preload: Sequence[str] = ()):
        """`preload`: modules every worker imports as it starts. The workers start now, so that their imports
        overlap whatever the caller does before submitting."""
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
        self.workers, self.threads = workers, threads
        self._pool: cf.ProcessPoolExecutor | None = None
        if workers > 1:
            self._pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_worker,
                                                initargs=(threads, tuple(preload), get_logger().getEffectiveLevel()))
            with _sigint_ignored():
                for _ in range(workers):  # a worker is started per submitted job while none is idle
                    self._pool.submit(int)
        # one bar of finished jobs when they run side by side (inline, each job may show its own)
        self._bar = tqdm(total=0, desc=desc, unit="job", disable=self.inline or bar_disabled(progress))
        self._waiting: list[tuple[tuple[cf.Future, ...], Callable, tuple, dict, cf.Future]] = []
        self._running: dict[cf.Future, cf.Future] = {}  # the pool's future of each submitted job -> ours
        self._all: list[cf.Future] = []
        self.seconds: dict[cf.Future, float] = {}

    @property
    def inline(self) -> bool:
        """True when jobs run in this process (one worker), where a job may show its own progress bar."""
        return self._pool is None

    def submit(self, fn: Callable, *args: Any, after: Iterable[cf.Future] = (), **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()  # a job is stopped with the lanes, not by cancelling its future
        self._waiting.append((tuple(after), fn, args, kwargs, future))
        self._all.append(future)
        future.add_done_callback(lambda f, name=getattr(fn, "__name__", "job"): self._done(name))
        self._bar.total += 1
        self._bar.refresh()
        self._release()
        return future

    def _release(self) -> None:
        """Start every waiting job whose predecessors are done (or fail it, when one of them failed)."""
        progress = True
        while progress:  # a job run inline may make others ready
            progress = False
            for item in list(self._waiting):
                after, fn, args, kwargs, future = item
                if not all(f.done() for f in after):
                    continue
                self._waiting.remove(item)
                progress = True
                failed = next((f.exception() for f in after if f.exception() is not None), None)
                if failed is not None:
                    root = failed.root if isinstance(failed, JobFailed) else failed
                    future.set_exception(JobFailed(f"{getattr(fn, '__name__', fn)} not run: a job it needs failed "
                                                   f"({type(root).__name__}: {root})", root))
                elif self._pool is None:
                    self._run_inline(future, fn, args, kwargs)
                else:
                    try:
                        self._running[self._pool.submit(_timed, fn, args, kwargs)] = future
                    except BrokenProcessPool as e:
                        raise _broken(e) from e

    def _run_inline(self, future: cf.Future, fn: Callable, args: tuple, kwargs: dict) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self._finish(future, *_timed(fn, args, kwargs))
        except Exception as e:  # Ctrl-C (not an Exception) goes straight up
            future.set_exception(e)
        finally:
            torch.set_num_threads(before)

    def _done(self, name: str) -> None:  # our futures are completed in this thread only
        self._bar.set_postfix_str(name, refresh=False)
        self._bar.update(1)

    def _finish(self, future: cf.Future, result: Any, seconds: float) -> None:
        self.seconds[future] = seconds
        future.set_result(result)

    def _step(self) -> None:
        """Wait until some running job finishes, then start what it made ready."""
        if not self._running:  # nothing runs and nothing can start: waiting for a future not of these lanes
            raise RuntimeError("Lanes: waiting for a job that is not of these lanes")
        done, _ = cf.wait(self._running, return_when=cf.FIRST_COMPLETED)
        for job in done:
            future = self._running.pop(job)
            if isinstance(job.exception(), BrokenProcessPool):
                raise _broken(job.exception()) from job.exception()
            if job.exception() is not None:
                future.set_exception(job.exception())
            else:
                self._finish(future, *job.result())
        self._release()

    def result(self, future: cf.Future) -> Any:
        """`future`'s result, waiting for it; its job's exception, or — for a job not run because one it needs
        failed — that first failure itself (a ConfigError stays a ConfigError)."""
        while not future.done():
            self._step()
        failed = future.exception()
        if isinstance(failed, JobFailed):
            raise failed.root
        return future.result()

    def join(self, futures: Sequence[cf.Future] | None = None) -> list[Any]:
        """Wait for `futures` (all submitted jobs by default); their results, or the first failure raised."""
        futures = self._all if futures is None else futures
        return [self.result(f) for f in futures]

    def close(self, cancel: bool = False) -> None:
        """Stop the lanes (the workers now, with `cancel`); a job still waiting for others fails (JobFailed)."""
        for _, fn, _, _, future in self._waiting:
            future.set_exception(JobFailed(f"{getattr(fn, '__name__', fn)} not run: the lanes closed first",
                                           RuntimeError("the lanes closed before the job could start")))
        self._waiting.clear()
        self._bar.close()
        if self._pool is None:
            return
        if cancel:  # stop the workers now: their jobs in flight are lost (each job caches what it finished)
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.terminate()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._pool = None

    def __enter__(self) -> "Lanes":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)

