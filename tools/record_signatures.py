"""Regenerate crfcore's table of kernel argument types (``crfcore/warmup/signature_table.py``).

``python tools/record_signatures.py`` runs the calls of every profile of :mod:`crfcore.warmup.signatures` with the
compiled kernels, records the types of every kernel call made from Python (calls between kernels are compiled with
their caller) and rewrites the table; ``--json`` prints the table instead. A test (tests/test_warmup.py) runs it
and fails when a kernel's arguments changed without the table. A checkout's tool: it runs the public API and reads
the kernels' dispatchers, so it lives above the package, not in it.
"""

import json
import os
import sys

import numba
import numpy as np

import crfcore
from crfcore import inference
from crfcore._kernels import lattice, meanfield
from crfcore.warmup.signatures import PROFILES, encode, profile_key, write


def _run(what, dtype, n_labels):
    """One small call of the profile (compiled kernels, never the NumPy fallback), from no kept spatial kernel."""
    inference._spatial_cache.clear()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 24, 20, n_labels)).astype(dtype)
    image = rng.integers(0, 255, size=(2, 24, 20, 3), dtype=np.uint8)
    if what == "inference":
        crfcore.meanfield(logits, image, n_iter=1)
    else:
        out, res = crfcore.meanfield_fwd(logits, image, n_iter=1)
        crfcore.meanfield_bwd(res, np.ones_like(out), features=True)


def record():
    """``{profile key: {kernel name: [signature, ...]}}`` of every profile, from real calls in this process."""

    os.environ["CRFCORE_FIRST_CALL"] = "compile"  # the kernels themselves, in this process
    os.environ["CRFCORE_COMPILE_WORKER"] = "1"  # no compile workers: kernels are wrapped below
    for profile in PROFILES:
        _run(*profile)  # compiled (or loaded) with the real dispatchers, so callers have their callees
    modules = (lattice, meanfield)
    dispatchers = {(m, name): obj for m in modules for name, obj in vars(m).items()
                   if isinstance(obj, numba.core.registry.CPUDispatcher)}
    seen = []

    def recorder(module, name, dispatcher):
        def call(*args):
            seen.append((f"{module.__name__.rsplit('.', 1)[-1]}.{name}",
                         tuple(encode(numba.typeof(a)) for a in args)))
            return dispatcher(*args)
        return call

    table = {}
    try:
        for (m, name), d in dispatchers.items():  # calls from Python now go through a recorder
            setattr(m, name, recorder(m, name, d))
        for profile in PROFILES:
            seen.clear()
            _run(*profile)
            kernels = table.setdefault(profile_key(*profile), {})
            for name, sig in seen:
                if sig not in kernels.setdefault(name, []):
                    kernels[name].append(sig)
    finally:
        for (m, name), d in dispatchers.items():
            setattr(m, name, d)
    for key in [k for k in table if k.startswith("training/")]:  # stored as what inference does not already have
        base = table.get("inference/" + key.split("/", 1)[1], {})
        own = {name: [s for s in sigs if s not in base.get(name, [])] for name, sigs in table[key].items()}
        table[key] = {name: sigs for name, sigs in own.items() if sigs}
    return table


if __name__ == "__main__":
    table = record()
    if "--json" in sys.argv[1:]:
        print(json.dumps(table))
    else:
        print(f"wrote {write(table)}", file=sys.stderr)
