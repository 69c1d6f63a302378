"""The local executor: stream the source, generate the missing (image, variant) pairs in batches, write.

Memory holds one batch of images plus the set of finished (source id, variant) keys — never the dataset.
"""
from __future__ import annotations

from tqdm.auto import tqdm

from ..core.log import bar_disabled
from ..core.records import Example
from ..data.images import Rejected
from .core import Plan, RunSummary, generate


def run_local(p: Plan, summary: RunSummary, progress: bool | None = None) -> None:
    run, outdir = p.run, p.outdir
    # progress=None: a bar when stderr is a terminal (tqdm's own rule); True / False force it.
    bar = tqdm(total=p.source.count() * run.n, desc=f"genaug {run.method}", unit="img", dynamic_ncols=True,
               disable=bar_disabled(progress))
    pending: list[tuple[Example, int, int]] = []

    def flush() -> None:
        if not pending:
            return
        p.prepare()
        results, refused = generate(p.method, pending, p.row_base)
        for e, reason in refused.values():
            outdir.reject(e.path, e.id, reason)
        bar.total -= len(pending) - len(results)
        for row, image in results:
            outdir.write(image, row)
        outdir.sync()
        summary.generated += len(results)
        bar.update(len(results))
        pending.clear()

    try:
        for rec, todo in p.pending(summary):
            if len(todo) < run.n:
                bar.update(run.n - len(todo))
            if not todo:
                summary.sources += 1
                continue
            try:
                ex = p.source.load(rec, p.input_cfg)
            except Rejected as e:
                outdir.reject(rec.path, rec.id, str(e))
                bar.total -= len(todo)
                continue
            summary.sources += 1
            for k, s in todo:
                pending.append((ex, k, s))
                if len(pending) >= p.batch_size:
                    flush()
        flush()
    finally:
        bar.close()
