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


def _refine(peer, logits, image, n_iter=N_ITER):
    if peer == "crfcore":
        import crfcore

        return crfcore.meanfield(logits, image, n_iter=n_iter)
    from .peers import densecrf

    return densecrf(logits, image, n_iter)


def _photo_inputs(size, n_lab, k):
    """The ``k``-th of the benchmark's photo cases (:func:`benchmarks.inputs.case`, photos in turn)."""
    from .inputs import PHOTOS, case

    image, logits = case(size, n_lab, photo_name=PHOTOS[k % len(PHOTOS)], seed=k)
    return logits, image


def _worker(peer, barrier, seconds, queue, spec=None, index=0):
    if spec is None:  # random RGB at 224x224 L=2
        cases, n_iter = [_inputs(os.getpid() % 1000)], N_ITER
    else:  # (size, labels, iterations): the photo cases, this worker's share of them in turn
        size, n_lab, n_iter = spec
        cases = [_photo_inputs(size, n_lab, index + k) for k in range(2)]
    for k in range(2):
        _refine(peer, *cases[k % len(cases)], n_iter)
    barrier.wait()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        _refine(peer, *cases[n % len(cases)], n_iter)
        n += 1
    queue.put(n / (time.perf_counter() - t0))


def concurrent(peer, n_processes, seconds=4.0, spec=None):
    """Images/s of each of ``n_processes`` processes running ``peer`` at once: on random RGB at 224x224 L=2, or with
    ``spec = (size, labels, iterations)`` on the benchmark's photo cases. Each process runs whole images for at
    least ``seconds`` (a 1.5 s image ends after the deadline: the rate counts the time it took)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n_processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(peer, barrier, seconds, queue, spec, 2 * i))
             for i in range(n_processes)]
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
