"""What TensorFlow's deterministic ops cost the receipt U-Net's training, and whether two processes agree.

``python docs/scripts/determinism_cost.py [--steps 12] [--repeats 2] [--jit-compile auto|xla|none] [--modes on off]
[--threads N]``
trains the demo's U-Net (batch 8, Adam, XLA as Keras chooses unless told) in fresh processes, with
``unet.pipeline.set_deterministic`` on and off in the order of ``--modes``, ``--repeats`` times: one untimed epoch
(tracing and compiling), then ``--steps`` timed steps. It prints each run's seconds
per step and a checksum of the weights: equal checksums mean bit-identical weights, so the on runs show whether
the training reproduces across processes. Run it alone on the machine (timings of a shared machine are noise).
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import keras
from unet import data, pipeline
from unet.model import build_unet

on, steps, size = sys.argv[1] == "on", int(sys.argv[2]), int(sys.argv[3])
jit = {"auto": "auto", "xla": True, "none": False}[sys.argv[4]]
threads = int(sys.argv[5]) or None
pipeline.set_deterministic(on, threads=threads)
keras.utils.set_random_seed(0)
ds = data.synthetic(16, 5, size=size)
model = build_unet(size=size)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=pipeline._loss(), jit_compile=jit)
model.fit(ds.images, ds.masks, batch_size=8, epochs=1, verbose=0)  # trace and compile, untimed
x = np.concatenate([ds.images] * (-(-steps * 8 // len(ds))))[: steps * 8]
y = np.concatenate([ds.masks] * (-(-steps * 8 // len(ds))))[: steps * 8]
t0 = time.perf_counter()
model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=True)
seconds = time.perf_counter() - t0
digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()[:16]
print(json.dumps({"deterministic": on, "jit_compile": sys.argv[4], "threads": threads, "s_per_step": seconds / steps,
                  "weights_sha256": digest}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--jit-compile", choices=["auto", "xla", "none"], default="auto",
                   help="Keras's jit_compile: auto (the demo's), xla, none (crossval's)")
    p.add_argument("--modes", nargs="+", choices=["on", "off"], default=["on", "off"])
    p.add_argument("--threads", type=int, default=0, help="TensorFlow's intra-op threads (0: its default, all cores)")
    args = p.parse_args(argv)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=repo)
    rows = []
    for _ in range(args.repeats):
        for mode in args.modes:
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.steps), str(args.size),
                                  args.jit_compile, str(args.threads)], env=env,
                                 capture_output=True, text=True, check=True, cwd=repo).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for on in (True, False):
        r = [x for x in rows if x["deterministic"] is on]
        if not r:
            continue
        same = len({x["weights_sha256"] for x in r}) == 1
        print(f"deterministic {'on ' if on else 'off'}: {1000 * sum(x['s_per_step'] for x in r) / len(r):.0f} ms per "
              f"step (mean of {len(r)}), weights {'identical' if same else 'differ'} across processes")


if __name__ == "__main__":
    main()
