"""The first calls of a fresh install: each measured in fresh processes with an empty Numba cache, never mixed
into the warm timings.

- ``pattern``: what a user timing crfcore the usual way sees: ``import crfcore`` and six calls of
  ``meanfield`` (float32 224x224 RGB, L=2, 5 iterations), each call's seconds (the first is NumPy's while the
  kernels compile, the second waits for them, the rest are the kernels').
- ``kernels``: each kernel's compile seconds in one worker (one core's time); ``workers_s``: the wall time of
  the default workers (one per core) for everything inference needs; ``in_process_s``: the same compiled in the
  calling process (``CRFCORE_FIRST_CALL=compile`` without workers), the way a kernel compiles without crfcore's
  help; ``training_s``: ``crfcore warmup --training`` once the inference kernels are cached.
- ``warm_s``: import and first call with the cache filled (the median of :data:`WARM_ROUNDS` processes),
  interleaved with a one-loop cached Numba kernel's (``numba_floor_s``: what any Numba library pays).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

WARM_ROUNDS = 5

#: The floor: a module with one cached Numba kernel, imported and called on an array like the CRF's logits.
_FLOOR_MODULE = """from numba import njit


@njit(cache=True)
def total(x):
    s = 0.0
    for v in x.ravel():
        s += v
    return s
"""

_PATTERN = """import time; t0 = time.perf_counter()
import numpy as np, crfcore
rng = np.random.default_rng(0)
img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8); lg = rng.normal(size=(224, 224, 2)).astype(np.float32)
out = [time.perf_counter() - t0]
for _ in range(6):
    t = time.perf_counter(); crfcore.meanfield(lg, img, n_iter=5); out.append(time.perf_counter() - t)
print(*out)
"""

_KERNELS = """import json, sys
from crfcore import warmup
from crfcore._shared import compile_workers
todo = warmup.missing("inference/float32/2")
w = compile_workers.Workers(todo, n_workers=int(sys.argv[1]), report=True)
w.wait()
print(json.dumps(dict(ok=w.ok(), workers=len(w.procs), kernels=w.done)))
"""

_TRAINING = """import time, crfcore.warmup as w
w.compile_all(progress=False); t = time.perf_counter(); r = w.compile_all(training=True, progress=False)
print(time.perf_counter() - t, r["compiled"])
"""

_FLOOR = ("import sys, time; t = time.perf_counter(); sys.path.insert(0, sys.argv[1]); import numpy as np; "
          "import numba_floor; numba_floor.total(np.zeros((224, 224, 2), np.float32)); print(time.perf_counter() - t)")


def _run(code, env, *args):
    """``code``'s last output line in a fresh process, or None if it failed."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return proc.stdout.strip().splitlines()[-1]


def _floats(line):
    return None if line is None else [float(x) for x in line.split()]


def measure():
    """All of the module's figures (see its doc); a measurement that failed is None."""
    import time

    from crfcore._shared import compile_workers

    out = dict(cores=compile_workers.usable_cores(), pattern_s=None, served_by_numpy=None, kernels=None,
               workers=None, workers_s=None, in_process_s=None, training_s=None, warm_s=None, warm_runs_s=None,
               numba_floor_s=None)

    def env_with(cache, **extra):
        return {**os.environ, "NUMBA_CACHE_DIR": cache, "CRFCORE_FIRST_CALL": "numpy", **extra}

    with tempfile.TemporaryDirectory() as cache:
        out["pattern_s"] = _floats(_run(_PATTERN, env_with(cache)))
        out["training_s"] = (_floats(_run(_TRAINING, env_with(cache))) or [None])[0]
        with open(os.path.join(cache, "numba_floor.py"), "w") as f:
            f.write(_FLOOR_MODULE)
        _run(_FLOOR, env_with(cache), cache)  # compiles it into the cache
        warm, bare = [], []
        for _ in range(WARM_ROUNDS):
            warm.append(_floats(_run(_PATTERN, env_with(cache))))
            bare.append(_floats(_run(_FLOOR, env_with(cache), cache)))
        if all(warm):
            out["warm_runs_s"] = [w[0] + w[1] for w in warm]
            out["warm_s"] = statistics.median(out["warm_runs_s"])
        if all(bare):
            out["numba_floor_s"] = statistics.median(b[0] for b in bare)
    with tempfile.TemporaryDirectory() as cache:
        line = _run(_KERNELS, env_with(cache), "1")
        if line:
            k = json.loads(line)
            out["kernels"] = {name: seconds for name, seconds, _ in k["kernels"]} if k["ok"] else None
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        line = _run(_KERNELS, env_with(cache), str(min(compile_workers.usable_cores(), compile_workers.MAX_WORKERS)))
        if line and json.loads(line)["ok"]:
            out["workers_s"], out["workers"] = time.perf_counter() - t, json.loads(line)["workers"]
    with tempfile.TemporaryDirectory() as cache:
        line = _run(_PATTERN, env_with(cache, CRFCORE_FIRST_CALL="compile", CRFCORE_COMPILE_WORKER="1"))
        out["in_process_s"] = None if line is None else sum(_floats(line)[:2])
    if out["pattern_s"]:
        out["served_by_numpy"] = out["pattern_s"][1] < out["pattern_s"][2]  # the first call beat the second
    return out


def report(c):
    """The report's rows for :func:`measure`'s result ``c`` ("failed" for a measurement that did not come back)."""
    def sec(x, digits=1):
        return "failed" if x is None else f"{x:.{digits}f} s"

    p = c["pattern_s"]
    lines = ["first calls, fresh process, empty Numba cache (float32 224x224 RGB, L=2, 5 iterations; "
             f"{c['cores']} cores):"]
    if p:
        lines.append(f"  import {sec(p[0], 2)}; call 1 {sec(p[1], 2)} (NumPy while the kernels compile), call 2 "
                     f"{sec(p[2], 2)} (waits for them), calls 3-6 " + ", ".join(f"{1e3 * x:.0f} ms" for x in p[3:]))
    else:
        lines.append("  calls: failed")
    lines.append(f"  compiling everything inference needs: {sec(c['workers_s'])} in {c['workers'] or '?'} worker "
                 f"process(es), {sec(c['in_process_s'])} in the calling process; training kernels after them "
                 f"{sec(c['training_s'])}")
    if c["kernels"]:
        total = sum(c["kernels"].values())
        lines.append(f"  per kernel (one core, {total:.1f} s in all): " + ", ".join(
            f"{name.split('.')[-1]} {s:.1f}" for name, s in sorted(c["kernels"].items(), key=lambda kv: -kv[1])))
    else:
        lines.append("  per kernel: failed")
    lines.append(f"  warm (cache filled): import + first call {sec(c['warm_s'], 2)} (median of {WARM_ROUNDS}); a "
                 f"one-loop cached Numba kernel's, interleaved: {sec(c['numba_floor_s'], 2)}")
    return "\n".join(lines)


if __name__ == "__main__":
    result = measure()
    print(report(result))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=2)
