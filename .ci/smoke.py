"""Smoke test of an installed crfcore wheel, run by .ci/run in a fresh venv from a folder outside the checkout:
what a pip user gets must work alone (no checkout on the path, no data from ../shared)."""

import importlib.metadata
import os
import subprocess
import sys
import tempfile

import numpy as np


def installed_top_level():
    dist = importlib.metadata.distribution("crfcore")
    return sorted({f.parts[0] for f in dist.files if not f.parts[0].endswith((".dist-info", "..")) and
                   f.parts[0] != "bin"})


def main():
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not any(os.path.abspath(p or ".") == checkout for p in sys.path), sys.path
    import crfcore
    import crfcore.adapters  # no framework needed
    import importlib.util

    for name in ("crfcore._cuda.meanfield", "crfcore._cuda.crf"):
        assert importlib.util.find_spec(name), f"the CUDA backend ({name}) is missing from the wheel"
    try:  # without the cuda extra, device="cuda" says what to install
        crfcore.meanfield(np.zeros((4, 4, 2), np.float32), np.zeros((4, 4, 3)), device="cuda")
        raise AssertionError("device='cuda' ran without numba-cuda")
    except ImportError as exc:
        assert "crfcore[cuda]" in str(exc), exc

    assert not os.path.abspath(crfcore.__file__).startswith(checkout + os.sep), crfcore.__file__
    top = installed_top_level()
    assert top == ["crfcore"], top
    assert crfcore.__version__ == importlib.metadata.version("crfcore")
    bindir = os.path.dirname(sys.executable)
    out = subprocess.run([os.path.join(bindir, "crfcore"), "--help"], capture_output=True, text=True, check=True)
    assert "refine" in out.stdout and "warmup" in out.stdout
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(24, 32, 2)).astype(np.float32)
    image = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    q = crfcore.meanfield(logits, image)
    assert q.shape == logits.shape and np.allclose(q.sum(-1), 1, atol=1e-5)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        for d in ("img", "sc"):
            os.makedirs(os.path.join(tmp, d))
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).save(f"{tmp}/img/a{k}.png")
            np.save(f"{tmp}/sc/a{k}.npy", rng.dirichlet(np.ones(3), size=(20, 30)).astype(np.float32))
        proc = subprocess.run([os.path.join(bindir, "crfcore"), "refine", f"{tmp}/img", "--scores", f"{tmp}/sc",
                               "--out", f"{tmp}/out", "--no-progress"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        labels = [np.asarray(Image.open(f"{tmp}/out/a{k}.png")) for k in range(2)]
        assert all(lab.shape == (20, 30) and lab.max() < 3 for lab in labels)
    print(f"smoke: crfcore {crfcore.__version__} from {os.path.dirname(crfcore.__file__)}: top-level {top}, "
          f"crfcore --help, meanfield, crfcore refine on 2 images, import crfcore.adapters: ok")


if __name__ == "__main__":
    main()
