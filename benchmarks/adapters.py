"""The framework adapters' overhead: forward + backward of a batch of 4 through Keras, PyTorch and JAX against the bare
core's ``meanfield_fwd`` + ``meanfield_bwd`` on the same input (median ms, same process). Frameworks that are not
installed are skipped."""

import numpy as np

import crfcore

from .inputs import case

BATCH = 4
WIDTHS = dict(theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0)


def _inputs(size, n_lab):
    cases = [case(size, n_lab, photo_name=name, seed=i) for i, name in
             enumerate(["astronaut", "coffee", "chelsea", "rocket"][:BATCH])]
    return np.stack([c[1] for c in cases]), np.stack([c[0] for c in cases]).astype(np.float32)


def _core(logits, images, n_iter):
    g = np.ones_like(logits)

    def run():
        _, res = crfcore.meanfield_fwd(logits, images, n_iter=n_iter, output="logits", normalization="after",
                                       **WIDTHS)
        crfcore.meanfield_bwd(res, g, features=False)

    return run


def _keras(logits, images, n_iter):
    import tensorflow as tf

    from crfcore.adapters.tf import CrfRnnLayer

    layer = CrfRnnLayer(num_iterations=n_iter, **WIDTHS)
    x, img = tf.constant(logits), tf.constant(images)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer([x, img]))
        return tape.gradient(y, [x] + layer.trainable_weights)

    def run():
        [t.numpy() for t in step()]

    return run


def _torch(logits, images, n_iter):
    import torch

    from crfcore.adapters.torch import crf_refine

    x = torch.tensor(np.moveaxis(logits, -1, 1).copy(), requires_grad=True)
    img = torch.tensor(np.moveaxis(images, -1, 1).copy())

    def run():
        x.grad = None
        crf_refine(x, img, n_iter=n_iter, normalization="after", **WIDTHS).sum().backward()

    return run


def _jax(logits, images, n_iter):
    import jax
    import jax.numpy as jnp

    from crfcore.adapters.jax import crf_refine

    x, img = jnp.asarray(logits), jnp.asarray(images)  # on the device once, as the other frameworks' tensors
    grad = jax.jit(jax.grad(lambda x, img: jnp.sum(crf_refine(x, img, n_iter=n_iter, normalization="after",
                                                              **WIDTHS))))

    def run():
        jax.block_until_ready(grad(x, img))

    return run


FRAMEWORKS = {"keras": _keras, "torch": _torch, "jax": _jax}


def run(configs=((224, 2, 5, 15), (512, 21, 10, 5)), progress=print):
    """Median ms of each (``configs``: size, labels, iterations, repeats), the peers timed in turn (shuffled
    within each round); an adapter's overhead is the median over rounds of its time / the core's in that round
    (pairs measured seconds apart, so the machine's drift cancels)."""
    from .timing import timed_interleaved

    rows = []
    for size, n_lab, n_iter, repeats in configs:
        logits, images = _inputs(size, n_lab)
        progress(f"  adapters {size}x{size} L={n_lab} {n_iter} it, batch {BATCH}...")
        row = {"size": size, "labels": n_lab, "iterations": n_iter, "batch": BATCH}
        names, fns = ["core"], [_core(logits, images, n_iter)]
        for name, make in FRAMEWORKS.items():
            try:
                fns.append(make(logits, images, n_iter))
            except ImportError:
                continue
            names.append(name)
        rounds = []
        for name, (med, _, _) in zip(names, timed_interleaved(fns, repeats, rounds)):
            row[f"{name}_ms"] = 1e3 * med
        for i, name in enumerate(names[1:], 1):
            row[f"{name}_overhead"] = float(np.median([r[i] / r[0] for r in rounds])) - 1.0
        rows.append(row)
    return rows


#: Environment that makes the frameworks' own thread pools sleep instead of spinning while crfcore computes:
#: PyTorch's OpenMP threads wait passively, XLA's CPU client runs its (here trivial) ops on one thread.
QUIET_POOLS = {"OMP_WAIT_POLICY": "PASSIVE",
               "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def run_quiet_pools(progress=print):
    """:func:`run` in a fresh process with :data:`QUIET_POOLS` set (they are read when the frameworks load)."""
    import json
    import os
    import subprocess
    import sys

    progress("  adapters again, in a process whose framework thread pools sleep (" +
             " ".join(f"{k}={v!r}" for k, v in QUIET_POOLS.items()) + ")...")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **QUIET_POOLS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.adapters"], capture_output=True, text=True, env=env,
                          cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.adapters failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows, label=""):
    lines = []
    for r in rows:
        parts = [f"{name} {r[f'{name}_ms']:.0f} ms ({100 * r[f'{name}_overhead']:+.1f} %)" for name in FRAMEWORKS
                 if f"{name}_ms" in r]
        lines.append(f"adapters{label} {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it, batch {r['batch']}, "
                     f"forward + backward: core {r['core_ms']:.0f} ms; " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(progress=lambda msg: print(msg, file=sys.stderr))))
