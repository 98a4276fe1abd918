"""``python -m benchmarks gpu``: crfcore's CUDA backend (``device="cuda"``) against its CPU path and MONAI's CRF.

Rows: 512x512 and 1024x1024, 2 and 21 labels, 5 and 10 iterations; for each, the forward (inference, ``meanfield``)
and the forward + backward (``meanfield_fwd`` with residuals, then ``meanfield_bwd`` with the widths' and image's
gradients) on the GPU with device arrays in and out, the same on the CPU, and MONAI's ``CRF`` forward (it has no
backward through its filter) when MONAI and a CUDA PyTorch are installed. Times are medians after a warm-up call
(which compiles the kernels: that cost is reported apart). Needs a GPU, or ``NUMBA_ENABLE_CUDASIM=1`` for a smoke
run on a tiny size (``--sizes 16``; the simulator's times mean nothing).

The input is synthetic (no image library needed on a GPU machine): a picture of soft-edged blocks and gradients,
and noisy unaries favouring its regions. See docs/design/gpu.md for what the figures should be and why.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import crfcore

from unet.provenance import provenance

KERNELS = dict(theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, w_bilateral=10.0, w_spatial=3.0)


def synthetic(size, n_lab, seed=0):
    """``(image uint8 (size, size, 3), logits float32 (size, size, n_lab))``: blocks of colour with gradients and
    noise, and unaries favouring each block's label by 2 with Gaussian noise of 1.5."""
    rng = np.random.default_rng(seed)
    cells = 8
    labels_small = rng.integers(0, n_lab, (cells, cells))
    colours = rng.integers(30, 225, (n_lab, 3))
    idx = (np.arange(size) * cells) // size
    labels = labels_small[idx][:, idx]
    ramp = np.linspace(-20, 20, size)
    image = colours[labels] + ramp[:, None, None] + rng.normal(0, 6, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1.5, (size, size, n_lab)).astype(np.float32)
    logits[np.arange(size)[:, None], np.arange(size)[None, :], labels] += 2.0
    return image, logits


def _timed(fn, repeats, sync):
    """Median, min and max seconds of ``fn`` over ``repeats`` calls after one warm-up call; the warm-up's own
    seconds too (the first call compiles)."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return dict(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), max_ms=1e3 * max(times),
                first_call_ms=1e3 * first, repeats=repeats)


def _monai():
    """MONAI's CRF class and torch, or None (with the reason)."""
    try:
        import torch
        from monai.networks.blocks import CRF
    except Exception as exc:  # not installed, or a broken install
        return None, f"not installed ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return None, "PyTorch has no CUDA device"
    return (torch, CRF), ""


def run(sizes, labels, iterations, repeats, cpu=True, progress=print):
    from numba import cuda

    from crfcore._shared import cuda_backend

    dev = cuda_backend()
    dev.require()
    monai, monai_why = _monai()
    rows = []
    for size in sizes:
        for n_lab in labels:
            image, logits = synthetic(size, n_lab)
            d_image, d_logits = cuda.to_device(image), cuda.to_device(logits)
            for n_iter in iterations:
                kw = dict(KERNELS, n_iter=n_iter)
                row = dict(size=size, labels=n_lab, iterations=n_iter)
                progress(f"{size}x{size} L={n_lab} {n_iter} it")

                def fwd():
                    return crfcore.meanfield(d_logits, d_image, device="cuda", **kw)

                def fwd_bwd():
                    out, res = crfcore.meanfield_fwd(d_logits, d_image, device="cuda", output="logits", **kw)
                    return crfcore.meanfield_bwd(res, out)

                row["gpu_forward"] = _timed(fwd, repeats, dev.synchronize)
                row["gpu_forward_backward"] = _timed(fwd_bwd, repeats, dev.synchronize)
                q_gpu = dev.to_host(fwd())
                if cpu:
                    cpu_repeats = max(1, min(repeats, 3))
                    row["cpu_forward"] = _timed(lambda: crfcore.meanfield(logits, image, **kw), cpu_repeats,
                                                lambda: None)
                    row["cpu_forward_backward"] = _timed(
                        lambda: crfcore.meanfield_bwd(crfcore.meanfield_fwd(logits, image, output="logits", **kw)[1],
                                                      logits), cpu_repeats, lambda: None)
                    q_cpu = crfcore.meanfield(logits, image, **kw)
                    row["max_abs_diff_vs_cpu"] = float(np.abs(q_cpu - q_gpu).max())
                    row["speedup_forward"] = row["cpu_forward"]["median_ms"] / row["gpu_forward"]["median_ms"]
                    row["speedup_forward_backward"] = (row["cpu_forward_backward"]["median_ms"]
                                                       / row["gpu_forward_backward"]["median_ms"])
                if monai:
                    torch, CRF = monai
                    # MONAI's kernel: exp(-|dp|^2 / 2 sigma^2 ...), its colours in the image's units
                    crf = CRF(iterations=n_iter, bilateral_weight=KERNELS["w_bilateral"],
                              gaussian_weight=KERNELS["w_spatial"], bilateral_spatial_sigma=KERNELS["theta_alpha"],
                              bilateral_color_sigma=KERNELS["theta_beta"],
                              gaussian_spatial_sigma=KERNELS["theta_gamma"], update_factor=1.0)
                    t_logits = torch.as_tensor(logits, device="cuda").permute(2, 0, 1)[None].contiguous()
                    t_image = torch.as_tensor(image, device="cuda").permute(2, 0, 1)[None].float().contiguous()
                    try:
                        with torch.no_grad():
                            row["monai_forward"] = _timed(lambda: crf(t_logits, t_image), repeats,
                                                          torch.cuda.synchronize)
                    except Exception as exc:  # e.g. a MONAI without its compiled extension (monai._C)
                        row["monai_forward"] = f"failed ({type(exc).__name__}: {exc})"[:300]
                    row["monai_backward"] = "none: MONAI's permutohedral filter has no backward"
                else:
                    row["monai_forward"] = monai_why
                rows.append(row)
    return dict(rows=rows, device=_device_name(), simulator=dev.simulator())


def _device_name():
    from numba import cuda

    try:
        d = cuda.get_current_device()
        name = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
        return dict(name=name, compute_capability=list(d.compute_capability))
    except Exception as exc:
        return dict(name=f"unknown ({exc})")


def report(result):
    lines = [f"device: {result['device'].get('name')}" + (" (simulator: times mean nothing)"
                                                           if result["simulator"] else "")]
    head = f"{'size':>9} {'L':>3} {'it':>3} {'gpu fwd':>9} {'gpu f+b':>9} {'cpu fwd':>9} {'cpu f+b':>9} " \
           f"{'x fwd':>6} {'x f+b':>6} {'monai':>9}"
    lines.append(head)
    for r in result["rows"]:
        def ms(key):
            v = r.get(key)
            return f"{v['median_ms']:8.2f}m" if isinstance(v, dict) else f"{'-':>9}"
        sp = (f"{r['speedup_forward']:6.1f} {r['speedup_forward_backward']:6.1f}" if "speedup_forward" in r
              else f"{'-':>6} {'-':>6}")
        lines.append(f"{r['size']:>4}x{r['size']:<4} {r['labels']:>3} {r['iterations']:>3} {ms('gpu_forward')} "
                     f"{ms('gpu_forward_backward')} {ms('cpu_forward')} {ms('cpu_forward_backward')} {sp} "
                     f"{ms('monai_forward')}")
    lines.append("(medians in ms after a warm-up call; x: CPU time / GPU time, same run)")
    why = {r["monai_forward"] for r in result["rows"] if isinstance(r.get("monai_forward"), str)}
    lines += [f"monai: {w}" for w in sorted(why)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--labels", type=int, nargs="+", default=[2, 21])
    p.add_argument("--iterations", type=int, nargs="+", default=[5, 10])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows (minutes at 1024x1024 on few cores)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if min(args.sizes + args.labels + args.iterations + [args.repeats]) < 1:
        p.error("sizes, labels, iterations and repeats must be positive")
    meta = provenance("python -m benchmarks gpu " + " ".join(argv if argv is not None else sys.argv[2:]))
    result = run(args.sizes, args.labels, args.iterations, args.repeats, cpu=not args.no_cpu,
                 progress=lambda s: print(s, file=sys.stderr, flush=True))
    result["meta"] = meta
    print(report(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
