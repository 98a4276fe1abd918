"""Contention rows of ``python -m benchmarks``: crfcore and densecrf while other processes keep every core busy.

The section starts one CPU-bound competitor per core (a Python busy loop in its own process), lets them settle,
times the peers interleaved on the same input as the standard table (crfcore on all threads and on one, densecrf,
and pydensecrf's step-wise ``stepInference`` through ``crfcore.pydensecrf`` and pydensecrf2), then ends the
competitors, also when a measurement fails.
"""

import os
import subprocess
import sys
import time
from contextlib import contextmanager

from .inputs import case
from .peers import _pydensecrf_setup, dcrf, densecrf, ours
from .timing import _with_threads, timed_interleaved


@contextmanager
def competitors(n):
    """``n`` busy processes for the duration of the ``with`` block (killed and reaped after it)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(0.5)  # running and scheduled before the first timing
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(30)


def bench_contention(cfgs, repeats, threads, step_cfg=(224, 2)):
    """Rows ``(size, labels, iterations)`` of meanfield, and a step-wise row, timed with one competitor per core."""
    from crfcore.pydensecrf import densecrf as shim

    n = os.cpu_count() or 1
    prepared = [(cfg, case(cfg[0], cfg[1])) for cfg in cfgs]
    step_image, step_logits = case(*step_cfg)
    crfs = [_pydensecrf_setup(shim, step_logits, step_image)]
    if dcrf is not None:
        crfs.append(_pydensecrf_setup(dcrf, step_logits, step_image))
    states = [d.startInference() for d in crfs]
    out = {"competitors": n, "rows": []}
    with competitors(n):
        for (size, n_lab, n_iter), (image, logits) in prepared:
            fns = [_with_threads(threads, lambda: ours(logits, image, n_iter)),
                   _with_threads(1, lambda: ours(logits, image, n_iter))]
            if dcrf is not None:
                fns.append(lambda: densecrf(logits, image, n_iter))
            times = [1e3 * med for med, _, _ in timed_interleaved(fns, repeats)]
            row = {"size": size, "labels": n_lab, "iterations": n_iter, "crfcore_ms": times[0],
                   "crfcore_1t_ms": times[1]}
            if dcrf is not None:
                row.update(densecrf_ms=times[2], speedup=times[2] / times[0], speedup_1t=times[2] / times[1])
            out["rows"].append(row)
        steps = [lambda d=d, s=s: d.stepInference(*s) for d, s in zip(crfs, states)]
        step_ms = [1e3 * med for med, _, _ in timed_interleaved(steps, repeats)]
        out["stepwise"] = {"size": step_cfg[0], "labels": step_cfg[1], "shim_step_ms": step_ms[0]}
        if dcrf is not None:
            out["stepwise"].update(densecrf_step_ms=step_ms[1], step_speedup=step_ms[1] / step_ms[0])
    return out


def report(result):
    lines = [f"under contention ({result['competitors']} busy competitor processes, one per core):"]
    for r in result["rows"]:
        line = (f"  {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it: crfcore {r['crfcore_ms']:.1f} ms "
                f"(1 thread {r['crfcore_1t_ms']:.1f} ms)")
        if "densecrf_ms" in r:
            line += f", densecrf {r['densecrf_ms']:.1f} ms: x{r['speedup']:.2f} (1 thread x{r['speedup_1t']:.2f})"
        lines.append(line)
    s = result["stepwise"]
    line = (f"  step-wise {s['size']}x{s['size']} L={s['labels']}: crfcore.pydensecrf stepInference "
            f"{s['shim_step_ms']:.1f} ms")
    if "densecrf_step_ms" in s:
        line += f", pydensecrf2 {s['densecrf_step_ms']:.1f} ms: x{s['step_speedup']:.2f}"
    lines.append(line)
    return "\n".join(lines)
