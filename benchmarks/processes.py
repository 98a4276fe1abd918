"""Throughput of crfcore in several processes at once on one machine (and in a fork-based ``multiprocessing.Pool``),
against one process alone and against pydensecrf2 processes, 224x224 L=2 5 iterations, random RGB.

Each worker is a fresh process (``spawn``) that loads the compiled kernels, warms up, waits at a barrier so that
all start together, then refines images for a fixed time; images/s per process and in total are reported.
"""

import multiprocessing as mp
import os
import time

import numpy as np

SIZE, N_LABELS, N_ITER = 224, 2, 5


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    logits = rng.normal(size=(SIZE, SIZE, N_LABELS)).astype(np.float32)
    return logits, image


def _refine(peer, logits, image):
    if peer == "crfcore":
        import crfcore

        return crfcore.meanfield(logits, image, n_iter=N_ITER)
    from .peers import densecrf

    return densecrf(logits, image, N_ITER)


def _worker(peer, barrier, seconds, queue):
    logits, image = _inputs(os.getpid() % 1000)
    for _ in range(3):
        _refine(peer, logits, image)
    barrier.wait()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        _refine(peer, logits, image)
        n += 1
    queue.put(n / (time.perf_counter() - t0))


def concurrent(peer, n_processes, seconds=4.0):
    """Images/s of each of ``n_processes`` processes running ``peer`` at once."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n_processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(peer, barrier, seconds, queue)) for _ in range(n_processes)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return rates


def _pool_task(seed):
    logits, image = _inputs(seed)
    return float(_refine("crfcore", logits, image)[0, 0, 0])


def fork_pool(n_processes, n_images=48):
    """Images/s of a fork-based ``multiprocessing.Pool`` forked after this process has used crfcore (the parent
    warms up first: that is what used to kill or hang the children)."""
    logits, image = _inputs()
    _refine("crfcore", logits, image)
    ctx = mp.get_context("fork")
    with ctx.Pool(n_processes) as pool:
        pool.map(_pool_task, range(n_processes))  # children load the kernels
        t0 = time.perf_counter()
        pool.map(_pool_task, range(n_images), chunksize=1)
        return n_images / (time.perf_counter() - t0)


def run(counts=(1, 2, 4), peers=("crfcore", "densecrf"), seconds=4.0, progress=print):
    out = {"size": SIZE, "labels": N_LABELS, "iterations": N_ITER, "cpu_count": os.cpu_count(), "rows": []}
    for peer in peers:
        for n in counts:
            progress(f"  {n} {peer} process(es) at once...")
            rates = concurrent(peer, n, seconds)
            out["rows"].append({"peer": peer, "processes": n, "per_process": rates, "total": float(sum(rates))})
    progress("  fork-based multiprocessing.Pool after use...")
    out["fork_pool"] = {n: fork_pool(n) for n in (2, 4)}
    return out


def report(result):
    lines = [f"processes at once, {result['size']}x{result['size']} L={result['labels']} {result['iterations']} it "
             f"({result['cpu_count']} cores), images/s:"]
    for r in result["rows"]:
        each = " + ".join(f"{x:.1f}" for x in r["per_process"])
        lines.append(f"  {r['peer']:>8} x{r['processes']}: total {r['total']:6.1f}  ({each})")
    pools = ", ".join(f"{n} workers {v:.1f}" for n, v in result["fork_pool"].items())
    lines.append(f"  crfcore fork-based Pool after use: {pools}")
    return "\n".join(lines)
